"""conv1 + max-pool as one function (biasbench.models.conv_pool), through Triton's CPU interpreter: the fused
backward's weight and addend gradients against the unfused path's, and the unfused arithmetic where the input
needs a gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton  # installed with torch's Linux wheels, where CI runs

from biasbench.models import conv_pool, maxpool


def _inputs(dtype, kind, n=3, ci=3, h=12, w=11, c=32):
    torch.manual_seed(0)
    x = (torch.rand(n, ci, h, w) * 255).round().to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c, ci, 5, 5) * 0.01).to(dtype)
    addend = {"bias": lambda: torch.randn(c),
              "map": lambda: torch.randn(1, c, h, w).contiguous(memory_format=torch.channels_last),
              "none": lambda: None}[kind]()
    return x, weight, None if addend is None else addend.to(dtype)


def _grads(fn, x, weight, addend, g=None, x_grad=False):
    x = x.clone().requires_grad_(x_grad)
    weight = weight.clone().requires_grad_(True)
    addend = None if addend is None else addend.clone().requires_grad_(True)
    out = fn(x, weight, addend)
    if g is None:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
        g = g.contiguous(memory_format=torch.channels_last)
    out.backward(g)
    return out.detach(), g, x.grad, weight.grad, None if addend is None else addend.grad


def _unfused(x, weight, addend):
    out = F.conv2d(x, weight, None, 1, 2)
    if addend is not None:
        out = out + (addend.view(1, -1, 1, 1) if addend.dim() == 1 else addend)
    return F.max_pool2d(out, 3, 2, 1)


@pytest.mark.parametrize("kind", ["bias", "map", "none"])
def test_fused_backward_gives_the_weight_and_addend_gradients(interpreted, monkeypatch, kind, count_calls):
    """Input without a gradient (the folded batch norm's case): the pool's kernel forms the pooled map's input
    gradient tile by tile and multiplies it with the input's im2col tile; in float32 the weight and addend
    gradients are the unfused path's up to summation order. Small tiles and chunks (3 images, 2 per chunk; 132
    positions, 64 per tile) exercise the partial last tile and chunk."""
    monkeypatch.setattr(conv_pool, "N_PER", 2)
    calls = count_calls(conv_pool, "conv_weight_grad")
    x, weight, addend = _inputs(torch.float32, kind)
    out, g, _, gw, ga = _grads(conv_pool.conv_max_pool, x, weight, addend)
    ref, _, _, rgw, rga = _grads(_unfused, x, weight, addend, g)
    assert calls == [1]  # the fused backward ran
    assert torch.equal(out, ref)  # the same convolution and pool
    torch.testing.assert_close(gw, rgw, rtol=1e-5, atol=1e-3)
    assert (gw - rgw).abs().max() < 1e-5 * rgw.abs().max()
    if addend is not None:
        torch.testing.assert_close(ga, rga, rtol=1e-5, atol=1e-5)
        assert ga.shape == addend.shape and ga.dtype == addend.dtype


def test_fused_backward_in_bfloat16_rounds_the_pooled_maps_gradient_as_stored(interpreted):
    """bf16: the kernel's float32 weight gradient is the exact sum (float64) of input x the pool's input gradient
    as the unfused path stores it (float32-summed windows rounded to bf16), up to float32 accumulation (1e-6);
    without that rounding it would be off by about 1e-3. The function returns it rounded once to bf16."""
    x, weight, addend = _inputs(torch.bfloat16, "bias")
    conv = F.conv2d(x, weight, None, 1, 2)
    _, off = maxpool.pool_forward(conv, addend)
    g = torch.randn(off.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    g = g.contiguous(memory_format=torch.channels_last)
    t = (conv + addend.view(1, -1, 1, 1)).float().requires_grad_(True)
    F.max_pool2d(t, 3, 2, 1).backward(g.float())
    gin = t.grad.to(torch.bfloat16).double()  # what the pool's backward kernel writes
    wd = weight.double().requires_grad_(True)
    F.conv2d(x.double(), wd, None, 1, 2).backward(gin)
    gw, gmap = conv_pool.conv_weight_grad(g, off, x, 5)
    assert gw.dtype == torch.float32 and gw.shape == weight.shape
    torch.testing.assert_close(gw.double(), wd.grad, rtol=1e-6, atol=1e-6 * wd.grad.abs().max().item())
    torch.testing.assert_close(gmap.double(), gin.sum(0, keepdim=True), rtol=1e-6, atol=1e-6)
    _, _, _, gw16, _ = _grads(conv_pool.conv_max_pool, x, weight, addend, g)
    assert gw16.dtype == torch.bfloat16 and torch.equal(gw16, gw.to(torch.bfloat16))


@pytest.mark.parametrize("kind", ["bias", "map"])
def test_an_input_that_needs_a_gradient_takes_the_unfused_arithmetic(interpreted, monkeypatch, kind):
    """The batch norm not folded: the input needs its gradient, so the backward is the pool's kernel and
    aten.convolution_backward, every gradient bit for bit the unfused path's."""
    monkeypatch.setattr(conv_pool, "conv_weight_grad", lambda *a: pytest.fail("the fused backward ran"))
    x, weight, addend = _inputs(torch.float32, kind)
    a = _grads(conv_pool.conv_max_pool, x, weight, addend, x_grad=True)
    b = _grads(_unfused, x, weight, addend, a[1], x_grad=True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("fold", [False, True, "normalized"])
def test_paper_cnn_with_triton_conv_trains_like_the_default(interpreted, fold):
    """pool_kernel="triton_conv": the same logits; with the fold, gradients equal up to summation order
    (conv1's through the fused kernel); without it, bit for bit those of pool_kernel="triton"."""
    from biasbench.models import create_model

    torch.manual_seed(0)
    x = (torch.rand(2, 3, 12, 12) * 255).round().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2,))
    runs = []
    for kernel in ("triton", "triton_conv"):
        torch.manual_seed(1)
        m = create_model("paper_cnn", pool_kernel=kernel, fold_input_bn=fold).to(memory_format=torch.channels_last)
        logits = m(x)
        F.cross_entropy(logits, y).backward()
        runs.append((logits.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (a, ga), (b, gb) = runs
    assert torch.equal(a, b)
    for n in ga:
        if fold:
            torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)
        else:
            assert torch.equal(gb[n], ga[n]), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_forward_kernel_is_the_convolution(interpreted, dtype):
    """conv_forward: the implicit GEMM gives the convolution, channels-last; in bf16 (integer inputs, so every
    product is exact) the float64 result rounded once, as cuDNN's bf16 output is (within one unit in the last
    place, nearly always exactly); in float32 up to order."""
    x, weight, _ = _inputs(dtype, "none", n=2)
    out = conv_pool.conv_forward(x, weight)
    exact = F.conv2d(x.double(), weight.double(), None, 1, 2)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    if dtype == torch.bfloat16:  # float32 accumulation can tip a value sitting on a rounding boundary
        near = exact.to(dtype)
        ulp = exact.abs().clamp_min(1e-30).log2().floor().exp2() * 2 ** -7
        assert ((out.double() - exact).abs() <= ulp).all() and (out != near).float().mean() < 0.01
    else:
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_kernel", ["triton", "triton_conv"])
def test_paper_cnn_with_the_triton_conv1_forward(interpreted, pool_kernel, count_calls):
    """conv1_kernel="triton" (with a Triton pool and the fold): conv1's forward through the Triton kernel,
    logits and gradients those of the default network up to summation order (with pool_kernel="triton" the
    backward is the unfused one, not the fused weight-gradient kernel); refused without a Triton pool."""
    from biasbench.errors import BiasbenchError
    from biasbench.models import create_model

    calls = count_calls(conv_pool, "conv_forward")
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 12, 12) * 255).round().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2,))
    runs = []
    fused = count_calls(conv_pool, "conv_weight_grad")
    for kwargs in ({}, {"pool_kernel": pool_kernel, "conv1_kernel": "triton"}):
        torch.manual_seed(1)
        m = create_model("paper_cnn", fold_input_bn=True, **kwargs).to(memory_format=torch.channels_last)
        logits = m(x)
        F.cross_entropy(logits, y).backward()
        runs.append((logits.detach(), {n: p.grad for n, p in m.named_parameters()}))
    assert calls == [1] and fused == ([1] if pool_kernel == "triton_conv" else [])
    (a, ga), (b, gb) = runs
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-3, atol=1e-6, msg=n)
    with pytest.raises(BiasbenchError, match="conv1_kernel=triton runs with a Triton pool"):
        create_model("paper_cnn", conv1_kernel="triton")
    with pytest.raises(BiasbenchError, match="conv1_kernel must be one of torch, triton"):
        create_model("paper_cnn", pool_kernel="triton_conv", conv1_kernel="cuda")


