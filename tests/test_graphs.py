"""CUDA-graph capture of training steps (biasbench.train.graphs).

A CPU cannot capture, so the loops' captured path runs here under :class:`EmulatedGraph`: the same calls in
the same order (warm-up, capture on a static index, replays that copy the index in), each "replay" running
the captured step again on the static index and checking what a real replay needs, that every state tensor
is still where the capture found it. The records must equal the eager loop's exactly.
"""
from __future__ import annotations

import json

import pytest
import torch

from biasbench.config import TrainConfig
from biasbench.errors import BiasbenchError
from biasbench.train import graphs
from biasbench.train.fused import train_fused
from biasbench.train.graphs import (GraphedStep, _capturable, check_in_place, graph_blocker, keep_in_place,
                                    state_addresses)
from biasbench.train.loop import Trainer, check_cuda_graphs


class _Recorded:
    """A "graph" that runs the recorded step again on the static index when replayed."""

    def __init__(self, run):
        self.replay = run


class EmulatedGraph(GraphedStep):
    """GraphedStep with the CUDA calls replaced by eager ones (recording runs nothing, a replay runs the step
    on the static index), and the replay contract checked on every replay."""

    instances: list["EmulatedGraph"] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.replays = 0
        EmulatedGraph.instances.append(self)

    def _warm(self, idx):
        return self.step(idx)

    def _record(self, static_idx):
        self.addresses = state_addresses(*self.state())
        return _Recorded(lambda: setattr(self, "out", self.step(static_idx)))

    def _replay(self, idx):
        out = super()._replay(idx)
        check_in_place(self.addresses, state_addresses(*self.state()))
        self.replays += 1
        return out


@pytest.fixture
def emulated(monkeypatch):
    """Trainers built with ``cuda_graphs`` forced on (the CPU checks bypassed) run EmulatedGraph steps."""
    monkeypatch.setattr(graphs, "GraphedStep", EmulatedGraph)
    monkeypatch.setattr(graphs, "graph_blocker", lambda optimizers: None)  # the CPU's Adam is not the fused one
    monkeypatch.setattr("biasbench.train.loop.check_cuda_graphs", lambda value, device, mode=False: bool(value))
    EmulatedGraph.instances = []
    return EmulatedGraph.instances  # every step runner built, graphed or not (``enabled``)


def _history(run_dir):
    return [h.get("metrics") or h["loss"] for h in json.loads(open(f"{run_dir}/metrics.json").read())["history"]]


@pytest.mark.parametrize("method", ["lff", "group_dro", "lnl"])
def test_captured_steps_give_the_eager_records(method, tiny_root, tmp_path, emulated):
    """LfF (per-sample EMAs), GDRO (q) and LNL (two phases, two optimizers): the state they rebind each step
    is kept in place, the loop captures once and replays every later full batch (the short last batch of
    2,000 / 256 runs eagerly), and the records equal the eager run's."""
    cfg = TrainConfig(data=str(tiny_root), method=method, epochs=2, batch_size=256, seed=0, eval_epochs=(2,),
                      explicit=("texture",) if method in ("group_dro", "lnl") else ())
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False).run()
    assert not any(g.enabled for g in emulated)
    graphed = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True).run()
    runners = [g for g in emulated if g.enabled]
    assert len(runners) == 1 and runners[0].captured
    steps_full = 2 * (2000 // 256)
    assert runners[0].replays == steps_full - graphs.GRAPH_WARMUP - 1
    assert _history(eager["run_dir"]) == _history(graphed["run_dir"])


def test_captured_fused_steps_give_the_fused_records(tiny_root, tmp_path, emulated):
    cfgs = [TrainConfig(data=str(tiny_root), method="lff", epochs=1, batch_size=256, seed=s, eval_epochs=(1,))
            for s in (0, 1)]
    eager = train_fused(cfgs, tmp_path / "eager", tracker="none", progress=False)
    graphed = train_fused(cfgs, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True)
    runners = [g for g in emulated if g.enabled]
    assert len(runners) == 1 and runners[0].replays == 2000 // 256 - graphs.GRAPH_WARMUP - 1
    for a, b in zip(eager, graphed):
        assert _history(a["run_dir"]) == _history(b["run_dir"])


def test_a_step_that_moves_its_state_is_not_replayed(tiny_root, tmp_path, emulated, monkeypatch):
    """Without keep_in_place, LfF's EMAs would be new tensors after every step, which replays would not see:
    the graph runs its one step, is dropped with a log line, and the run ends eagerly with the eager records."""
    cfg = TrainConfig(data=str(tiny_root), method="lff", epochs=1, batch_size=256, eval_epochs=(1,))
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False).run()
    monkeypatch.setattr(graphs, "keep_in_place", lambda holder, names, step: step())
    logs = []
    res = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True, log=logs.append).run()
    runner = [g for g in emulated if g.enabled or g.failure][-1]
    assert runner.replays == 0 and "moved its state" in runner.failure and "ema_biased" in runner.failure
    assert any(line.startswith("CUDA graphs off for the rest of this run") for line in logs)
    assert _history(eager["run_dir"]) == _history(res["run_dir"])


