/* Gated linear attention with a decay per key channel (GLA; RWKV-6 with its bonus u) as its
   recurrence, forward and backward, one (batch row, head) pair at a time:

       S_t = diag(a_t) S_{t-1} + k_t v_t^T,   a_t = exp(g_t)       S: (K, V)
       o_t = S_t^T q_t                                   (no bonus)
       o_t = S_{t-1}^T q_t + (q_t . (u o k_t)) v_t       (bonus u: the read before the write)

   The state stays in cache; every step is a few passes over it along V (contiguous).
   Backward, with D_t the gradient of S_t:
     no bonus: D_t = a_{t+1} o D_{t+1} + q_t do_t^T,  dq_t = S_t do_t,  dk_t = D_t v_t,
               dv_t = D_t^T k_t,  dg_t = rowsum(D_t o S_t) - k_t o dk_t  (= rowsum(D_t o a_t S_{t-1}))
     bonus:    D_{t-1} = a_t o D_t + q_t do_t^T,  with c_t = do_t . v_t:
               dq_t = S_{t-1} do_t + c_t u o k_t,  dk_t = D_t v_t + c_t u o q_t,
               dv_t = D_t^T k_t + (q_t . (u o k_t)) do_t,  dg_t = rowsum(D_t o S_t) - k_t o (D_t v_t),
               du += c_t q_t o k_t
   and dS_0 = a_0 o D_0 (no bonus) or D_{-1} (bonus). S_t is recomputed from the state stored
   every CK steps by the forward (re-deriving S_{t-1} from S_t would divide by a_t).
   With `col` (no bonus) the decay is per value channel instead (gated slot attention's slot
   scores, ops.gsa): S_t = S_{t-1} diag(a_t) + k_t v_t^T, g (batch, T, H, V), and
   dg_t = colsum(D_t o S_t) - v_t o dv_t.

   Layouts (row-major, contiguous): q, k, g, dq, dk, dg (batch, T, H, K); v, o, do, dv
   (batch, T, H, V); u (H, K) or NULL; du (batch, H, K) (the caller sums the batch rows);
   S0, S_T, dS_T (may be NULL), dS0 (batch, H, K, V); ck (batch, H, nck, K, V) with
   nck = ceil(T / CK) (the state entering steps 0, CK, 2 CK, ...). Each function does the
   (batch row, head) pairs [p0, p1).

   LightNet's additive gate (layers/lightnet.py) feeds this recurrence its keys and decays:
   per channel, z_t = log(e^{z_{t-1}} + e^{x_t}) (z_{-1} = z0, -inf: empty), k_t = e^{x_t - z_t},
   g_t = z_{t-1} - z_t (0 where z_{t-1} = -inf). Backward, with G_t the gradient of z_t:
       G_t = dz_T [t = T-1] - dk_t k_t - dg_t [z_{t-1} > -inf] + dg_{t+1} + e^{g_{t+1}} G_{t+1},
       dx_t = k_t (dk_t + G_t),   dz0 = dg_0 + e^{g_0} G_0 where z0 > -inf, else 0.
   x, k, g (batch, T, C) with C channels contiguous; z0, zT (batch, C); batch rows [p0, p1).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "gla_scan.c"
#include "each_type.h"

#else

void NAME(gla_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict u, const T *restrict S0,
                   T *restrict o, T *restrict ST, T *restrict ck, long col, long Tn, long H,
                   long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, A = col ? V : K;
    T *a = malloc(A * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict S = ST + p * K * V;
        memcpy(S, S0 + p * K * V, K * V * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            if (ck && t % CK == 0) memcpy(ck + (p * nck + t / CK) * K * V, S, K * V * sizeof(T));
            const long rk = ((b * Tn + t) * H + h) * K, rv = ((b * Tn + t) * H + h) * V;
            const T *restrict qt = q + rk, *restrict kt = k + rk;
            const T *restrict gt = g + (col ? rv : rk), *restrict vt = v + rv;
            T *restrict ot = o + rv;
#pragma omp simd
            for (long i = 0; i < A; i++) a[i] = EXP(gt[i]);
            T c = 0;
            if (u) {
                const T *restrict uh = u + h * K;
                for (long i = 0; i < K; i++) c += qt[i] * uh[i] * kt[i];
            }
            for (long j = 0; j < V; j++) ot[j] = c * vt[j];
            for (long i = 0; i < K; i++) {
                T *restrict Si = S + i * V;
                const T ki = kt[i], qi = qt[i], ai = col ? 0 : a[i];  /* a has V entries with col */
                if (u) {
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        ot[j] += qi * Si[j];
                        Si[j] = ai * Si[j] + ki * vt[j];
                    }
                } else if (col) {
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        Si[j] = a[j] * Si[j] + ki * vt[j];
                        ot[j] += qi * Si[j];
                    }
                } else {
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        Si[j] = ai * Si[j] + ki * vt[j];
                        ot[j] += qi * Si[j];
                    }
                }
            }
        }
    }
    free(a);
}

