"""Sequence parallelism for the matrix-state recurrences, as LASP-2 does (Sun et al. 2025,
"LASP-2: Rethinking Sequence Parallelism for Linear Attention and Its Hybrid",
arXiv:2502.07563): the time axis is split across the ranks of a process group, rank r
holding steps [t_r, t_{r+1}), and the ranks exchange one summary each with ONE all-gather.

Every chunk op here has a state S (K, V) per head that evolves as

    S_t = M_t S_{t-1} + k_t u_t^T,    o_t = scale * S_t^T q_t   (linear in S_t)

with M_t the transition: diag(exp g_t) for gated linear attention (GLA, RetNet, linear
and lightning attention, HGRN2, Mamba-2's SSD), exp(g_t) (I - beta_t k_t k_t^T) for the
delta rule (DeltaNet, Gated DeltaNet, DeltaProduct). Over rank r's slice the final state
is affine in the state entering it, S_out = P_r S_in + S_r, with P_r = M_last ... M_first.
So rank r computes, locally and at the same time as the others:

    (o_loc, S_r) = op(q, k, v, S_0 = 0)           its own contribution
    (Q, P_r)     = op(q, k, v = 0, S_0 = I_K)     Q_t = scale * P_{<=t}^T q_t, P_r the whole
                                                   slice's transition (the delta family's
                                                   product of affine maps, a diagonal for GLA)

then all-gathers the pairs (P_j, S_j) of every rank (one collective of [P | S]), folds the
prefix S_in = P_{r-1}(... (P_0 S_0 + S_0') ...) + S_{r-1} of the ranks before it, and
corrects its outputs: o = o_loc + Q S_in. Every rank also folds all pairs, so each returns
the global final state, equal to that of one process. Backward: the exchange recomputes
the fold on the gathered pairs and sums, with one all-reduce, the gradients every rank
has for each rank's pair (all-reduce rather than reduce-scatter, which gloo lacks), so
the CPU (gloo) runs it as well as nccl; every rank joins that all-reduce, since each
rank's outputs pass through the exchange even where they read no other rank's pair.

The probe run with v = 0 and S_0 = I costs one more pass of the op with value width K;
LASP-2 fuses it into the same kernel, here it reuses the op unchanged, so every op that
is linear in (v, S_0) given (q, k, gates) gets sequence parallelism without a new kernel.

The stabilised mLSTM is not linear in its state (its normaliser divides by max(|n^T q|,
exp(-m))): `mlstm_lasp2` exchanges each rank's unnormalised slice summary instead and folds
the max-stabiliser max-plus (below, before `mlstm_summary`).

RWKV-7's generalised delta rule and KDA are linear in (v, S_0) too: their ops go through
`lasp2`. The diagonal recurrences h_t = a_t * h_{t-1} + b_t are the elementwise case
(`scan_lasp2` for ops.scan.linear_scan, `affine_lasp2` for Mamba's selective scan: below).

Usage: inside `with scope(group):` the ops that honour it (`ops.chunk.linear.
gated_linear_attention` and `mlstm`, `ops.chunk.delta.delta_rule` and `rwkv7`,
`ops.chunk.kda.kda`, `ops.momentum_delta.momentum_delta`, `ops.scan.linear_scan`,
`layers.mamba.selective_scan`) and the short
convolution (`layers.conv.causal_conv1d`, whose first steps need the previous rank's last
d_conv - 1 inputs: `halo`) treat their input as this rank's slice of a longer sequence;
the initial state is the whole sequence's (every rank passes the same one).
"""

from __future__ import annotations

import contextlib
import threading

import torch

from rnnzoo.dtypes import compute_dtype
from rnnzoo.ops import first_order

_local = threading.local()


@contextlib.contextmanager
def scope(group=None):
    """Within: the ops treat their inputs as this rank's time slice (group: a process group,
    None for the default one). Nested calls inside an op run locally."""
    import torch.distributed as td
    if not td.is_available() or not td.is_initialized():
        raise RuntimeError("sequence_parallel.scope needs an initialised process group "
                           "(torch.distributed.init_process_group, or torchrun)")
    previous = getattr(_local, "group", None), getattr(_local, "on", False)
    _local.group, _local.on = group, True
    try:
        yield
    finally:
        _local.group, _local.on = previous