def test_a_failed_capture_runs_the_step_eagerly(tiny_root, tmp_path, emulated, monkeypatch):
    """A capture that raises (on a GPU: an operation a graph cannot hold) runs nothing; that step then runs
    eagerly and so does the rest of the run: the eager records, and one log line."""
    cfg = TrainConfig(data=str(tiny_root), method="group_dro", epochs=1, batch_size=256, eval_epochs=(1,),
                      explicit=("texture",))
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False).run()

    def failing_record(self, static_idx):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(EmulatedGraph, "_record", failing_record)
    logs = []
    res = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True, log=logs.append).run()
    assert any("capture failed (RuntimeError: operation not permitted" in line for line in logs)
    assert _history(eager["run_dir"]) == _history(res["run_dir"])


def test_keep_in_place_on_objects_and_dicts():
    class Holder:
        pass

    h = Holder()
    h.a = torch.zeros(3)
    old = h.a

    def step():
        h.a = h.a + 1
        return {"x": h.a.sum()}

    keep_in_place(h, ["a"], step)
    assert h.a is old and h.a.tolist() == [1.0, 1.0, 1.0]
    d = {"q": torch.ones(2), "g": torch.arange(2)}
    q, g = d["q"], d["g"]
    keep_in_place(d, list(d), lambda: d.update(q=d["q"] * 3))
    assert d["q"] is q and d["g"] is g and d["q"].tolist() == [3.0, 3.0]

    def rebinds_then_fails():
        h.a = h.a * 0 - 5
        raise RuntimeError("capture failed")

    with pytest.raises(RuntimeError):  # a failed capture: the old tensor is bound again, its values untouched
        keep_in_place(h, ["a"], rebinds_then_fails)
    assert h.a is old and h.a.tolist() == [1.0, 1.0, 1.0]


def test_warm_up_and_capture_stay_on_a_threads_own_stream(monkeypatch):
    """On the default stream a step warms up and captures on one side stream of its own (taken once); on a
    thread's own stream (``sweep --streams``) it takes none from torch's pool, which hands out a few
    streams in turn and could give it another thread's, and captures on the thread's stream."""
    from contextlib import contextmanager

    class FakeStream:
        device = "cuda:0"

        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            pass

    default, own, current, taken, captures = FakeStream("default"), FakeStream("own"), [], [], []
    current.append(default)

    @contextmanager
    def on(stream):
        current.append(stream)
        yield
        current.pop()

    @contextmanager
    def fake_graph(graph, stream=None, capture_error_mode="global"):
        captures.append((stream.name, capture_error_mode))
        with on(stream):
            yield

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: default)
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: taken.append(FakeStream(f"side{len(taken)}")) or taken[-1])
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    ran_on = []

    def step(idx):
        ran_on.append(current[-1].name)
        return {}

    g = GraphedStep(step, [], True)
    g._warm(None)
    g._warm(None)
    g._record(None)
    assert ran_on == ["side0"] * 3 and [s.name for s in taken] == ["side0"] and captures == [("side0", "thread_local")]
    ran_on.clear()
    with on(own):
        t = GraphedStep(step, [], True)
        t._warm(None)
        t._record(None)
    assert ran_on == ["own", "own"] and len(taken) == 1 and captures[-1] == ("own", "thread_local")


