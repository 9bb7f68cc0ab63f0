"""mLSTM block (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", arXiv:2405.04517).

The cell (section 2.3, eqs. 19-27, stabilised as in appendix A.2): a matrix memory
with an exponential input gate, a sigmoid (or exponential) forget gate, a
normaliser state n and a max-stabiliser m:

    C_t = f_t C_{t-1} + i_t k_t v_t^T,   n_t = f_t n_{t-1} + i_t k_t
    h~_t = C_t^T q_t / max(|n_t^T q_t|, 1),   k scaled by 1/sqrt(d)

(`rnnzoo.ops.chunk.linear.mlstm` holds the stabilised recurrence.) The block
(figure 10, the pre-up-projection block without its pre-norm and residual, which
belong to the stack):

    [x_m, z] = x W_up                                 (expand 2)
    x_c = swish(causal_conv4(x_m));  q, k = blockdiag(x_c);  v = blockdiag(x_m)
    [i~, f~] = [q, k, v] W_gates + b;  h = GroupNorm_h(mLSTM(q, k, v, i~, f~)) + skip * x_c
    y = (h * swish(z)) W_down

State: (C, n, m, conv state). Modes: `sequential`, `chunk`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import state_dtype
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.layers.conv import ShortConv
from rnnzoo.layers.norms import HeadNorm
from rnnzoo.ops import backend, sequence_parallel
from rnnzoo.ops.chunk.linear import _mlstm_gates_loop, _ssd_loop, mlstm, mlstm_recurrent
from rnnzoo.ops.native import blockdiag as native_blockdiag
from rnnzoo.ops.native import gated_norm
from rnnzoo.ops.native import mlstm_scan as native_mlstm
from rnnzoo.ops.native.linear import Linear, linear
from rnnzoo.registry import register


class BlockDiagonalLinear(nn.Module):
    """xLSTM's headwise q/k/v projection: independent (blocksize x blocksize) maps.

    On the CPU in float32/float64 (`backend.use_native`) the C kernel `ops.native.blockdiag`
    runs it at bs multiply-adds an output. Otherwise small blocks (xLSTM's 4) run as a few
    wider block-diagonal maps of up to `GROUP` = 32 channels (the zeros multiplied too): a
    batched product over 64 blocks of 4 x 4 runs ~2x slower on a CPU than 8 products of
    32 x 32."""

    GROUP = 32

    def __init__(self, dim: int, blocksize: int):
        super().__init__()
        if dim % blocksize:
            raise ValueError(f"the inner width {dim} must be a multiple of qkv_blocksize, "
                             f"got qkv_blocksize={blocksize}")
        self.blocks, self.blocksize = dim // blocksize, blocksize
        self.weight = nn.Parameter(torch.randn(self.blocks, blocksize, blocksize) * blocksize ** -0.5)
        per = max(1, self.GROUP // blocksize)  # blocks per group, a divisor of the block count
        while self.blocks % per:
            per -= 1
        self.per_group = per

    def right(self, W):
        """W BD for W (m, dim), BD the (dim, dim) block-diagonal matrix whose map is forward
        (forward(x) = x BD^T)."""
        blocks = self.weight  # (blocks, out, in): BD[o, i] within each block
        # a broadcast product summed over o (not einsum's batched product over the blocks:
        # 64 (m, 4) x (4, 4) products, fwd+bwd ~0.38 against ~0.24 ms at mlstm's size)
        return (W.view(W.shape[0], self.blocks, self.blocksize, 1) * blocks).sum(2).reshape(
            W.shape[0], -1)

    def forward(self, x, scale=None):
        """x (..., dim) -> x BD^T (times `scale` when given: folded into the small weight)."""
        W = self.weight if scale is None else self.weight * scale
        if backend.use_native(x, W):  # bs multiply-adds an output, in C
            lib = native_blockdiag.load()
            if lib is not None:
                return native_blockdiag.blockdiag(lib, x, W)
        per, bs = self.per_group, self.blocksize
        groups = self.blocks // per
        W = W.view(groups, per, bs, bs)
        if per > 1:  # (groups, per * bs, per * bs), block-diagonal
            eye = torch.eye(per, dtype=W.dtype, device=W.device)
            W = torch.einsum("gpoi,pq->gpoqi", W, eye).reshape(groups, per * bs, per * bs)
        else:
            W = W.view(groups, bs, bs)
        xg = x.unflatten(-1, (groups, per * bs))
        return torch.einsum("...gi,goi->...go", xg, W).flatten(-2)


@register("mlstm", family="matrix", paper="Beck et al. 2024, arXiv:2405.04517",
          tiny=dict(d_model=4, num_heads=2, qkv_blocksize=2, d_conv=3, chunk_size=4))
class MLSTM(RecurrentLayer):
    """x: (B, T, d_model) -> y; state (C: (B, H, D, D), n: (B, H, D), m: (B, H),
    conv: (B, d_conv - 1, expand * d_model)), D = expand * d_model / H."""

    modes = ("sequential", "chunk")

    def __init__(self, d_model: int, num_heads: int = 4, expand: int = 2,
                 qkv_blocksize: int = 4, d_conv: int = 4, forget_gate: str = "sigmoid",
                 chunk_size: int = 64):
        super().__init__(d_model)
        for name, value in (("num_heads", num_heads), ("expand", expand),
                            ("qkv_blocksize", qkv_blocksize), ("chunk_size", chunk_size)):
            positive_int(name, value)
        if forget_gate not in ("sigmoid", "exp"):
            raise ValueError(f"forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
        inner = expand * d_model
        if inner % num_heads:
            raise ValueError(f"expand * d_model = {inner} must be a multiple of num_heads, "
                             f"got num_heads={num_heads}")
        self.inner, self.num_heads, self.head_dim = inner, num_heads, inner // num_heads
        self.forget_gate, self.chunk_size = forget_gate, chunk_size
        self.up_proj = Linear(d_model, 2 * inner, bias=False)
        self.conv = ShortConv(inner, d_conv)
        self.q, self.k, self.v = (BlockDiagonalLinear(inner, qkv_blocksize) for _ in range(3))
        self.gates = Linear(3 * inner, 2 * num_heads)
        with torch.no_grad():  # xLSTM's init: forget biases 3..6 (long memory), small input gates
            self.gates.weight.zero_()
            self.gates.bias[:num_heads].normal_(0, 0.1)
            self.gates.bias[num_heads:] = torch.linspace(3.0, 6.0, num_heads)
        self.norm = HeadNorm(num_heads, self.head_dim, kind="layer")
        self.skip = nn.Parameter(torch.ones(inner))
        self.down_proj = Linear(inner, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        dt, H, D = state_dtype(dtype), self.num_heads, self.head_dim
        z = lambda *s: torch.zeros(batch_size, *s, device=device, dtype=dt)  # noqa: E731
        return z(H, D, D), z(H, D), z(H), self.conv.init_state(batch_size, device, dt)

    def _forward(self, x, state, mode):
        *cell_state, conv_state = state
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        # x W_up^T as its two halves' products: x_m and z come out contiguous (no copies of
        # a strided half for the conv and the gates, no (B, T, 2 inner) cat in the backward)
        x_m, z = (linear(x, w) for w in self.up_proj.weight.split(self.inner))  # no bias
        # q's 1/sqrt(D) folded into its block weights (no (B, T, inner) scaling pass each way)
        scale = self.head_dim ** -0.5
        # [q, k, v] W_gates^T = x_c (W_q BD_q + W_k BD_k)^T + x_m (W_v BD_v)^T: the gates from
        # x_c and x_m through (2H, inner) maps built from the parameters, with no (B, T, 3 inner)
        # concatenation and no product over it (nor its backward's (rows, 2H) x (2H, 3 inner))
        Wq, Wk, Wv = self.gates.weight.split(self.inner, 1)
        Gc, Gm = self.q.right(Wq) + self.k.right(Wk), self.v.right(Wv)
        lib = (native_blockdiag.load()
               if backend.use_native(x_m, self.q.weight, self.k.weight, self.v.weight, Gc)
               else None)
        finite = False
        if lib is not None:  # v and x_m's gates in one C pass; x_m passes through it to the
            # conv, whose gradient of x_m that pass's backward adds (no addition after)
            v, _, g_m, s_m, x_m = native_blockdiag.blockdiag_gated(
                lib, x_m, self.v.weight, None, Gm, total=True, through=True)
        x_c, conv_state = self.conv(x_m, conv_state)
        if lib is not None:  # q, k and x_c's gates in one C pass (with the recurrence's gates
            # in chunk mode: _fused)
            gm = g_m + self.gates.bias
            out = self._fused(x_c, scale, Gc, gm, v, cell_state, s_m) if mode == "chunk" else None
            if out is not None:
                h, cell_state, x_skip = out
                return self.down_proj(self._head(h, x_skip, z)), (*cell_state, conv_state)
            q, k, g_c, s_c = native_blockdiag.blockdiag_gated(
                lib, x_c, self.q.weight * scale, self.k.weight, Gc, total=True)
            gates = g_c + gm
            # q, k, v and the gates all finite when this sum is (the kernels sum their outputs
            # as they write them): mlstm's C path then skips its own sums over q, k, v
            # (ops.finite.clean_inputs); else (or on an overflowing sum) it checks as before
            with torch.no_grad():
                finite = bool(torch.isfinite(s_c + s_m + gates.sum()))
        else:  # the gates' products through oneDNN on the CPU (ops.native.linear: MKL's
            # N = 8 products ran ~1.5x slower)
            q, k, v = self.q(x_c, scale), self.k(x_c), self.v(x_m)
            gates = linear(x_c, Gc, self.gates.bias) + linear(x_m, Gm)
        log_i, f = gates.to(cell_state[0].dtype).chunk(2, -1)
        log_f = F.logsigmoid(f) if self.forget_gate == "sigmoid" else f
        q, k, v = (t.view(B, T, H, D) for t in (q, k, v))
        if mode == "chunk":
            h, cell_state = mlstm(q, k, v, log_i, log_f, scale=1.0,
                                  initial_state=tuple(cell_state), chunk_size=self.chunk_size,
                                  finite=finite)
        else:
            h, cell_state = mlstm_recurrent(q, k, v, log_i, log_f, scale=1.0,
                                            initial_state=tuple(cell_state))
        return self.down_proj(self._head(h, x_c, z)), (*cell_state, conv_state)

    def _fused(self, x_c, scale, Gc, gm, v, cell_state, check):
        """Chunk mode's q, k, gates and recurrence from x_c in one C pass each way
        (ops.native.mlstm_scan.qk_gates: q and k never written): (h, (C, n, m), x_c passed
        through for the skip, its gradient added in that pass), or None where it does not run
        (not the C path, inside sequence_parallel, or a sum not finite)."""
        B, T, _ = x_c.shape
        if sequence_parallel.active() or not backend.use_native(x_c, gm, v, *cell_state):
            return None
        lib = native_mlstm.load()
        if lib is None:
            return None
        out = native_mlstm.qk_gates(lib, x_c, self.q.weight * scale, self.k.weight, Gc, gm,
                                    v.view(B, T, self.num_heads, self.head_dim),
                                    tuple(cell_state), self.forget_gate == "exp", check=check,
                                    plain=(_mlstm_gates_loop, _ssd_loop))
        return out

    def _head(self, h, x_c, z):
        """(GroupNorm_heads(h) + skip x_c) silu(z): one C pass each way on the CPU
        (ops.native.gated_norm), else autograd's."""
        B, T = x_c.shape[:2]
        n = self.norm
        if backend.use_native(h, x_c, z, n.weight, self.skip):
            lib = gated_norm.load()
            if lib is not None:
                return gated_norm.norm_gate(lib, h.reshape(B, T, self.inner), x_c, self.skip, z,
                                            n.weight.flatten(), n.bias.flatten(), self.head_dim,
                                            n.eps)
        return (n(h).reshape(B, T, self.inner) + self.skip * x_c) * F.silu(z)
