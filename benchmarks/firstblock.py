"""The paper CNN's first block (input batch norm -> conv1 5x5 -> max-pool 3x3/2 -> ReLU) in other layouts and forms.

    python benchmarks/firstblock.py [--device cuda] [--cell-size 32] [--batch-size 128] [--steps 200] [--compile]

On an H100 three quarters of a captured training step's kernel time is this block at 96x96 (``anatomy.py``):
conv1's forward and backward, the max-pool's forward and backward (NHWC kernels, int64 indices) and the bias
add. This times its forward and backward alone, per batch, in each variant, and prints how far each variant's
output and conv1 weight gradient are from the current form's (the same function; only rounding may differ):

- ``channels_last`` (what ``biasbench train`` runs on CUDA: bf16 autocast, channels-last);
- ``nchw``: the block in the default layout (other conv and max-pool kernels), its output then copied to
  channels-last for conv2 as the network would need;
- ``cl conv, nchw pool``: conv1 channels-last, its 96x96 output copied to the default layout for the max-pool;
- ``cl, triton pool``: the max-pool through :mod:`biasbench.models.maxpool` with conv1's bias added inside it
  (``pool_kernel``; on the CPU, where Triton does not run, it is PyTorch's);
- ``cl, triton pool + fwd`` / ``+ ksum``: with conv1's forward by a Triton implicit GEMM (``conv1_kernel``),
  and/or the bias or border-map gradient summed in the pool's backward kernel (``pool_grad_sum="kernel"``);
- ``cl, triton pool + wgrad`` / ``+ fwd + wgrad``: conv1's weight gradient and that sum by one Triton kernel
  reading the pool's input gradient once (``conv1_wgrad="triton"``), with the fold also with other launch
  settings of it (:data:`WGRAD_TUNINGS`);
- ``cl, triton conv``: conv1 and the Triton pool as one function (``pool_kernel="triton_conv"``); with the fold
  its backward computes conv1's weight gradient inside the pool's kernel (:mod:`biasbench.models.conv_pool`);
  ``+ fwd``: conv1's forward by a Triton implicit GEMM too (``conv1_kernel="triton"``); with the fold also with
  other launch settings of those kernels (:data:`TUNINGS`);
- ``cl, pad 4`` and ``cl, pad 8``: conv1's input and weight padded with zero channels to 4 or 8
  (``conv1_pad_to``: may let cuDNN take other kernels), also with the Triton pool;
- ``... + fold``: the input batch norm folded into conv1 (``fold_input_bn``, ``docs/models.md``);
- with ``--compile``: the channels-last block through ``torch.compile`` (Inductor's own max-pool with
  one-byte offsets and fused elementwise kernels).

The question it answers: which form of the first block the next step of the fast path (issue 9) should take.
On the CPU it runs fp32, to check the script. The gradient column is not zero for a change of layout alone:
in fp32 the layouts' rounding differences move some max-pool windows' maximum to another element (float64
agrees to 1e-12), so a relative difference of order 1e-3 is rounding, not a different function.
"""
from __future__ import annotations

import argparse
import contextlib
import copy

import torch
import torch.nn.functional as F

from biasbench.models import create_model
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)
from train import steps_per_second  # benchmarks/train.py


def block(model, x: torch.Tensor, pool_nchw: bool = False, out_cl: bool = False) -> torch.Tensor:
    """relu(maxpool(conv1(bn(x)))) as PaperCNN runs it, optionally pooling in the default layout and handing on a
    channels-last output."""
    if pool_nchw:
        y = F.relu(model._pool(model._conv1_of_input(x).contiguous(), "torch"))
    else:
        y = model._first_block(x)
    return y.contiguous(memory_format=torch.channels_last) if out_cl else y


def _word(same: bool) -> str:
    return "equal" if same else "DIFFERENT"


