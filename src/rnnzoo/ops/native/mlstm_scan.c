/* The stabilised mLSTM recurrence (Beck et al. 2024, xLSTM, eqs. 19-27 with appendix A.2's
   max-stabiliser m; rnnzoo.ops.chunk.linear.mlstm_recurrent is the reference) less its
   memory C, which is Mamba-2's SSD (ssd_scan.c) with the log-decay g_t and the key i_t k_t
   that this pass returns; one (batch row, head) pair at a time:

       m_t = max(lf_t + m_{t-1}, li_t),  g_t = lf_t + m_{t-1} - m_t,  i_t = exp(li_t - m_t)
       kp_t = i_t k_t,   n_t = exp(g_t) n_{t-1} + kp_t,   s_t = q_t . n_t,
       den_t = max(|s_t|, exp(-m_t)) + eps,   qs_t = q_t / den_t

   (the caller: C_t = exp(g_t) C_{t-1} + kp_t v_t^T and h_t = C_t^T qs_t through ssd_scan:
   the division by den_t rides on q, K numbers a step, in this pass).

   Backward: the exact chain rule with m an ordinary variable (the maximum routes its gradient
   to the larger argument, half each on a tie, as torch.maximum; |s|'s as torch.abs). Given
   the gradients dg, dkp, dqs of the three outputs a step and dn_T, dm_T, going down with dn
   the gradient of n_t: d den = -(q_t . dqs_t) / den^2 gives ds_t and dm_t (den's share of
   m's gradient), then
       dn += ds_t q_t,   dq_t = ds_t n_t + dqs_t / den_t,   dk_t = i_t (dkp_t + dn),
       L = k_t . dk_t   (d / d log i_t),   G = dg_t + f_t n_{t-1} . dn   (d / d g_t),
       dn <- f_t dn,   M = dm_t + (the gradient from step t + 1) - G - L   (d / d m_t),
       dli_t = L + M (1 - w),  dlf_t = G + M w,  to m_{t-1}: G + M w,
   w = 1, 0 or 1/2 as lf_t + m_{t-1} beats, loses to or ties li_t. n_t is recomputed
   forward into a (T + 1) K buffer (K numbers a step: cheap next to the memory's K V), and
   that ascending pass also does what needs no later step (ds_t, den's share of dm_t, dq_t):
   the descending pass, whose rows the prefetchers serve worse, carries dn and dm only.

   Layouts (row-major, contiguous): q, k, kp, qs and their gradients (batch, T, H, K) (q
   already scaled); li, lf, g and their gradients, m and s (kept for the backward) (batch, T,
   H); n0, nT, dnT, dn0 (batch, H, K); m0, mT, dmT, dm0 (batch, H). Each function does the (batch row, head) pairs [p0, p1).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "mlstm_scan.c"
#include "each_type.h"

#else

/* The pairs [p0, p1) as runs of heads [h0, h1) of one batch row b: each step t goes over
   those heads (their rows lie side by side, one contiguous read; the heads' chains are
   independent, so the CPU overlaps them), the same arithmetic per head as one head at a time. */
#define HEAD_RUNS(p, p0, p1, b, h0, h1)                                                        \
    for (long p = p0, b, h0, h1; p < p1 && (b = p / H, h0 = p % H,                             \
                                            h1 = h0 + (p1 - p) < H ? h0 + (p1 - p) : H, 1);   \
         p += h1 - h0)

/* One step of one head's gates pass (mlstm_gates_fwd's and mlstm_qk_fwd's): from log i~ (li),
   log f (lf), q_t, k_t (K) and the head's n (K, updated) and m (*m, updated): m_t = max(lf +
   m, li), k'_t = e^(li - m_t) k_t, n_t = e^(lf + m - m_t) n + k'_t, s_t = q_t . n_t,
   qs_t = q_t / (max(|s_t|, e^-m_t) + eps); writes kp, qs (K) and the row's g, m_t, s_t. */
static inline __attribute__((always_inline)) void NAME(gate_step)(
    T li, T lf, const T *restrict qt, const T *restrict kt, T *restrict n, T *restrict m,
    T *restrict kpt, T *restrict qst, T *restrict g, T *restrict m_out, T *restrict s_out,
    long K, double eps) {
    const T a = lf + *m, mn = a > li ? a : li;
    const T gt = a - mn, f = EXP(gt), i = EXP(li - mn);
    T s = 0;
#pragma omp simd reduction(+:s)
    for (long r = 0; r < K; r++) {
        const T ik = i * kt[r];
        kpt[r] = ik;
        n[r] = f * n[r] + ik;
        s += qt[r] * n[r];
    }
    const T as = s < 0 ? -s : s, e = EXP(-mn), inv = 1 / ((as > e ? as : e) + (T)eps);
#pragma omp simd
    for (long r = 0; r < K; r++) qst[r] = qt[r] * inv;
    *g = gt;
    *m_out = mn;
    *s_out = s;
    *m = mn;
}

