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
#define CK 32
#define TILE_256  /* tuned for tiles of two 256-bit vectors (tile.h) */
#define KERNELS "momentum_scan.c"
#include "each_type.h"

#else

#include "tile.h"


void NAME(momentum_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict p, const T *restrict la, const T *restrict lm,
                        const T *restrict beta, const T *restrict eta, const T *restrict S0,
                        const T *restrict M0, T *restrict o, T *restrict e, T *restrict ST,
                        T *restrict MT, T *restrict ck, const T *restrict Dc, T scale,
                        long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V);
    VEC *S = aligned_alloc(32, 4 * K * sizeof(VEC)), *M = S + 2 * K;  /* a tile of S, of M */
    /* a step's row weights eta k, scale (q - dh k), p_{t+1}: vectorised once a step, read
       broadcast from memory in the pass */
    T *hkv = aligned_alloc(32, ((3 * K * sizeof(T) + 31) / 32) * 32), *qev = hkv + K,
      *pv = qev + K;
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        const T dh = Dc ? Dc[h] : 0;  /* the read is at q - dh k */
        for (long j0 = 0; j0 < V; j0 += VT) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) {
                NAME(tile_load)(S + 2 * i, S0 + (pr * K + i) * V + j0, wd);
                NAME(tile_load)(M + 2 * i, M0 + (pr * K + i) * V + j0, wd);
            }
            VEC et[2] = {{0}, {0}};
            if (Tn) {  /* e_0 = S_0^T p_0 - v_0 */
                const long row = b * Tn * H + h;
                const T *restrict pt = p + row * K;
                NAME(tile_load)(et, v + row * V + j0, wd);
                et[0] = -et[0], et[1] = -et[1];
                for (long i = 0; i < K; i++) et[0] += pt[i] * S[2 * i], et[1] += pt[i] * S[2 * i + 1];
            }
            for (long t = 0; t < Tn; t++) {
                if (ck && t % CK == 0)
                    memcpy(ck + (pr * nck + t / CK) * 2 * K * VP + j0 * 2 * K, S,
                           4 * K * sizeof(VEC));
                const long row = (b * Tn + t) * H + h, nrow = row + H;
                const T a = EXP(la[row]), mu = EXP(lm[row]), bt = beta[row], ht = eta[row];
                const T *restrict qt = q + row * K, *restrict kt = k + row * K;
                const int next = t + 1 < Tn;
                NAME(tile_store)(e + row * V + j0, et, wd);
                const T *restrict pn = next ? p + nrow * K : kt;  /* kt: unused weights */
                const T pw = next ? 1 : 0;
                for (long i = 0; i < K; i++)
                    hkv[i] = ht * kt[i], qev[i] = scale * (qt[i] - dh * kt[i]), pv[i] = pw * pn[i];
                VEC o0 = {0}, o1 = {0}, n0 = {0}, n1 = {0};
                for (long i = 0; i < K; i++) {
                    const T hk = hkv[i], qi = qev[i], pi = pv[i];
                    const VEC m0 = mu * M[2 * i] + hk * et[0], m1 = mu * M[2 * i + 1] + hk * et[1];
                    const VEC s0 = a * S[2 * i] - bt * m0, s1 = a * S[2 * i + 1] - bt * m1;
                    M[2 * i] = m0, M[2 * i + 1] = m1, S[2 * i] = s0, S[2 * i + 1] = s1;
                    o0 += qi * s0, o1 += qi * s1, n0 += pi * s0, n1 += pi * s1;
                }
                const VEC ot[2] = {o0, o1};
                NAME(tile_store)(o + row * V + j0, ot, wd);
                if (next) {  /* e_{t+1} = S_t^T p_{t+1} - v_{t+1} */
                    NAME(tile_load)(et, v + nrow * V + j0, wd);
                    et[0] = n0 - et[0], et[1] = n1 - et[1];
                }
            }
            for (long i = 0; i < K; i++) {
                NAME(tile_store)(ST + (pr * K + i) * V + j0, S + 2 * i, wd);
                NAME(tile_store)(MT + (pr * K + i) * V + j0, M + 2 * i, wd);
            }
        }
    }
    free(S); free(hkv);
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
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V), ntile = (V + VT - 1) / VT;
    VEC *dall = aligned_alloc(32, ntile * 4 * K * sizeof(VEC));  /* dS, dM tile by tile */
    VEC *buf = aligned_alloc(32, CK * 4 * K * sizeof(VEC));  /* a tile's S_t, M_t of a block */
    T *qev = aligned_alloc(32, ((K * sizeof(T) + 31) / 32) * 32);  /* a step's row weights */
    const VEC zero = {0};
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        const T dh = Dc ? Dc[h] : 0;
        T dDs = 0;  /* -sum_t k_t . dq_t */
        for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            VEC *dS = dall + jn * 4 * K, *dM = dS + 2 * K;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(tile_load)(dS + 2 * i, dST + (pr * K + i) * V + j0, wd);
                else dS[2 * i] = dS[2 * i + 1] = zero;
                if (dMT) NAME(tile_load)(dM + 2 * i, dMT + (pr * K + i) * V + j0, wd);
                else dM[2 * i] = dM[2 * i + 1] = zero;
            }
        }
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t < t1; t++) {  /* the block's sums over the tiles, zeroed */
                const long row = (b * Tn + t) * H + h;
                memset(dq + row * K, 0, K * sizeof(T));
                memset(dk + row * K, 0, K * sizeof(T));
                memset(dp + row * K, 0, K * sizeof(T));
                dbeta[row] = dla[row] = dlm[row] = deta[row] = 0;
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
                const long wd = V - j0 < VT ? V - j0 : VT;
                VEC *restrict dS = dall + jn * 4 * K, *restrict dM = dS + 2 * K;
                const VEC *start = (const VEC *)(ck + (pr * nck + c) * 2 * K * VP + j0 * 2 * K);
                const VEC *Sp = start, *Mp = start + 2 * K;
                for (long t = t0; t < t1; t++) {  /* recompute S_t, M_t, t in the block */
                    const long row = (b * Tn + t) * H + h;
                    const T a = EXP(la[row]), mu = EXP(lm[row]), bt = beta[row], ht = eta[row];
                    const T *restrict kt = k + row * K;
                    VEC et[2], *restrict St = buf + (t - t0) * 4 * K, *restrict Mt = St + 2 * K;
                    NAME(tile_load)(et, e + row * V + j0, wd);
                    for (long i = 0; i < K; i++) qev[i] = ht * kt[i];  /* eta k, here */
                    for (long i = 0; i < K; i++) {
                        const T hk = qev[i];
                        const VEC m0 = mu * Mp[2 * i] + hk * et[0], m1 = mu * Mp[2 * i + 1] + hk * et[1];
                        Mt[2 * i] = m0, Mt[2 * i + 1] = m1;
                        St[2 * i] = a * Sp[2 * i] - bt * m0, St[2 * i + 1] = a * Sp[2 * i + 1] - bt * m1;
                    }
                    Sp = St, Mp = Mt;
                }
                /* step t + 1's last terms, dp_{t+1} = S_t de_{t+1} and dS_t += p_{t+1} de_{t+1}^T,
                   wait for step t's pass (which reads S_t and dS_t anyway): pde, pp (pend) */
                VEC pde[2] = {zero, zero};
                const T *restrict pp = p;
                long prow = 0;
                int pend = 0;
                for (long t = t1 - 1; t >= t0; t--) {
                    const long row = (b * Tn + t) * H + h;
                    const T a = EXP(la[row]), mu = EXP(lm[row]), bt = beta[row], ht = eta[row];
                    const T *restrict qt = q + row * K, *restrict kt = k + row * K;
                    const T *restrict pt = p + row * K;
                    const VEC *restrict St = buf + (t - t0) * 4 * K, *restrict Mt = St + 2 * K;
                    const VEC *restrict Sq = t > t0 ? St - 4 * K : start;   /* S_{t-1} */
                    const VEC *restrict Mq = Sq + 2 * K;                     /* M_{t-1} */
                    VEC et[2], dot[2], vb = zero, va = zero, vm = zero, de0 = zero, de1 = zero;
                    VEC sq[NV], sk[NV], sp[NV];
                    NAME(tile_load)(et, e + row * V + j0, wd);
                    NAME(tile_load)(dot, dout + row * V + j0, wd);
                    const VEC sd0 = scale * dot[0], sd1 = scale * dot[1];
                    T *restrict dkt = dk + row * K;
                    for (long i = 0; i < K; i++) qev[i] = scale * (qt[i] - dh * kt[i]);
                    for (long i0 = 0; i0 < K; i0 += NV) {
                        const long m = K - i0 < NV ? K - i0 : NV;
                        for (long l = 0; l < m; l++) {
                            const long i = i0 + l;
                            const T ki = kt[i], qi = qev[i], pi = pp[i];
                            const VEC S0 = St[2 * i], S1 = St[2 * i + 1];
                            const VEC D0 = dS[2 * i] + pi * pde[0] + qi * dot[0],
                                      D1 = dS[2 * i + 1] + pi * pde[1] + qi * dot[1];
                            const VEC E0 = dM[2 * i] - bt * D0, E1 = dM[2 * i + 1] - bt * D1;
                            sq[l] = S0 * sd0 + S1 * sd1;
                            sp[l] = S0 * pde[0] + S1 * pde[1];
                            sk[l] = E0 * et[0] + E1 * et[1];
                            vb += D0 * Mt[2 * i] + D1 * Mt[2 * i + 1];
                            va += D0 * Sq[2 * i] + D1 * Sq[2 * i + 1];
                            vm += E0 * Mq[2 * i] + E1 * Mq[2 * i + 1];
                            de0 += ki * E0, de1 += ki * E1;
                            dS[2 * i] = a * D0, dS[2 * i + 1] = a * D1;
                            dM[2 * i] = mu * E0, dM[2 * i + 1] = mu * E1;
                        }
                        NAME(add_sums)(dq + row * K + i0, sq, m);
                        NAME(add_sums)(dkt + i0, sk, m);  /* E e_t, times eta below */
                        if (pend) NAME(add_sums)(dp + prow * K + i0, sp, m);
                    }
                    dbeta[row] -= NAME(hsum)(vb);
                    dla[row] += a * NAME(hsum)(va);
                    dlm[row] += mu * NAME(hsum)(vm);
                    de0 *= ht, de1 *= ht;
                    const VEC dvt[2] = {-de0, -de1};
                    NAME(tile_store)(dv + row * V + j0, dvt, wd);
                    if (t > t0) {  /* to step t - 1's pass */
                        pde[0] = de0, pde[1] = de1, pp = pt, prow = row, pend = 1;
                        continue;
                    }
                    for (long i0 = 0; i0 < K; i0 += NV) {  /* dp = S_{t-1} de, dS_{t-1} += p de^T */
                        const long m = K - i0 < NV ? K - i0 : NV;
                        for (long l = 0; l < m; l++) {
                            const long i = i0 + l;
                            sq[l] = Sq[2 * i] * de0 + Sq[2 * i + 1] * de1;
                            dS[2 * i] += pt[i] * de0, dS[2 * i + 1] += pt[i] * de1;
                        }
                        NAME(add_sums)(dp + row * K + i0, sq, m);
                    }
                }
            }
            for (long t = t0; t < t1; t++) {  /* dk = eta E e_t, deta = k^T E e_t; with p = k
                (pk) dk += dp; with the read at q - dh k, dk -= dh dq and dD -= k . dq */
                const long row = (b * Tn + t) * H + h;
                const T ht = eta[row], *restrict kt = k + row * K, *restrict dqt = dq + row * K;
                const T *restrict dpt = dp + row * K;
                T *restrict dkt = dk + row * K, s = 0, c = 0;
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
        for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            const VEC *dS = dall + jn * 4 * K, *dM = dS + 2 * K;
            for (long i = 0; i < K; i++) {
                NAME(tile_store)(dS0 + (pr * K + i) * V + j0, dS + 2 * i, wd);
                NAME(tile_store)(dM0 + (pr * K + i) * V + j0, dM + 2 * i, wd);
            }
        }
        if (dD) dD[pr] = dDs;
    }
    free(dall); free(buf); free(qev);
}

#include "tile.h"  /* its names undefined for the next type */
#endif