def active() -> bool:
    """True inside `scope` (and not inside an op already split)."""
    return getattr(_local, "on", False)


@contextlib.contextmanager
def _local_only():
    on = getattr(_local, "on", False)
    _local.on = False
    try:
        yield
    finally:
        _local.on = on


def rank_and_world(group=None) -> tuple[int, int]:
    import torch.distributed as td
    return td.get_rank(group), td.get_world_size(group)


class _AllReduce(first_order.Transformable):
    """The sum over the ranks of `t`, differentiable any number of times: its backward is
    itself (the gradient of a sum over ranks, seen from every rank, is the sum of the ranks'
    gradients). torch.distributed.nn's all_reduce does the same and is deprecated."""

    @staticmethod
    def forward(ctx, group, t):
        import torch.distributed as td
        ctx.group = group
        out = t.clone(memory_format=torch.contiguous_format)
        td.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        return None, _AllReduce.apply(ctx.group, g)


class _Exchange(first_order.Function):
    """outputs = combine(every rank's `local`, stacked (W, ...), this rank, *extra), with one
    all-gather of `local` in the forward pass. Backward recomputes `combine` on the gathered
    values and sums the gradients of every rank's copy of the gathered tensor (one
    all-reduce, which gloo has), keeping this rank's. Because the collective lives in this
    function's backward and every rank's outputs depend on it (its own result, whatever the
    rank), every rank joins it, also where a rank's result does not read the others.

    Under create_graph=True `twice` runs the same exchange in differentiable collectives
    (_AllReduce, on gloo's all-reduce): the gathered tensor as the all-reduce
    of every rank's `local` in its own slot (zeros elsewhere), the gradient of `combine` at it
    by autograd with create_graph, summed over ranks by a second all-reduce. Differentiating
    that again runs the two all-reduces' backward (all-reduces) on every rank: each rank's
    gradient of the gathered tensor is made to depend on it (a zero term, zero also where
    the gathered values are not finite) so that every rank joins them, as in the
    first-order backward. World W costs W slots in the first
    all-reduce where the all-gather moved one: the create_graph path only."""

    @staticmethod
    def forward(ctx, group, combine, local, *extra):
        import torch.distributed as td
        world = td.get_world_size(group)
        parts = [torch.empty_like(local) for _ in range(world)]
        td.all_gather(parts, local.contiguous(), group=group)
        gathered = torch.stack(parts)
        ctx.group, ctx.combine = group, combine
        ctx.save_for_backward(gathered, *extra, local)  # local (a reference) for `twice`
        with torch.no_grad():
            outs = combine(gathered, td.get_rank(group), *extra)
        return tuple(o.clone() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        import torch.distributed as td
        gathered, *extra = ctx.saved_tensors[:-1]
        with torch.enable_grad():
            leaves = [gathered.detach().requires_grad_()] + \
                [e.detach().requires_grad_(e.requires_grad) for e in extra]
            outs = ctx.combine(leaves[0], td.get_rank(ctx.group), *leaves[1:])
            wanted = [t for t in leaves if t.requires_grad]
            pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
            got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                           allow_unused=True) if pairs else [None] * len(wanted))
            result = [next(got) if t.requires_grad else None for t in leaves]
        g = torch.zeros_like(gathered) if result[0] is None else result[0].contiguous()
        td.all_reduce(g, group=ctx.group)
        return (None, None, g[td.get_rank(ctx.group)], *result[1:])

    @staticmethod
    def twice(ctx, *grads):  # under create_graph: the exchange in differentiable collectives
        import torch.distributed as td
        *extra, local = ctx.saved_tensors[1:]
        group, needs = ctx.group, ctx.needs_input_grad[2:]
        rank, world = td.get_rank(group), td.get_world_size(group)
        with torch.enable_grad():
            local, *extra = (t.view_as(t) if t is not None else None for t in (local, *extra))
            zero = torch.zeros_like(local)
            gathered = _AllReduce.apply(group, torch.stack([local if r == rank else zero
                                                            for r in range(world)]))
            if not gathered.requires_grad:  # local wants no gradient: `combine`'s is still taken
                gathered.requires_grad_()
            outs = ctx.combine(gathered, rank, *extra)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            wanted = [gathered] + [e for e, n in zip(extra, needs[1:]) if n]
            got = [None] * len(wanted)
            if pairs:
                got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                          create_graph=True, allow_unused=True)
            tie = gathered.mul(0).nan_to_num()  # 0, finite, on gathered's graph: every rank
            dg = tie if got[0] is None else got[0] + tie  # joins its all-reduce's backward
            d_local = _AllReduce.apply(group, dg)[rank]
        rest = iter(got[1:])
        return (None, None, d_local if needs[0] else None,
                *(next(rest) if n else None for n in needs[1:]))


