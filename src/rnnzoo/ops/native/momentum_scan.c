/* The momentum delta rule (ops/momentum_delta.py, Momentum DeltaNet) as its recurrence,
   forward and backward, one (batch row, head) pair at a time, the (K, V) states S and M in
   cache:

       e_t = S_{t-1}^T p_t - v_t                    (the regression error, V)
       M_t = mu_t M_{t-1} + eta_t k_t e_t^T,        mu_t = exp(lm_t)
       S_t = alpha_t S_{t-1} - beta_t M_t,          alpha_t = exp(la_t)
       o_t = scale S_t^T q_t

   The forward takes one pass over (S, M) a step: the update, the read-out and the next
   step's error p_{t+1}^T S_t together. It writes e_t (batch, T, H, V) and (S, M) every CK
   steps; the backward rebuilds the states of a block of CK steps from them (one pass a
   step) and runs back through it. With dS, dM the gradients of S_t, M_t from later steps:
       D = dS + scale q_t do_t^T                (all of S_t's gradient)
       dq_t = scale S_t do_t,  dbeta_t = -<D, M_t>,  dla_t = alpha_t <D, S_{t-1}>
       E = dM - beta_t D                        (all of M_t's gradient)
       dlm_t = mu_t <E, M_{t-1}>,  dk_t = eta_t E e_t,  deta_t = k_t^T E e_t,
       de = eta_t E^T k_t,  dv_t = -de,  dp_t = S_{t-1} de
       dS_{t-1} = alpha_t D + p_t de^T,  dM_{t-1} = mu_t E
   p_t de^T and dp_t = S_{t-1} de wait for step t - 1's pass, which reads dS_{t-1} and S_{t-1}
   (one pass a step; a second only at a block's first step).
   Momentum DeltaNet's extras: Dc (H) or NULL, the read at q_t - Dc_h k_t instead of q_t (its
   output correction; then dk_t -= Dc_h dq_t and dD (batch, H) = -sum_t k_t . dq_t); pk, p is
   k itself (dk_t += dp_t, one gradient). Both per row at the end of a block: no pass over
   (batch, T, H, K) tensors in torch for them.

   Layouts (row-major, contiguous): q, k, p and their gradients (batch, T, H, K); v, o, e, dv
   (batch, T, H, V); la, lm, beta, eta and their gradients (batch, T, H); S0, M0, ST, MT,
   dST, dMT, dS0, dM0 (batch, H, K, V); ck (batch, H, nck, 2, K, V), nck = ceil(T / CK)
   (S then M entering steps 0, CK, 2 CK, ...). Each function does the pairs [p0, p1).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 64
#define TILE_256  /* tuned for tiles of two 256-bit vectors (tile.h) */
#define KERNELS "momentum_scan.c"
#include "each_type.h"

#else

#include "tile.h"

/* A column tile here is wide.h's WV vectors of a state row (WT columns): twice the
   independent work a step, between one step's end (its error row e, its de) and the next
   step's start, which wait for a sum over all K rows. */
#include "wide.h"
#include "log1p.h"  /* NAME(log1p_unit), for the gates */
#ifndef MS_PF
#define MS_PF 4  /* steps ahead */
#endif


