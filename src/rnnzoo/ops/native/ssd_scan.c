/* Scalar-decay linear attention with q, k shared by groups of heads (Mamba-2's SSD), as its
   recurrence, forward and backward, one (batch row, head) pair at a time:

       S_t = a_t S_{t-1} + k_t v_t^T,   a_t = exp(g_t),   o_t = S_t^T q_t      S: (K, V)

   The state stays in cache (K x V), every step is a few passes over it along V (contiguous).
   Backward, with dS the gradient of S_t (its own read plus a_{t+1} times the next one's):
       dS = a_{t+1} dS_{t+1} + q_t do_t^T,   dq_t = S_t do_t,   dk_t = dS v_t,   dv_t = dS^T k_t,
       dg_t = <dS, S_t> - <k_t, dk_t>   (= <dS, a_t S_{t-1}>),   dS_0 = a_1 dS_1
   S_t is recomputed from the state stored every CK steps by the forward (re-deriving S_{t-1}
   from S_t would divide by a_t).

   Layouts (row-major, contiguous): q, k (batch, T, G, K); v, o, dv (batch, T, H, V);
   g, dg (batch, T, H); S0, S_T, dS_T, dS0 (batch, H, K, V); ck (batch, H, nck, K, V) with
   nck = ceil(T / CK) (the state entering steps 0, CK, 2 CK, ...); dq, dk (batch, T, H, K):
   per head, the caller sums the heads of a group. Head h reads group h / (H / G).
   Each function does the (batch row, head) pairs [p0, p1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "ssd_scan.c"
#include "each_type.h"

#else

void NAME(ssd_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict S0, T *restrict o, T *restrict ST,
                   T *restrict ck, long Tn, long G, long H, long K, long V, long p0, long p1) {
    const long R = H / G, nck = (Tn + CK - 1) / CK;
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        T *restrict S = ST + p * K * V;
        memcpy(S, S0 + p * K * V, K * V * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            if (t % CK == 0) memcpy(ck + (p * nck + t / CK) * K * V, S, K * V * sizeof(T));
            const T a = EXP(g[(b * Tn + t) * H + h]);
            const T *restrict qt = q + ((b * Tn + t) * G + gi) * K;
            const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
            const T *restrict vt = v + ((b * Tn + t) * H + h) * V;
            T *restrict ot = o + ((b * Tn + t) * H + h) * V;
            for (long j = 0; j < V; j++) ot[j] = 0;
            for (long i = 0; i < K; i++) {
                T *restrict Si = S + i * V;
                const T ki = kt[i], qi = qt[i];
                for (long j = 0; j < V; j++) {
                    Si[j] = a * Si[j] + ki * vt[j];
                    ot[j] += qi * Si[j];
                }
            }
        }
    }
}

void NAME(ssd_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict ck, const T *restrict dST,
                   const T *restrict dout, T *restrict dq, T *restrict dk, T *restrict dv,
                   T *restrict dg, T *restrict dS0, long Tn, long G, long H, long K, long V,
                   long p0, long p1) {
    const long R = H / G, nck = (Tn + CK - 1) / CK;
    T *buf = malloc(CK * K * V * sizeof(T));  /* S_t for the steps of one block */
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        T *restrict dS = dS0 + p * K * V;  /* the running gradient, ends as dS_0 */
        if (dST) memcpy(dS, dST + p * K * V, K * V * sizeof(T));
        else memset(dS, 0, K * V * sizeof(T));
        T a_next = 1;
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *prev = ck + (p * nck + c) * K * V;
            for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                const T a = EXP(g[(b * Tn + t) * H + h]);
                const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
                const T *restrict vt = v + ((b * Tn + t) * H + h) * V;
                T *restrict St = buf + (t - t0) * K * V;
                for (long i = 0; i < K; i++)
                    for (long j = 0; j < V; j++)
                        St[i * V + j] = a * prev[i * V + j] + kt[i] * vt[j];
                prev = St;
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (b * Tn + t) * H + h;
                const T a = EXP(g[row]);
                const T *restrict qt = q + ((b * Tn + t) * G + gi) * K;
                const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
                const T *restrict vt = v + row * V, *restrict dot = dout + row * V;
                const T *restrict St = buf + (t - t0) * K * V;
                T *restrict dvt = dv + row * V, *restrict dqt = dq + row * K,
                  *restrict dkt = dk + row * K;
                for (long j = 0; j < V; j++) dvt[j] = 0;
                T dgt = 0;
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V;
                    const T *restrict Si = St + i * V;
                    const T qi = qt[i], ki = kt[i];
                    T sq = 0, sk = 0, ss = 0;
#pragma omp simd reduction(+ : sq, sk, ss)
                    for (long j = 0; j < V; j++) {
                        const T d = a_next * dSi[j] + qi * dot[j];
                        dSi[j] = d;
                        sq += Si[j] * dot[j];
                        sk += d * vt[j];
                        ss += d * Si[j];
                        dvt[j] += ki * d;
                    }
                    dqt[i] = sq;
                    dkt[i] = sk;
                    dgt += ss - ki * sk;
                }
                dg[row] = dgt;
                a_next = a;
            }
        }
        for (long i = 0; i < K * V; i++) dS[i] *= a_next;  /* through S_0's decay a_0 */
    }
    free(buf);
}

#endif