/* One step of one head's descending gates pass (mlstm_gates_bwd's and mlstm_qk_bwd's): from
   ds_t (dst), i_t, f_t, dg_t, den's share of dm_t (dmt), the gradient dm from step t + 1, a =
   lf_t + m_{t-1} and li_t, and q_t, k_t, dkp_t, n_{t-1} (prev) (K): with dn (K, updated from
   step t + 1's to step t - 1's) dn += ds_t q_t, dk_t = i_t (dkp_t + dn), L = k_t . dk_t,
   X = n_{t-1} . dn, dn <- f_t dn; then G = dg_t + f_t X, M = dmt + dm - G - L and the split
   w of m_t = max(a, li_t): *dli = L + M (1 - w), *dlf = G + M w (also m_{t-1}'s gradient).
   `with_dq` (a constant at each call): also dq_t = ds_t n_t + dqs_t inv in the same loop. */
static inline __attribute__((always_inline)) void NAME(gate_back)(
    const T *restrict qt, const T *restrict kt, const T *restrict dkpt, const T *restrict prev,
    T *restrict dn, T *restrict dkt, T dst, T i, T f, T dgt, T dmt, T dm, T a, T li, long K,
    long with_dq, const T *restrict nt, const T *restrict dqst, T inv, T *restrict dqt,
    T *restrict dli, T *restrict dlf) {
    T L = 0, X = 0;
#pragma omp simd reduction(+:L, X)
    for (long r = 0; r < K; r++) {
        if (with_dq) dqt[r] = dst * nt[r] + dqst[r] * inv;
        const T dnr = dn[r] + dst * qt[r], dkr = i * (dkpt[r] + dnr);
        dkt[r] = dkr;
        L += kt[r] * dkr;
        X += prev[r] * dnr;
        dn[r] = f * dnr;
    }
    const T G = dgt + f * X, M = dmt + dm - G - L;
    const T w = a > li ? 1 : (a < li ? 0 : (T)0.5);  /* torch.maximum's split */
    *dli = L + M * (1 - w);
    *dlf = G + M * w;
}

void NAME(mlstm_gates_fwd)(const T *restrict q, const T *restrict k, const T *restrict li,
                           const T *restrict lf, const T *restrict n0, const T *restrict m0,
                           T *restrict g, T *restrict kp, T *restrict qs, T *restrict m_out,
                           T *restrict s_out, T *restrict nT, T *restrict mT, double eps,
                           long Tn, long H, long K, long p0, long p1) {
    HEAD_RUNS(p, p0, p1, b, h0, h1) {
        memcpy(nT + p * K, n0 + p * K, (h1 - h0) * K * sizeof(T));
        memcpy(mT + p, m0 + p, (h1 - h0) * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            for (long hh = h0; hh < h1; hh++) {
                const long row = (b * Tn + t) * H + hh;
                NAME(gate_step)(li[row], lf[row], q + row * K, k + row * K,
                                nT + (b * H + hh) * K, mT + b * H + hh, kp + row * K,
                                qs + row * K, g + row, m_out + row, s_out + row, K, eps);
            }
        }
    }
}