void NAME(momentum_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict p, const T *restrict la, const T *restrict lm,
                        const T *restrict beta, const T *restrict eta, const T *restrict S0,
                        const T *restrict M0, T *restrict o, T *restrict e, T *restrict ST,
                        T *restrict MT, T *restrict ck, const T *restrict Dc,
                        T *restrict osum, T scale, long Tn, long H, long K, long V, long p0,
                        long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V);
    VEC *S = aligned_alloc(32, 2 * WV * K * sizeof(VEC)), *M = S + WV * K;  /* a tile of S, of M */
    /* the read's row weights scale (q - dh k), step t's and t + 1's (written a step ahead:
       a store read back at once, broadcast, holds the step's start) */
    T *qw = aligned_alloc(32, ((2 * K * sizeof(T) + 31) / 32) * 32);
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        const T dh = Dc ? Dc[h] : 0;  /* the read is at q - dh k */
        VEC os = {0};  /* the sum of the pair's outputs (osum) */
        for (long j0 = 0; j0 < V; j0 += WT) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            for (long i = 0; i < K; i++) {
                NAME(wide_load)(S + WV * i, S0 + (pr * K + i) * V + j0, wd);
                NAME(wide_load)(M + WV * i, M0 + (pr * K + i) * V + j0, wd);
            }
            VEC et[WV] = {{0}};
            if (Tn) {  /* e_0 = S_0^T p_0 - v_0 */
                const long row = b * Tn * H + h;
                const T *restrict pt = p + row * K;
                NAME(wide_load)(et, v + row * V + j0, wd);
                for (int w = 0; w < WV; w++) et[w] = -et[w];
                for (long i = 0; i < K; i++)
                    for (int w = 0; w < WV; w++) et[w] += pt[i] * S[WV * i + w];
            }
            T a = 0, mu = 0;
            if (Tn) {
                const long row = b * Tn * H + h;
                a = EXP(la[row]), mu = EXP(lm[row]);
                for (long i = 0; i < K; i++) qw[i] = scale * (q[row * K + i] - dh * k[row * K + i]);
            }
            for (long t = 0; t < Tn; t++) {
                if (ck && t % CK == 0)
                    memcpy(ck + (pr * nck + t / CK) * 2 * K * VP + j0 * 2 * K, S,
                           2 * WV * K * sizeof(VEC));
                const long row = (b * Tn + t) * H + h, nrow = row + H;
                const T bt = beta[row], ht = eta[row];
                const T *restrict kt = k + row * K, *restrict qev = qw + (t & 1) * K;
                const int next = t + 1 < Tn;
                if (t + MS_PF < Tn) {
                    const long fr = row + MS_PF * H;
                    NAME(pf_read)(q + fr * K, K);
                    NAME(pf_read)(k + fr * K, K);
                    if (p != k) NAME(pf_read)(p + fr * K, K);
                    NAME(pf_read)(v + fr * V + j0, wd);
                    NAME(pf_write)(e + fr * V + j0, wd);
                    NAME(pf_write)(o + fr * V + j0, wd);
                }
                NAME(wide_store)(e + row * V + j0, et, wd);
                const T *restrict pn = next ? p + nrow * K : kt;  /* kt: n unused */
                T an = 0, mun = 0;
                if (next) {  /* step t + 1's weights */
                    const T *restrict qn = q + nrow * K, *restrict kn = k + nrow * K;
                    T *restrict qwn = qw + ((t + 1) & 1) * K;
                    for (long i = 0; i < K; i++) qwn[i] = scale * (qn[i] - dh * kn[i]);
                    an = EXP(la[nrow]), mun = EXP(lm[nrow]);
                }
                VEC ov[WV] = {{0}}, nv[WV] = {{0}}, het[WV];
                for (int w = 0; w < WV; w++) het[w] = ht * et[w];
                for (long i = 0; i < K; i++) {
                    const T ki = kt[i], qi = qev[i], pi = pn[i];
                    for (int w = 0; w < WV; w++) {
                        const VEC m = mu * M[WV * i + w] + ki * het[w];
                        const VEC s = a * S[WV * i + w] - bt * m;
                        M[WV * i + w] = m, S[WV * i + w] = s;
                        ov[w] += qi * s, nv[w] += pi * s;
                    }
                }
                NAME(wide_store)(o + row * V + j0, ov, wd);
                for (int w = 0; w < WV; w++) os += ov[w];  /* columns past V are 0 */
                if (next) {  /* e_{t+1} = S_t^T p_{t+1} - v_{t+1} */
                    NAME(wide_load)(et, v + nrow * V + j0, wd);
                    for (int w = 0; w < WV; w++) et[w] = nv[w] - et[w];
                }
                a = an, mu = mun;
            }
            for (long i = 0; i < K; i++) {
                NAME(wide_store)(ST + (pr * K + i) * V + j0, S + WV * i, wd);
                NAME(wide_store)(MT + (pr * K + i) * V + j0, M + WV * i, wd);
            }
        }
        if (osum) osum[pr] = NAME(hsum)(os);
    }
    free(S); free(qw);
}

