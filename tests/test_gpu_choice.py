"""benchmarks/gpu.py's choice of model options from a GPU call's benchmark output (``--model-options measured``):
the fastest captured loop among the option sets whose kernels passed firstblock.py's device checks. The lines
below are firstblock.py's and train.py's output formats (copied from a run through Triton's interpreter, numbers
edited); a GPU session that spends its minutes on a wrong choice is what this guards against."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu  # noqa: E402  (benchmarks/gpu.py)

CHECKS = [
    "triton pool against F.max_pool2d on 128x32x96x96 bf16 with ties: output equal, input gradient equal to the "
    "float32-summed one, equal to PyTorch's bf16 kernel's",
    "triton pool with the bias inside: output equal, input gradient equal, bias gradient equal",
    "triton pool with the bias and the ReLU inside: output equal to F.relu's (bit patterns: 12 zeros of another "
    "sign; 12 -0.0 in F.relu's), input gradient equal, bias gradient equal",
    "paper CNN step, default pool twice: logits equal, 12 of 12 gradients equal; default against triton pool: "
    "logits equal, 12 of 12 gradients equal",
    "fused conv backward (triton_conv), its float32 weight gradient against the float64 sum: relative difference "
    "2.10e-07 (cuDNN's bf16 one: 1.60e-03) (ok)",
    "triton conv1 forward against the float64 convolution rounded to bf16: 0.001% of outputs differ (cuDNN's: "
    "0.002%), 0 outside the float32 accumulation bound (cuDNN's: 0) (ok)",
    "pool gradient summed in the kernel: input gradient equal, its sum over the batch against the float64 sum: "
    "relative difference 3.00e-08 (ok)",
    "triton conv1 weight gradient (conv1_wgrad=triton) against the float64 sums: weight 5.03e-08, G over the batch "
    "0.00e+00 (ok)",
]
LOOPS = {"": 70_000, " + fold+triton": 76_000, " + fold+triton+tfwd+twg": 120_000, " + fold+tconv+tfwd": 90_000,
         " + torchpool": 50_000}


def _out(tmp_path: Path, checks: list[str]) -> Path:
    base = "bf16 + channels_last + graphs"
    rows = [f"{'configuration':40s}{'bare img/s':>12s}{'loop img/s':>12s}{'loop/bare':>11s}"]
    rows += [f"{base + opt:40s}{rate * 1.02:12,.0f}{rate:12,.0f}{1 / 1.02:11.1%}" for opt, rate in LOOPS.items()]
    (tmp_path / "train.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "firstblock.txt").write_text("\n".join(checks) + "\n")
    return tmp_path


def test_the_fastest_checked_options_are_chosen(tmp_path):
    assert gpu.triton_pool_checked(_out(tmp_path, CHECKS) / "firstblock.txt")
    assert gpu.options_from_benchmark(tmp_path) == ["fold_input_bn=true", "pool_kernel=triton", "conv1_kernel=triton",
                                                    "conv1_wgrad=triton"]


def test_an_option_whose_check_failed_is_passed_over(tmp_path):
    checks = [c.replace("(ok)", "(TOO LARGE)") if c.startswith("triton conv1 weight gradient") else c for c in CHECKS]
    assert gpu.options_from_benchmark(_out(tmp_path, checks)) == ["fold_input_bn=true", "pool_kernel=triton_conv",
                                                                   "conv1_kernel=triton"]


@pytest.mark.parametrize("broken,wrong", [("ReLU inside: output equal", "ReLU inside: output DIFFERENT"),
                                          ("triton pool: logits equal, 12 of", "triton pool: logits equal, 11 of")])
def test_a_failed_pool_check_keeps_pytorchs_pool(tmp_path, broken, wrong):
    """A DIFFERENT in any of the pool's lines, or fewer equal gradients than the default pool's own two runs,
    fails the pool: no option with a Triton kernel, and PyTorch's pool named explicitly (the default would take
    the Triton one)."""
    checks = [c.replace(broken, wrong) for c in CHECKS]
    assert checks != CHECKS
    assert not gpu.triton_pool_checked(_out(tmp_path, checks) / "firstblock.txt")
    assert gpu.options_from_benchmark(tmp_path) == ["pool_kernel=torch"]


def test_the_normalized_fold_is_chosen_by_its_name(tmp_path):
    """An nfold row (fold_input_bn="normalized") that is fastest gives its string value, not a boolean."""
    out = _out(tmp_path, CHECKS)
    rows = (out / "train.txt").read_text().replace("fold+triton+tfwd+twg", "nfold+triton+tfwd+twg")
    (out / "train.txt").write_text(rows)
    assert "nfold+triton+tfwd+twg" in rows
    assert gpu.options_from_benchmark(out) == ["fold_input_bn=normalized", "pool_kernel=triton",
                                               "conv1_kernel=triton", "conv1_wgrad=triton"]


def test_finished_trials_are_counted_over_the_trials_a_call_runs(tmp_path):
    """The summary's "N in this call" subtracts the finished trials counted before the call. In a folder copied in
    from an earlier session whose ``sweep.json`` lists another selection (seed 1's 38 trials, when the call runs
    only its 14 UpWt and GDRO ones), the count before must be over the trials the call runs, not the folder's."""
    import json

    from biasbench.sweep.spec import expand, presets

    trials = [t.to_dict() for t in expand(presets()["paper-table1"], "tiny", [1])]
    planned = [t for t in trials if t["config"]["method"] in ("upweight", "group_dro")]
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    finished = [t for t in trials if t["config"]["method"] == "lnl"] + \
        [t for t in trials if t["config"]["method"] == "upweight"][:2]
    for i, t in enumerate(finished):
        run = sweep / "runs" / f"run{i}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"run_id": run.name, "config": t["config"],
                                                     "dataset": {"settings": t["dataset"]}}))
        (run / "status.json").write_text(json.dumps({"state": "finished", "epoch": 2}))
    (sweep / "sweep.json").write_text(json.dumps({"name": "paper-table1", "trials": trials}))
    assert len(trials) == 38 and len(planned) == 14
    assert gpu.count_finished(sweep) == (9, 38)
    assert gpu.count_finished(sweep, planned) == (2, 14)