void NAME(mlstm_gates_bwd)(const T *restrict q, const T *restrict k, const T *restrict li,
                           const T *restrict lf, const T *restrict n0, const T *restrict m0,
                           const T *restrict g, const T *restrict m_in, const T *restrict s_in,
                           const T *restrict dg, const T *restrict dkp, const T *restrict dqs,
                           const T *restrict dnT, const T *restrict dmT, T *restrict dq,
                           T *restrict dk, T *restrict dli, T *restrict dlf, T *restrict dn0,
                           T *restrict dm0, double eps, long Tn, long H, long K, long p0,
                           long p1) {
    /* n_0 .. n_T of a run's heads: n_{t-1} of head hh at ns + (t nh + hh - h0) K; ds, dms:
       each step's ds_t and den's share of dm_t (t nh + hh - h0) */
    T *ns = malloc(((Tn + 1) * H * K + 2 * Tn * H) * sizeof(T));
    T *dss = ns + (Tn + 1) * H * K, *dms = dss + Tn * H;
    HEAD_RUNS(p, p0, p1, b, h0, h1) {
        const long nh = h1 - h0;
        memcpy(ns, n0 + p * K, nh * K * sizeof(T));
        /* ascending: n_t, and what does not depend on the later steps' gradients: den's
           gradient (to s_t and m_t) and dq_t = ds_t n_t + dqs_t / den_t */
        for (long t = 0; t < Tn; t++)
            for (long hh = h0; hh < h1; hh++) {
                const long row = (b * Tn + t) * H + hh, j = t * nh + hh - h0;
                const T mt = m_in[row], f = EXP(g[row]), i = EXP(li[row] - mt), s = s_in[row];
                const T *restrict kt = k + row * K, *restrict prev = ns + j * K,
                        *restrict qt = q + row * K, *restrict dqst = dqs + row * K;
                T *restrict nt = ns + (j + nh) * K, *restrict dqt = dq + row * K, Y = 0;
#pragma omp simd
                for (long r = 0; r < K; r++) nt[r] = f * prev[r] + i * kt[r];
                /* den = max(|s|, exp(-m)) + eps, qs = q / den: d den = -(q . dqs) / den^2, to
                   |s| or exp(-m) as torch.maximum splits it */
#pragma omp simd reduction(+:Y)
                for (long r = 0; r < K; r++) Y += qt[r] * dqst[r];
                const T as = s < 0 ? -s : s, e = EXP(-mt), inv = 1 / ((as > e ? as : e) + (T)eps);
                const T dden = -Y * inv * inv, ws = as > e ? 1 : (as < e ? 0 : (T)0.5);
                const T dst = dden * ws * (s > 0 ? 1 : (s < 0 ? -1 : 0));
                dss[j] = dst;
                dms[j] = -dden * (1 - ws) * e;
#pragma omp simd
                for (long r = 0; r < K; r++) dqt[r] = dst * nt[r] + dqst[r] * inv;
            }
        if (dnT) memcpy(dn0 + p * K, dnT + p * K, nh * K * sizeof(T));
        else memset(dn0 + p * K, 0, nh * K * sizeof(T));
        for (long hh = h0; hh < h1; hh++) dm0[b * H + hh] = dmT ? dmT[b * H + hh] : 0;
        for (long t = Tn - 1; t >= 0; t--) {  /* descending: the gradients of n and m */
            for (long hh = h0; hh < h1; hh++) {
                const long row = (b * Tn + t) * H + hh, j = t * nh + hh - h0;
                T *restrict dn = dn0 + (b * H + hh) * K;
                const T dm = dm0[b * H + hh];
                const T mp = t ? m_in[row - H] : m0[b * H + hh], a = lf[row] + mp, mt = m_in[row];
                const T f = EXP(g[row]), i = EXP(li[row] - mt), dst = dss[j], dmt = dms[j];
                const T *restrict qt = q + row * K, *restrict kt = k + row * K,
                        *restrict dkpt = dkp + row * K, *restrict prev = ns + j * K;
                T *restrict dkt = dk + row * K;
                if (t >= 2) {  /* rows read in descending order: the prefetchers miss them */
                    const long ahead = (row - 2 * H) * K;
                    for (long r = 0; r < K; r += 64 / (long)sizeof(T)) {
                        __builtin_prefetch(q + ahead + r);
                        __builtin_prefetch(k + ahead + r);
                        __builtin_prefetch(dkp + ahead + r);
                        __builtin_prefetch(dk + ahead + r, 1);
                    }
                }
                NAME(gate_back)(qt, kt, dkpt, prev, dn, dkt, dst, i, f, dg[row], dmt, dm, a,
                                li[row], K, 0, NULL, NULL, 0, NULL, dli + row, dlf + row);
                dm0[b * H + hh] = dlf[row];  /* to m_{t-1} */
            }
        }
    }
    free(ns);
}

#undef HEAD_RUNS

