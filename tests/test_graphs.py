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


@pytest.mark.parametrize("method", ["lff", "group_dro", "lnl", "vrex", "dfr", "lisa", "fish"])
def test_captured_steps_give_the_eager_records(method, mini_root, tmp_path, emulated):
    """LfF (per-sample EMAs), GDRO (q) and LNL (two phases, two optimizers): the state they rebind each step
    is kept in place, the loop captures once and replays every later full batch (the short last batch of
    1,000 / 128 runs eagerly), and the records equal the eager run's. DFR refits its last layer between the
    epochs (an evaluation at epoch 1) and the captured step goes on. Fish's own update (inner steps on a copy,
    then the meta step) works in place too."""
    cfg = TrainConfig(data=str(mini_root), method=method, epochs=2, batch_size=128, seed=0,
                      eval_epochs=(1, 2) if method == "dfr" else (2,),
                      explicit=("texture",) if method in ("group_dro", "lnl", "vrex", "dfr", "lisa", "fish") else ())
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False).run()
    assert not any(g.enabled for g in emulated)
    graphed = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True).run()
    runners = [g for g in emulated if g.enabled]
    assert len(runners) == 1 and runners[0].captured
    steps_full = 2 * (1000 // 128 + (method == "fish"))  # Fish (IRMv1's sampler): floor(N / B) + 1 full batches
    assert runners[0].replays == steps_full - graphs.GRAPH_WARMUP - 1
    assert _history(eager["run_dir"]) == _history(graphed["run_dir"])


def test_a_method_that_changes_its_optimizer_between_epochs_is_captured_again(mini_root, tmp_path, emulated):
    """JTT's switch to stage 2 replaces its optimizer: the step captured in stage 1 (stage 1's Adam) is dropped
    and stage 2's is captured afresh, and the records equal the eager run's."""
    cfg = TrainConfig(data=str(mini_root), method="jtt", epochs=2, batch_size=128, seed=0, eval_epochs=(2,),
                      method_hparams={"stage1_epochs": 1, "sampler": "draw"})
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False).run()
    graphed = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True).run()
    runners = [g for g in emulated if g.enabled]
    assert len(runners) == 2 and all(r.captured for r in runners)
    assert _history(eager["run_dir"]) == _history(graphed["run_dir"])


def test_captured_fused_steps_give_the_fused_records(mini_root, tmp_path, emulated):
    cfgs = [TrainConfig(data=str(mini_root), method="lff", epochs=1, batch_size=128, seed=s, eval_epochs=(1,))
            for s in (0, 1)]
    eager = train_fused(cfgs, tmp_path / "eager", tracker="none", progress=False)
    graphed = train_fused(cfgs, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True)
    runners = [g for g in emulated if g.enabled]
    assert len(runners) == 1 and runners[0].replays == 1000 // 128 - graphs.GRAPH_WARMUP - 1
    for a, b in zip(eager, graphed):
        assert _history(a["run_dir"]) == _history(b["run_dir"])


def test_a_step_that_moves_its_state_is_not_replayed(mini_root, tmp_path, emulated, monkeypatch):
    """Without keep_in_place, LfF's EMAs would be new tensors after every step, which replays would not see:
    the graph runs its one step, is dropped with a log line, and the run ends eagerly with the eager records."""
    cfg = TrainConfig(data=str(mini_root), method="lff", epochs=1, batch_size=128, eval_epochs=(1,))
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False).run()
    monkeypatch.setattr(graphs, "keep_in_place", lambda holder, names, step: step())
    logs = []
    res = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, cuda_graphs=True, log=logs.append).run()
    runner = [g for g in emulated if g.enabled or g.failure][-1]
    assert runner.replays == 0 and "moved its state" in runner.failure and "ema_biased" in runner.failure
    assert any(line.startswith("CUDA graphs off for the rest of this run") for line in logs)
    assert _history(eager["run_dir"]) == _history(res["run_dir"])


