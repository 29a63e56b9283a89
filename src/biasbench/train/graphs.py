"""CUDA graphs for training steps: one replay instead of hundreds of kernel launches per step.

At the paper's batch of 128 a step of the paper CNN is short on an H100, and eager PyTorch spends a
good part of it launching kernels from Python (autocast casts, the forward, the backward, the optimizer);
a method with two networks or two phases (LfF, LNL) launches twice as many. A CUDA graph records every
kernel of one step once and replays them with one call. Measured on an H100 (``docs/benchmarks.md``): a
full StdM epoch 44k -> 49k images/s, short runs of each method 1.2x to 1.8x; captured, every
single-network method trains at about 49k images/s, which is then the GPU's own time for the kernels.

Contract of a step that can be captured (:class:`GraphedStep`): ``step(idx) -> dict of tensors`` reads
its batch by gathering with the index tensor ``idx`` from tensors that stay where they are (the resident
training split), changes state only in place (parameters, optimizer state, batch-norm buffers, and the
method's per-run tensors through :func:`keep_in_place`), never synchronises with the host, and has no
Python branch that depends on the step number. The methods' functional updates
(:mod:`biasbench.methods.base`) and the fused updates (:mod:`biasbench.train.fused`) are such steps.

What capture changes: nothing in the numbers but floating-point details of the kernels chosen; the
batch order, the state after every step and the records are those of the eager loop. Limits: the
optimizers must be capturable (:func:`graph_blocker`: fused Adam/AdamW on CUDA, SGD), the learning rate
is fixed (it is recorded into the graph), and a batch of another shape (the last, short batch of an
epoch) runs eagerly.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Mapping

import torch

GRAPH_WARMUP = 3
"""Eager steps before the capture (on a side stream, as PyTorch asks): they create the optimizer state and
let cuDNN pick its algorithms, and are ordinary training steps."""


class CaptureGate:
    """A process-wide gate between graph captures and the other GPU work of the threads of ``sweep --streams``.

    While one thread captures, CUDA refuses work that would have to wait on the capturing stream: a
    device-wide ``torch.cuda.synchronize()`` in another thread fails with "operation not permitted when
    stream is capturing" (seen on an H100 with 4 threads: ``torch.cuda.graph`` itself synchronises the device
    before it begins), and cuDNN's algorithm search, which a thread's first step of a new shape runs,
    synchronises too. Replays are safe. So a capture runs :meth:`exclusive`: it waits until no thread is
    inside a :meth:`shared` section and keeps new ones out until it ends; the eager GPU work that may
    synchronise or search (warm-up and eager steps, evaluation, loading a split, building a model) runs
    :meth:`shared`, any number of threads at once. A waiting capture goes before new shared sections, so a
    stream of evaluations cannot starve it. Shared sections nest within a thread; a thread inside one may
    not capture (it would wait for itself: :class:`RuntimeError`). Uncontended, a section costs one lock
    acquisition; one thread alone never waits."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0  # threads inside a shared section
        self._exclusive = False
        self._waiting = 0  # captures waiting to begin
        self._depth = threading.local()

    @contextmanager
    def shared(self):
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._cond:
                while self._exclusive or self._waiting:
                    self._cond.wait()
                self._shared += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._cond:
                    self._shared -= 1
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        if getattr(self._depth, "n", 0):
            raise RuntimeError("a graph capture inside a CaptureGate.shared section would wait for itself")
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


CAPTURE_GATE = CaptureGate()
"""The one gate of this process (see :class:`CaptureGate`)."""


def graph_blocker(optimizers: Mapping[str, torch.optim.Optimizer]) -> str | None:
    """None when steps with these optimizers can be captured, else the reason they cannot (one line)."""
    for name, opt in optimizers.items():
        if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            if not all(g.get("fused") for g in opt.param_groups):
                return f"optimizer {name} is not the fused {type(opt).__name__}"
            if any(isinstance(g["lr"], torch.Tensor) for g in opt.param_groups):
                return f"optimizer {name} has a tensor learning rate"
        elif type(opt) is not torch.optim.SGD:
            return f"optimizer {name} ({type(opt).__name__}) keeps its step count on the host"
    return None