void NAME(gla_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict u, const T *restrict ck,
                   const T *restrict dST, const T *restrict dout, T *restrict dq,
                   T *restrict dk, T *restrict dv, T *restrict dg, T *restrict du,
                   T *restrict dS0, long col, long Tn, long H, long K, long V, long p0,
                   long p1) {
    const long nck = (Tn + CK - 1) / CK, A = col ? V : K;
    T *buf = malloc(CK * K * V * sizeof(T));  /* S_t for the steps of one block */
    T *a = malloc(A * sizeof(T)), *an = malloc(A * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        const T *restrict uh = u ? u + h * K : NULL;
        T *restrict duh = u ? du + p * K : NULL;
        if (u) for (long i = 0; i < K; i++) duh[i] = 0;
        T *restrict D = dS0 + p * K * V;  /* the running gradient, ends as dS_0 */
        if (dST) memcpy(D, dST + p * K * V, K * V * sizeof(T));
        else memset(D, 0, K * V * sizeof(T));
        for (long i = 0; i < A; i++) an[i] = 1;
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *start = ck + (p * nck + c) * K * V, *prev = start;
            for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                const long rk = ((b * Tn + t) * H + h) * K, rv = ((b * Tn + t) * H + h) * V;
                const T *restrict kt = k + rk, *restrict gt = g + (col ? rv : rk);
                const T *restrict vt = v + rv;
                T *restrict St = buf + (t - t0) * K * V;
#pragma omp simd
                for (long i = 0; i < A; i++) a[i] = EXP(gt[i]);
                if (col) {
                    for (long i = 0; i < K; i++) {
                        const T ki = kt[i];
#pragma omp simd
                        for (long j = 0; j < V; j++)
                            St[i * V + j] = a[j] * prev[i * V + j] + ki * vt[j];
                    }
                    prev = St;
                    continue;
                }
                for (long i = 0; i < K; i++) {
                    const T ai = a[i], ki = kt[i];
#pragma omp simd
                    for (long j = 0; j < V; j++) St[i * V + j] = ai * prev[i * V + j] + ki * vt[j];
                }
                prev = St;
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long rk = ((b * Tn + t) * H + h) * K, rv = ((b * Tn + t) * H + h) * V;
                const T *restrict qt = q + rk, *restrict kt = k + rk;
                const T *restrict gt = g + (col ? rv : rk);
                const T *restrict vt = v + rv, *restrict dot = dout + rv;
                const T *restrict St = buf + (t - t0) * K * V;
                const T *restrict Sp = t > t0 ? St - K * V : start;  /* S_{t-1} */
                T *restrict dvt = dv + rv, *restrict dqt = dq + rk, *restrict dkt = dk + rk,
                  *restrict dgt = dg + (col ? rv : rk);
#pragma omp simd
                for (long i = 0; i < A; i++) a[i] = EXP(gt[i]);
                if (col) {
                    for (long j = 0; j < V; j++) dvt[j] = dgt[j] = 0;
                    for (long i = 0; i < K; i++) {
                        T *restrict Di = D + i * V;
                        const T *restrict Si = St + i * V;
                        const T qi = qt[i], ki = kt[i];
                        T sq = 0, sk = 0;
#pragma omp simd reduction(+ : sq, sk)
                        for (long j = 0; j < V; j++) {
                            const T d = an[j] * Di[j] + qi * dot[j];
                            Di[j] = d;
                            sq += Si[j] * dot[j];
                            sk += d * vt[j];
                            dgt[j] += d * Si[j];
                            dvt[j] += ki * d;
                        }
                        dqt[i] = sq;
                        dkt[i] = sk;
                    }
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        dgt[j] -= vt[j] * dvt[j];
                        an[j] = a[j];
                    }
                } else if (!u) {
                    for (long j = 0; j < V; j++) dvt[j] = 0;
                    for (long i = 0; i < K; i++) {
                        T *restrict Di = D + i * V;
                        const T *restrict Si = St + i * V;
                        const T qi = qt[i], ki = kt[i], ani = an[i];
                        T sq = 0, sk = 0, ss = 0;
#pragma omp simd reduction(+ : sq, sk, ss)
                        for (long j = 0; j < V; j++) {
                            const T d = ani * Di[j] + qi * dot[j];
                            Di[j] = d;
                            sq += Si[j] * dot[j];
                            sk += d * vt[j];
                            ss += d * Si[j];
                            dvt[j] += ki * d;
                        }
                        dqt[i] = sq;
                        dkt[i] = sk;
                        dgt[i] = ss - ki * sk;
                    }
                    for (long i = 0; i < K; i++) an[i] = a[i];
                } else {
                    T cv = 0, cb = 0;  /* do . v and q . (u o k) */
                    for (long j = 0; j < V; j++) cv += dot[j] * vt[j];
                    for (long i = 0; i < K; i++) cb += qt[i] * uh[i] * kt[i];
                    for (long j = 0; j < V; j++) dvt[j] = cb * dot[j];
                    for (long i = 0; i < K; i++) {
                        T *restrict Di = D + i * V;
                        const T *restrict Si = St + i * V, *restrict Spi = Sp + i * V;
                        const T qi = qt[i], ki = kt[i], ai = a[i];
                        T sq = 0, sk = 0, ss = 0;
#pragma omp simd reduction(+ : sq, sk, ss)
                        for (long j = 0; j < V; j++) {
                            const T d = Di[j];
                            sk += d * vt[j];
                            ss += d * Si[j];
                            dvt[j] += ki * d;
                            Di[j] = ai * d + qi * dot[j];
                            sq += Spi[j] * dot[j];
                        }
                        dqt[i] = sq + cv * uh[i] * ki;
                        dkt[i] = sk + cv * uh[i] * qi;
                        dgt[i] = ss - ki * sk;
                        duh[i] += cv * qi * ki;
                    }
                }
            }
        }
        if (col)  /* through S_0's decay a_0 */
            for (long i = 0; i < K; i++)
                for (long j = 0; j < V; j++) D[i * V + j] *= an[j];
        else if (!u)
            for (long i = 0; i < K; i++)
                for (long j = 0; j < V; j++) D[i * V + j] *= an[i];
    }
    free(an);
    free(a);
    free(buf);
}