void NAME(momentum_bwd)(const T *restrict q, const T *restrict k, const T *restrict p,
                        const T *restrict la, const T *restrict lm, const T *restrict beta,
                        const T *restrict eta, const T *restrict e, const T *restrict ck,
                        const T *restrict dST, const T *restrict dMT, const T *restrict dout,
                        T *restrict dq, T *restrict dk, T *restrict dv, T *restrict dp,
                        T *restrict dla, T *restrict dlm, T *restrict dbeta, T *restrict deta,
                        T *restrict dS0, T *restrict dM0, const T *restrict Dc,
                        T *restrict dD, T scale, long Tn, long H, long K, long V, long pk,
                        long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V), ntile = (V + WT - 1) / WT;
    VEC *dall = aligned_alloc(32, ntile * 2 * WV * K * sizeof(VEC));  /* dS, dM tile by tile */
    VEC *buf = aligned_alloc(32, CK * 2 * WV * K * sizeof(VEC));  /* a tile's S_t, M_t of a block */
    /* the read's row weights scale (q - dh k) of steps t and t - 1 (written a step ahead);
       exp(la), exp(lm) of the block's steps */
    T *qev = aligned_alloc(32, ((2 * K * sizeof(T) + 31) / 32) * 32);
    T *ea = aligned_alloc(32, ((2 * CK * sizeof(T) + 31) / 32) * 32), *em = ea + CK;
    const VEC zero = {0};
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        const T dh = Dc ? Dc[h] : 0;
        T dDs = 0;  /* -sum_t k_t . dq_t */
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            VEC *dS = dall + jn * 2 * WV * K, *dM = dS + WV * K;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(wide_load)(dS + WV * i, dST + (pr * K + i) * V + j0, wd);
                else for (int w = 0; w < WV; w++) dS[WV * i + w] = zero;
                if (dMT) NAME(wide_load)(dM + WV * i, dMT + (pr * K + i) * V + j0, wd);
                else for (int w = 0; w < WV; w++) dM[WV * i + w] = zero;
            }
        }
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t < t1; t++) {  /* the block's sums over the tiles, zeroed */
                const long row = (b * Tn + t) * H + h;
                ea[t - t0] = EXP(la[row]), em[t - t0] = EXP(lm[row]);
                memset(dq + row * K, 0, K * sizeof(T));
                memset(dk + row * K, 0, K * sizeof(T));
                memset(dp + row * K, 0, K * sizeof(T));
                dbeta[row] = dla[row] = dlm[row] = deta[row] = 0;
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
                const long wd = V - j0 < WT ? V - j0 : WT;
                VEC *restrict dS = dall + jn * 2 * WV * K, *restrict dM = dS + WV * K;
                const VEC *start = (const VEC *)(ck + (pr * nck + c) * 2 * K * VP + j0 * 2 * K);
                const VEC *Sp = start, *Mp = start + WV * K;
                for (long t = t0; t < t1; t++) {  /* recompute S_t, M_t, t in the block */
                    const long row = (b * Tn + t) * H + h;
                    const T a = ea[t - t0], mu = em[t - t0], bt = beta[row], ht = eta[row];
                    const T *restrict kt = k + row * K;
                    VEC et[WV], *restrict St = buf + (t - t0) * 2 * WV * K, *restrict Mt = St + WV * K;
                    if (t + MS_PF < t1) {
                        const long fr = row + MS_PF * H;
                        NAME(pf_read)(k + fr * K, K);
                        NAME(pf_read)(e + fr * V + j0, wd);
                    }
                    NAME(wide_load)(et, e + row * V + j0, wd);
                    for (int w = 0; w < WV; w++) et[w] *= ht;  /* eta e */
                    for (long i = 0; i < K; i++) {
                        const T ki = kt[i];
                        for (int w = 0; w < WV; w++) {
                            const VEC m = mu * Mp[WV * i + w] + ki * et[w];
                            Mt[WV * i + w] = m, St[WV * i + w] = a * Sp[WV * i + w] - bt * m;
                        }
                    }
                    Sp = St, Mp = Mt;
                }
                /* step t + 1's last terms, dp_{t+1} = S_t de_{t+1} and dS_t += p_{t+1} de_{t+1}^T,
                   wait for step t's pass (which reads S_t and dS_t anyway): pde, pp (pend) */
                VEC pde[WV] = {{0}};
                const T *restrict pp = p;
                long prow = 0;
                int pend = 0;
                {
                    const long row = (b * Tn + t1 - 1) * H + h;
                    T *restrict qw = qev + ((t1 - 1) & 1) * K;
                    for (long i = 0; i < K; i++) qw[i] = scale * (q[row * K + i] - dh * k[row * K + i]);
                }
                for (long t = t1 - 1; t >= t0; t--) {
                    const long row = (b * Tn + t) * H + h;
                    const T a = ea[t - t0], mu = em[t - t0], bt = beta[row], ht = eta[row];
                    const T *restrict kt = k + row * K, *restrict qw = qev + (t & 1) * K;
                    const T *restrict pt = p + row * K;
                    if (t - MS_PF >= t0) {
                        const long fr = row - MS_PF * H;
                        NAME(pf_read)(q + fr * K, K);
                        if (p != k) NAME(pf_read)(p + fr * K, K);
                        NAME(pf_read)(dout + fr * V + j0, wd);
                        NAME(pf_write)(dv + fr * V + j0, wd);
                    }
                    if (t > t0) {  /* step t - 1's read weights, a step ahead */
                        const T *restrict qn = q + (row - H) * K, *restrict kn = k + (row - H) * K;
                        T *restrict qwn = qev + ((t - 1) & 1) * K;
                        for (long i = 0; i < K; i++) qwn[i] = scale * (qn[i] - dh * kn[i]);
                    }
                    const VEC *restrict St = buf + (t - t0) * 2 * WV * K, *restrict Mt = St + WV * K;
                    const VEC *restrict Sq = t > t0 ? St - 2 * WV * K : start;  /* S_{t-1} */
                    const VEC *restrict Mq = Sq + WV * K;                        /* M_{t-1} */
                    VEC et[WV], dot[WV], de[WV] = {{0}}, vb = zero, va = zero, vm = zero;
                    VEC sq[NV], sk[NV], sp[NV];
                    NAME(wide_load)(et, e + row * V + j0, wd);
                    NAME(wide_load)(dot, dout + row * V + j0, wd);
                    T *restrict dkt = dk + row * K;
                    for (long i0 = 0; i0 < K; i0 += NV) {
                        const long m = K - i0 < NV ? K - i0 : NV;
                        for (long l = 0; l < m; l++) {
                            const long i = i0 + l;
                            const T ki = kt[i], qi = qw[i], pi = pp[i];
                            VEC D[WV], E[WV];
                            for (int w = 0; w < WV; w++) {
                                D[w] = dS[WV * i + w] + pi * pde[w] + qi * dot[w];
                                E[w] = dM[WV * i + w] - bt * D[w];
                            }
                            /* each row's sums over its WV vectors first: one add a row
                               on the accumulators' chains */
                            VEC xq = St[WV * i] * dot[0], xp = St[WV * i] * pde[0],
                                xk = E[0] * et[0], xb = D[0] * Mt[WV * i],
                                xa = D[0] * Sq[WV * i], xm = E[0] * Mq[WV * i];
                            for (int w = 1; w < WV; w++) {
                                const VEC Sw = St[WV * i + w];
                                xq += Sw * dot[w], xp += Sw * pde[w], xk += E[w] * et[w];
                                xb += D[w] * Mt[WV * i + w];
                                xa += D[w] * Sq[WV * i + w];
                                xm += E[w] * Mq[WV * i + w];
                            }
                            sq[l] = xq, sp[l] = xp, sk[l] = xk;
                            vb += xb, va += xa, vm += xm;
                            for (int w = 0; w < WV; w++) {
                                de[w] += ki * E[w];
                                dS[WV * i + w] = a * D[w], dM[WV * i + w] = mu * E[w];
                            }
                        }
                        NAME(add_sums)(dq + row * K + i0, sq, m);  /* S_t do_t, times scale below */
                        NAME(add_sums)(dkt + i0, sk, m);  /* E e_t, times eta below */
                        if (pend) NAME(add_sums)(dp + prow * K + i0, sp, m);
                    }
                    dbeta[row] -= NAME(hsum)(vb);
                    dla[row] += a * NAME(hsum)(va);
                    dlm[row] += mu * NAME(hsum)(vm);
                    VEC dvt[WV];
                    for (int w = 0; w < WV; w++) de[w] *= ht, dvt[w] = -de[w];
                    NAME(wide_store)(dv + row * V + j0, dvt, wd);
                    if (t > t0) {  /* to step t - 1's pass */
                        for (int w = 0; w < WV; w++) pde[w] = de[w];
                        pp = pt, prow = row, pend = 1;
                        continue;
                    }
                    for (long i0 = 0; i0 < K; i0 += NV) {  /* dp = S_{t-1} de, dS_{t-1} += p de^T */
                        const long m = K - i0 < NV ? K - i0 : NV;
                        for (long l = 0; l < m; l++) {
                            const long i = i0 + l;
                            VEC x = Sq[WV * i] * de[0];
                            for (int w = 1; w < WV; w++) x += Sq[WV * i + w] * de[w];
                            sq[l] = x;
                            for (int w = 0; w < WV; w++) dS[WV * i + w] += pt[i] * de[w];
                        }
                        NAME(add_sums)(dp + row * K + i0, sq, m);
                    }
                }
            }
            for (long t = t0; t < t1; t++) {  /* dq = scale S_t do_t; dk = eta E e_t, deta =
                k^T E e_t; with p = k (pk) dk += dp; with the read at q - dh k, dk -= dh dq and
                dD -= k . dq */
                const long row = (b * Tn + t) * H + h;
                const T ht = eta[row], *restrict kt = k + row * K;
                const T *restrict dpt = dp + row * K;
                T *restrict dkt = dk + row * K, *restrict dqt = dq + row * K, s = 0, c = 0;
                for (long i = 0; i < K; i++) dqt[i] *= scale;
                for (long i = 0; i < K; i++) s += kt[i] * dkt[i], dkt[i] *= ht;
                deta[row] = s;
                if (pk)
                    for (long i = 0; i < K; i++) dkt[i] += dpt[i];
                if (Dc) {
                    for (long i = 0; i < K; i++) c += kt[i] * dqt[i], dkt[i] -= dh * dqt[i];
                    dDs -= c;
                }
            }
        }
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            const VEC *dS = dall + jn * 2 * WV * K, *dM = dS + WV * K;
            for (long i = 0; i < K; i++) {
                NAME(wide_store)(dS0 + (pr * K + i) * V + j0, dS + WV * i, wd);
                NAME(wide_store)(dM0 + (pr * K + i) * V + j0, dM + WV * i, wd);
            }
        }
        if (dD) dD[pr] = dDs;
    }
    free(dall); free(buf); free(qev); free(ea);
}