@contextmanager
def _capturable(optimizers: Iterable[torch.optim.Optimizer]):
    """Mark Adam/AdamW groups capturable for the capture only. The fused kernels keep their step count on the
    device either way (``capturable`` only silences the optimizer's capture check), so checkpoints keep the
    flag the run was built with and load on the CPU too."""
    saved = []
    for opt in optimizers:
        for g in opt.param_groups:
            if "capturable" in g:
                saved.append((g, g["capturable"]))
                g["capturable"] = True
    try:
        yield
    finally:
        for g, v in saved:
            g["capturable"] = v


def keep_in_place(holder, names: Iterable[str], step: Callable[[], dict]) -> dict:
    """Run ``step()``, which may rebind ``getattr(holder, name)`` (or ``holder[name]`` for a dict) to new
    tensors, then copy the new values into the old tensors and rebind those: the state lives at fixed
    addresses, which a replayed graph needs (it reads its inputs where capture found them)."""
    get = holder.__getitem__ if isinstance(holder, dict) else (lambda k: getattr(holder, k))
    put = holder.__setitem__ if isinstance(holder, dict) else (lambda k, v: setattr(holder, k, v))
    before = {k: get(k) for k in names}
    try:
        out = step()
    except BaseException:  # a failed capture: the old tensors, never written, are the state
        for k, old in before.items():
            put(k, old)
        raise
    for k, old in before.items():
        new = get(k)
        if new is not old:
            old.copy_(new)
            put(k, old)
    return out


def state_addresses(*things) -> dict[str, int]:
    """``name -> data pointer`` of every tensor in ``things`` (modules' parameters and buffers, optimizers'
    state, tensors, and dicts or lists of these): what a replayed graph reads and writes must stay put."""
    out: dict[str, int] = {}

    def walk(prefix: str, x) -> None:
        if isinstance(x, torch.Tensor):
            out[prefix] = x.data_ptr()
        elif isinstance(x, torch.nn.Module):
            for k, t in [*x.named_parameters(), *x.named_buffers()]:
                out[f"{prefix}.{k}"] = t.data_ptr()
        elif isinstance(x, torch.optim.Optimizer):
            for i, p in enumerate(x.param_groups[0]["params"] if len(x.param_groups) == 1 else []):
                for k, v in x.state.get(p, {}).items():
                    walk(f"{prefix}.state{i}.{k}", v)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(f"{prefix}.{i}", v)

    for i, x in enumerate(things):
        walk(str(i), x)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def check_in_place(before: dict[str, int], after: dict[str, int]) -> None:
    """Raise if a state tensor appeared, vanished or moved between two :func:`state_addresses`."""
    moved = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if moved:
        raise RuntimeError(f"a captured training step moved its state ({', '.join(moved[:5])}): a replay would "
                           f"not see the new tensors; keep them in place (keep_in_place) or use --cuda-graphs off")


def step_runner(update: Callable[[torch.Tensor], dict], holder, names: Iterable[str],
                optimizers: Mapping[str, torch.optim.Optimizer], state: Callable[[], tuple], enabled: bool,
                log: Callable[[str], None], what: str = "this run", blocked: str | None = None) -> "GraphedStep":
    """A :class:`GraphedStep` for ``update(idx)``, the way the training loops use one: captured when
    ``enabled`` and neither ``blocked`` (a reason the caller knows) nor :func:`graph_blocker` objects (then
    ``log`` says so, naming ``what``); when captured, the state ``update`` rebinds (``names`` of ``holder``)
    is kept in place."""
    if enabled:
        reason = blocked or graph_blocker(optimizers)
        if reason:
            log(f"CUDA graphs off for {what}: {reason}")
            enabled = False

    def step(idx: torch.Tensor) -> dict:
        return keep_in_place(holder, names, lambda: update(idx)) if enabled else update(idx)

    return GraphedStep(step, optimizers.values(), enabled, state=state, log=log)