@pytest.mark.parametrize("dtype,want_sum", [(torch.float32, True), (torch.bfloat16, True), (torch.float32, False)])
def test_weight_gradient_from_the_stored_map(interpreted, monkeypatch, dtype, want_sum):
    """conv_weight_from_grad (conv_weight_kernel reading the stored map): the weight gradient of the convolution
    whose output gradient is the stored map G, and G's sum over the batch, are the float64 ones up to float32
    accumulation; small tiles and chunks (5 images, 2 per chunk; 132 positions, 32 per tile) exercise the partial
    last tile and chunk."""
    monkeypatch.setattr(conv_pool, "WGRAD_N_PER", 2)
    monkeypatch.setattr(conv_pool, "WGRAD_BLOCK_M", 32)
    x, weight, _ = _inputs(dtype, "none", n=5)
    gin = torch.randn(5, 32, 12, 11, generator=torch.Generator().manual_seed(2)).to(dtype)
    gin = gin.contiguous(memory_format=torch.channels_last)
    wd = weight.double().requires_grad_(True)
    F.conv2d(x.double(), wd, None, 1, 2).backward(gin.double())
    gw, total = conv_pool.conv_weight_from_grad(gin, x, 5, want_sum)
    assert gw.dtype == torch.float32 and gw.shape == weight.shape
    torch.testing.assert_close(gw.double(), wd.grad, rtol=1e-6, atol=1e-6 * wd.grad.abs().max().item())
    if want_sum:
        assert total.shape == (1, 32, 12, 11) and total.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(total.double(), gin.double().sum(0, keepdim=True), rtol=1e-6, atol=1e-6)
    else:
        assert total is None