def exchange(local: torch.Tensor, combine, *extra, group=None):
    """combine(stack of every rank's `local`, this rank, *extra) -> tuple of tensors, with one
    all-gather forward and one all-reduce backward (see _Exchange)."""
    return _Exchange.apply(group, combine, local, *extra)


def _fold(K, V, initial_zero):
    """combine for lasp2: the state entering this rank and the final state, then outputs."""
    def combine(pairs, rank, o_loc, Q, S0):
        S = torch.zeros_like(S0) if initial_zero else S0
        S_in = S
        for j in range(pairs.shape[0]):
            if j == rank:
                S_in = S
            P_j, S_j = pairs[j].split([K, V], -1)
            S = P_j @ S + S_j
        o = o_loc + torch.einsum("bthk,bhkv->bthv", Q.to(S_in.dtype), S_in).to(o_loc.dtype)
        return o, S
    return combine


def lasp2(op, q, k, v, *gates, initial_state=None, **options):
    """LASP-2 around a chunk op `op(q, k, v, *gates, initial_state=..., **options) -> (o, S)`
    that is linear in (v, initial_state): q, k (B, T_r, H, K), v (B, T_r, H, V) this rank's
    slice; initial_state (B, H, K, V) the whole sequence's (or None: zeros). Returns this
    rank's outputs (B, T_r, H, V) and the whole sequence's final state (B, H, K, V)."""
    group = getattr(_local, "group", None)
    B, _, H, K = k.shape
    V = v.shape[-1]
    with _local_only():
        o_loc, S_r = op(q, k, v, *gates, initial_state=None, **options)
        eye = torch.eye(K, dtype=S_r.dtype, device=S_r.device).expand(B, H, K, K)
        Q, P_r = op(q, k, v.new_zeros(*v.shape[:-1], K), *gates, initial_state=eye, **options)
    S0 = S_r if initial_state is None else initial_state.to(S_r.dtype)  # S_r: shape only
    combine = _fold(K, V, initial_zero=initial_state is None)
    o, S = exchange(torch.cat([P_r, S_r], -1), combine, o_loc, Q, S0, group=group)
    return o, S


# -- mLSTM: the stabilised normaliser is not linear in the state ------------------------------
# Over a slice with log forget gates f_t and input gates i~_t, the memory is (up to exp(-m))
# a weighted sum: token j enters the slice-end state with log weight w_j = F - F_j + i~_j
# (F the slice's total log forget, F_j the sum up to j inclusive), the entering state with F.
# So a slice is summarised, without the state entering it, by (C_loc, n_loc, m_loc, F) with
# m_loc = max_j w_j and C_loc = sum_j exp(w_j - m_loc) k_j v_j^T, n_loc likewise with k_j,
# and a state (C, n, m) passes through it as
#     m' = max(F + m, m_loc),  C' = exp(F + m - m') C + exp(m_loc - m') C_loc   (n' alike),
# the loop's own update with the slice for one step: a max-plus fold, associative, giving
# the stabiliser m exactly as the loop does. The ranks all-gather their summaries, each
# folds those before it into its entering state and runs its slice from that state.


def mlstm_summary(k, v, log_i, log_f):
    """The slice's own part of the mLSTM state: k (B, T, H, K), v (B, T, H, V), log_i, log_f
    (B, T, H) in the state's dtype -> (C_loc (B, H, K, V), n_loc (B, H, K), m_loc (B, H),
    F (B, H)): the state after the slice from an empty memory (m = -inf), and its log forget."""
    after = log_f.flip(1).cumsum(1).flip(1)  # sum of log f from step j on (inclusive)
    w = after - log_f + log_i  # (B, T, H): F - F_j + i~_j
    m = w.max(1).values
    e = (w - torch.where(m.isfinite(), m, torch.zeros_like(m))[:, None]).exp()
    C = torch.einsum("bth,bthk,bthv->bhkv", e, k, v)
    return C, torch.einsum("bth,bthk->bhk", e, k), m, after[:, 0]