def test_which_optimizers_can_be_captured():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert graph_blocker({"o": torch.optim.Adam(p, fused=True)}) is None
    assert graph_blocker({"o": torch.optim.AdamW(p, fused=True)}) is None
    assert graph_blocker({"o": torch.optim.SGD(p, lr=0.1, momentum=0.9)}) is None
    assert "not the fused Adam" in graph_blocker({"o": torch.optim.Adam(p)})
    from timm.optim import MADGRAD

    assert "MADGRAD" in graph_blocker({"a": torch.optim.Adam(p, fused=True), "b": MADGRAD(p)})
    opt = torch.optim.Adam(p, fused=True)
    with _capturable([opt]):
        assert opt.param_groups[0]["capturable"] is True
    assert opt.param_groups[0]["capturable"] is False  # checkpoints keep the run's own flag


def test_state_addresses_cover_modules_optimizers_and_tensors():
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(m.parameters())
    m(torch.ones(1, 2)).sum().backward()
    opt.step()
    addr = state_addresses(m, {"opt": opt}, {"q": torch.zeros(1)})
    assert {"0.weight", "0.bias", "1.opt.state0.exp_avg", "1.opt.state1.exp_avg_sq", "2.q"} <= set(addr)
    before = dict(addr)
    opt.state[m.weight]["exp_avg"] = opt.state[m.weight]["exp_avg"].clone()
    with pytest.raises(RuntimeError, match="1.opt.state0.exp_avg"):
        check_in_place(before, state_addresses(m, {"opt": opt}, {"q": torch.zeros(1)}))


def test_cuda_graph_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert check_cuda_graphs("auto", cpu) is False
    assert check_cuda_graphs("off", cuda) is False
    assert check_cuda_graphs("auto", cuda) is True
    assert check_cuda_graphs("auto", cuda, "reduce-overhead") is False  # that mode makes its own graphs
    assert check_cuda_graphs("on", cuda, "default") is True
    with pytest.raises(BiasbenchError, match="need a CUDA device"):
        check_cuda_graphs("on", cpu)
    with pytest.raises(BiasbenchError, match="makes its own CUDA graphs"):
        check_cuda_graphs(True, cuda, "reduce-overhead")
    with pytest.raises(BiasbenchError, match="unknown --cuda-graphs"):
        check_cuda_graphs("sometimes", cuda)


def test_cli_refuses_cuda_graphs_without_a_gpu(tiny_root, tmp_path, capsys):
    from biasbench.cli import main

    rc = main(["train", "--data", str(tiny_root), "--out", str(tmp_path / "r"), "--device", "cpu",
               "--cuda-graphs", "on", "--tracker", "none", "--epochs", "1"])
    assert rc == 2 and "need a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_compiled_modules_inside_a_captured_step(tiny_root, tmp_path, emulated):
    """``--compile`` (default mode) with CUDA graphs: the compiled model runs inside the captured step, and the
    records equal the compiled eager run's."""
    cfg = TrainConfig(data=str(tiny_root), method="group_dro", epochs=1, batch_size=256, eval_epochs=(1,),
                      explicit=("texture",))
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False, compile_model="default").run()
    graphed = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, compile_model="default",
                      cuda_graphs=True).run()
    assert [g.replays for g in emulated if g.enabled] == [2000 // 256 - graphs.GRAPH_WARMUP - 1]
    assert _history(eager["run_dir"]) == _history(graphed["run_dir"])
