"""Recurrent depth: a latent state iterated K times by one core block, and its parallel sampler.

Geiping et al. 2025, "Scaling up Test-Time Compute with Latent Reasoning: A Recurrent Depth
Approach" (arXiv:2502.05171); the diffusion forcing sampler from Geiping, Yang & Su 2025,
"Efficient Parallel Samplers for Recurrent-Depth Models and Their Connection to Diffusion
Language Models" (arXiv:2510.14961).

    e   = P(x)                                  prelude: embedding and `prelude` blocks
    s_0 ~ N(0, sigma^2 I), truncated at 3 sigma (sigma = `init_std`; 0 gives zeros)
    s_k = norm(R(A [s_{k-1}; e]))               k = 1..K: adapter A (2d -> d) injects e
    p   = C(s_K)                                coda: `coda` blocks, norm, head

R is `core` blocks (models.blocks.Block around any registered layer), the same weights at
every iteration; each iteration k has its own mixer state along time, so the model is
causal when its layers are and streams: `step` equals `forward`, and `generate`
(SequenceModel's) is sequential decoding with K iterations per token. `backprop_depth`
keeps the gradient of only the last iterations (the paper's truncated backpropagation).

The diffusion forcing sampler (`diffusion_forcing_generate`, greedy; option names as in
the paper's code: inner_recurrence, headway, max_wavefront, exit threshold) decodes along
the diagonal. At every pass each position of the wavefront (the positions not yet
frozen) advances its latent by `inner_recurrence` iterations in one parallel call,
reading the others' current latents through the layers (one shared context, not one per
iteration); the coda redrafts every next token from the wavefront's latents, and
`headway` new positions enter with fresh s_0. The front position freezes (its token and
latent become context, run once through the layers' states) after `num_steps`
iterations, or, with an `exit_threshold`, when its latent moved less than that
(relative distance) in a pass where its own token and context were already final.
Settled (threshold small enough, and a core that contracts: the paper's "robust
recurrence") the latents are the fixed points of the same triangular system that
sequential decoding approaches as K grows, so it decodes the same tokens, in far fewer
passes than tokens times K. Left out: the paper's noise mixing into the latents and the
moving average of input embeddings (both off keeps the sampler deterministic), and its
freezing of every position up to the last settled one (we freeze from the front only,
which is what makes the settled result exact).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import int_in, positive, positive_int
from rnnzoo.models.blocks import RMSNorm
from rnnzoo.models.stack import ModelConfig, SequenceModel, zero_padded
from rnnzoo.ops.native.linear import Linear


class RecurrentDepth(SequenceModel):
    """inputs (B, T) tokens or (B, T, input_dim) -> (B, T, output_dim), state.

    `config.num_layers` must equal prelude + core + coda (blocks bottom first). State:
    (prelude states, K tuples of core states, coda states), each per block.
    """

    def __init__(self, config: ModelConfig, prelude: int = 1, core: int = 1, coda: int = 1,
                 num_steps: int = 4, init_std: float = 1.0, backprop_depth: int | None = None):
        sizes = (int_in("prelude", prelude, lo=0), int_in("core", core), int_in("coda", coda, lo=0))
        if config.num_layers != sum(sizes) or config.hybrid is not None:
            raise ValueError(f"num_layers must equal prelude + core + coda = {sum(sizes)} "
                             f"and hybrid be None, got num_layers={config.num_layers}, "
                             f"hybrid={config.hybrid!r}")
        super().__init__(config)
        self.sizes = sizes
        self.num_steps = int_in("num_steps", num_steps)
        self.init_std = positive("init_std", init_std, allow_zero=True)
        self.backprop_depth = positive_int("backprop_depth", backprop_depth, allow_none=True)
        d = config.d_model
        self.adapter = Linear(2 * d, d, bias=False)
        self.core_norm = RMSNorm(d)

    def parts(self):
        """(prelude blocks, core blocks, coda blocks)."""
        p, c, _ = self.sizes
        b = list(self.blocks)
        return b[:p], b[p:p + c], b[p + c:]

    def init_state(self, batch_size: int, device=None, dtype=None, num_steps=None) -> tuple:
        pre, core, coda = self.parts()
        st = [tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in bs)
              for bs in (pre, coda)]
        K = self.num_steps if num_steps is None else num_steps
        cores = tuple(tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype)
                            for b in core) for _ in range(K))
        return st[0], cores, st[1]

    def initial_latent(self, like, generator=None):
        """s_0 with the shape, dtype and device of `like`."""
        s = torch.zeros_like(like)
        if self.init_std > 0:
            nn.init.trunc_normal_(s, 0.0, self.init_std, -3 * self.init_std, 3 * self.init_std,
                                  generator=generator)
        return s

    @staticmethod
    def _run(blocks, x, states, step=False, **kw):
        states = (None,) * len(blocks) if states is None else states
        out = []
        for b, s in zip(blocks, states):
            x, s = b.step(x, s) if step else b(x, s, **kw)
            out.append(s)
        return x, tuple(out)

    def iterate(self, s, e, states, step=False, **kw):
        """One core iteration: norm(R(A [s; e])) -> (s', new core states)."""
        u, states = self._run(self.parts()[1], self.adapter(torch.cat([s, e], -1)), states,
                              step, **kw)
        return self.core_norm(u), states

    def _depth(self, e, state, step, generator, s0, **kw):
        B = e.shape[0]
        if state is None:
            state = self.init_state(B, device=e.device, dtype=e.dtype)
        pre_st, core_st, coda_st = state
        e, pre_st = self._run(self.parts()[0], e, pre_st, step, **kw)
        s = self.initial_latent(e, generator) if s0 is None else s0
        K, core_st = len(core_st), list(core_st)
        grad_from = K - self.backprop_depth if self.backprop_depth else 0
        for k in range(K):
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= grad_from):
                s, core_st[k] = self.iterate(s, e, core_st[k], step, **kw)
        y, coda_st = self._run(self.parts()[2], s, coda_st, step, **kw)
        return self.head(self.norm(y)), (pre_st, tuple(core_st), coda_st), s

    def forward(self, inputs, state=None, *, mode="auto", lengths=None, s0=None,
                generator=None, num_steps=None):
        """-> outputs (B, T, output_dim), state. s0 (B, T, d_model): the initial latent;
        num_steps: K for this call (a fresh state; a given state holds its own K)."""
        x, lengths, valid = self._embed_padded(inputs, lengths)
        if num_steps is not None:
            K = int_in("num_steps", num_steps)
            if state is None:
                state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype, num_steps=K)
            elif len(state[1]) != K:
                raise ValueError(f"num_steps={K} but the state holds {len(state[1])} iterations")
        y, state = self._depth(x, state, False, generator, s0, mode=mode, lengths=lengths)[:2]
        return zero_padded(y, valid), state

    def step(self, inputs_t, state=None, *, s0=None, generator=None):
        """inputs_t (B,) or (B, input_dim) -> (B, output_dim), next state."""
        return self._depth(self._embed(inputs_t), state, True, generator, s0)[:2]

    def _freeze(self, ctx, tokens, s):
        """The layers' states after the frozen prefix, advanced over tokens (B, n), latents s."""
        pre, _, coda = self.parts()
        e, pre_st = self._run(pre, self._embed(tokens), ctx[0])
        _, core_st = self.iterate(s, e, ctx[1])
        _, coda_st = self._run(coda, s, ctx[2])
        return pre_st, core_st, coda_st

    @torch.no_grad()
    def diffusion_forcing_generate(self, prompt: torch.Tensor, max_new_tokens: int, *,
                                   inner_recurrence: int = 1, num_steps: int | None = None,
                                   exit_threshold: float | None = None, headway: int = 1,
                                   max_wavefront: int | None = None, full_prefill: bool = True,
                                   generator: torch.Generator | None = None):
        """Greedy continuation of prompt (B, P) by `max_new_tokens` with the parallel sampler.

        Returns (tokens (B, P + max_new_tokens), passes), passes counting the parallel
        calls of the core (each `inner_recurrence` iterations). A position freezes after
        `num_steps` iterations (default the model's), or at the front of the wavefront
        once its latent moves less than `exit_threshold`; `headway` new positions enter
        a pass (the ones after the first hold a copy of its draft until redrafted);
        `max_wavefront` caps the positions in flight. `full_prefill` reads the prompt
        with the ordinary forward (num_steps iterations); otherwise the prompt's
        positions enter the wavefront too. Rows freeze a position together.
        """
        if self.config.vocab_size is None:
            raise ValueError("diffusion_forcing_generate needs a token model (vocab_size)")
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(f"prompt must have shape (batch, time >= 1), got {tuple(prompt.shape)}")
        new = int_in("max_new_tokens", max_new_tokens, lo=0)
        r = int_in("inner_recurrence", inner_recurrence)
        cap = int_in("num_steps", self.num_steps if num_steps is None else num_steps)
        thr = None if exit_threshold is None else positive("exit_threshold", exit_threshold)
        headway = int_in("headway", headway)
        wave = positive_int("max_wavefront", max_wavefront, allow_none=True)
        B, P = prompt.shape
        if new == 0:
            return prompt.clone(), 0
        tokens = torch.cat([prompt, prompt.new_zeros(B, new)], 1)
        last = P + new - 1                      # positions 0..last-1 decide the tokens 1..last
        pre, _, coda = self.parts()
        d = self.config.d_model
        fresh = lambda n: self.initial_latent(self.head.weight.new_zeros(B, n, d),  # noqa: E731
                                              generator)
        if full_prefill:
            logits, _, s_p = self._depth(self._embed(prompt), self.init_state(
                B, device=prompt.device, dtype=self.head.weight.dtype, num_steps=cap),
                False, generator, None)
            tokens[:, P] = logits[:, -1].argmax(-1)
            ctx = self._freeze((None, None, None), prompt, s_p)
            frozen, length = P, min(P + 1, last)    # window: positions frozen..length-1
        else:
            if wave is not None and P > wave:
                raise ValueError(f"the prompt ({P} tokens) does not fit max_wavefront={wave}: "
                                 f"use full_prefill or a larger max_wavefront")
            ctx, frozen, length = (None, None, None), 0, P
        s, count, passes = fresh(length - frozen), [0] * (length - frozen), 0
        while frozen < last:
            passes += 1
            e, _ = self._run(pre, self._embed(tokens[:, frozen:length]), ctx[0])
            for _ in range(r):
                s_old = s
                s, _ = self.iterate(s, e, ctx[1])
            count = [c + r for c in count]
            y, _ = self._run(coda, s, ctx[2])
            draft = self.head(self.norm(y)).argmax(-1)          # (B, W): tokens frozen+1..length
            first = max(frozen + 1, P)                           # the prompt's tokens stay
            tokens[:, first:length + 1] = draft[:, first - frozen - 1:]
            # freeze from the front: after num_steps iterations, or settled with its own
            # token and context final during this pass (it was the front)
            moved = ((s - s_old).norm(dim=-1) / s.norm(dim=-1).clamp_min(1e-30)).amax(0)
            n = 0
            while n < len(count) and frozen + n < last and (
                    count[n] >= cap or (thr is not None and n == 0 and float(moved[0]) < thr)):
                n += 1
            if n:
                ctx = self._freeze(ctx, tokens[:, frozen:frozen + n], s[:, :n])
                frozen += n
                s, count = s[:, n:], count[n:]
            # new positions enter with fresh latents, the first with the drafted token
            room = last - length if wave is None else min(last - length, wave - (length - frozen))
            h = max(0, min(headway, room))
            if h:
                tokens[:, length + 1:length + h] = tokens[:, length:length + 1]
                s = torch.cat([s, fresh(h)], 1)
                count += [0] * h
                length += h
        return tokens, passes


def build_recurrent_depth(prelude: int = 1, core: int = 1, coda: int = 1, num_steps: int = 4,
                          init_std: float = 1.0, backprop_depth: int | None = None,
                          **config) -> RecurrentDepth:
    """RecurrentDepth(ModelConfig(num_layers=prelude + core + coda, **config), ...)."""
    config.setdefault("num_layers", prelude + core + coda)
    return RecurrentDepth(ModelConfig(**config), prelude=prelude, core=core, coda=coda,
                          num_steps=num_steps, init_std=init_std, backprop_depth=backprop_depth)