def mlstm_fold(state, summary):
    """The mLSTM state (C, n, m) after a slice summarised by `summary` (mlstm_summary's)."""
    C, n, m = state
    C_loc, n_loc, m_loc, F = summary
    m_new = torch.maximum(F + m, m_loc)
    a, b = (F + m - m_new).exp(), (m_loc - m_new).exp()
    return (a[..., None, None] * C + b[..., None, None] * C_loc,
            a[..., None] * n + b[..., None] * n_loc, m_new)


def _mlstm_combine(K, V):
    """combine for mlstm_lasp2: (the state entering this rank, the final state)."""
    def combine(summaries, rank, C0, n0, m0):
        state = entering = (C0, n0, m0)
        for j in range(summaries.shape[0]):
            if j == rank:
                entering = state
            C_j, n_j, m_j, F_j = summaries[j].split([K * V, K, 1, 1], -1)
            state = mlstm_fold(state, (C_j.unflatten(-1, (K, V)), n_j, m_j[..., 0], F_j[..., 0]))
        return (*entering, *state)
    return combine


def mlstm_lasp2(op, q, k, v, log_i, log_f, *, initial_state=None, **options):
    """LASP-2 for the stabilised mLSTM op `op(q, k, v, log_i, log_f, initial_state=(C, n, m),
    **options) -> (h, (C, n, m))`: q, k (B, T_r, H, K), v (B, T_r, H, V), log_i, log_f
    (B, T_r, H) this rank's slice; initial_state the whole sequence's (None: zeros, as the
    op). One all-gather of each rank's (C_loc, n_loc, m_loc, F); this rank then runs its
    slice from the folded entering state. Returns this rank's h (B, T_r, H, V) and the
    whole sequence's final (C, n, m)."""
    group = getattr(_local, "group", None)
    B, _, H, K = k.shape
    V = v.shape[-1]
    dt = compute_dtype(q)
    C_loc, n_loc, m_loc, F = mlstm_summary(*(t.to(dt) for t in (k, v, log_i, log_f)))
    local = torch.cat([C_loc.flatten(2), n_loc, m_loc[..., None], F[..., None]], -1)
    if initial_state is None:
        initial_state = (C_loc.new_zeros(B, H, K, V), C_loc.new_zeros(B, H, K),
                         C_loc.new_zeros(B, H))
    state0 = tuple(s.to(dt) for s in initial_state)
    *entering, C, n, m = exchange(local, _mlstm_combine(K, V), *state0, group=group)
    with _local_only():
        h, _ = op(q, k, v, log_i, log_f, initial_state=tuple(entering), **options)
    return h, (C, n, m)


# -- diagonal recurrences h_t = a_t * h_{t-1} + b_t (ops.scan; Mamba's selective scan) -------------
# The state after rank r's slice is affine in the state entering it, elementwise:
# h_out = P_r * h_in + h_r with P_r the product of the slice's a_t and h_r its final state
# from zero. The ranks all-gather (P_r, h_r) and fold them as `lasp2` does, with products
# elementwise instead of matrix ones; in reverse (h_t = a_t h_{t+1} + b_t) the fold runs from
# the last rank down. Each position is then corrected by its running product of a times the
# entering state (`scan_lasp2`), or the slice is run again from the entering state
# (`affine_lasp2`, for an op whose per-step states are too large to keep).


def _diagonal_fold(reverse):
    """combine for diagonal_fold: (the state entering this rank, the final state)."""
    def combine(pairs, rank, h0):
        state = entering = h0
        order = range(pairs.shape[0] - 1, -1, -1) if reverse else range(pairs.shape[0])
        for j in order:
            if j == rank:
                entering = state
            P_j, h_j = pairs[j].unbind(0)
            state = P_j * state + h_j
        return entering, state
    return combine


