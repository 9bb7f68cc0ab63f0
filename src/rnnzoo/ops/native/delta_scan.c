/* The gated delta rule (Yang et al. 2024, Gated DeltaNet) as its recurrence, forward and
   backward, one (batch row, head) pair at a time, the (K, V) state in cache:

       S'_t = a_t S_{t-1},  a_t = exp(g_t),   w_t = S'_t^T k_t,   u_t = beta_t (v_t - w_t)
       S_t  = S'_t + k_t u_t^T,               o_t = scale S_t^T q_t

   i.e. S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T. The forward also writes
   w_t (batch, T, H, V), so that the backward rebuilds S_t from the state stored every CK steps
   in one pass a step (S_t = a_t S_{t-1} + k_t u_t^T). Backward, dS the gradient of S_t (its
   own read plus the transposed later steps):
       dS += scale q_t do_t^T,   dq_t = scale S_t do_t,   du = dS^T k_t,   dk_t = dS u_t
       dv_t = beta_t du,   dbeta_t = <du, v_t - w_t>,   dw = -beta_t du
       dS' = dS + k_t dw^T,   dk_t += S'_t dw,   dg_t = <dS', S'_t>,   dS_{t-1} = a_t dS'

   Layouts (row-major, contiguous): q, k, dq, dk (batch, T, H, K); v, o, w, dv (batch, T, H, V);
   beta, g, dbeta, dg (batch, T, H); S0, ST, dST, dS0 (batch, H, K, V); ck (batch, H, nck, K, V)
   with nck = ceil(T / CK) (the state entering steps 0, CK, 2 CK, ...). Each function does the
   (batch row, head) pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "delta_scan.c"
#include "each_type.h"

#else

void NAME(delta_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict beta, const T *restrict g, const T *restrict S0,
                     T *restrict o, T *restrict w, T *restrict ST, T *restrict ck, T scale,
                     long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK;
    T *u = malloc(V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict S = ST + p * K * V;
        memcpy(S, S0 + p * K * V, K * V * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            if (ck && t % CK == 0) memcpy(ck + (p * nck + t / CK) * K * V, S, K * V * sizeof(T));
            const long row = (b * Tn + t) * H + h;
            const T a = EXP(g[row]), bt = beta[row];
            const T *restrict qt = q + row * K, *restrict kt = k + row * K;
            const T *restrict vt = v + row * V;
            T *restrict ot = o + row * V, *restrict wt = w + row * V;
            for (long j = 0; j < V; j++) wt[j] = 0;
            for (long i = 0; i < K; i++) {
                T *restrict Si = S + i * V;
                const T ki = kt[i];
                for (long j = 0; j < V; j++) {
                    Si[j] *= a;
                    wt[j] += ki * Si[j];
                }
            }
            for (long j = 0; j < V; j++) { u[j] = bt * (vt[j] - wt[j]); ot[j] = 0; }
            for (long i = 0; i < K; i++) {
                T *restrict Si = S + i * V;
                const T ki = kt[i], qi = scale * qt[i];
                for (long j = 0; j < V; j++) {
                    Si[j] += ki * u[j];
                    ot[j] += qi * Si[j];
                }
            }
        }
    }
    free(u);
}

void NAME(delta_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict beta, const T *restrict g, const T *restrict w,
                     const T *restrict ck, const T *restrict dST, const T *restrict dout,
                     T *restrict dq, T *restrict dk, T *restrict dv, T *restrict dbeta,
                     T *restrict dg, T *restrict dS0, T scale, long Tn, long H, long K, long V,
                     long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK;
    T *buf = malloc(CK * K * V * sizeof(T));  /* S_t for the steps of one block */
    T *u = malloc(V * sizeof(T)), *du = malloc(V * sizeof(T)), *dw = malloc(V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict dS = dS0 + p * K * V;  /* the running gradient, ends as dS_0 */
        if (dST) memcpy(dS, dST + p * K * V, K * V * sizeof(T));
        else memset(dS, 0, K * V * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *start = ck + (p * nck + c) * K * V, *prev = start;
            for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                const long row = (b * Tn + t) * H + h;
                const T a = EXP(g[row]), bt = beta[row];
                const T *restrict kt = k + row * K, *restrict vt = v + row * V;
                const T *restrict wt = w + row * V;
                T *restrict St = buf + (t - t0) * K * V;
                for (long j = 0; j < V; j++) u[j] = bt * (vt[j] - wt[j]);
                for (long i = 0; i < K; i++)
                    for (long j = 0; j < V; j++)
                        St[i * V + j] = a * prev[i * V + j] + kt[i] * u[j];
                prev = St;
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (b * Tn + t) * H + h;
                const T a = EXP(g[row]), bt = beta[row];
                const T *restrict qt = q + row * K, *restrict kt = k + row * K;
                const T *restrict vt = v + row * V, *restrict wt = w + row * V;
                const T *restrict dot = dout + row * V;
                const T *restrict St = buf + (t - t0) * K * V;
                const T *restrict Sp = t > t0 ? St - K * V : start;  /* S_{t-1} */
                T *restrict dqt = dq + row * K, *restrict dkt = dk + row * K;
                for (long j = 0; j < V; j++) { u[j] = bt * (vt[j] - wt[j]); du[j] = 0; }
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V;
                    const T *restrict Si = St + i * V;
                    const T qi = scale * qt[i], ki = kt[i];
                    T sq = 0, sk = 0;
#pragma omp simd reduction(+ : sq, sk)
                    for (long j = 0; j < V; j++) {
                        const T d = dSi[j] + qi * dot[j];
                        dSi[j] = d;
                        sq += Si[j] * dot[j];
                        sk += d * u[j];
                        du[j] += ki * d;
                    }
                    dqt[i] = scale * sq;
                    dkt[i] = sk;
                }
                T db = 0;
                for (long j = 0; j < V; j++) {
                    dv[row * V + j] = bt * du[j];
                    db += du[j] * (vt[j] - wt[j]);
                    dw[j] = -bt * du[j];
                }
                dbeta[row] = db;
                T sa = 0;
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V;
                    const T *restrict Pi = Sp + i * V;
                    const T ki = kt[i];
                    T sk = 0, s = 0;
#pragma omp simd reduction(+ : sk, s)
                    for (long j = 0; j < V; j++) {
                        const T d = dSi[j] + ki * dw[j];
                        sk += Pi[j] * dw[j];
                        s += d * Pi[j];
                        dSi[j] = a * d;
                    }
                    dkt[i] += a * sk;
                    sa += s;
                }
                dg[row] = a * sa;
            }
        }
    }
    free(buf); free(u); free(du); free(dw);
}

#endif
