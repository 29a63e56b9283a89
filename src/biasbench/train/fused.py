"""Fused training: R runs of one configuration (seeds and explicit bias sets may differ) as one network.

Why: a paper-size run keeps an H100 busy only partly (small convolutions at batch 128), and a Table-1
protocol is 38 such runs. Fusing R runs turns R small networks into one wide one: every convolution
becomes one grouped convolution, every linear layer one batched matmul, and the optimizer updates R
models' parameters in one call.

How, exactly: each run is built as a separate run would be (same seed, same initialisation, same method
state), then its modules' parameters and buffers are stacked along a new leading axis of size R. The
method's loss functions (see :mod:`biasbench.methods.base`) run under ``torch.func.vmap`` over that
axis, each run seeing its own parameters, its own batch (its own sample order) and its own per-run
tensors (bias groups, GDRO's q, LfF's EMAs). The sum of the R losses is backpropagated; since the runs
share no parameter, each run's parameters get exactly its own gradient. The optimizers (Adam, AdamW,
SGD, MADGRAD) are elementwise, so one optimizer over the stacked tensors is R optimizers. A fused run
of R models is therefore R separate runs up to floating-point summation order; ``tests/test_fused.py``
checks this on the CPU for every method.

Records are per run and identical in format to a separate run's: after every epoch the stacked state is
copied back into each run's own method object and checkpointed to its own folder, so a fused run can be
resumed fused or alone, and the report cannot tell the difference.

Limits: no progressive learning (image sizes change per stage), no dropout or drop-path (random masks),
no method that overrides ``predict``; runs fuse only when everything but ``seed`` and ``explicit`` is
equal (:func:`fuse_key`) and their modules have the same shapes (RUBi and LNL size a module by the number of bias groups; a factor with 9
values fuses apart from those with 10). Channels-last lays the 5-D input out so that the grouped
convolutions see channels-last tensors (see :func:`fused_layout`). Batch norm runs as
:func:`portable_batch_norm` in fused steps: CUDA's kernel cannot run channels-last under vmap. On CUDA a
first forward and backward checks the layout and falls back to the default one if a layer still fails.
"""
from __future__ import annotations

import copy
import os
import time
from collections import defaultdict
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from ..config import TrainConfig
from ..data.recipe import SPLITS
from ..errors import BiasbenchError
from ..methods.base import Batch, Method
from .graphs import CAPTURE_GATE
from .loop import (SplitData, Trainer, compile_modules, compile_options, eval_batches, load_splits, prep_images,
                   reset_compiler)
from .runlock import hold_runs

FUSE_VARYING = ("seed", "explicit")
"""Configuration fields that may differ between the runs of one fused group."""


def fuse_key(cfg: TrainConfig) -> str:
    """Runs with equal keys may be fused (everything but :data:`FUSE_VARYING` equal)."""
    from ..utils import stable_hash

    d = cfg.to_dict()
    for k in FUSE_VARYING:
        d.pop(k)
    return stable_hash(d, 16)


def fusable(cfg: TrainConfig) -> str | None:
    """None when ``cfg`` can be trained fused, else the reason it cannot."""
    if cfg.progressive:
        return "progressive learning changes the image size per stage"
    drops = cfg.random_masks()
    if drops:  # random masks under vmap would not be the random masks of separate runs
        return f"random regularisation ({', '.join(sorted(drops))}) is not fused"
    if cfg.model_kwargs.get("fold_input_bn"):  # it updates the batch norm's running statistics itself
        return "fold_input_bn is not fused"
    if cfg.model_kwargs.get("pool_kernel", "auto") not in ("auto", "torch"):  # autograd.Functions, no vmap rule
        return f"pool_kernel={cfg.model_kwargs['pool_kernel']} is not fused"
    from ..methods import get_method_class

    if get_method_class(cfg.method).update is not Method.update:  # not loss functions: nothing to vmap
        return f"method {cfg.method} has its own update"
    if get_method_class(cfg.method).predict is not Method.predict:
        return f"method {cfg.method} has its own predict"
    if get_method_class(cfg.method).begin_epoch is not Method.begin_epoch:
        return f"method {cfg.method} changes its networks between epochs"
    if get_method_class(cfg.method).before_evaluation is not Method.before_evaluation:
        return f"method {cfg.method} changes its prediction before evaluations"
    return None


