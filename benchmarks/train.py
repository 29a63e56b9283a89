"""Training throughput: the full loop (Trainer epoch: index gather, uint8 -> float, method update,
loss accumulation, progress) against a bare forward/backward/step on one fixed float batch.

    python benchmarks/train.py [--device auto] [--cell-size 32] [--steps N] [--batch-size 128]
                               [--compile [--compile-modes default,reduce-overhead]]
                               [--options fold,triton,fold+triton+tfwd+ksum] [--only LABELS]

On CUDA it measures fp32 eager, bf16 autocast + channels_last, the same with every step captured as a CUDA
graph (``+ graphs``: :mod:`biasbench.train.graphs`), and compiled (``--compile``, static shapes, once per
mode of ``--compile-modes``; ``reduce-overhead`` makes its own CUDA graphs; the default mode is measured with
our graphs too); on the CPU fp32 eager, fp32 channels-last, bf16 autocast and bf16 channels-last (plus compiled
with ``--compile``). ``--only`` keeps the
configurations whose labels contain one of the comma-separated words (e.g. ``--only graphs``).
``--options`` adds each configuration again with paper CNN options (:class:`biasbench.models.paper_cnn.PaperCNN`):
``fold`` (the input batch norm folded into conv1, raw input), ``nfold`` (folded, normalised input), ``triton`` (the
Triton max-pool with conv1's bias inside, CUDA only), ``tconv`` (``pool_kernel=triton_conv``: with ``fold``,
conv1's weight gradient inside the pool's backward kernel), ``tfwd`` (conv1's forward as a Triton implicit GEMM;
with ``triton`` or ``tconv``), ``ksum`` (conv1's bias or the fold's border-map gradient summed over the batch in
the pool's backward kernel; with ``triton`` or ``tconv``), ``twg`` (conv1's weight gradient and that sum in one
Triton kernel reading the pool's input gradient once; with ``triton``, not with ``ksum``), ``pad4`` / ``pad8``
(conv1's input padded with zero channels to 4 or 8), joined with ``+`` to combine (``fold+triton+tfwd+ksum``,
``fold+triton+tfwd+twg``), ``torchpool`` (PyTorch's max-pool; the default, ``pool_kernel="auto"``, is the Triton
pool in the bf16 CUDA configurations). Prints images/s per configuration and the loop / bare ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.methods import TrainInfo, get_method_class
from biasbench.models import create_model
from biasbench.train.graphs import GraphedStep
from biasbench.train.loop import CUDAGRAPH_COMPILE_MODES, Trainer, compile_options, load_splits, reset_compiler
from biasbench.train.optim import optimizer_factory
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)


OPTIONS = {"fold": {"fold_input_bn": True}, "nfold": {"fold_input_bn": "normalized"},
           "triton": {"pool_kernel": "triton"}, "tconv": {"pool_kernel": "triton_conv"},
           "tfwd": {"conv1_kernel": "triton"},
           "ksum": {"pool_grad_sum": "kernel"}, "twg": {"conv1_wgrad": "triton"}, "pad4": {"conv1_pad_to": 4},
           "pad8": {"conv1_pad_to": 8}, "torchpool": {"pool_kernel": "torch"}}
"""``--options`` words: paper CNN keyword arguments. ``tfwd`` and ``ksum`` need a Triton pool (``triton`` or
``tconv``) in the same combination, ``twg`` needs ``triton`` and excludes ``ksum`` (the model's own checks
decide, :func:`option_error`). Without a pool word the model's default applies (``pool_kernel="auto"``: the
Triton pool in the captured bf16 CUDA configurations); ``torchpool`` measures PyTorch's pool. (In the sixth
session's H100 table the default was PyTorch's pool, and ``fold+tfwd`` meant ``fold+tconv+tfwd``.)"""
POOL_WORDS = ("triton", "tconv", "torchpool")
FOLD_WORDS = ("fold", "nfold")


def option_kwargs(opt: str) -> dict:
    """The paper CNN keyword arguments of ``opt`` (words joined by +)."""
    return {k: v for w in opt.split("+") for k, v in OPTIONS[w].items()}


def option_error(opt: str) -> str | None:
    """Why ``opt`` (words joined by +) is not a valid ``--options`` item, or None: unknown words, two pool
    kernels, or what the paper CNN itself refuses (built on the meta device)."""
    from biasbench.errors import BiasbenchError
    from biasbench.models import check_model

    words = opt.split("+")
    if not set(words) <= set(OPTIONS):
        return f"unknown option {opt!r}; expected words from {', '.join(OPTIONS)} joined by +"
    if len(set(words) & set(POOL_WORDS)) > 1:
        return f"option {opt!r}: {' and '.join(w for w in words if w in POOL_WORDS)} are two pool kernels; take one"
    if len(set(words) & set(FOLD_WORDS)) > 1:
        return f"option {opt!r}: fold and nfold are two forms of the fold; take one"
    try:
        check_model("paper_cnn", **option_kwargs(opt))
    except BiasbenchError as exc:
        return f"option {opt!r}: {exc}"
    return None


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def steps_per_second(step, steps: int, dev, warmup: int = 3) -> float:
    """Calls of ``step()`` per second over ``steps`` calls after ``warmup`` untimed ones (device synced)."""
    for _ in range(warmup):
        step()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps / (time.perf_counter() - t)


def bare_step(cfg: TrainConfig, dev, x_u8, y, steps: int, amp: bool, cl: bool, compiled: bool | str = False,
              graphs: bool = False) -> float:
    torch.manual_seed(0)
    model = create_model(cfg.model, **cfg.model_kwargs).to(dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        reset_compiler()
        model.compile(**compile_options(compiled))
    opt = optimizer_factory(cfg, dev)(model.parameters())
    x = x_u8.float()
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)

    def update(_idx=None):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=not graphs):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    runner = GraphedStep(update, [opt], graphs)
    idx = torch.zeros(1, device=dev)
    return steps_per_second(lambda: runner(idx), steps, dev, 5 if compiled or graphs else 3) * len(y)


def loop_epoch(cfg: TrainConfig, root: str, out: str, device: str, compiled: bool | str = False,
               graphs: bool = False) -> float:
    tr = Trainer(cfg, out, tracker="none", device=device, progress=False, compile_model=compiled, cuda_graphs=graphs)
    data = load_splits(cfg.data, tr.device)
    train = data["train"]
    torch.manual_seed(0)
    model = create_model(cfg.model, **cfg.model_kwargs).to(tr.device)
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    info = TrainInfo(len(train.labels), 10, train.labels, train.factors, "paper")
    method = get_method_class(cfg.method)(model, optimizer_factory(cfg, tr.device), info, {})
    if compiled:
        reset_compiler()
        model.compile(**compile_options(compiled))
    tr._train_epoch(method, train, 1)  # warm-up epoch (allocator, kernels)
    _sync(tr.device)
    rec = tr._train_epoch(method, train, 2)
    return rec["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="steps per measurement (default 10 CPU, 300 GPU)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd configurations")
    ap.add_argument("--compile-modes", default="default",
                    help="with --compile: comma-separated torch.compile modes, e.g. default,reduce-overhead "
                         "(CUDA graphs)")
    ap.add_argument("--options", default="",
                    help="comma-separated paper CNN options to measure every configuration with too: fold "
                         "(input batch norm folded into conv1, raw input), nfold (folded, normalised input), "
                         "triton (Triton max-pool), tconv (Triton max-pool "
                         "and conv1's weight gradient in one kernel), tfwd (conv1's forward in Triton; with triton "
                         "or tconv), ksum (the bias or border map gradient summed in the pool's backward kernel; "
                         "with triton or tconv), twg (conv1's weight gradient and that sum in one Triton kernel; "
                         "with triton, not with ksum), pad4 or pad8 (conv1's input padded to 4 or 8 channels); "
                         "join with + to combine, e.g. fold+triton+tfwd+ksum; torchpool (PyTorch's max-pool instead "
                         "of the default, which is the Triton pool on CUDA in bf16)")
    ap.add_argument("--only", default=None, help="comma-separated words: keep configurations whose labels hold one")
    args = ap.parse_args()
    dev = torch.device(pick_device(args.device))
    steps = args.steps or (300 if dev.type == "cuda" else 10)
    n = steps * args.batch_size
    cuda = dev.type == "cuda"
    configs = [("fp32 eager", "fp32", "off", False, False)]
    if cuda:
        configs += [("bf16 + channels_last", "bf16", "on", False, False),
                    ("bf16 + channels_last + graphs", "bf16", "on", False, True)]
    else:  # oneDNN's channels-last kernels, and bf16 where the CPU has native bf16 (AVX512-BF16, AMX)
        configs += [("fp32 + channels_last", "fp32", "on", False, False), ("bf16", "bf16", "off", False, False),
                    ("bf16 + channels_last", "bf16", "on", False, False)]
    for mode in args.compile_modes.split(",") if args.compile else []:
        compile_options(mode)  # an unknown mode fails here
        suffix = "" if mode == "default" else f" {mode}"
        label = ("bf16 + cl + compile" if cuda else "fp32 + compile") + suffix
        prec, cl = ("bf16", "on") if cuda else ("fp32", "off")
        configs.append((label, prec, cl, mode, False))
        if cuda and mode not in CUDAGRAPH_COMPILE_MODES:
            configs.append((label + " + graphs", prec, cl, mode, True))
    configs = [c + ({},) for c in configs]
    extra = []
    for opt in [o for o in args.options.split(",") if o]:
        if option_error(opt):
            ap.error(option_error(opt))
        kwargs = option_kwargs(opt)
        extra += [(c[0] + " + " + opt,) + c[1:-1] + (kwargs,) for c in configs]
    configs += extra
    if args.only:
        words = args.only.split(",")
        configs = [c for c in configs if any(w in c[0] for w in words)]
    name = device_name(dev)
    print(f"device: {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"image {3 * args.cell_size}px, batch {args.batch_size}, {steps} steps")
    print(f"{'configuration':40s}{'bare img/s':>12s}{'loop img/s':>12s}{'loop/bare':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/ds"
        generate(root, DatasetSettings(cell_size=args.cell_size, n_train=n, n_val=100, n_test=100))
        data = load_splits(root, dev)
        x_u8 = data["train"].images[:args.batch_size]
        y = data["train"].labels[:args.batch_size]
        for label, precision, cl, compiled, graphs, model_kwargs in configs:
            cfg = TrainConfig(data=root, epochs=2, batch_size=args.batch_size, precision=precision,
                              channels_last=cl, eval_epochs=(2,), model_kwargs=model_kwargs)
            try:
                bare = bare_step(cfg, dev, x_u8, y, steps, precision == "bf16", cl == "on", compiled, graphs)
                loop = loop_epoch(cfg, root, f"{tmp}/runs", str(dev), compiled, graphs)
            except Exception as exc:  # one configuration failing must not hide the others' numbers
                print(f"{label:40s} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      flush=True)
                continue
            print(f"{label:40s}{bare:12,.0f}{loop:12,.0f}{loop / bare:11.1%}", flush=True)


if __name__ == "__main__":
    main()
