"""ReBased (arXiv:2402.10644): fla's naive ReBased on the layer's own tensors (its normalised
affine map applied first), and the facts that the quadratic feature map's inner product is
exactly (q.k)^2 and that with `normalize` the layer does not see the scale of q and k."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.feature_maps import features


@pytest.mark.parametrize("mode", ["sequential", "chunk", "parallel"])
def test_layer_equals_fla_naive_rebased(mode):
    naive = pytest.importorskip("fla.ops.rebased.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("rebased", d_model=16, num_heads=2, feature_dim=4, chunk_size=8,
                          eps=1e-6).double()  # fla's naive adds 1e-6 to the normaliser
    with torch.no_grad():
        layer.gamma.uniform_(0.5, 1.5)
        layer.beta.uniform_(-0.5, 0.5)
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = layer.op_inputs(x)
        q, k, v = (t.transpose(1, 2) for t in (layer.affine(q), layer.affine(k), v))
        y_ref = layer.op_output(naive.naive_parallel_rebased(q, k, v).transpose(1, 2), x)
        y, _ = layer(x, mode=mode)
        assert (y - y_ref).abs().max() < 1e-12 * y_ref.abs().max()


def test_square_feature_map_inner_product_and_scale_invariance():
    torch.manual_seed(1)
    q, k = torch.randn(2, 50, 3, 6, dtype=torch.float64).unbind(0)
    s = (q * k).sum(-1)
    assert (((features(q, "square") * features(k, "square")).sum(-1)) - s * s).abs().max() \
        < 1e-13 * (s * s).max()
    layer = rnnzoo.create("rebased", d_model=8, num_heads=2, feature_dim=4, norm_eps=1e-14).double()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    y, _ = layer(x)
    with torch.no_grad():
        layer.q_proj.weight.mul_(5.0)
        layer.k_proj.weight.mul_(0.2)
        y_scaled, _ = layer(x)
        assert (y_scaled - y).abs().max() < 1e-9 * y.abs().max()  # up to LayerNorm's eps
        layer.normalize = False                                   # without it, the scale shows
        assert (layer(x)[0] - y).abs().max() > 1e-2 * y.abs().max()


def test_options_checked():
    layer = rnnzoo.create("rebased", d_model=8, use_gamma=False, use_beta=False)
    assert layer.gamma is None and layer.beta is None
    with pytest.raises(TypeError, match="normalize must be a bool"):
        rnnzoo.create("rebased", d_model=8, normalize=1)
