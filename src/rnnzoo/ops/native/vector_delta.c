/* The generalised delta rule with a decay per key channel (RWKV-7's, Peng et al. 2025) as
   its recurrence, forward and backward, one (batch row, head) pair at a time, the (K, V)
   state in cache:

       z_t = S_{t-1}^T a_t,   S_t = diag(d_t) S_{t-1} + b_t z_t^T + k_t v_t^T,   d_t = exp(w_t)
       o_t = scale S_t^T r_t

   With b NULL the erase writes through the key, b = -k: S_t = diag(d_t) S_{t-1} + k_t u_t^T,
   u_t = v_t - z_t (KDA, GDN-2 and Comba's erase-key delta rule, ops.erase_delta, with
   a = p e^g after the decay, a = p before it). The forward also writes z_t (batch, T, H, V),
   so that the backward rebuilds S_t from the state stored every CK steps in one pass a step.
   Backward, dS the gradient of S_t (its own read plus the transposed later steps):
       dS += scale r_t do_t^T,   dr_t = scale S_t do_t,   dk_t = dS v_t,   dv_t = dS^T k_t
       db_t = dS z_t,   dz_t = dS^T b_t      (b NULL: dk_t = dS u_t, dv_t = dS^T k_t = -dz_t)
       da_t = S_{t-1} dz_t,   dw_t = d_t o rowsum(dS o S_{t-1}),   dS_{t-1} = diag(d_t) dS + a_t dz_t^T

   Layouts (row-major, contiguous): r, w, k, a, b and their gradients (batch, T, H, K);
   v, o, z, dv (batch, T, H, V); S0, ST, dST, dS0 (batch, H, K, V); ck (batch, H, nck, K, V)
   with nck = ceil(T / CK) (the state entering steps 0, CK, 2 CK, ...). Each function does the
   (batch row, head) pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "vector_delta.c"
#include "each_type.h"

#else

/* d = exp(w), 0 below exp.h's clamp (where exp is under the smallest normal number): a
   channel erased by a huge negative log-decay is erased exactly, as in torch. */
static inline void NAME(decays)(T *restrict d, const T *restrict w, long K) {
    const T lo = sizeof(T) == 4 ? (T)-87 : (T)-708;
    for (long i = 0; i < K; i++) d[i] = w[i] < lo ? 0 : EXP(w[i]);
}

void NAME(vdelta_fwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict S0, T *restrict o, T *restrict z, T *restrict ST,
                      T *restrict ck, T scale, long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK;
    T *d = malloc(K * sizeof(T)), *u = malloc(V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
        T *restrict S = ST + p * K * V;
        memcpy(S, S0 + p * K * V, K * V * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            if (ck && t % CK == 0) memcpy(ck + (p * nck + t / CK) * K * V, S, K * V * sizeof(T));
            const long row = (bb * Tn + t) * H + h;
            const T *restrict rt = r + row * K, *restrict wt = w + row * K;
            const T *restrict kt = k + row * K, *restrict at = a + row * K;
            const T *restrict vt = v + row * V;
            T *restrict ot = o + row * V, *restrict zt = z + row * V;
            NAME(decays)(d, wt, K);
            for (long j = 0; j < V; j++) zt[j] = 0;
            for (long i = 0; i < K; i++) {
                const T *restrict Si = S + i * V;
                const T ai = at[i];
                for (long j = 0; j < V; j++) zt[j] += ai * Si[j];
            }
            for (long j = 0; j < V; j++) ot[j] = 0;
            if (b) {
                const T *restrict bt = b + row * K;
                for (long i = 0; i < K; i++) {
                    T *restrict Si = S + i * V;
                    const T di = d[i], bi = bt[i], ki = kt[i], ri = scale * rt[i];
                    for (long j = 0; j < V; j++) {
                        Si[j] = di * Si[j] + bi * zt[j] + ki * vt[j];
                        ot[j] += ri * Si[j];
                    }
                }
            } else {
                for (long j = 0; j < V; j++) u[j] = vt[j] - zt[j];
                for (long i = 0; i < K; i++) {
                    T *restrict Si = S + i * V;
                    const T di = d[i], ki = kt[i], ri = scale * rt[i];
                    for (long j = 0; j < V; j++) {
                        Si[j] = di * Si[j] + ki * u[j];
                        ot[j] += ri * Si[j];
                    }
                }
            }
        }
    }
    free(d); free(u);
}