/* mlstm_qk_fwd / mlstm_qk_bwd: the layer's (layers.mlstm) q, k and gates with the pass above,
   fused: from x_c's rows, by blocks of bl steps of one batch row, blockdiag.h's gated rows
   give q = x_c BDq^T (q's scale folded into Wq), k = x_c BDk^T and gc = x_c Gc^T into a
   scratch block (in L1 / L2: q and k never reach memory), then each step of the block does
   the gates,
       li = gc[:H] + gm[:H],   fr = gc[H:] + gm[H:],   lf = log sigmoid(fr) (lf = fr: exp_gate)
   (aux = [li | lf | sigmoid(-fr)] kept for the backward) and the recurrence above
   (mlstm_gates_fwd's arithmetic); n at each block's start goes to nck. *sum: the sum of this
   call's q, k and gc entries (the finiteness check).
   The backward goes down by blocks: q and k recomputed, the block's n_t from its checkpoint,
   then each step descending does mlstm_gates_bwd's two passes' work (dq and dk into scratch)
   and the gates' gradient dpre = [dli | dlf sigmoid(-fr)], and the block's dx, dWq, dWk, dGc
   go through blockdiag.h's gated backward rows.

   Layouts: x (B, T, H K) with row stride xs (rows of B T); Wq, Wk (H K / bs, bs, bs); Gc
   (2 H, H K); gm, dpre (B, T, 2 H); aux (B, T, 3 H); nck (B, ceil(T / bl), H K); dx and dx0
   (B, T, H K) contiguous (dx0, or NULL: the gradient of the layer's other use of x, added
   into dx); dWq, dWk, dGc this call's own slices; the rest as above. Each function does the
   batch rows [b0, b1). */

#include "tile.h"
#define BD_ONLY4  /* bs = 4 (xLSTM's) as a constant, others by the general body: compile time */
#include "blockdiag.h"

/* one copy each of the gated rows' bodies (not inlined at each call: compile time) */
static __attribute__((noinline)) void NAME(qk_rows)(const T *restrict x, const T *restrict W0,
                                                    const T *restrict W1, const T *restrict G,
                                                    T *restrict y0, T *restrict y1, T *restrict gg,
                                                    long xs, long dim, long bs, long ng, long nr,
                                                    const T *restrict v, long c0, T *restrict sum) {
    NAME(bd_fwd_rows)(x, W0, W1, G, y0, y1, gg, xs, dim, bs, ng, 0, nr, v, c0, sum);
}

static __attribute__((noinline)) void NAME(qk_rows_bwd)(
    const T *restrict x, const T *restrict W0, const T *restrict W1, const T *restrict G,
    const T *restrict dy0, const T *restrict dy1, const T *restrict dg, T *restrict dx,
    T *restrict dW0, T *restrict dW1, T *restrict dG, long xs, long dim, long bs, long ng,
    long nr, T *restrict v, long c0, const T *restrict dx0) {
    NAME(bd_bwd_rows)(x, W0, W1, G, dy0, dy1, dg, dx, dW0, dW1, dG, xs, dim, bs, ng, 0, nr, v, c0,
                      dx0);
}

#ifndef QK_AHEAD  /* steps ahead the backward's descending pass prefetches dkp's and dqs' rows */
#define QK_AHEAD 2
#endif

/* a block's gates, nt steps: aux's rows [li | lf | sg] from gc (nt, 2 H) and gm's rows
   (nt, 2 H): li = gc + gm, fr = gc + gm, lf = log sigmoid(fr) = min(fr, 0) - log1p(exp(-|fr|))
   as torch's and sg = sigmoid(-fr) = d lf / d fr (exp_gate: lf = fr, sg = 1) */
static inline void NAME(gates)(const T *restrict gc, const T *restrict gm, T *restrict aux,
                               long nt, long H, long exp_gate) {
    for (long j = 0; j < nt; j++) {
        const T *restrict c = gc + 2 * j * H, *restrict d = gm + 2 * j * H;
        T *restrict a = aux + 3 * j * H;
        for (long h = 0; h < H; h++) a[h] = c[h] + d[h];
        if (exp_gate) {
            for (long h = 0; h < H; h++) {
                a[H + h] = c[H + h] + d[H + h];
                a[2 * H + h] = 1;
            }
            continue;
        }
        for (long h = 0; h < H; h++) {
            const T fr = c[H + h] + d[H + h], e = EXP(fr < 0 ? fr : -fr);  /* exp(-|fr|) */
            a[H + h] = (fr < 0 ? fr : 0) - LOG1P(e);
            a[2 * H + h] = (fr > 0 ? e : 1) / (1 + e);
        }
    }
}