/* Momentum DeltaNet's gates (layers/momentum_deltanet.py) from its gate projection, one pass
   each way. g (rows, 4H): a, b, m, e per row (H each); per head A_log, Mu_log, dt_bias,
   mu_bias, log_factor (H). With u = eta exp(log_factor), theta = atan(u):
       eta  = 1 + tanh(e / tau),         beta = c sigmoid(b) u^2 / (1 + u^2)   (c = 1 or 2)
       la   = -log1p(u^2) - exp(A_log) softplus(a + dt_bias)      (2 log cos theta = -log1p(u^2))
       lm   = max(-exp(Mu_log) softplus(m + mu_bias), mn)         (mn -inf: no floor)
   la, lm, beta, eta (rows, H). Rows [r0, r1); the work in blocks of MG_N values, each quantity
   gathered dense first so that the per-value loops vectorise. softplus as torch's (x above 20:
   x). The backward (any of dla, dlm, dbeta, deta NULL: zero) writes dg (rows, 4H) and this
   range's parameter gradients, summed over its rows, to dpar (5, H): dA_log, dMu_log, ddt_bias, dmu_bias,
   dlog_factor. */
#ifndef MG_N
#define MG_N 256
#endif

/* log1p(y), y >= 0 (or NaN): log1p_unit below 1; above, log y + log1p(1 / y), log y from
   the float's exponent and log1p_unit of its mantissa less one (vectorisable). double: libm. */