def check_lines(dev, size: int, batch: int) -> list[str]:
    """The checks' lines (:func:`check_triton_pool`, :func:`check_in_the_network`, :func:`check_conv_pool`,
    :func:`check_conv_forward`, :func:`check_grad_sum`, :func:`check_wgrad`); a check that raises (a kernel that
    does not compile with this device's Triton, say) gives one line "<name> check FAILED: ...", which ``gpu.py``
    reads as not passed, and the timings still run."""
    lines = []
    for name, check in (("triton pool", check_triton_pool), ("paper CNN step", check_in_the_network),
                        ("fused conv backward", check_conv_pool), ("triton conv1 forward", check_conv_forward),
                        ("pool gradient summed in the kernel", check_grad_sum),
                        ("triton conv1 weight gradient", check_wgrad)):
        try:
            out = check(dev, size, batch)
            lines += out if isinstance(out, list) else [out]
        except Exception as exc:  # noqa: BLE001 - reported, and the benchmark goes on
            lines.append(f"{name} check FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return lines


def check_triton_pool(dev, size: int, batch: int) -> list[str]:
    """Lines saying whether the Triton max-pool gives PyTorch's numbers bit for bit on this device: on a bf16
    channels-last map with many tied windows (output, and input gradient against the float32-summed one and
    against PyTorch's bf16 kernel); with conv1's bias added inside the kernel (against ``x + bias`` pooled,
    the bias gradient against ``grad.sum((0, 2, 3))``, what CUDA's convolution backward computes); and with the
    ReLU inside too (against this device's ``F.relu``, bit patterns, so a -0.0 counts)."""
    from biasbench.models import maxpool

    torch.manual_seed(0)
    x = (torch.randn(batch, 32, size, size, device=dev) * 3).round().to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    if not maxpool.usable(x):
        return ["triton pool: not usable here (needs CUDA, or TRITON_INTERPRET=1), PyTorch's pool measured instead"]
    g = torch.randn(batch, 32, (size - 1) // 2 + 1, (size - 1) // 2 + 1, device=dev).to(torch.bfloat16)
    g = g.contiguous(memory_format=torch.channels_last)

    def float32_reference(y):
        t = y.float().requires_grad_(True)
        F.max_pool2d(t, 3, 2, 1).backward(g.float())
        return F.max_pool2d(y, 3, 2, 1), t.grad.to(torch.bfloat16)

    ref_out, ref_grad = float32_reference(x)
    v = x.clone().requires_grad_(True)
    F.max_pool2d(v, 3, 2, 1).backward(g)  # PyTorch's bf16 kernel
    u = x.clone().requires_grad_(True)
    out = maxpool.max_pool_3x3_s2(u)
    out.backward(g)
    lines = [f"triton pool against F.max_pool2d on {batch}x32x{size}x{size} bf16 with ties: output "
             f"{_word(torch.equal(out, ref_out))}, input gradient {_word(torch.equal(u.grad, ref_grad))} to the "
             f"float32-summed one, {_word(torch.equal(u.grad, v.grad))} to PyTorch's bf16 kernel's"]
    bias = (torch.randn(32, device=dev) * 300).to(torch.bfloat16)  # large: the add rounds and makes ties
    ref_out, ref_grad = float32_reference(x + bias.view(1, -1, 1, 1))
    u, b = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    out = maxpool.max_pool_3x3_s2(u, b)
    out.backward(g)
    lines.append(f"triton pool with the bias inside: output {_word(torch.equal(out, ref_out))}, input gradient "
                 f"{_word(torch.equal(u.grad, ref_grad))}, bias gradient "
                 f"{_word(torch.equal(b.grad, ref_grad.sum((0, 2, 3))))}")
    # the ReLU inside the forward kernel (relu=True, what paper_cnn runs): against this device's F.relu, bit
    # patterns compared (torch.equal takes -0.0 for +0.0), the gradient against the float32 one through F.relu;
    # half the channels made non-positive (-|x|: zeros become -0.0), so many windows have no gradient
    x = torch.where(torch.arange(32, device=dev).view(1, -1, 1, 1) < 16, -x.abs(), x)
    bias = (torch.randn(32, device=dev) * 2).round().to(torch.bfloat16) * (torch.arange(32, device=dev) >= 16)
    y = x + bias.view(1, -1, 1, 1)
    ref_out = F.relu(F.max_pool2d(y, 3, 2, 1))
    t = y.float().requires_grad_(True)
    F.relu(F.max_pool2d(t, 3, 2, 1)).backward(g.float())
    u, b = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    out = maxpool.max_pool_3x3_s2(u, b, relu=True)
    out.backward(g)
    neg_zero = int((torch.signbit(ref_out) & (ref_out == 0)).sum())
    signs = int((out.view(torch.int16) != ref_out.view(torch.int16)).sum()) if torch.equal(out, ref_out) else -1
    lines.append(f"triton pool with the bias and the ReLU inside: output {_word(torch.equal(out, ref_out))} to "
                 f"F.relu's (bit patterns: {'all the same' if signs == 0 else f'{signs} zeros of another sign'}; "
                 f"{neg_zero} -0.0 in F.relu's), input gradient {_word(torch.equal(u.grad, t.grad.to(x.dtype)))}, "
                 f"bias gradient {_word(torch.equal(b.grad, t.grad.to(x.dtype).sum((0, 2, 3))))}")
    return lines


def check_conv_forward(dev, size: int, batch: int) -> str:
    """One line: :func:`biasbench.models.conv_pool.conv_forward` (conv1's forward as a Triton implicit GEMM) in
    bf16 on integer inputs against the float64 convolution rounded once to bf16, which is what cuDNN's bf16
    output is: the share of outputs not equal (float32 accumulation may tip a few values sitting on a rounding
    boundary), and cuDNN's share; "ok" when under 1 % differ and every output is within the error bound of a
    float32 sum of K = CI * KS * KS products rounded to bf16 (:func:`accumulation_bound`): one bf16 unit in the
    last place of the exact value plus ``K * 2**-24 * sum |x| |w|``. The second term matters where the products
    cancel: an exact value near zero has a tiny unit in the last place, but float32 partial sums of size
    ``sum |x| |w|`` leave an error of their own size (the first GPU run's check, one ulp alone, failed the
    Triton forward on such outputs although it differed from the rounded exact value less often than cuDNN)."""
    from biasbench.models import conv_pool

    torch.manual_seed(0)
    x = (torch.rand(batch, 3, size, size, device=dev) * 255).round().to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(32, 3, 5, 5, device=dev) * 0.01).to(torch.bfloat16)
    if not conv_pool.usable(x, w):
        return "triton conv1 forward: not usable here (needs CUDA, or TRITON_INTERPRET=1)"
    exact = F.conv2d(x.double(), w.double(), None, 1, 2)
    near = exact.to(torch.bfloat16)
    bound = accumulation_bound(x, w, exact)
    out = conv_pool.conv_forward(x, w)
    ref = F.conv2d(x, w, None, 1, 2)

    def outside(y: torch.Tensor) -> int:
        return int(((y.double() - exact).abs() > bound).sum())

    share = (out != near).float().mean().item()
    ok = outside(out) == 0 and share < 0.01
    return (f"triton conv1 forward against the float64 convolution rounded to bf16: {share:.3%} of outputs differ "
            f"(cuDNN's: {(ref != near).float().mean().item():.3%}), {outside(out)} outside the float32 "
            f"accumulation bound (cuDNN's: {outside(ref)}) ({'ok' if ok else 'TOO LARGE'})")


def accumulation_bound(x: torch.Tensor, w: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per output of ``conv2d(x, w, padding=KS // 2)`` (``exact``: its float64 value), how far a bf16 result
    computed by summing the K = CI * KS * KS products in float32 in any order (the products of bf16 operands
    are exact in float32) and rounding once may be from it: ``ulp_bf16(|exact|) + K * 2**-24 * (|x| * |w|)``,
    the standard bound ``K u sum |x_i w_i|`` (u = 2**-24) of recursive summation plus the final rounding."""
    k = w[0].numel()
    ulp = exact.abs().clamp_min(1e-30).log2().floor().exp2() * 2 ** -7
    mass = F.conv2d(x.double().abs(), w.double().abs(), None, 1, w.shape[-1] // 2)
    return ulp + k * 2 ** -24 * mass


def check_grad_sum(dev, size: int, batch: int) -> str:
    """One line: :func:`biasbench.models.maxpool.pool_backward_summed` (``pool_grad_sum="kernel"``) on a bf16
    channels-last 32-channel map: whether its input gradient equals :func:`~biasbench.models.maxpool.pool_backward`'s,
    and how far its float32 sum over the batch is from the float64 sum of that stored gradient (norm of the
    difference over the norm); "ok" when equal and below :data:`CONV_POOL_TOLERANCE`."""
    from biasbench.models import maxpool

    torch.manual_seed(0)
    x = (torch.randn(batch, 32, size, size, device=dev) * 3).round().to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    if not maxpool.usable(x):
        return "pool gradient summed in the kernel: not usable here (needs CUDA, or TRITON_INTERPRET=1)"
    g = torch.randn(batch, 32, (size - 1) // 2 + 1, (size - 1) // 2 + 1, device=dev).to(torch.bfloat16)
    g = g.contiguous(memory_format=torch.channels_last)
    _, off = maxpool.pool_forward(x, None)
    gin = maxpool.pool_backward(g, off, x.shape)
    gin2, total = maxpool.pool_backward_summed(g, off, x.shape)
    exact = gin.double().sum(0, keepdim=True)
    rel = ((total.double() - exact).norm() / exact.norm()).item()
    ok = torch.equal(gin, gin2) and rel < CONV_POOL_TOLERANCE
    return (f"pool gradient summed in the kernel: input gradient {_word(torch.equal(gin, gin2))}, its sum over the "
            f"batch against the float64 sum: relative difference {rel:.2e} ({'ok' if ok else 'TOO LARGE'})")


CONV_POOL_TOLERANCE = 1e-4
"""The fused backward's float32 weight gradient is the float64 sum below up to float32 accumulation (about
1e-6 relative); a relative difference (norm of the difference over the norm) above this is a fault."""


def _conv_pool_case(dev, size: int, batch: int):
    """bf16 channels-last inputs of conv1 + pool (x, weight, bias, the pooled gradient g), the pool's input
    gradient G as the unfused path stores it (bf16), and the float64 weight gradient of input x G; None where
    :mod:`biasbench.models.conv_pool` does not run (no CUDA, no interpreter)."""
    from biasbench.models import conv_pool

    torch.manual_seed(0)
    x = (torch.rand(batch, 3, size, size, device=dev) * 255).round().to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    w0 = (torch.randn(32, 3, 5, 5, device=dev) * 0.01).to(torch.bfloat16)
    bias = torch.randn(32, device=dev).to(torch.bfloat16)
    if not conv_pool.usable(x, w0):
        return None
    conv = (F.conv2d(x, w0, None, 1, 2) + bias.view(1, -1, 1, 1)).contiguous(memory_format=torch.channels_last)
    g = torch.randn(batch, 32, (size - 1) // 2 + 1, (size - 1) // 2 + 1, device=dev).to(torch.bfloat16)
    g = g.contiguous(memory_format=torch.channels_last)
    t = conv.float().requires_grad_(True)
    F.max_pool2d(t, 3, 2, 1).backward(g.float())
    gin = t.grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wd = w0.double().requires_grad_(True)
    F.conv2d(x.double(), wd, None, 1, 2).backward(gin.double())
    return x, w0, bias, g, gin, wd.grad


def _rel(grad: torch.Tensor, exact: torch.Tensor) -> float:
    """Norm of the difference over the norm."""
    return ((grad.double() - exact).norm() / exact.norm()).item()


def check_conv_pool(dev, size: int, batch: int) -> str:
    """One line: how far :mod:`biasbench.models.conv_pool`'s fused backward (conv1's weight gradient computed in
    the pool's kernel, float32 before its rounding to bf16; bf16 inputs, input without a gradient: the folded
    batch norm's case) and cuDNN's bf16 weight gradient of the unfused path are from the float64 sum of input x
    the pooled map's input gradient as the unfused path stores it, as the norm of the difference over the norm;
    "ok" when the fused one is below :data:`CONV_POOL_TOLERANCE`."""
    from biasbench.models import conv_pool, maxpool

    case = _conv_pool_case(dev, size, batch)
    if case is None:
        return "fused conv backward: not usable here (needs CUDA, or TRITON_INTERPRET=1)"
    x, w0, bias, g, _, exact = case
    w = w0.clone().requires_grad_(True)
    F.max_pool2d(F.conv2d(x, w, bias, 1, 2), 3, 2, 1).backward(g)
    _, off = maxpool.pool_forward(F.conv2d(x, w0, None, 1, 2), bias)
    fused = _rel(conv_pool.conv_weight_grad(g, off, x, 5)[0], exact)  # float32, before the gradient's bf16 rounding
    return (f"fused conv backward (triton_conv), its float32 weight gradient against the float64 sum: relative "
            f"difference {fused:.2e} (cuDNN's bf16 one: {_rel(w.grad, exact):.2e}) "
            f"({'ok' if fused < CONV_POOL_TOLERANCE else 'TOO LARGE'})")


def check_wgrad(dev, size: int, batch: int) -> str:
    """One line: how far :func:`biasbench.models.conv_pool.conv_weight_from_grad` (``conv1_wgrad="triton"``; float32,
    before its rounding to bf16) is from the float64 weight gradient of input x the stored pool input gradient G,
    and its sum of G over the batch from the float64 sum; "ok" when both are below :data:`CONV_POOL_TOLERANCE`."""
    from biasbench.models import conv_pool

    case = _conv_pool_case(dev, size, batch)
    if case is None:
        return "triton conv1 weight gradient: not usable here (needs CUDA, or TRITON_INTERPRET=1)"
    x, _, _, _, gin, exact = case
    gw, total = conv_pool.conv_weight_from_grad(gin, x, 5, True)
    rel_w = _rel(gw, exact)
    rel_sum = _rel(total, gin.double().sum(0, keepdim=True))
    ok = max(rel_w, rel_sum) < CONV_POOL_TOLERANCE
    return (f"triton conv1 weight gradient (conv1_wgrad=triton) against the float64 sums: weight {rel_w:.2e}, "
            f"G over the batch {rel_sum:.2e} ({'ok' if ok else 'TOO LARGE'})")


def check_in_the_network(dev, size: int, batch: int) -> str:
    """One line: a paper CNN's bf16 training step with the Triton pool against the default pool (logits and every
    gradient; the default pool is run twice first, to tell the GPU's own run-to-run differences from the
    kernel's)."""
    from biasbench.models import create_model

    x = (torch.rand(batch, 3, size, size, device=dev) * 255).round().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    runs = []
    for kernel in ("torch", "torch", "triton"):
        torch.manual_seed(1)
        m = create_model("paper_cnn", pool_kernel=kernel).to(dev).to(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = m(x)
        F.cross_entropy(logits.float(), y).backward()
        runs.append((logits.detach(), {n: p.grad for n, p in m.named_parameters()}))

    def same(a, b) -> str:
        return f"logits {_word(torch.equal(a[0], b[0]))}, {sum(torch.equal(a[1][n], b[1][n]) for n in a[1])} of " \
               f"{len(a[1])} gradients equal"

    return (f"paper CNN step, default pool twice: {same(runs[0], runs[1])}; default against triton pool: "
            f"{same(runs[0], runs[2])}")


TUNINGS = ({"BLOCK_M": 64}, {"BLOCK_M": 16}, {"N_PER": 16}, {"WARPS": 4})
"""Other launch settings of :mod:`biasbench.models.conv_pool`'s fused backward timed with the fold; the defaults
are in the ``cl, triton conv + fwd + fold`` row. Each compiles for sm_90 without spilling registers (ptxas). The
sixth session's H100 run timed 32 positions (now the default), 16 images per program, and 64 or 256 positions
per forward program (no better than 128)."""


WGRAD_TUNINGS = ({"WGRAD_BLOCK_M": 64}, {"WGRAD_N_PER": 32}, {"WGRAD_N_PER": 8}, {"WGRAD_WARPS": 4})
"""Other launch settings of :func:`biasbench.models.conv_pool.conv_weight_from_grad` timed with the fold (the
defaults, 128 positions, 16 images, 8 warps, are in the ``cl, triton pool + fwd + wgrad + fold`` row); each
compiles for sm_90 without spills with aligned pointers (ptxas: 118 registers at the defaults, 206 at 4 warps,
112 at 64 positions)."""


@contextlib.contextmanager
def tuning(settings: dict):
    """:mod:`biasbench.models.conv_pool`'s module constants set to ``settings`` for the ``with`` block."""
    from biasbench.models import conv_pool

    old = {k: getattr(conv_pool, k) for k in settings}
    for k, v in settings.items():
        setattr(conv_pool, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(conv_pool, k, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="timed calls per variant (default 200 GPU, 5 CPU)")
    ap.add_argument("--compile", action="store_true", help="also the channels-last block through torch.compile")
    args = ap.parse_args()
    dev = torch.device(pick_device(args.device))
    cuda = dev.type == "cuda"
    steps = args.steps or (200 if cuda else 5)
    size = 3 * args.cell_size
    torch.manual_seed(0)
    x = (torch.rand(args.batch_size, 3, size, size, device=dev) * 255).round()
    base = create_model("paper_cnn", pool_kernel="torch").to(dev)  # PyTorch's pool unless a variant says otherwise
    variants = []  # (label, model, input, options)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for fold in (False, True):
        tag = " + fold" if fold else ""

        def model(channels_last: bool = True, **attrs):
            m = copy.deepcopy(base)
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            for k, v in dict(attrs, fold_input_bn=fold).items():
                setattr(m, k, v)
            return m

        m_cl = model()
        variants += [("channels_last" + tag, m_cl, x_cl, {}),
                     ("nchw" + tag, model(False), x, {"out_cl": True}),
                     ("cl conv, nchw pool" + tag, m_cl, x_cl, {"pool_nchw": True, "out_cl": True}),
                     ("cl, triton pool" + tag, model(pool_kernel="triton"), x_cl, {})]
        variants += [("cl, triton pool + fwd" + tag, model(pool_kernel="triton", conv1_kernel="triton"), x_cl, {}),
                     ("cl, triton pool + ksum" + tag, model(pool_kernel="triton", pool_grad_sum="kernel"), x_cl, {}),
                     ("cl, triton pool + fwd + ksum" + tag,
                      model(pool_kernel="triton", conv1_kernel="triton", pool_grad_sum="kernel"), x_cl, {}),
                     ("cl, triton pool + wgrad" + tag, model(pool_kernel="triton", conv1_wgrad="triton"), x_cl, {}),
                     ("cl, triton pool + fwd + wgrad" + tag,
                      model(pool_kernel="triton", conv1_kernel="triton", conv1_wgrad="triton"), x_cl, {})]
        variants.append(("cl, triton conv" + tag, model(pool_kernel="triton_conv"), x_cl, {}))
        variants.append(("cl, triton conv + fwd" + tag, model(pool_kernel="triton_conv", conv1_kernel="triton"), x_cl,
                         {}))
        if fold:  # the Triton conv kernels' launch settings (conv_pool's constants), for the next tuning
            for tune in TUNINGS:
                variants.append(("cl, triton conv + fwd, " + ", ".join(f"{k}={v}" for k, v in tune.items()) + tag,
                                 model(pool_kernel="triton_conv", conv1_kernel="triton"), x_cl, {"tune": tune}))
            for tune in WGRAD_TUNINGS:
                variants.append(("cl, triton pool + fwd + wgrad, " + ", ".join(f"{k}={v}" for k, v in tune.items())
                                 + tag, model(pool_kernel="triton", conv1_kernel="triton", conv1_wgrad="triton"),
                                 x_cl, {"tune": tune}))
        for pad in (4, 8):
            variants += [(f"cl, pad {pad}" + tag, model(conv1_pad_to=pad), x_cl, {}),
                         (f"cl, pad {pad}, triton pool" + tag, model(conv1_pad_to=pad, pool_kernel="triton"), x_cl, {})]
    if args.compile:
        m_c = copy.deepcopy(base).to(memory_format=torch.channels_last)
        variants.append(("channels_last compiled", m_c, x.contiguous(memory_format=torch.channels_last),
                         {"compiled": True}))

    print(f"device: {dev} ({device_name(dev)}), torch {torch.__version__}, image {size}px, batch {args.batch_size}, "
          f"{'bf16 autocast' if cuda else 'fp32'}, {steps} calls per variant (forward + backward of the block)")
    for line in check_lines(dev, size, args.batch_size):
        print(line, flush=True)
    print(f"{'variant':62s}{'ms/batch':>10s}{'img/s':>12s}{'x first':>9s}{'max |out diff|':>16s}{'rel grad diff':>15s}")
    ref = None
    for label, model, inp, opts in variants:
        model.train()
        fn = block
        if opts.pop("compiled", False):
            fn = torch.compile(block)
        tuned = tuning(opts.pop("tune", {}))
        g = None

        def call():
            nonlocal g
            model.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                out = fn(model, inp, **opts)
            if g is None:  # the same values for every variant, in the output's layout
                g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dev, out.dtype)
                if not out.is_contiguous():
                    g = g.contiguous(memory_format=torch.channels_last)
            out.backward(g)
            return out

        try:
            with tuned:
                rate = steps_per_second(call, steps, dev)
                out = call().detach().float()
            grad = model.conv1.weight.grad.detach().float()
        except Exception as exc:  # one variant failing must not hide the others' numbers
            print(f"{label:62s} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  flush=True)
            continue
        if ref is None:
            ref = (rate, out, grad)
        diff = (out - ref[1]).abs().max().item()
        rel = ((grad - ref[2]).norm() / ref[2].norm().clamp_min(1e-30)).item()
        print(f"{label:62s}{1000 / rate:10.3f}{rate * args.batch_size:12,.0f}{rate / ref[0]:9.2f}{diff:16.3g}"
              f"{rel:15.2e}", flush=True)


if __name__ == "__main__":
    main()