void NAME(mlstm_qk_fwd)(const T *restrict x, const T *restrict Wq, const T *restrict Wk,
                        const T *restrict Gc, const T *restrict gm, const T *restrict n0,
                        const T *restrict m0, T *restrict aux, T *restrict g, T *restrict kp,
                        T *restrict qs, T *restrict m_out, T *restrict s_out, T *restrict nT,
                        T *restrict mT, T *restrict nck, T *restrict sum, double eps,
                        long exp_gate, long xs, long bs, long bl, long Tn, long H, long K, long b0,
                        long b1) {
    const long dim = H * K, ng = 2 * H;
    long c0;
    T *v = NAME(bd_setup)(Wq, Wk, dim, bs, 0, &c0);
    T *qb = malloc((2 * bl * dim + bl * ng) * sizeof(T));
    T *kb = qb + bl * dim, *gb = kb + bl * dim, total = 0;
    const long nb = (Tn + bl - 1) / bl;
    for (long b = b0; b < b1; b++) {
        memcpy(nT + b * dim, n0 + b * dim, dim * sizeof(T));
        memcpy(mT + b * H, m0 + b * H, H * sizeof(T));
        for (long t0 = 0; t0 < Tn; t0 += bl) {
            const long nt = Tn - t0 < bl ? Tn - t0 : bl;
            T part;
            memcpy(nck + (b * nb + t0 / bl) * dim, nT + b * dim, dim * sizeof(T));
            NAME(qk_rows)(x + (b * Tn + t0) * xs, Wq, Wk, Gc, qb, kb, gb, xs, dim, bs, ng, nt, v,
                          c0, &part);
            total += part;
            NAME(gates)(gb, gm + (b * Tn + t0) * ng, aux + (b * Tn + t0) * 3 * H, nt, H, exp_gate);
            for (long j = 0; j < nt; j++) {
                const long bt = b * Tn + t0 + j;
                for (long hh = 0; hh < H; hh++) {
                    const long row = bt * H + hh;
                    NAME(gate_step)(aux[bt * 3 * H + hh], aux[bt * 3 * H + H + hh],
                                    qb + j * dim + hh * K, kb + j * dim + hh * K,
                                    nT + (b * H + hh) * K, mT + b * H + hh, kp + row * K,
                                    qs + row * K, g + row, m_out + row, s_out + row, K, eps);
                }
            }
        }
    }
    *sum = total;
    free(qb);
    free(v);
}