def test_a_failed_capture_runs_the_step_eagerly(mini_root, tmp_path, emulated, monkeypatch):
    """A capture that raises (on a GPU: an operation a graph cannot hold) runs nothing; that step then runs
    eagerly and so does the rest of the run: the eager records, and one log line."""
    cfg = TrainConfig(data=str(mini_root), method="group_dro", epochs=1, batch_size=128, eval_epochs=(1,),
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


class FakeStream:
    device = "cuda:0"

    def __init__(self, name):
        self.name = name

    def wait_stream(self, other):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's stream and graph calls replaced by fakes that record what happens: ``current`` is this
    thread's stack of current streams, ``taken`` the streams made, ``captures`` (stream, mode) per capture,
    ``on(stream)`` the fake ``torch.cuda.stream``. ``hooks['capture']`` runs inside every capture."""
    from contextlib import contextmanager
    from types import SimpleNamespace
    import threading

    default = FakeStream("default")
    local = threading.local()
    fake = SimpleNamespace(default=default, taken=[], captures=[], hooks={"capture": lambda: None})
    fake.current = lambda: getattr(local, "stack", None) or local.__dict__.setdefault("stack", [default])

    @contextmanager
    def on(stream):
        fake.current().append(stream)
        yield
        fake.current().pop()

    @contextmanager
    def fake_graph(graph, stream=None, capture_error_mode="global"):
        fake.captures.append((stream.name, capture_error_mode))
        with on(stream):
            fake.hooks["capture"]()
            yield

    fake.on = on
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: fake.current()[-1])
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: default)
    monkeypatch.setattr(torch.cuda, "Stream",
                        lambda *a, **k: fake.taken.append(FakeStream(f"side{len(fake.taken)}")) or fake.taken[-1])
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: SimpleNamespace(replay=lambda: None))
    return fake


def test_warm_up_and_capture_stay_on_a_threads_own_stream(fake_cuda):
    """On the default stream a step warms up and captures on one side stream of its own (taken once); on a
    thread's own stream (``sweep --streams``) it takes none from torch's pool, which hands out a few
    streams in turn and could give it another thread's, and captures on the thread's stream."""
    ran_on = []

    def step(idx):
        ran_on.append(fake_cuda.current()[-1].name)
        return {}

    g = GraphedStep(step, [], True)
    g._warm(None)
    g._warm(None)
    g._record(None)
    assert ran_on == ["side0"] * 3 and [s.name for s in fake_cuda.taken] == ["side0"]
    assert fake_cuda.captures == [("side0", "thread_local")]
    ran_on.clear()
    with fake_cuda.on(FakeStream("own")):
        t = GraphedStep(step, [], True)
        t._warm(None)
        t._record(None)
    assert ran_on == ["own", "own"] and len(fake_cuda.taken) == 1 and fake_cuda.captures[-1] == ("own", "thread_local")


def test_threads_never_synchronise_while_another_captures(fake_cuda, monkeypatch):
    """What failed on an H100 with ``sweep --streams 4``: CUDA refuses a device-wide synchronisation while any
    stream captures, and ``torch.cuda.graph`` synchronises the device as it begins, as does cuDNN's algorithm
    search in an eager step. Here both are a fake ``synchronize`` that fails during another thread's capture,
    and four threads warm up and capture at once (each capture takes 30 ms); through the process's
    CaptureGate none of them fails and every step is captured."""
    import threading
    import time

    capturing, errors = [], []

    def synchronize():
        if capturing:
            raise RuntimeError("operation not permitted when stream is capturing")

    def capture():
        synchronize()  # torch.cuda.graph's __enter__
        capturing.append(1)
        time.sleep(0.03)
        capturing.pop()

    fake_cuda.hooks["capture"] = capture
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)

    def step(idx):
        synchronize()  # an eager step's cuDNN search
        time.sleep(0.002)
        return {}

    start = threading.Barrier(4)
    steps = []

    def train(i):
        try:
            with fake_cuda.on(FakeStream(f"own{i}")):
                g = GraphedStep(step, [], True, log=errors.append)
                steps.append(g)
                start.wait()
                for _ in range(8):
                    g(torch.zeros(4, dtype=torch.long))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=train, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(steps) == 4 and all(g.captured for g in steps)


def test_capture_gate_lets_a_capture_run_alone():
    """Shared sections run together; a capture waits for them and keeps new ones out (also while it waits);
    shared sections nest within a thread; a thread inside one cannot capture."""
    import threading

    gate = graphs.CaptureGate()
    log, inside = [], threading.Event()
    release = threading.Event()

    def reader(name, hold):
        with gate.shared():
            log.append(f"{name} in")
            inside.set()
            if hold:
                release.wait(5)
            log.append(f"{name} out")

    def capture():
        with gate.exclusive():
            log.append("capture")

    r1 = threading.Thread(target=reader, args=("r1", True))
    r1.start()
    inside.wait(5)
    cap = threading.Thread(target=capture)
    cap.start()
    while not gate._waiting:  # the capture is waiting for r1
        pass
    r2 = threading.Thread(target=reader, args=("r2", False))
    r2.start()
    r2.join(0.1)
    assert r2.is_alive() and log == ["r1 in"]  # r2 waits behind the waiting capture
    release.set()
    for th in (r1, cap, r2):
        th.join(5)
    assert log == ["r1 in", "r1 out", "capture", "r2 in", "r2 out"]
    with gate.shared():
        with gate.shared():
            pass
        with pytest.raises(RuntimeError, match="wait for itself"):
            with gate.exclusive():
                pass
    with gate.exclusive():  # the nested sections left nothing behind
        pass


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


def test_compiled_modules_inside_a_captured_step(mini_root, tmp_path, emulated):
    """``--compile`` (default mode) with CUDA graphs: the compiled model runs inside the captured step, and the
    records equal the compiled eager run's."""
    cfg = TrainConfig(data=str(mini_root), method="group_dro", epochs=1, batch_size=128, eval_epochs=(1,),
                      explicit=("texture",))
    eager = Trainer(cfg, tmp_path / "eager", tracker="none", progress=False, compile_model="default").run()
    graphed = Trainer(cfg, tmp_path / "graph", tracker="none", progress=False, compile_model="default",
                      cuda_graphs=True).run()
    assert [g.replays for g in emulated if g.enabled] == [1000 // 128 - graphs.GRAPH_WARMUP - 1]
    assert _history(eager["run_dir"]) == _history(graphed["run_dir"])