def portable_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                        weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                        momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm`` from reductions and elementwise operations, in float32 at least (bf16 inputs are
    normalised in float32, as the fused kernel does):

        training: mean, var = batch statistics over all dims but 1 (var biased);
                  running <- (1 - momentum) * running + momentum * (mean, var * n / (n - 1))
        y = (x - mean) / sqrt(var + eps) * weight + bias

    The same numbers as the fused kernel, but it never asks its input for its memory layout, which CUDA's
    ``batch_norm`` does and vmap cannot answer for channels-last tensors (torch 2.11: "NYI: querying
    is_contiguous inside of vmap for memory_format other than torch.contiguous_format"). Elementwise
    operations keep the input's layout, so a channels-last network stays channels-last."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    ct = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(ct)
    if training:
        var, mean = torch.var_mean(xf, dims, correction=0)
        if running_mean is not None and running_var is not None:
            n = xf.numel() // xf.shape[1]
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_((var.detach() * (n / max(n - 1, 1))).to(running_var.dtype),
                                                    alpha=momentum)
    else:
        mean, var = running_mean.to(ct), running_var.to(ct)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.to(ct).view(shape)
    if bias is not None:
        y = y + bias.to(ct).view(shape)
    return y.to(x.dtype)


class PortableBatchNorm(TorchFunctionMode):
    """Inside this mode every ``F.batch_norm`` call (``nn.BatchNorm*d``, timm's ``BatchNormAct2d``) runs as
    :func:`portable_batch_norm`; the modules' own logic (momentum, ``num_batches_tracked``) is unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return portable_batch_norm(*args, **kwargs)
        return func(*args, **kwargs)


class _Features(nn.Module):
    """Calls ``forward_features`` of the wrapped module (functional_call only calls ``forward``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.m = module

    def forward(self, x, names):
        return self.m.forward_features(x, names)


class FunctionalNet:
    """One run's stand-in for a module inside ``vmap``: the module's code with this run's tensors."""

    def __init__(self, base: nn.Module, features: nn.Module, params: dict, buffers: dict):
        self.base, self.features, self.params, self.buffers = base, features, params, buffers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (self.params, self.buffers), (x,))

    def forward_features(self, x: torch.Tensor, names=("pooled2", "pooled4")):
        prefixed = {f"m.{k}": v for k, v in {**self.params, **self.buffers}.items()}
        return functional_call(self.features, prefixed, (x, names))


def _shape_signature(method: Method) -> tuple:
    mods = tuple((n, pn, tuple(p.shape)) for n, m in method.modules().items()
                 for pn, p in [*m.named_parameters(), *m.named_buffers()])
    tens = tuple((n, t.dim(), t.dtype) for n, t in method.tensors().items())
    return type(method).__name__, mods, tens


class FusedMethods:
    """R method objects of one class, their modules, optimizers and per-run tensors stacked on axis 0.

    ``update`` takes batches with a leading run axis and returns (R,) statistics; ``predict(x)`` gives
    (R, B, classes) for one shared input; ``store(methods)`` copies the state back into the R objects.
    """

    def __init__(self, methods: Sequence[Method], compile_steps: bool | str = False):
        if not methods:
            raise ValueError("nothing to fuse")
        sig = _shape_signature(methods[0])
        for m in methods[1:]:
            if _shape_signature(m) != sig or m.hparams != methods[0].hparams:
                raise BiasbenchError("runs with different methods, hyperparameters or module shapes cannot be fused")
        self.template = methods[0]
        self.runs = len(methods)
        self.names = list(self.template.modules())
        self.bases = {n: copy.deepcopy(mod).to("meta") for n, mod in self.template.modules().items()}
        self.feature_bases = {n: _Features(b) for n, b in self.bases.items()}
        self.params = {n: {pn: nn.Parameter(torch.stack([dict(m.modules()[n].named_parameters())[pn].detach()
                                                         for m in methods]).contiguous())
                           for pn, _ in mod.named_parameters()}
                       for n, mod in self.template.modules().items()}
        # contiguous: a stack of channels-last weights keeps their strides, and CUDA would then run the
        # grouped convolutions (and the batch norms after them) channels-last, which vmap cannot
        self.buffers = {n: {bn: torch.stack([dict(m.modules()[n].named_buffers())[bn] for m in methods]).contiguous()
                            for bn, _ in mod.named_buffers()}
                        for n, mod in self.template.modules().items()}
        where = {id(p): (n, pn) for n, mod in self.template.modules().items() for pn, p in mod.named_parameters()}
        self.opt_keys: dict[str, list[tuple[str, str]]] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for oname, opt in self.template.optimizers().items():
            if len(opt.param_groups) != 1:
                raise BiasbenchError(f"cannot fuse optimizer {oname} with {len(opt.param_groups)} parameter groups")
            keys = [where[id(p)] for p in opt.param_groups[0]["params"]]
            self.opt_keys[oname] = keys
            self.optimizers[oname] = self.template.make_optimizer([self.params[n][pn] for n, pn in keys])
        self._load_optimizer_state(methods)
        per_run = [m.tensors() for m in methods]
        self.tensor_lengths = {k: [t[k].shape[0] if t[k].dim() else None for t in per_run] for k in per_run[0]}
        self.tensors = {k: _stack_padded([t[k] for t in per_run]) for k in per_run[0]}
        self._steps = {name: self._phase_fn(name) for name, _ in self.template.phases}
        self._predict = self._model_fn(None)
        if compile_steps:
            options = compile_options(compile_steps)
            reset_compiler()
            self._steps = {k: torch.compile(f, **options) for k, f in self._steps.items()}
            self._predict = torch.compile(self._predict, **options)

    # -- state in and out -----------------------------------------------------------------------
    def _load_optimizer_state(self, methods: Sequence[Method]) -> None:
        for oname, keys in self.opt_keys.items():
            fused = self.optimizers[oname]
            singles = [m.optimizers()[oname] for m in methods]
            for j, (n, pn) in enumerate(keys):
                states = [o.state.get(o.param_groups[0]["params"][j], {}) for o in singles]
                if not states[0]:
                    if any(states):
                        raise BiasbenchError("runs at different optimizer steps cannot be fused")
                    continue
                stacked = self.params[n][pn]
                new = {}
                single_param = singles[0].param_groups[0]["params"][j]
                for k, v0 in states[0].items():
                    if _per_element(v0, single_param):
                        new[k] = torch.stack([s[k] for s in states]).to(stacked.device).contiguous()
                    else:
                        if any(not _same(s[k], v0) for s in states[1:]):
                            raise BiasbenchError(f"runs with different optimizer state {k!r} cannot be fused")
                        new[k] = v0.clone() if isinstance(v0, torch.Tensor) else v0
                fused.state[stacked] = new

    @torch.no_grad()
    def store(self, methods: Sequence[Method]) -> None:
        """Copy run r's slice of every stacked tensor back into ``methods[r]`` (cloned: a checkpoint of one
        run never holds the other runs' storage)."""
        for r, m in enumerate(methods):
            for n, mod in m.modules().items():
                for pn, p in mod.named_parameters():
                    p.copy_(self.params[n][pn][r])
                for bn, b in mod.named_buffers():
                    b.copy_(self.buffers[n][bn][r])
            for oname, keys in self.opt_keys.items():
                single = m.optimizers()[oname]
                fused = self.optimizers[oname]
                for j, (n, pn) in enumerate(keys):
                    st = fused.state.get(self.params[n][pn])
                    if not st:
                        continue
                    p = single.param_groups[0]["params"][j]
                    stacked = self.params[n][pn]
                    single.state[p] = {k: v[r].clone() if _per_element(v, stacked) else
                                       (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
            for k, t in self.tensors.items():
                length = self.tensor_lengths[k][r]
                setattr(m, k, t[r].clone() if length is None else t[r, :length].clone())

    # -- steps ----------------------------------------------------------------------------------
    def _nets(self, params: dict, buffers: dict) -> dict[str, FunctionalNet]:
        return {n: FunctionalNet(self.bases[n], self.feature_bases[n], params[n], buffers[n]) for n in self.names}

    def _phase_fn(self, loss_name: str) -> Callable:
        loss_fn = getattr(self.template, loss_name)

        def per_run(params, buffers, tensors, x, y, factors, index):
            with PortableBatchNorm():
                return loss_fn(self._nets(params, buffers), tensors, Batch(x, y, factors, index))

        return vmap(per_run)

    def _model_fn(self, x_dim: int | None) -> Callable:
        """Every run's main model, vmapped: ``(params, buffers, x)`` -> (R, B, classes); ``x_dim`` None: one
        input batch shared by all runs, 0: one batch per run."""
        def per_run(params, buffers, x):
            with PortableBatchNorm():
                return self._nets(params, buffers)["model"](x)

        return vmap(per_run, in_dims=(0, 0, x_dim))

    def train(self, mode: bool = True) -> None:
        for b in self.bases.values():
            b.train(mode)

    def update(self, x: torch.Tensor, y: torch.Tensor, factors: torch.Tensor,
               index: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step of every run: inputs (R, B, ...); returns (R,) statistics."""
        stats: dict[str, torch.Tensor] = {}
        for loss_name, stepped in self.template.phases:
            loss, updates, st = self._steps[loss_name](self.params, self.buffers, self.tensors, x, y, factors, index)
            self.tensors.update({k: v.detach() for k, v in updates.items()})
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=self.template.grads_to_none)
            loss.sum().backward()  # runs share no parameter: each gets its own loss's gradient
            for k in (stepped or self.optimizers):
                self.optimizers[k].step()
            stats.update(st)
        return stats

    def layout_error(self, x: torch.Tensor) -> str | None:
        """None if a training-mode forward and backward of every run's main model on ``x`` (R, B, C, H, W)
        runs, else the error's first line. Runs on copies of the buffers and leaves the gradients empty."""
        buffers = {n: {k: v.clone() for k, v in b.items()} for n, b in self.buffers.items()}
        self.train(True)
        try:
            self._model_fn(0)(self.params, buffers, x).float().sum().backward()
        except RuntimeError as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        finally:
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
        return None

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(R, B, classes) logits of every run's main model for one shared batch ``x`` (B, 3, H, W)."""
        return self._predict(self.params, self.buffers, x)


def _per_element(v, param: torch.Tensor) -> bool:
    """Optimizer state held per parameter element (Adam's moments, MADGRAD's sums), as opposed to shared
    counters such as Adam's ``step``: a tensor of the parameter's shape."""
    return isinstance(v, torch.Tensor) and param.dim() > 0 and v.shape == param.shape


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return a == b


def _stack_padded(ts: list[torch.Tensor]) -> torch.Tensor:
    """Stack on a new axis 0; 1-D or longer tensors of different lengths are zero-padded along dim 0."""
    if ts[0].dim() == 0:
        return torch.stack(ts)
    n = max(t.shape[0] for t in ts)
    out = ts[0].new_zeros((len(ts), n, *ts[0].shape[1:]))
    for r, t in enumerate(ts):
        out[r, :t.shape[0]] = t
    return out


def train_fused(cfgs: Sequence[TrainConfig], out: str | os.PathLike, tracker: str = "mlflow",
                device: str = "auto", progress: bool | None = None, log: Callable[[str], None] | None = None,
                compile_model: bool | str = False, cuda_graphs: bool | str = False) -> list[dict]:
    """Train ``cfgs`` fused, each into ``out/<run_id>`` exactly as :class:`Trainer` would; returns one
    result per config, in order (finished runs are skipped, interrupted ones resume from their checkpoints).

    All configs must share :func:`fuse_key` and be :func:`fusable`. Runs whose modules differ in shape or
    that resume from different epochs are trained as separate fused groups, one after the other; a group of
    one run trains in the plain :class:`Trainer` loop. The runs' locks (:mod:`.runlock`) are held throughout.
    """
    log = log or (lambda s: None)
    if not cfgs:
        return []
    keys = {fuse_key(c) for c in cfgs}
    if len(keys) > 1:
        raise BiasbenchError("fused runs must differ only in " + " and ".join(FUSE_VARYING))
    reason = fusable(cfgs[0])
    if reason:
        raise BiasbenchError(f"cannot fuse runs of this configuration: {reason}")
    trainers = [Trainer(c, out, tracker, device, progress, log, cuda_graphs=cuda_graphs) for c in cfgs]
    if len({t.run_id for t in trainers}) < len(trainers):
        raise BiasbenchError("the same run appears twice in one fused group")
    with hold_runs([t.run_dir for t in trainers]):
        return _train_fused(cfgs, trainers, compile_model, progress, log)


def _train_fused(cfgs, trainers: list, compile_model, progress, log) -> list[dict]:
    """:func:`train_fused`'s body, its runs' locks held."""
    results: dict[int, dict] = {}
    pending = []
    for i, t in enumerate(trainers):
        state = t._check_existing()
        if state == "finished":
            results[i] = t.skipped()
        else:
            pending.append((i, t, state))
    if pending:
        data = load_splits(cfgs[0].data, trainers[0].device)
        groups: dict[tuple, list] = defaultdict(list)
        for i, t, state in pending:
            method, history, start = t.prepare(data, state)
            groups[(start, _shape_signature(method))].append((i, t, method, history))
        for (start, _), members in groups.items():
            if len(members) == 1:  # a group of one: the plain loop is faster than vmap over one run
                i, t, method, history = members[0]
                if compile_model:
                    compile_modules(method, compile_model)
                results[i] = t.train_from(data, method, history, start)
                continue
            for (i, _, _, _), res in zip(members, _FusedLoop(members, data, start, progress, log,
                                                             compile_model).run()):
                results[i] = res
    return [results[i] for i in range(len(cfgs))]


def fused_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(R, B, C, H, W) float. With ``channels_last``, stored in (B, H, W, R, C) order: vmap's convolution rule
    folds the run axis into the channels, (B, R*C, H, W), which is then a channels-last view without a copy,
    and every later layer stays channels-last."""
    x = x.float()
    if channels_last:
        x = x.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)
    return x


class _FusedLoop:
    """The epochs of one fused group: the single-run loop of :class:`Trainer` with a run axis."""

    def __init__(self, members: list, data: dict[str, SplitData], start_epoch: int, progress, log,
                 compile_model: bool | str):
        self.trainers = [m[1] for m in members]
        self.methods = [m[2] for m in members]
        self.histories = [m[3] for m in members]
        self.data, self.start_epoch, self.progress, self.log = data, start_epoch, progress, log
        self.lead = self.trainers[0]
        self.fused = FusedMethods(self.methods, compile_steps=compile_model)
        self.runner = None
        self.channels_last = self.lead.channels_last
        if self.channels_last and self.lead.device.type == "cuda":
            # batch norm runs as portable_batch_norm here, which avoids the failure seen on an H100 (torch
            # 2.11: CUDA's batch norm asks vmap for the layout); should a layer still fail, use the default layout
            probe = data["train"].images[:2].unsqueeze(0).expand(len(self.trainers), -1, -1, -1, -1)
            with self.lead._autocast():
                error = self.fused.layout_error(self._layout(probe))
            if error:
                self.log(f"fused: channels-last fails under vmap here ({error}); using the default layout")
                self.channels_last = False

    def run(self) -> list[dict]:
        lead, cfg = self.lead, self.lead.cfg
        p_train = lead.train_patterns(self.data)
        self.log(f"fused: {len(self.trainers)} runs of {cfg.method} ({', '.join(t.run_id for t in self.trainers)})")
        try:
            for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
                recs = self._train_epoch(epoch)
                for h, rec in zip(self.histories, recs):
                    h.append(rec)
                if epoch in cfg.eval_epochs:
                    logits = self._predict_all()
                    for r, (t, h) in enumerate(zip(self.trainers, self.histories)):
                        h.extend(t.evaluation_records({s: lg[r] for s, lg in logits.items()}, self.data, epoch,
                                                      p_train))
                self.fused.store(self.methods)
                for t, m, h in zip(self.trainers, self.methods, self.histories):
                    t.end_epoch(m, epoch, h)
        except BaseException:
            for t in self.trainers:
                t.tracker.finish("KILLED")
            raise
        finally:
            self.runner = None  # the graph's memory pool goes with it
        return [t.finish(h) for t, h in zip(self.trainers, self.histories)]

    def _train_epoch(self, epoch: int) -> list[dict]:
        lead, cfg = self.lead, self.lead.cfg
        orders = torch.stack([t.epoch_order(m, epoch) for t, m in zip(self.trainers, self.methods)])  # (R, n)
        runs, n = orders.shape
        bs = cfg.batch_size
        steps = (n + bs - 1) // bs
        self.fused.train(True)
        runner = self._step_runner()
        loss_sum = torch.zeros(runs, device=lead.device)
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"fused x{runs} epoch {epoch}/{cfg.epochs}", unit="step", leave=False,
                   disable={True: False, False: True, None: None}[self.progress])
        t0 = time.perf_counter()
        for step in range(steps):
            idx = orders[:, step * bs:(step + 1) * bs]  # (R, B): each run its own samples
            with lead._autocast():
                stats = runner(idx)
            loss_sum += stats["loss"].float() * idx.shape[1]
            bar.update(1)
        bar.close()
        seconds = time.perf_counter() - t0
        losses = (loss_sum / n).tolist()
        self.log(f"epoch {epoch}/{cfg.epochs} (fused x{runs}): {runs * n / seconds:,.0f} images/s in all")
        # per run: its own loss; time and throughput are the group's, per run
        return [{"epoch": epoch, "split": "train_loss", "loss": loss, "seconds": seconds, "images_per_s": n / seconds,
                 "fused_runs": runs} for loss in losses]

    def _step_runner(self):
        """The fused step ``idx (R, B) -> (R,) stats`` as a :class:`GraphedStep` (captured once, when the lead
        trainer uses CUDA graphs and the optimizers allow it)."""
        if self.runner is not None:
            return self.runner
        from .graphs import step_runner

        train, fused = self.data["train"], self.fused

        def update(idx: torch.Tensor) -> dict:
            return fused.update(self._layout(train.images[idx]), train.labels[idx], train.factors[idx], idx)

        self.runner = step_runner(update, fused.tensors, list(fused.tensors), fused.optimizers,
                                  lambda: (fused.params, fused.buffers, fused.optimizers, fused.tensors),
                                  self.lead.cuda_graphs, self.log, what="this fused group")
        return self.runner

    def _layout(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return fused_layout(x_uint8, self.channels_last)

    @torch.no_grad()
    def _predict_all(self) -> dict[str, torch.Tensor]:
        """(R, N, classes) logits per split, 2048 / R images at a time (activations grow with R)."""
        batch = max(128, 2048 // len(self.trainers))
        self.fused.train(False)
        out = {}
        for split in SPLITS:
            parts = []
            with CAPTURE_GATE.shared():
                for chunk, n in eval_batches(self.data[split].images, batch):
                    with self.lead._autocast():
                        parts.append(self.fused.predict(prep_images(chunk, self.channels_last))[:, :n].float())
            out[split] = torch.cat(parts, dim=1) if parts else torch.zeros((len(self.trainers), 0, 10))
        self.fused.train(True)
        return out