void NAME(gate_fwd)(const T *restrict x, const T *restrict z0, T *restrict kout,
                    T *restrict gout, T *restrict zT, long Tn, long C, long p0, long p1) {
    for (long b = p0; b < p1; b++) {
        T *restrict z = zT + b * C;
        memcpy(z, z0 + b * C, C * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            const T *restrict xt = x + (b * Tn + t) * C;
            T *restrict kt = kout + (b * Tn + t) * C, *restrict gt = gout + (b * Tn + t) * C;
            for (long c = 0; c < C; c++) {  /* logaddexp; NaN stays NaN */
                const T zp = z[c], d = zp - xt[c];
                const T m = d > 0 ? zp : xt[c];
                const T zn = zp == -INFINITY ? xt[c] : m + LOG1P(EXP(d > 0 ? -d : d));
                gt[c] = zp == -INFINITY ? 0 : zp - zn;
                kt[c] = EXP(xt[c] - zn);
                z[c] = zn;
            }
        }
    }
}

void NAME(gate_bwd)(const T *restrict kk, const T *restrict gg, const T *restrict z0,
                    const T *restrict dk, const T *restrict dg, const T *restrict dzT,
                    T *restrict dx, T *restrict dz0, long Tn, long C, long p0, long p1) {
    for (long b = p0; b < p1; b++) {
        T *restrict G = dz0 + b * C;  /* G_t, running backward; ends as dz0 */
        for (long c = 0; c < C; c++) G[c] = dzT ? dzT[b * C + c] : 0;
        for (long t = Tn - 1; t >= 0; t--) {
            const long r = (b * Tn + t) * C;
            const T *restrict kt = kk + r, *restrict dkt = dk + r, *restrict dgt = dg + r;
            T *restrict dxt = dx + r;
            const T *restrict gn = t + 1 < Tn ? gg + r + C : NULL, *restrict dgn = dg + r + C;
#pragma omp simd
            for (long c = 0; c < C; c++) {
                const T G_t = G[c] * (gn ? EXP(gn[c]) : 1) + (gn ? dgn[c] : 0)
                              - dkt[c] * kt[c] - (t > 0 || z0[b * C + c] != -INFINITY ? dgt[c] : 0);
                dxt[c] = kt[c] * (dkt[c] + G_t);
                G[c] = G_t;
            }
        }
        for (long c = 0; c < C; c++) {
            const long r = b * Tn * C + c;
            G[c] = z0[b * C + c] == -INFINITY ? 0 : dg[r] + EXP(gg[r]) * G[c];
        }
    }
}

#endif