class GraphedStep:
    """Call ``step(idx)`` through a CUDA graph where it can be.

    With ``enabled`` (CUDA only), the first :data:`GRAPH_WARMUP` calls with a full-size index run eagerly on
    a side stream, the next one is captured into a graph and replayed, and every later call with an index of
    that shape copies it into the graph's static index and replays; a call with another shape runs eagerly.
    The returned dict holds the graph's output tensors, overwritten by the next replay: read (or add up)
    before the next call. Without ``enabled`` every call is ``step(idx)``.

    ``state()`` returns the tensors the step reads and changes (see :func:`state_addresses`). A graph is
    never worth a wrong run: if the capture fails, the step runs eagerly, and if the captured step moved a
    state tensor (replays would not follow it), the graph runs once for this step and is dropped; either way
    ``log`` gets one line and the run goes on eagerly (``failure`` holds the reason).
    """

    def __init__(self, step: Callable[[torch.Tensor], dict], optimizers: Iterable[torch.optim.Optimizer],
                 enabled: bool, state: Callable[[], tuple] = tuple, warmup: int = GRAPH_WARMUP,
                 log: Callable[[str], None] | None = None):
        self.step = step
        self.state = state
        self.log = log or (lambda s: None)
        self.failure: str | None = None
        self.optimizers = list(optimizers)
        self.enabled = enabled
        self.warmup = warmup
        self.shape: torch.Size | None = None
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: torch.Tensor | None = None
        self.out: dict | None = None
        self._side: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, idx: torch.Tensor) -> dict:
        if self.graph is not None and idx.shape == self.shape:
            return self._replay(idx)
        if self.enabled and self.shape is None:
            self.shape = idx.shape
        if self.enabled and idx.shape == self.shape and self.calls >= self.warmup:
            return self._capture(idx)
        with CAPTURE_GATE.shared():  # eager: may search cuDNN algorithms, which another thread's capture forbids
            if self.enabled and idx.shape == self.shape:
                self.calls += 1
                return self._warm(idx)
            return self.step(idx)

    def _stream(self) -> torch.cuda.Stream:
        """Where warm-up and capture run: the current stream when it is not the default one (a thread of
        ``sweep --streams`` trains on a stream of its own, and a stream taken from torch's pool here could be
        another thread's: its kernels would land in this capture), else one side stream of this step's own."""
        cur = torch.cuda.current_stream()
        if cur != torch.cuda.default_stream(cur.device):
            return cur
        if self._side is None:
            self._side = torch.cuda.Stream()
        return self._side

    def _warm(self, idx: torch.Tensor) -> dict:
        cur, side = torch.cuda.current_stream(), self._stream()
        if side == cur:
            return self.step(idx)
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            out = self.step(idx)
        cur.wait_stream(side)
        return out

    def _record(self, static_idx: torch.Tensor):
        """Capture one step on ``static_idx`` (its kernels are recorded, not run); returns the graph."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: runs trained in other threads (``sweep --streams``) keep launching on their own streams
        # while this one captures; only this thread's calls are checked for capture safety
        with _capturable(self.optimizers), \
                torch.cuda.graph(graph, stream=self._stream(), capture_error_mode="thread_local"):
            self.out = self.step(static_idx)
        return graph

    def _capture(self, idx: torch.Tensor) -> dict:
        self.static_idx = idx.clone()
        before = state_addresses(*self.state())
        with CAPTURE_GATE.exclusive():  # no other thread synchronises the device while this one captures
            try:
                graph = self._record(self.static_idx)
            except Exception as exc:  # nothing ran: the step's kernels were only being recorded
                self._give_up(f"capture failed ({_first_line(exc)})")
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                graph = None
        if graph is None:
            with CAPTURE_GATE.shared():
                return self.step(idx)
        graph.replay()  # this step's update
        try:
            check_in_place(before, state_addresses(*self.state()))
        except RuntimeError as exc:  # this step ran (the replay); later ones must not replay it
            self._give_up(_first_line(exc))
            return self.out
        self.graph = graph
        return self.out

    def _replay(self, idx: torch.Tensor) -> dict:
        self.static_idx.copy_(idx)
        self.graph.replay()
        return self.out

    def _give_up(self, reason: str) -> None:
        self.enabled = False
        self.failure = reason
        self.log(f"CUDA graphs off for the rest of this run: {reason}")