@pytest.mark.parametrize("kind", ["bias", "map", "none"])
@pytest.mark.parametrize("x_grad", [False, True])
def test_triton_weight_gradient_in_the_backward(interpreted, kind, x_grad, count_calls):
    """wgrad="triton": the pool's kernel writes G, conv_weight_kernel reading it gives the weight's and the addend's
    gradients from it (the unfused path's up to summation order) and, where the input needs one, its gradient
    is cuDNN's, bit for bit the unfused path's; the fused backward does not run."""
    calls = count_calls(conv_pool, "conv_weight_from_grad")
    fused = count_calls(conv_pool, "conv_weight_grad")
    x, weight, addend = _inputs(torch.float32, kind)
    out, g, gx, gw, ga = _grads(lambda *a: conv_pool.conv_max_pool(*a, wgrad="triton"), x, weight, addend,
                                x_grad=x_grad)
    ref, _, rgx, rgw, rga = _grads(_unfused, x, weight, addend, g, x_grad=x_grad)
    assert calls == [1] and fused == []
    assert torch.equal(out, ref)
    assert (gw - rgw).abs().max() < 1e-5 * rgw.abs().max()
    if x_grad:
        assert torch.equal(gx, rgx)
    if addend is not None:
        torch.testing.assert_close(ga, rga, rtol=1e-5, atol=1e-5)
        assert ga.shape == addend.shape and ga.dtype == addend.dtype


@pytest.mark.parametrize("fold", [False, True, "normalized"])
def test_paper_cnn_with_the_triton_conv1_weight_gradient(interpreted, fold, count_calls):
    """conv1_wgrad="triton" (with pool_kernel="triton", alone or with conv1_kernel="triton"): the same logits
    as the default network, gradients equal up to summation order, conv1's weight gradient through the Triton
    kernel; refused with another pool or with pool_grad_sum=kernel."""
    from biasbench.errors import BiasbenchError
    from biasbench.models import create_model

    calls = count_calls(conv_pool, "conv_weight_from_grad")
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 12, 12) * 255).round().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2,))
    runs = []
    for kwargs in ({}, {"pool_kernel": "triton", "conv1_wgrad": "triton"},
                   {"pool_kernel": "triton", "conv1_wgrad": "triton", "conv1_kernel": "triton"}):
        torch.manual_seed(1)
        m = create_model("paper_cnn", fold_input_bn=fold, **kwargs).to(memory_format=torch.channels_last)
        logits = m(x)
        F.cross_entropy(logits, y).backward()
        runs.append((logits.detach(), {n: p.grad for n, p in m.named_parameters()}))
    assert calls == [1, 1]
    a, ga = runs[0]
    for b, gb in runs[1:]:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        for n in ga:
            torch.testing.assert_close(gb[n], ga[n], rtol=1e-3, atol=1e-6, msg=n)
    assert not torch.equal(runs[1][1]["conv1.weight"], ga["conv1.weight"])  # not cuDNN's sum: the kernel's
    with pytest.raises(BiasbenchError, match="conv1_wgrad=triton runs with a Triton pool; set pool_kernel=triton"):
        create_model("paper_cnn", conv1_wgrad="triton")
    with pytest.raises(BiasbenchError, match="conv1_wgrad=triton runs with pool_kernel=triton, not triton_conv"):
        create_model("paper_cnn", pool_kernel="triton_conv", conv1_wgrad="triton")
    with pytest.raises(BiasbenchError, match="leave pool_grad_sum at torch"):
        create_model("paper_cnn", pool_kernel="triton", conv1_wgrad="triton", pool_grad_sum="kernel")
    with pytest.raises(BiasbenchError, match="conv1_wgrad must be one of torch, triton"):
        create_model("paper_cnn", pool_kernel="triton", conv1_wgrad="cudnn")


