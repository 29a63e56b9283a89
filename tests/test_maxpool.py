"""The Triton max-pool (biasbench.models.maxpool) against F.max_pool2d, bit for bit, through Triton's CPU
interpreter: the kernels that run on a GPU, executed element by element on the CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton  # installed with torch's Linux wheels, where CI runs

from biasbench.models import maxpool


def _reference(x, g):
    """F.max_pool2d's output, and its input gradient as CUDA computes it: summed in float32 and rounded once
    (the CPU's bfloat16 kernel rounds after every addition, CUDA's accumulates in float32)."""
    out = F.max_pool2d(x, 3, 2, 1)
    t = x.detach().float().requires_grad_(True)  # exact: the same values, so the same maxima and ties
    F.max_pool2d(t, 3, 2, 1).backward(g.to(x.dtype).float())
    return out, t.grad.to(x.dtype)


def _triton(x, g):
    t = x.detach().clone().requires_grad_(True)
    out = maxpool.max_pool_3x3_s2(t)
    out.backward(g.to(out.dtype))
    return out.detach(), t.grad


def _windows_with_ties(x) -> int:
    cols = F.unfold(F.pad(x.float(), (1, 1, 1, 1), value=float("-inf")), 3, stride=2)
    cols = cols.view(x.shape[0], x.shape[1], 9, -1)
    return int(((cols == cols.amax(dim=2, keepdim=True)).sum(dim=2) > 1).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(2, 5, 12, 12), (1, 3, 7, 9), (2, 32, 12, 11)])
def test_triton_max_pool_equals_torch_bit_for_bit(interpreted, dtype, size):
    """Values, and gradients routed to the same element and summed in the same order, ties included: the
    input is rounded to a few levels, so many windows hold their maximum twice or more. 5 and 3 channels take
    the kernels' channel mask (tiles of 8 and 4), 32 the unmasked tiles the paper CNN uses; the last tile of
    positions is partial in all three."""
    torch.manual_seed(0)
    x = (torch.randn(size) * 2).round().to(dtype).contiguous(memory_format=torch.channels_last)
    assert maxpool.usable(x)
    n, c, h, w = size
    g = torch.randn(n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1).contiguous(memory_format=torch.channels_last)
    a, ga = _reference(x, g)
    b, gb = _triton(x, g)
    assert b.is_contiguous(memory_format=torch.channels_last) and b.dtype == dtype
    assert torch.equal(a, b)
    assert torch.equal(ga, gb)
    assert _windows_with_ties(x) > 5  # ties were there to get right


def test_triton_max_pool_takes_only_channels_last_gpu_tensors(monkeypatch):
    """Without a GPU (or the interpreter), and for NCHW or integer tensors, max_pool_3x3_s2 is F.max_pool2d."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert not maxpool.usable(x)  # a CPU tensor, no interpreter
    assert torch.equal(maxpool.max_pool_3x3_s2(x), F.max_pool2d(x, 3, 2, 1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert maxpool.usable(x)
    assert not maxpool.usable(x.contiguous())  # NCHW
    assert not maxpool.usable(torch.zeros(2, 1, 8, 8).contiguous(memory_format=torch.channels_last))  # also NCHW
    assert not maxpool.usable(x.to(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["bias", "map"])
def test_triton_max_pool_adds_the_addend_bit_for_bit(interpreted, dtype, kind):
    """max_pool_3x3_s2(x, a) is F.max_pool2d(x + a): the sum rounded as PyTorch's add rounds it (ties the
    rounding makes included), the input gradient routed alike, and the addend's gradient the reduction that
    conv's backward (bias) or autograd's broadcasting add (map) computes."""
    torch.manual_seed(0)
    n, c, h, w = 2, 5, 12, 11
    x = (torch.randn(n, c, h, w) * 2).round().to(dtype).contiguous(memory_format=torch.channels_last)
    shape = (c,) if kind == "bias" else (1, c, h, w)
    # large values, so in bf16 the add rounds (and makes ties); a map of two levels keeps x's ties where equal
    a = (torch.randn(shape) * 300 if kind == "bias" else torch.randint(0, 2, shape) * 301.0).to(dtype)
    if kind == "map":
        a = a.contiguous(memory_format=torch.channels_last)
    g = torch.randn(n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    y = x + (a.view(1, c, 1, 1) if kind == "bias" else a)
    ref_out, ref_gin = _reference(y, g)
    ref_ga = ref_gin.sum((0, 2, 3)) if kind == "bias" else ref_gin.sum(0, keepdim=True)
    xt, at = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
    out = maxpool.max_pool_3x3_s2(xt, at)
    out.backward(g)
    assert torch.equal(out, ref_out)
    assert torch.equal(xt.grad, ref_gin)
    assert torch.equal(at.grad, ref_ga) and at.grad.shape == a.shape
    assert _windows_with_ties(y) > 5
    t = a.float().detach().requires_grad_(True)  # autograd reduces a broadcast operand's gradient the same way
    (x.float() + (t.view(1, c, 1, 1) if kind == "bias" else t)).backward(ref_gin.float())
    assert torch.equal(t.grad, ref_gin.float().sum((0, 2, 3)) if kind == "bias" else ref_gin.float().sum(0, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["none", "bias", "map"])
def test_relu_folded_into_the_pool(interpreted, dtype, kind):
    """relu=True is F.relu(F.max_pool2d(x + a)) bit for bit, forward (with -0.0 made +0.0, as CUDA's ReLU, a
    float maximum, is expected to; the CPU's keeps the sign, so the reference adds +0.0) and backward (no gradient
    through a window whose output is not above zero, ties and zeros included): such windows' offsets are
    NO_WINDOW."""
    torch.manual_seed(0)
    n, c, h, w = 2, 32, 12, 11
    x = (torch.randn(n, c, h, w) * 2).round().to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, :4] = -x[0, :4].abs()  # whole channels without a positive value: windows of zeros and -0.0
    a = {"none": None, "bias": torch.randn(c).round().to(dtype),
         "map": torch.randn(1, c, h, w).round().to(dtype).contiguous(memory_format=torch.channels_last)}[kind]
    g = torch.randn(n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    y = x if a is None else x + (a.view(1, c, 1, 1) if kind == "bias" else a)
    t = y.detach().float().requires_grad_(True)
    ref = F.relu(F.max_pool2d(t, 3, 2, 1))
    ref.backward(g.float())
    assert (ref == 0).sum() > 50 and torch.signbit(F.max_pool2d(y, 3, 2, 1)).logical_and(
        F.max_pool2d(y, 3, 2, 1) == 0).any()  # zeros, and -0.0 among the pooled values
    xt = x.clone().requires_grad_(True)
    at = None if a is None else a.clone().requires_grad_(True)
    out = maxpool.max_pool_3x3_s2(xt, at, relu=True)
    out.backward(g)
    assert torch.equal(out, ref.detach().to(dtype) + 0.0) and not torch.signbit(out).any()
    assert torch.equal(xt.grad, t.grad.to(dtype))
    if a is not None:
        assert torch.equal(at.grad, maxpool.addend_grad(t.grad.to(dtype), a.dim()))
    _, off = maxpool.pool_forward(y if a is None else x, a, relu=True)
    assert torch.equal(off == maxpool.NO_WINDOW, ~(ref.detach() > 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["bias", "map"])
def test_backward_kernel_sums_the_addends_gradient(interpreted, monkeypatch, dtype, kind):
    """grad_sum="kernel": the input gradient is the same bit for bit, and the addend's gradient is the stored
    input gradient summed over the batch (and, for a bias, the map) in float32, rounded once: equal to that sum
    up to float32 order. Five images in chunks of two: a partial chunk and several partial sums to add."""
    monkeypatch.setattr(maxpool, "SUM_N_PER", 2)
    torch.manual_seed(0)
    n, c, h, w = 5, 4, 12, 11
    x = (torch.randn(n, c, h, w) * 2).round().to(dtype).contiguous(memory_format=torch.channels_last)
    shape = (c,) if kind == "bias" else (1, c, h, w)
    a = torch.randn(shape).to(dtype)
    if kind == "map":
        a = a.contiguous(memory_format=torch.channels_last)
    g = torch.randn(n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    grads = []
    for grad_sum in maxpool.GRAD_SUMS:
        xt, at = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
        out = maxpool.max_pool_3x3_s2(xt, at, grad_sum=grad_sum)
        out.backward(g)
        grads.append((out, xt.grad, at.grad))
    (out0, gin0, ga0), (out1, gin1, ga1) = grads
    assert torch.equal(out0, out1) and torch.equal(gin0, gin1)
    exact = gin0.double().sum((0, 2, 3)) if kind == "bias" else gin0.double().sum(0, keepdim=True)
    assert ga1.dtype == dtype and ga1.shape == a.shape
    if kind == "map":
        assert ga1.is_contiguous(memory_format=torch.channels_last)
    if dtype == torch.float32:
        torch.testing.assert_close(ga1.double(), exact, rtol=1e-6, atol=1e-6)
    else:  # the float32 sum rounded once: the exact sum's bf16 neighbours at most
        ulp = exact.abs().clamp_min(1e-30).log2().floor().exp2() * 2 ** -7
        assert ((ga1.double() - exact).abs() <= ulp).all()
        assert (ga1 == exact.to(dtype)).float().mean() > 0.9
    with pytest.raises(ValueError, match="grad_sum must be one of torch, kernel"):
        maxpool.max_pool_3x3_s2(x, a, grad_sum="cuda")


def _train_step_grads(x, y, **kwargs):
    from biasbench.models import create_model

    torch.manual_seed(1)
    m = create_model("paper_cnn", **kwargs).to(memory_format=torch.channels_last)
    conv_grad = []  # conv1's output gradient, where conv1 runs as a module (the default pool)

    def keep_grad(mod, inp, out):
        out.register_hook(conv_grad.append)

    m.conv1.register_forward_hook(keep_grad)
    logits = m(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad for n, p in m.named_parameters()}, conv_grad


@pytest.mark.parametrize("fold", [False, True])
def test_paper_cnn_with_the_triton_pool_trains_bit_for_bit_like_torchs(interpreted, monkeypatch, fold):
    """pool_kernel="triton": the same logits and every parameter gradient as the default pool, channels-last,
    with conv1's bias (or the folded border term) added inside the pool's kernel. conv1's bias gradient is
    conv1's output gradient summed over (0, 2, 3), which is how CUDA's convolution backward computes it; the
    CPU's oneDNN sums in its own order, so on the CPU that one gradient differs from the default's by rounding."""
    calls = []
    apply = maxpool._TritonMaxPool.apply
    monkeypatch.setattr(maxpool._TritonMaxPool, "apply",
                        lambda *a: calls.append((a[0].shape, None if a[1] is None else a[1].shape)) or apply(*a))
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 12, 12) * 255).round().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2,))
    a, ga, conv_grad = _train_step_grads(x, y, pool_kernel="torch", fold_input_bn=fold)
    b, gb, _ = _train_step_grads(x, y, pool_kernel="triton", fold_input_bn=fold)
    assert calls == [((2, 32, 12, 12), (1, 32, 12, 12) if fold else (32,))]  # one pool, the addend inside
    assert torch.equal(a, b)
    exact = [n for n in ga if fold or n != "conv1.bias"]
    assert all(torch.equal(ga[n], gb[n]) for n in exact)
    if not fold:
        assert torch.equal(gb["conv1.bias"], conv_grad[0].sum((0, 2, 3)))
        torch.testing.assert_close(gb["conv1.bias"], ga["conv1.bias"])


@pytest.mark.parametrize("pool_kernel", ["triton", "triton_conv"])
@pytest.mark.parametrize("fold", [False, True])
def test_paper_cnn_sums_the_addends_gradient_in_the_pools_kernel(interpreted, pool_kernel, fold, count_calls):
    """pool_grad_sum="kernel": conv1's bias gradient (or, with the fold, the border map's, which reaches conv1's
    weight and the batch norm's parameters) comes from the pool's summing backward kernel, and every gradient
    is the default's up to float32 summation order. (triton_conv's fused backward sums the map itself, so with
    the fold it does not call the summing kernel.)"""
    calls = count_calls(maxpool, "pool_backward_summed")
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 12, 12) * 255).round().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2,))
    a, ga, _ = _train_step_grads(x, y, fold_input_bn=fold)
    b, gb, _ = _train_step_grads(x, y, pool_kernel=pool_kernel, pool_grad_sum="kernel", fold_input_bn=fold)
    assert calls == ([] if fold and pool_kernel == "triton_conv" else [1])
    assert torch.equal(a, b)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)


