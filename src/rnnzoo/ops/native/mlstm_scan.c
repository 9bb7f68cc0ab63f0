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
                T *restrict n = nT + (b * H + hh) * K;
                const T m = mT[b * H + hh];
                const T a = lf[row] + m, mn = a > li[row] ? a : li[row];
                const T gt = a - mn, f = EXP(gt), i = EXP(li[row] - mn);
                const T *restrict qt = q + row * K, *restrict kt = k + row * K;
                T *restrict kpt = kp + row * K, *restrict qst = qs + row * K, s = 0;
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
                g[row] = gt;
                m_out[row] = mn;
                s_out[row] = s;
                mT[b * H + hh] = mn;
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
                T *restrict dkt = dk + row * K, L = 0, X = 0;
                if (t >= 2) {  /* rows read in descending order: the prefetchers miss them */
                    const long ahead = (row - 2 * H) * K;
                    for (long r = 0; r < K; r += 64 / (long)sizeof(T)) {
                        __builtin_prefetch(q + ahead + r);
                        __builtin_prefetch(k + ahead + r);
                        __builtin_prefetch(dkp + ahead + r);
                        __builtin_prefetch(dk + ahead + r, 1);
                    }
                }
#pragma omp simd reduction(+:L, X)
                for (long r = 0; r < K; r++) {
                    const T dnr = dn[r] + dst * qt[r], dkr = i * (dkpt[r] + dnr);
                    dkt[r] = dkr;
                    L += kt[r] * dkr;
                    X += prev[r] * dnr;
                    dn[r] = f * dnr;
                }
                const T G = dg[row] + f * X, M = dmt + dm - G - L;
                const T w = a > li[row] ? 1 : (a < li[row] ? 0 : (T)0.5);  /* torch.maximum's split */
                dli[row] = L + M * (1 - w);
                dlf[row] = G + M * w;
                dm0[b * H + hh] = G + M * w;  /* to m_{t-1} */
            }
        }
    }
    free(ns);
}

#undef HEAD_RUNS

#endif