void NAME(vdelta_bwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict z, const T *restrict ck, const T *restrict dST,
                      const T *restrict dout, T *restrict dr, T *restrict dw, T *restrict dk,
                      T *restrict dv, T *restrict da, T *restrict db, T *restrict dS0, T scale,
                      long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK;
    T *buf = malloc(CK * K * V * sizeof(T));  /* S_t for the steps of one block */
    T *d = malloc(K * sizeof(T)), *u = malloc(V * sizeof(T));
    T *dz = malloc(V * sizeof(T)), *dvt = malloc(V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
        T *restrict dS = dS0 + p * K * V;  /* the running gradient, ends as dS_0 */
        if (dST) memcpy(dS, dST + p * K * V, K * V * sizeof(T));
        else memset(dS, 0, K * V * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *start = ck + (p * nck + c) * K * V, *prev = start;
            for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                const long row = (bb * Tn + t) * H + h;
                const T *restrict wt = w + row * K, *restrict kt = k + row * K;
                const T *restrict vt = v + row * V, *restrict zt = z + row * V;
                T *restrict St = buf + (t - t0) * K * V;
                NAME(decays)(d, wt, K);
                if (b) {
                    const T *restrict bt = b + row * K;
                    for (long i = 0; i < K; i++) {
                        const T di = d[i], bi = bt[i], ki = kt[i];
                        for (long j = 0; j < V; j++)
                            St[i * V + j] = di * prev[i * V + j] + bi * zt[j] + ki * vt[j];
                    }
                } else {
                    for (long j = 0; j < V; j++) u[j] = vt[j] - zt[j];
                    for (long i = 0; i < K; i++) {
                        const T di = d[i], ki = kt[i];
                        for (long j = 0; j < V; j++)
                            St[i * V + j] = di * prev[i * V + j] + ki * u[j];
                    }
                }
                prev = St;
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (bb * Tn + t) * H + h;
                const T *restrict rt = r + row * K, *restrict wt = w + row * K;
                const T *restrict kt = k + row * K, *restrict at = a + row * K;
                const T *restrict vt = v + row * V, *restrict zt = z + row * V;
                const T *restrict dot = dout + row * V;
                const T *restrict St = buf + (t - t0) * K * V;
                const T *restrict Sp = t > t0 ? St - K * V : start;  /* S_{t-1} */
                T *restrict drt = dr + row * K, *restrict dkt = dk + row * K;
                T *restrict dwt = dw + row * K, *restrict dat = da + row * K;
                NAME(decays)(d, wt, K);
                for (long j = 0; j < V; j++) dz[j] = 0;
                if (b) {
                    const T *restrict bt = b + row * K;
                    T *restrict dbt = db + row * K;
                    for (long j = 0; j < V; j++) dvt[j] = 0;
                    for (long i = 0; i < K; i++) {
                        T *restrict dSi = dS + i * V;
                        const T *restrict Si = St + i * V;
                        const T ri = scale * rt[i], ki = kt[i], bi = bt[i];
                        T sr = 0, sk = 0, sb = 0;
#pragma omp simd reduction(+ : sr, sk, sb)
                        for (long j = 0; j < V; j++) {
                            const T g = dSi[j] + ri * dot[j];
                            dSi[j] = g;
                            sr += Si[j] * dot[j];
                            sk += g * vt[j];
                            sb += g * zt[j];
                            dz[j] += bi * g;
                            dvt[j] += ki * g;
                        }
                        drt[i] = scale * sr;
                        dkt[i] = sk;
                        dbt[i] = sb;
                    }
                    for (long j = 0; j < V; j++) dv[row * V + j] = dvt[j];
                } else {
                    for (long j = 0; j < V; j++) u[j] = vt[j] - zt[j];
                    for (long i = 0; i < K; i++) {
                        T *restrict dSi = dS + i * V;
                        const T *restrict Si = St + i * V;
                        const T ri = scale * rt[i], ki = kt[i];
                        T sr = 0, sk = 0;
#pragma omp simd reduction(+ : sr, sk)
                        for (long j = 0; j < V; j++) {
                            const T g = dSi[j] + ri * dot[j];
                            dSi[j] = g;
                            sr += Si[j] * dot[j];
                            sk += g * u[j];
                            dz[j] += ki * g;  /* du, for now */
                        }
                        drt[i] = scale * sr;
                        dkt[i] = sk;
                    }
                    for (long j = 0; j < V; j++) { dv[row * V + j] = dz[j]; dz[j] = -dz[j]; }
                }
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V;
                    const T *restrict Pi = Sp + i * V;
                    const T di = d[i], ai = at[i];
                    T sa = 0, sd = 0;
#pragma omp simd reduction(+ : sa, sd)
                    for (long j = 0; j < V; j++) {
                        sa += Pi[j] * dz[j];
                        sd += dSi[j] * Pi[j];
                        dSi[j] = di * dSi[j] + ai * dz[j];
                    }
                    dat[i] = sa;
                    dwt[i] = di * sd;
                }
            }
        }
    }
    free(buf); free(d); free(u); free(dz); free(dvt);
}

#endif