def diagonal_fold(P: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, *, reverse=False):
    """P, h (B, *S): this rank's slice transition (the product of its a_t) and its final
    state from zero; h0 (B, *S) the whole sequence's initial state (None: zeros). One
    all-gather. Returns (the state entering this rank's slice, the whole sequence's final
    state; in reverse, the state after the slice and the whole sequence's h at step 0)."""
    group = getattr(_local, "group", None)
    h0 = torch.zeros_like(h) if h0 is None else h0.to(h.dtype)
    local = torch.stack([P.to(h.dtype).expand_as(h), h])
    return exchange(local, _diagonal_fold(reverse), h0, group=group)


def scan_lasp2(scan, a, b, h0=None, *, reverse=False):
    """LASP-2 for `scan(a, b, h0, reverse=...) -> (h (B, T_r, *S), last h)`, the diagonal
    recurrence (ops.scan.linear_scan's arguments; this rank's slice of the steps, h0 the
    whole sequence's). Two local scans, from zero and with b = 0 from ones (the running
    products of a), one all-gather, then h = h_local + running product * entering state.
    Returns this rank's h and the whole sequence's last h (h at step 0 in reverse)."""
    with _local_only():
        h_loc, h_r = scan(a, b, None, reverse=reverse)
        prods, P = scan(a, torch.zeros_like(h_loc), torch.ones_like(h_r), reverse=reverse)
    h_in, h_T = diagonal_fold(P, h_r, h0, reverse=reverse)
    return h_loc + prods * h_in.unsqueeze(1), h_T


def affine_lasp2(run, h0):
    """LASP-2 for an op whose final state is affine in its initial one with an elementwise
    transition: run(h, probe) -> (y, last h) runs this rank's slice from state h (None:
    zeros), with its inputs (the b_t) zeroed when probe; h0 the whole sequence's initial
    state (None: zeros). Runs the slice from zero (its h_r) and as a probe from ones (its
    transition P), exchanges (P, h_r) once, and runs it again from the entering state.
    Returns (this rank's y, the whole sequence's final state)."""
    with _local_only():
        _, h_r = run(None, False)
        _, P = run(torch.ones_like(h_r), True)
    h_in, h_T = diagonal_fold(P, h_r, h0)
    with _local_only():
        y, _ = run(h_in, False)
    return y, h_T


def _halo(pairs, rank, conv_state):
    return (conv_state if rank == 0 else pairs[rank - 1]), pairs[-1]


def halo(x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A short convolution's view of the split sequence: x (B, T_r, C) this rank's inputs,
    conv_state (B, K - 1, C) the whole sequence's initial one. Returns (the K - 1 inputs
    before this rank's slice: the previous rank's last ones, conv_state on rank 0; the
    whole sequence's final conv state: the last rank's last K - 1 inputs)."""
    n = conv_state.shape[1]
    if n == 0:
        return conv_state, conv_state
    if x.shape[1] < n:
        raise ValueError(f"sequence parallel: each rank needs at least d_conv - 1 = {n} steps, "
                         f"this one has {x.shape[1]}; use fewer processes or longer sequences")
    group = getattr(_local, "group", None)
    return exchange(x[:, -n:].to(conv_state.dtype), _halo, conv_state, group=group)


def _prefix(totals, rank):
    return totals[:rank].sum(0), totals.sum(0)


def prefix_sum(total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum of `total` over the ranks before this one, its sum over all ranks), with
    gradients: total (...) this rank's slice sum of a quantity summed over time (GateLoop's
    phase, whose cos/sin make the keys of each slice absolute)."""
    return exchange(total, _prefix, group=getattr(_local, "group", None))


def offset(length: int) -> tuple[int, int]:
    """(the first step of this rank's slice, the whole sequence's length) from every rank's
    slice length (one all-gather of an int64 tensor on the process group's device): what a
    layer whose positions are absolute (RetNet's rotation) needs."""
    import torch.distributed as td
    group = getattr(_local, "group", None)
    device = "cuda" if td.get_backend(group) == "nccl" else "cpu"
    lengths = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(td.get_world_size(group))]
    td.all_gather(lengths, torch.tensor([length], dtype=torch.int64, device=device), group=group)
    lengths = torch.cat(lengths).tolist()
    rank = td.get_rank(group)
    return sum(lengths[:rank]), sum(lengths)


def split(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """This rank's slice of x along `dim` (torch.tensor_split: as even as can be)."""
    rank, world = rank_and_world(group)
    return torch.tensor_split(x, world, dim=dim)[rank]
