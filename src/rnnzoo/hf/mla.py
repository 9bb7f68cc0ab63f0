"""Multi-head latent attention (MLA; DeepSeek-AI 2024, "DeepSeek-V2", arXiv:2405.04434,
section 2.1) as Kimi Linear uses it (Kimi Team 2025, arXiv:2510.26692): keys and values
come up from one low-rank latent shared by all heads, and no position encoding (NoPE; the
decoupled "rope" key part is kept, shared by all heads, but not rotated).

    c_t       = RMSNorm(W_dkv x_t)                          (latent, kv_rank)
    k_r       = W_kr x_t                                     (shared key part, rope_dim)
    k_t^h     = [W_uk^h c_t ; k_r],   v_t^h = W_uv^h c_t     (per head: nope_dim + rope_dim, v_dim)
    q_t^h     = W_q^h x_t   or  W_uq^h RMSNorm(W_dq x_t)     (low-rank query with q_rank)
    y_t       = W_o concat_h softmax_{s<=t}(q_t^h . k_s^h / sqrt(nope_dim + rope_dim)) v_s^h

It is rnnzoo's `attention` with these projections (`_project`) and a value cache of its
own width: the cache (fixed capacity `max_len`, as `attention`'s) holds the per-head keys
and values expanded from the latent, not the latent itself. x: (B, T, d_model) -> (B, T,
d_model); state (k_cache (B, H, max_len, nope_dim + rope_dim), v_cache (B, H, max_len,
v_dim), position (B,)).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.dtypes import compute_dtype, state_dtype
from rnnzoo.layers.attention import Attention, set_heads
from rnnzoo.layers.base import RecurrentLayer
from rnnzoo.models.blocks import RMSNorm


class LatentAttention(Attention):
    """x: (B, T, d_model) -> y; state (k_cache, v_cache, position). Modes: `attention`'s."""

    def __init__(self, d_model: int, num_heads: int, kv_rank: int, nope_dim: int,
                 rope_dim: int, v_dim: int, q_rank: int | None = None, max_len: int = 1024,
                 norm_eps: float = 1e-6):
        RecurrentLayer.__init__(self, d_model)  # Attention's rotary checks do not apply
        H = num_heads
        set_heads(self, d_model, H, positive_int("nope_dim", nope_dim) + positive_int(
            "rope_dim", rope_dim), max_len)
        self.kv_rank, self.nope_dim, self.rope_dim = positive_int("kv_rank", kv_rank), nope_dim, rope_dim
        self.v_dim, self.g_proj = positive_int("v_dim", v_dim), None
        if q_rank is None:
            self.q_proj = nn.Linear(d_model, H * self.head_dim, bias=False)
        else:
            self.q_proj = nn.Sequential(nn.Linear(d_model, positive_int("q_rank", q_rank), bias=False),
                                        RMSNorm(q_rank, eps=norm_eps),
                                        nn.Linear(q_rank, H * self.head_dim, bias=False))
        self.kv_down = nn.Linear(d_model, kv_rank + rope_dim, bias=False)
        self.kv_norm = RMSNorm(kv_rank, eps=norm_eps)
        self.kv_up = nn.Linear(kv_rank, H * (nope_dim + v_dim), bias=False)
        self.out_proj = nn.Linear(H * v_dim, d_model, bias=False)

    def init_state(self, batch_size, device=None, dtype=None):
        k, _, position = super().init_state(batch_size, device, dtype)
        v = torch.zeros(*k.shape[:3], self.v_dim, device=device, dtype=state_dtype(dtype))
        return k, v, position

    def _project(self, x, start):
        """q, k: (B, H, T, nope_dim + rope_dim), q times 1/sqrt(nope_dim + rope_dim) (as
        Attention._project's); v: (B, H, T, v_dim); pos (B, T)."""
        B, T, _ = x.shape
        H, cdt = self.num_heads, compute_dtype(x)
        q = self.q_proj(x).to(cdt).view(B, T, H, self.head_dim)
        latent, k_rope = self.kv_down(x).split([self.kv_rank, self.rope_dim], -1)
        kv = self.kv_up(self.kv_norm(latent)).to(cdt).view(B, T, H, self.nope_dim + self.v_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], -1)
        k = torch.cat([k_nope, k_rope.to(cdt)[:, :, None].expand(B, T, H, self.rope_dim)], -1)
        pos = start[:, None] + torch.arange(T, device=x.device)
        return (q * self.head_dim ** -0.5).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), pos

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, kv_rank={self.kv_rank}, "
                f"nope_dim={self.nope_dim}, rope_dim={self.rope_dim}, v_dim={self.v_dim}, "
                f"max_len={self.max_len}")