void NAME(mlstm_qk_bwd)(const T *restrict x, const T *restrict Wq, const T *restrict Wk,
                        const T *restrict Gc, const T *restrict aux, const T *restrict n0,
                        const T *restrict m0, const T *restrict nck, const T *restrict g,
                        const T *restrict m_in, const T *restrict s_in, const T *restrict dg,
                        const T *restrict dkp,
                        const T *restrict dqs, const T *restrict dnT, const T *restrict dmT,
                        const T *restrict dx0, T *restrict dx, T *restrict dWq,
                        T *restrict dWk, T *restrict dGc,
                        T *restrict dpre, T *restrict dn0, T *restrict dm0,
                        const long *restrict z, double eps, long b0, long b1) {
    /* z = (exp_gate, xs, bs, bl, Tn, H, K): in one array so that the kernel takes at most 32
       integer-class arguments and ops.native.run can hand its ranges to torch's OpenMP team */
    const long exp_gate = z[0], xs = z[1], bs = z[2], bl = z[3], Tn = z[4], H = z[5], K = z[6];
    const long dim = H * K, ng = 2 * H;
    memset(dWq, 0, dim * bs * sizeof(T));
    memset(dWk, 0, dim * bs * sizeof(T));
    memset(dGc, 0, ng * dim * sizeof(T));
    long cf, cb;
    T *vf = NAME(bd_setup)(Wq, Wk, dim, bs, 0, &cf), *vb = NAME(bd_setup)(Wq, Wk, dim, bs, 1, &cb);
    /* a block's n_{t0} .. n_{t0 + bl} (n_{t0 + j} of head hh at ns + j dim + hh K), q, k, dq,
       dk rows and a dummy gate row */
    T *ns = malloc(((bl + 1) * dim + 4 * bl * dim + bl * ng) * sizeof(T));
    T *qb = ns + (bl + 1) * dim, *kb = qb + bl * dim, *dqb = kb + bl * dim, *dkb = dqb + bl * dim,
      *gb = dkb + bl * dim;
    const long nb = (Tn + bl - 1) / bl;
    for (long b = b0; b < b1; b++) {
        if (dnT) memcpy(dn0 + b * dim, dnT + b * dim, dim * sizeof(T));
        else memset(dn0 + b * dim, 0, dim * sizeof(T));
        for (long hh = 0; hh < H; hh++) dm0[b * H + hh] = dmT ? dmT[b * H + hh] : 0;
        for (long t0 = (nb - 1) * bl; t0 >= 0; t0 -= bl) {  /* the blocks, descending */
            const long nt = Tn - t0 < bl ? Tn - t0 : bl;
            NAME(qk_rows)(x + (b * Tn + t0) * xs, Wq, Wk, Gc, qb, kb, gb, xs, dim, bs, 0, nt, vf, cf,
                          NULL);
            /* the block's n_t from the forward's checkpoint of its start */
            memcpy(ns, nck + (b * nb + t0 / bl) * dim, dim * sizeof(T));
            for (long j = 0; j < nt; j++) {
                const long bt = b * Tn + t0 + j;
                for (long hh = 0; hh < H; hh++) {
                    const long row = bt * H + hh;
                    const T f = EXP(g[row]), i = EXP(aux[bt * 3 * H + hh] - m_in[row]);
                    const T *restrict kt = kb + j * dim + hh * K, *restrict prev = ns + j * dim + hh * K;
                    T *restrict n = ns + (j + 1) * dim + hh * K;
#pragma omp simd
                    for (long r = 0; r < K; r++) n[r] = f * prev[r] + i * kt[r];
                }
            }
            for (long j = nt - 1; j >= 0; j--) {
                const long t = t0 + j, bt = b * Tn + t;
                if (t >= QK_AHEAD) {  /* rows read in descending order: the prefetchers miss them */
                    const long ahead = (bt - QK_AHEAD) * dim;
                    for (long r = 0; r < dim; r += 64 / (long)sizeof(T)) {
                        __builtin_prefetch(dkp + ahead + r);
                        __builtin_prefetch(dqs + ahead + r);
                    }
                }
                for (long hh = 0; hh < H; hh++) {
                    const long row = bt * H + hh;
                    T *restrict dn = dn0 + (b * H + hh) * K;
                    const T dm = dm0[b * H + hh], li = aux[bt * 3 * H + hh];
                    const T lf = aux[bt * 3 * H + H + hh], sg = aux[bt * 3 * H + 2 * H + hh];
                    const T mp = t ? m_in[row - H] : m0[b * H + hh], a = lf + mp, mt = m_in[row];
                    const T f = EXP(g[row]), i = EXP(li - mt), s = s_in[row];
                    const T *restrict qt = qb + j * dim + hh * K, *restrict kt = kb + j * dim + hh * K,
                            *restrict dqst = dqs + row * K, *restrict dkpt = dkp + row * K,
                            *restrict nt_ = ns + (j + 1) * dim + hh * K,
                            *restrict prev = ns + j * dim + hh * K;
                    T *restrict dqt = dqb + j * dim + hh * K, *restrict dkt = dkb + j * dim + hh * K;
                    T Y = 0, dli, dlf;
#pragma omp simd reduction(+:Y)
                    for (long r = 0; r < K; r++) Y += qt[r] * dqst[r];
                    const T as = s < 0 ? -s : s, e = EXP(-mt), inv = 1 / ((as > e ? as : e) + (T)eps);
                    const T dden = -Y * inv * inv, ws = as > e ? 1 : (as < e ? 0 : (T)0.5);
                    const T dst = dden * ws * (s > 0 ? 1 : (s < 0 ? -1 : 0));
                    const T dmt = -dden * (1 - ws) * e;
                    NAME(gate_back)(qt, kt, dkpt, prev, dn, dkt, dst, i, f, dg[row], dmt, dm, a,
                                    li, K, 1, nt_, dqst, inv, dqt, &dli, &dlf);
                    dpre[bt * ng + hh] = dli;
                    dpre[bt * ng + H + hh] = dlf * sg;
                    dm0[b * H + hh] = dlf;  /* to m_{t-1} */
                }
            }
            NAME(qk_rows_bwd)(x + (b * Tn + t0) * xs, Wq, Wk, Gc, dqb, dkb, dpre + (b * Tn + t0) * ng,
                              dx + (b * Tn + t0) * dim, dWq, dWk, dGc, xs, dim, bs, ng, nt, vb, cb,
                              dx0 ? dx0 + (b * Tn + t0) * dim : NULL);
        }
    }
    NAME(bd_put_back)(vb, cb, dWq, dWk);
    free(ns);
    free(vf);
    free(vb);
}

#undef BD_ONLY4
#include "tile.h"  /* its names undefined for the next type */

#endif
