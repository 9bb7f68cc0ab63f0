import pytest
import torch

from rnnzoo.ops.scan import linear_scan, sequential_scan


@pytest.mark.parametrize("T", [1, 2, 3, 17, 1000, 4097])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_parallel_equals_loop_bit_for_bit(T, reverse, with_h0):
    g = torch.Generator().manual_seed(T)
    a = torch.randint(0, 2, (2, T, 3), generator=g).double() * 2 - 1
    b = torch.randint(-4, 5, (2, T, 3), generator=g).double()
    h0 = torch.randint(-4, 5, (2, 3), generator=g).double() if with_h0 else None
    h, last = linear_scan(a, b, h0, reverse=reverse)
    h_ref, last_ref = sequential_scan(a, b, h0, reverse=reverse)
    assert torch.equal(h, h_ref) and torch.equal(last, last_ref)
    assert torch.equal(last, h[:, 0] if reverse else h[:, -1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_shape", [(2, 9, 3), (2, 9, 1), (2, 1, 3), (1, 1, 1)])
def test_gradcheck(dtype, reverse, a_shape):
    g = torch.Generator().manual_seed(0)
    a = (0.9 * torch.randn(a_shape, generator=g, dtype=dtype)).requires_grad_()
    b = torch.randn(2, 9, 3, generator=g, dtype=dtype).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=dtype).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse),
                                    (a, b, h0))


def test_real_decay_complex_input_gradients_match_loop():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 13, 4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 13, 4, generator=g, dtype=torch.complex128).requires_grad_()
    out = [f(a, b)[0].abs().sum() for f in (linear_scan, sequential_scan)]
    ga = [torch.autograd.grad(o, (a, b)) for o in out]
    for x, y in zip(*ga):
        assert torch.allclose(x, y, atol=1e-12)


def test_float32_error_against_float64_loop_is_small():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 4096, 8, generator=g, dtype=torch.float64) * 0.2 + 0.8
    b = torch.randn(2, 4096, 8, generator=g, dtype=torch.float64)
    exact, _ = sequential_scan(a, b)
    loop32, _ = sequential_scan(a.float(), b.float())
    par32, _ = linear_scan(a.float(), b.float())
    err_loop = (loop32.double() - exact).abs().max().item()
    err_par = (par32.double() - exact).abs().max().item()
    assert err_par <= max(4 * err_loop, 1e-5 * exact.abs().max().item())


def test_bad_arguments_name_themselves():
    b = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"a must have b's number of dims.*\(2, 4, 3\)"):
        linear_scan(torch.randn(2, 4, 3), b)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3\)"):
        linear_scan(torch.rand(2, 5, 3), b, torch.zeros(3))
    with pytest.raises(TypeError, match="a must be real or complex floating point"):
        linear_scan(torch.ones(2, 5, 3, dtype=torch.long), b)
    with pytest.raises(TypeError, match="share a dtype"):
        linear_scan(torch.rand(2, 5, 3, dtype=torch.float64), b)