@pytest.mark.parametrize("dtype", ["*bf16", "*fp32"])
def test_the_kernels_compile_for_an_h100_without_one(dtype, tmp_path):
    """The fused backward, the forward convolution and the weight gradient compile ahead of time for sm_90 with
    the launch settings conv_pool uses and the 16-byte aligned pointers the JIT specialises on for PyTorch's
    allocations (PTX, then a cubin through the wheel's ptxas, which reports registers and spills), with
    tensor-core dots (bf16) or exact float32 ones; in bf16 none spills registers to memory, and the forward
    gathers its im2col tile with 8-byte vector loads (a tap's 4 channels, 3 padded to 4), no scalar ones."""
    import glob
    import importlib
    import os
    import subprocess

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    k = importlib.import_module("biasbench.models._maxpool_kernels")
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))
    shape = {"C": 32, "H": 96, "W": 96, "CI": 4, "KS": 5, "PAD": 2, "K1": 64, "K2": 64, "IEEE": dtype == "*fp32",
             "UPCAST_DOT": False}
    kernels = [
        (k.conv_weight_kernel, {"g_ptr": dtype, "off_ptr": "*u8", "x_ptr": dtype, "dw_ptr": "*fp32",
                                "dmap_ptr": "*fp32", "N": "i32"},
         shape | {"OH": 48, "OW": 48, "BLOCK_M": conv_pool.BLOCK_M, "N_PER": conv_pool.N_PER, "FORM_G": True,
                  "SUM": True}, conv_pool.WARPS),
        (k.conv_forward_kernel, {"x_ptr": dtype, "w_ptr": dtype, "out_ptr": dtype, "total": "i32"},
         shape | {"BLOCK_M": conv_pool.CONV_BLOCK_M}, conv_pool.CONV_WARPS),
        (k.conv_weight_kernel, {"g_ptr": dtype, "off_ptr": "*u8", "x_ptr": dtype, "dw_ptr": "*fp32",
                                "dmap_ptr": "*fp32", "N": "i32"},
         shape | {"OH": 96, "OW": 96, "BLOCK_M": conv_pool.WGRAD_BLOCK_M, "N_PER": conv_pool.WGRAD_N_PER,
                  "FORM_G": False, "SUM": True}, conv_pool.WGRAD_WARPS)]
    for fn, pointers, consts, warps in kernels:
        aligned = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, ty in pointers.items()
                   if ty.startswith("*")}
        compiled = triton.compile(ASTSource(fn=fn, signature=pointers | {n: "constexpr" for n in consts},
                                            constexprs=consts, attrs=aligned),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        ptx = compiled.asm["ptx"]
        assert ".target sm_90" in ptx and ("mma" in ptx) == (dtype == "*bf16")
        if fn is k.conv_forward_kernel and dtype == "*bf16":
            assert "ld.global.v2.b32" in ptx and "ld.global.b16" not in ptx
        if dtype == "*bf16" and ptxas:
            path = tmp_path / f"{fn.__name__}.ptx"
            path.write_text(ptx)
            report = subprocess.run([ptxas[0], "-arch=sm_90a", "-v", str(path), "-o", os.devnull], capture_output=True,
                                    text=True, check=True).stderr
            assert " 0 bytes spill stores" in report, report


def test_unusable_inputs_take_the_unfused_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, weight, addend = _inputs(torch.float32, "bias")
    assert not conv_pool.usable(x, weight)  # a CPU tensor without the interpreter
    assert torch.equal(conv_pool.conv_max_pool(x, weight, addend), _unfused(x, weight, addend))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert conv_pool.usable(x, weight)
    assert not conv_pool.usable(x, weight[:24])  # 24 output channels: not a power of two
    assert not conv_pool.usable(x, weight.double())
    assert maxpool.usable(x)