static inline T NAME(mg_log1p)(T y) {
    if (sizeof(T) == 8) return LOG1P(y);
    const int big = y > 1;
    const T z = big ? 1 / y : y;
    union { float f; uint32_t i; } b = {(float)y};
    const float ex = (float)((int)(b.i >> 23) - 127);
    b.i = (b.i & 0x7fffffu) | 0x3f800000u;
    const T lg = (T)(ex * 0.693145751953125f + ex * 1.428606765330187e-06f)
                 + NAME(log1p_unit)((T)b.f - 1);
    return NAME(log1p_unit)(z) + (big ? lg : 0);
}

/* softplus(x) and its slope sigmoid(x) as torch's (x > 20: x and 1) */
static inline T NAME(mg_softplus)(T x) {
    const T l = (x > 0 ? x : 0) + NAME(log1p_unit)(EXP(x > 0 ? -x : x));
    return x > 20 ? x : l;
}
static inline T NAME(mg_sigmoid)(T x) { return 1 / (1 + EXP(-x)); }

static void NAME(mg_params)(const T *A_log, const T *Mu_log, const T *dt_bias,
                            const T *mu_bias, const T *log_factor, long H, long n,
                            T *A, T *Mu, T *dtb, T *mub, T *f) {
    for (long i = 0; i < n; i++) {
        const long h = i % H;
        A[i] = EXP(A_log[h]), Mu[i] = EXP(Mu_log[h]), dtb[i] = dt_bias[h];
        mub[i] = mu_bias[h], f[i] = EXP(log_factor[h]);
    }
}

