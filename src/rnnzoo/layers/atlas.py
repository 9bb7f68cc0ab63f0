"""ATLAS (Behrouz et al. 2025, "ATLAS: Learning to Optimally Memorize the Context at Test
Time", arXiv:2505.23735): a deep memory fitted online to a sliding window of the context (the
Omega rule), read through a polynomial feature map, optionally with the Muon step
(ops/atlas.py), in the block of Titans and Miras (layers/titans.py, layers/moneta.py):

    q, k, v = silu(shortconv(W_q x, W_k x, W_v x)),  q, k l2-normalised         (per head, K wide)
    theta_t = base_lr sigmoid(.), alpha_t, eta_t, gamma_t = sigmoid(.)          (of w . x_t)
    memory:   Omega rule over the last `window` tokens (gamma_i weighs token i in the window),
              momentum eta, forgetting alpha, gradients at the chunk start; muon=True
              orthogonalises the momentum (Newton-Schulz, `ns_steps`) before it is applied
    y       = W_o [RMSNorm(M_t(phi(q_t))) * sigmoid(W_g x)]

`feature_map` None / "taylor" / "square" (ops/feature_maps.py) sets phi. The paper's OmegaNet
is muon=False, Atlas muon=True. With window=1 and muon=False it is the weight-only Titans
memory. State: (M', M, S per memory weight, n, the window's last tokens, the conv state).
Modes: `sequential` (token by token) and `chunk` (a chunk of `chunk_size` steps at a time:
every momentum of a chunk at once, Newton-Schulz on all of them; equal to `sequential`).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import choice, flag, positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.titans import memory_geometry, memory_output, memory_qkv
from rnnzoo.ops.atlas import atlas_chunked, atlas_init_state, atlas_sequential, atlas_step
from rnnzoo.ops.feature_maps import FEATURE_MAPS, feature_size
from rnnzoo.ops.native.linear import Linear
from rnnzoo.registry import register


@register("atlas", family="matrix", paper="Behrouz et al. 2025, arXiv:2505.23735 (ATLAS)",
          tiny=dict(d_model=6, num_heads=2, head_dim=3, memory_depth=1, chunk_size=4, d_conv=2,
                    window=3, feature_map="square", muon=True),
          # float32: chunk vs sequential 1.3e-4 (C kernels) to 2.2e-4 (PyTorch) of the output's
          # scale on an AVX2 machine, below 1e-4 with AVX-512; float64 1e-13. Muon's five
          # Newton-Schulz steps (a quintic each) amplify the momentum's rounding
          tolerances={"float32": 1e-3})
class Atlas(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (M', M, S per memory weight, n (B,), the window's
    k, v (B, window-1, H, K) and gamma (B, window-1, H) when window > 1, conv state)."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None,
                 memory_depth: int = 2, chunk_size: int = 16, base_lr: float = 1.0,
                 d_conv: int = 4, window: int = 8, feature_map: str | None = None,
                 muon: bool = True, ns_steps: int = 5, norm_eps: float = 1e-6):
        super().__init__(d_model)
        H, K = memory_geometry(self, d_model, num_heads, head_dim, memory_depth, chunk_size,
                               base_lr)
        self.window = positive_int("window", window)
        self.feature_map = None if feature_map is None else choice("feature_map", feature_map,
                                                                   FEATURE_MAPS)
        self.muon = flag("muon", muon)
        self.ns_steps = positive_int("ns_steps", ns_steps)
        self.qkv_proj = Linear(d_model, 3 * H * K, bias=False)
        self.conv = ShortConv(3 * H * K, d_conv, bias=False)
        self.gate_proj = Linear(d_model, 4 * H)          # theta, alpha, eta, gamma
        F_ = K if feature_map is None else feature_size(feature_map, K)
        widths = [F_, K] if self.kind == "linear" else [F_, 4 * K, K]
        self.memory = nn.ParameterList(nn.Parameter(torch.randn(H, i, o) / i ** 0.5)
                                       for i, o in zip(widths[:-1], widths[1:]))
        memory_output(self, d_model, norm_eps)

    def init_state(self, batch_size, device=None, dtype=None):
        sdt = state_dtype(dtype)
        mem = atlas_init_state(self.kind, batch_size, self.num_heads, self.head_dim, self.window,
                               self.feature_map, device, sdt)
        return (*mem, self.conv.init_state(batch_size, device, sdt))

    def op_inputs(self, x, conv_state):
        """q, k, v (B, T, H, K); theta, alpha, eta, gamma (B, T, H); new conv state."""
        B, T, _ = x.shape
        q, k, v, conv_state = memory_qkv(self, x, conv_state)
        gates = torch.sigmoid(self.gate_proj(x).to(q.dtype)).reshape(B, T, 4, self.num_heads)
        theta, alpha, eta, gamma = gates.unbind(2)
        return q, k, v, self.base_lr * theta, alpha, eta, gamma, conv_state

    def op_output(self, z, x):
        gate = torch.sigmoid(self.g_proj(x).to(z.dtype)).view(z.shape)
        return self.o_proj((self.norm(z) * gate).flatten(2).to(x.dtype))

    def options(self):
        return dict(feature_map=self.feature_map, muon=self.muon, ns_steps=self.ns_steps)

    def _forward(self, x, state, mode):
        *mem, conv_state = state
        *inputs, conv_state = self.op_inputs(x, conv_state)
        init = [p.to(inputs[0].dtype) for p in self.memory]
        op = atlas_chunked if mode == "chunk" else atlas_sequential
        z, mem = op(self.kind, *inputs, self.chunk_size, init, tuple(mem), **self.options())
        return self.op_output(z, x), (*mem, conv_state)

    def _step(self, x_t, state):
        *mem, conv_state = state
        *inputs, conv_state = self.op_inputs(x_t[:, None], conv_state)
        init = [p.to(inputs[0].dtype) for p in self.memory]
        z, mem = atlas_step(self.kind, *[t[:, 0] for t in inputs], self.chunk_size, init,
                            tuple(mem), **self.options())
        return self.op_output(z[:, None], x_t[:, None])[:, 0], (*mem, conv_state)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"memory_depth={self.memory_depth}, chunk_size={self.chunk_size}, "
                f"base_lr={self.base_lr}, window={self.window}, "
                f"feature_map={self.feature_map!r}, muon={self.muon}, ns_steps={self.ns_steps}")