def test_pool_kernel_auto_takes_the_triton_pool_only_where_it_was_verified(interpreted, monkeypatch, count_calls):
    """The default pool_kernel="auto": the Triton pool on CUDA in bf16 (autocast or a bf16 input) on channels-last
    input, PyTorch's pool on the CPU, in fp32, for NCHW input, under torch.compile, inside vmap (--fuse) and
    without Triton. A CUDA input is stood in for by ``cuda=True`` on CPU tensors (the interpreter runs the
    kernels), and a default model then trains through the Triton pool."""
    import functools

    from biasbench.models import create_model, paper_cnn

    auto = paper_cnn.auto_pool_kernel
    m = create_model("paper_cnn").to(memory_format=torch.channels_last)
    w = m.conv1.weight
    x = (torch.rand(2, 3, 24, 24) * 255).round().contiguous(memory_format=torch.channels_last)
    assert m.pool_kernel == "auto" and m.pool_kernel_for(x) == "torch"  # a CPU tensor
    assert auto(x, w, cuda=True) == "torch"  # fp32: the paper's precision stays on PyTorch's kernels
    assert auto(x.bfloat16(), w, cuda=True) == "triton"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert auto(x, w, cuda=True) == "triton"
    assert auto(x.contiguous().bfloat16(), w, cuda=True) == "torch"  # NCHW
    inside = []
    runs = x.bfloat16().unsqueeze(0).repeat(2, 1, 1, 1, 1)  # vmap over two runs, as --fuse does
    torch.vmap(lambda t: inside.append(auto(t, w, cuda=True)) or t.sum())(runs)
    assert inside == ["torch"]
    with monkeypatch.context() as mp:
        mp.setattr(torch.compiler, "is_compiling", lambda: True)
        assert auto(x.bfloat16(), w, cuda=True) == "torch"
    with monkeypatch.context() as mp:
        mp.setattr(maxpool, "triton_available", lambda: False)
        assert auto(x.bfloat16(), w, cuda=True) == "torch"
    calls = count_calls(maxpool._TritonMaxPool, "apply")
    monkeypatch.setattr(paper_cnn, "auto_pool_kernel", functools.partial(auto, cuda=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(x)
    F.cross_entropy(logits.float(), torch.tensor([1, 2])).backward()
    assert calls == [1] and m.conv1.weight.grad is not None


def test_pool_kernel_must_be_known():
    from biasbench.errors import BiasbenchError
    from biasbench.models import create_model

    with pytest.raises(BiasbenchError, match="pool_kernel must be one of auto, torch, triton"):
        create_model("paper_cnn", pool_kernel="cuda")
    with pytest.raises(BiasbenchError, match="pool_grad_sum must be one of torch, kernel"):
        create_model("paper_cnn", pool_kernel="triton", pool_grad_sum="cuda")
    with pytest.raises(BiasbenchError, match="pool_grad_sum=kernel runs with a Triton pool"):
        create_model("paper_cnn", pool_grad_sum="kernel")


@pytest.mark.parametrize("dtype", ["*bf16", "*fp32"])
def test_kernels_compile_for_an_h100_without_one(dtype):
    """Triton compiles the kernels ahead of time for sm_90 (PTX and, with the wheel's ptxas, a cubin) on a
    machine without a GPU: the lowering the interpreter skips. The map's sizes are constants, so the index
    arithmetic has no division left; with 16-byte aligned pointers (what the JIT specialises on for PyTorch's
    allocations) a position's 32 channels move with 16-byte vector loads and stores, and the pooled gradient
    and offsets too (8 or 16 bytes at a time)."""
    import importlib
    import re

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    k = importlib.import_module("biasbench.models._maxpool_kernels")  # not the interpreted one of other tests

    p_block, cb = maxpool._tile(32, maxpool.BLOCK)
    consts = {"C": 32, "H": 96, "W": 96, "OH": 48, "OW": 48, "P_BLOCK": p_block, "CB": cb}
    fwd = {"x_ptr": dtype, "a_ptr": dtype, "out_ptr": dtype, "off_ptr": "*u8"}
    addends = [{"HAS_ADDEND": False, "A_SC": 0, "A_SH": 0, "A_SW": 0},  # none; conv1's bias; the folded border map
               {"HAS_ADDEND": True, "A_SC": 1, "A_SH": 0, "A_SW": 0},
               {"HAS_ADDEND": True, "A_SC": 1, "A_SH": 96 * 32, "A_SW": 32}]
    kernels = [(k.forward_kernel, fwd | {"total_p": "i32"}, consts | a | {"RELU": relu})
               for a in addends for relu in (False, True)]
    kernels.append((k.backward_kernel, {"g_ptr": dtype, "off_ptr": "*u8", "gin_ptr": dtype, "total_p": "i32"},
                    consts))
    p_sum, _ = maxpool._tile(32, maxpool.SUM_BLOCK)
    kernels.append((k.backward_sum_kernel, {"g_ptr": dtype, "off_ptr": "*u8", "gin_ptr": dtype, "sum_ptr": "*fp32",
                                            "N": "i32"},
                    consts | {"P_BLOCK": p_sum, "N_PER": maxpool.SUM_N_PER}))
    for fn, pointers, constants in kernels:
        signature = pointers | {name: "constexpr" for name in constants}
        aligned = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, ty in pointers.items()
                   if ty.startswith("*")}
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=aligned),
                                  target=GPUTarget("cuda", 90, 32))  # a ptxas failure fails the test
        ptx = compiled.asm["ptx"]
        assert ".target sm_90" in ptx and not re.search(r"\b(div|rem)\.", ptx)
        assert not re.search(r"ld\.global\.b16|st\.global\.b16|ld\.global\.b8", ptx), fn.__name__  # no scalar
        assert re.search(r"ld\.global\.v[24]\.b32", ptx) and re.search(r"st\.global\.v[24]\.b32", ptx), fn.__name__
