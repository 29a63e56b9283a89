import json

import numpy as np
import pytest
from PIL import Image

from biasbench.cli import main

SMALL = ["--cell-size", "8", "--n-train", "300", "--n-val", "100", "--n-test", "100"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_stats_show_export(tmp_path, capsys):
    d = tmp_path / "ds"
    code, out, _ = run(capsys, "data", "generate", "--out", str(d), *SMALL)
    assert code == 0 and "train 300" in out
    code, out, _ = run(capsys, "data", "generate", "--out", str(d), *SMALL)  # same dataset again: fine
    assert code == 0
    code, out, _ = run(capsys, "data", "stats", str(d), "--json")
    stats = json.loads(out)
    assert stats["splits"]["train"]["count"] == 300
    assert set(stats["splits"]["test"]["factors"]) >= {"digit_color", "texture_color"}
    code, out, _ = run(capsys, "data", "stats", str(d))
    assert "digit_color" in out and "balanced_val" in out
    png = tmp_path / "grid.png"
    code, _, _ = run(capsys, "data", "show", str(d), "--out", str(png))
    assert code == 0
    with Image.open(png) as im:
        assert im.size[0] > 8 * 64 and im.size[1] > 10 * 64
    code, _, _ = run(capsys, "data", "export", str(d), "--split", "test", "--format", "npy", "--out",
                     str(tmp_path / "npy"))
    assert code == 0
    images = np.load(tmp_path / "npy" / "images.npy")
    assert images.shape == (100, 3, 24, 24) and images.dtype == np.uint8
    code, _, _ = run(capsys, "data", "export", str(d), "--split", "val", "--format", "png", "--out",
                     str(tmp_path / "png"))
    assert code == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 100
    assert (tmp_path / "png" / "labels.csv").read_text().startswith("index,label,digit_color")


@pytest.fixture()
def ds(tmp_path, capsys):
    d = tmp_path / "ds"
    assert run(capsys, "data", "generate", "--out", str(d), *SMALL)[0] == 0
    return d


def _snapshot(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.mark.parametrize("extra, message", [
    (["--p-bias", "1.2"], "p_bias must be in [0, 1]"),
    (["--p-bias", "shape=0.5"], "unknown factor 'shape'"),
    (["--cell-size", "2"], "too small to draw"),
    (["--n-train", "59000", "--n-val", "5000"], "exceeds the 60000"),
    (["--n-test", "10001"], "test size"),
    (["--p-bias", "0.9"], "already holds a different dataset"),
])
def test_generate_bad_input_exit_2_and_nothing_overwritten(ds, capsys, extra, message):
    before = _snapshot(ds)
    args = ["data", "generate", "--out", str(ds), *SMALL, *extra]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert _snapshot(ds) == before


def test_unknown_mode_is_argparse_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["data", "generate", "--out", str(tmp_path / "x"), "--mode", "weird"])
    assert exc.value.code == 2


def test_other_bad_inputs(ds, tmp_path, capsys):
    code, _, err = run(capsys, "data", "stats", str(tmp_path / "nothing"))
    assert code == 2 and "no Biased MNIST dataset" in err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("hi")
    code, _, err = run(capsys, "data", "generate", "--out", str(tmp_path / "junk"), *SMALL)
    assert code == 2 and "not empty" in err
    assert (tmp_path / "junk" / "file.txt").read_text() == "hi"
    code, _, err = run(capsys, "data", "show", str(ds), "--out", str(tmp_path / "g.png"), "--split", "dev")
    assert code == 2 and "unknown split" in err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("x")
    code, _, err = run(capsys, "data", "export", str(ds), "--split", "test", "--format", "npy",
                       "--out", str(tmp_path / "taken"))
    assert code == 2 and "not empty" in err and (tmp_path / "taken" / "keep").exists()
    # corrupt manifest, then corrupt recipe
    manifest = ds / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{not json")
    code, _, err = run(capsys, "data", "stats", str(ds))
    assert code == 2 and "corrupt manifest" in err
    manifest.write_text(good)
    recipe = ds / "recipe.npz"
    data = bytearray(recipe.read_bytes())
    data[len(data) // 2] ^= 0xFF
    recipe.write_bytes(bytes(data))
    code, _, err = run(capsys, "data", "stats", str(ds))
    assert code == 2 and "corrupt recipe" in err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("generate", "stats", "show", "export"):
        assert cmd in out