static void NAME(mg_gather)(const T *g, long r, long nr, long H, T *a, T *b, T *m, T *e) {
    for (long i = 0; i < nr; i++)
        for (long h = 0; h < H; h++) {
            const T *gr = g + (r + i) * 4 * H + h;
            a[i * H + h] = gr[0], b[i * H + h] = gr[H], m[i * H + h] = gr[2 * H];
            e[i * H + h] = gr[3 * H];
        }
}

void NAME(momentum_gates_fwd)(const T *restrict g, const T *restrict A_log,
                              const T *restrict Mu_log, const T *restrict dt_bias,
                              const T *restrict mu_bias, const T *restrict log_factor,
                              T *restrict la, T *restrict lm, T *restrict beta,
                              T *restrict eta, T tau, T mn, long H, long neg, long r0,
                              long r1) {
    const long nb = MG_N / H > 0 ? MG_N / H : 1, n = nb * H;
    T *buf = malloc(9 * n * sizeof(T));
    T *A = buf, *Mu = A + n, *dtb = Mu + n, *mub = dtb + n, *f = mub + n;
    T *a = f + n, *b = a + n, *m = b + n, *e = m + n;
    NAME(mg_params)(A_log, Mu_log, dt_bias, mu_bias, log_factor, H, n, A, Mu, dtb, mub, f);
    const T c = neg ? 2 : 1, it = 1 / tau;
    for (long r = r0; r < r1; r += nb) {
        const long nr = r1 - r < nb ? r1 - r : nb, nn = nr * H;
        NAME(mg_gather)(g, r, nr, H, a, b, m, e);
        T *restrict lar = la + r * H, *restrict lmr = lm + r * H;
        T *restrict br = beta + r * H, *restrict er = eta + r * H;
        for (long i = 0; i < nn; i++) {
            const T et = 1 + TANH(e[i] * it), u = et * f[i], u2 = u * u;
            const T w = u2 > 1 ? 1 / (1 + 1 / u2) : u2 / (1 + u2);   /* sin^2 theta */
            er[i] = et;
            br[i] = c * w * NAME(mg_sigmoid)(b[i]);
            lar[i] = -NAME(mg_log1p)(u2) - A[i] * NAME(mg_softplus)(a[i] + dtb[i]);
            const T l = -Mu[i] * NAME(mg_softplus)(m[i] + mub[i]);
            lmr[i] = l < mn ? mn : l;
        }
    }
    free(buf);
}

void NAME(momentum_gates_bwd)(const T *restrict g, const T *restrict A_log,
                              const T *restrict Mu_log, const T *restrict dt_bias,
                              const T *restrict mu_bias, const T *restrict log_factor,
                              const T *restrict dla, const T *restrict dlm,
                              const T *restrict dbeta, const T *restrict deta, T *restrict dg,
                              T *restrict dpar, T tau, T mn, long H, long neg, long r0,
                              long r1) {
    const long nb = MG_N / H > 0 ? MG_N / H : 1, n = nb * H;
    T *buf = malloc(15 * n * sizeof(T));
    T *A = buf, *Mu = A + n, *dtb = Mu + n, *mub = dtb + n, *f = mub + n;
    T *a = f + n, *b = a + n, *m = b + n, *e = m + n;
    T *sA = e + n, *sMu = sA + n, *sdt = sMu + n, *smu = sdt + n, *sf = smu + n, *zero = sf + n;
    NAME(mg_params)(A_log, Mu_log, dt_bias, mu_bias, log_factor, H, n, A, Mu, dtb, mub, f);
    memset(sA, 0, 6 * n * sizeof(T));
    const T c = neg ? 2 : 1, it = 1 / tau;
    for (long r = r0; r < r1; r += nb) {
        const long nr = r1 - r < nb ? r1 - r : nb, nn = nr * H;
        NAME(mg_gather)(g, r, nr, H, a, b, m, e);
        const T *restrict dlar = dla ? dla + r * H : zero, *restrict dlmr = dlm ? dlm + r * H : zero;
        const T *restrict dbr = dbeta ? dbeta + r * H : zero;
        const T *restrict der = deta ? deta + r * H : zero;
        /* da, db, dm, de over the gathered a, b, m, e */
#pragma omp simd
        for (long i = 0; i < nn; i++) {
            const T gl = dlar[i], gm = dlmr[i], gb = dbr[i], ge = der[i];
            const T th = TANH(e[i] * it), et = 1 + th, u = et * f[i], u2 = u * u;
            const T c2 = 1 / (1 + u2), w = u2 > 1 ? 1 / (1 + 1 / u2) : u2 * c2;
            const T sb = NAME(mg_sigmoid)(b[i]);
            const T xa = a[i] + dtb[i], xm = m[i] + mub[i];
            const T spa = NAME(mg_softplus)(xa), spm = NAME(mg_softplus)(xm);
            const T ga = xa > 20 ? 1 : NAME(mg_sigmoid)(xa);
            const T gmm = xm > 20 ? 1 : NAME(mg_sigmoid)(xm);
            const T l = -Mu[i] * spm;
            const T pass = l >= mn ? gm : 0;                       /* clamp's gradient */
            /* d/du: la = -log1p(u^2): -2u c2; beta = c sb w: c sb 2u c2^2 */
            const T du = 2 * u * c2 * (c * sb * c2 * gb - gl);
            const T dea = -A[i] * ga * gl, dma = -Mu[i] * gmm * pass;
            a[i] = dea, m[i] = dma;
            b[i] = c * w * sb * (1 - sb) * gb;
            e[i] = (ge + du * f[i]) * (1 - th * th) * it;
            sA[i] += -A[i] * spa * gl, sMu[i] += l * pass;
            sdt[i] += dea, smu[i] += dma, sf[i] += du * u;
        }
        for (long i = 0; i < nr; i++)
            for (long h = 0; h < H; h++) {
                T *dr = dg + (r + i) * 4 * H + h;
                dr[0] = a[i * H + h], dr[H] = b[i * H + h], dr[2 * H] = m[i * H + h];
                dr[3 * H] = e[i * H + h];
            }
    }
    memset(dpar, 0, 5 * H * sizeof(T));
    for (long i = 0; i < n; i++) {
        const long h = i % H;
        dpar[h] += sA[i], dpar[H + h] += sMu[i], dpar[2 * H + h] += sdt[i];
        dpar[3 * H + h] += smu[i], dpar[4 * H + h] += sf[i];
    }
    free(buf);
}

#include "wide.h"  /* its names undefined for the next type */
#include "tile.h"  /* its names undefined for the next type */
#endif
