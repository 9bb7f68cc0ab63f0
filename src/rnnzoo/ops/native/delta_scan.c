/* The gated delta rule (Yang et al. 2024, Gated DeltaNet) as its recurrence, forward and
   backward, one (batch row, head) pair at a time, the (K, V) state in cache:

       S'_t = a_t S_{t-1},  a_t = exp(g_t),   w_t = S'_t^T k_t,   u_t = beta_t (v_t - w_t)
       S_t  = S'_t + k_t u_t^T,               o_t = scale S_t^T q_t

   i.e. S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T. With n > 1 steps a token
   (DeltaProduct's n Householder steps) the gate acts at a token's first step (a = 1 at the
   others) and the query reads after its last; q, o, g have one row a token.

   Forward: one pass over the state a step, S_t = S'_t + k_t u_t^T with the read-out and the
   next step's decay and w_{t+1} = S'_{t+1}^T k_{t+1} in the same pass (a separate decay
   pass only where a checkpoint is due: the state entering steps 0, CK, 2 CK, ... is
   stored undecayed). It also writes w_t, so that the backward rebuilds S_t from the
   checkpoints in one pass a step (S_t = a_t S_{t-1} + k_t u_t^T). Backward, dS the gradient
   of S_t (its own read plus the transposed later steps):
       dS += scale q_t do_t^T,   dq_t = scale S_t do_t,   du = dS^T k_t,   dk_t = dS u_t
       dv_t = beta_t du,   dbeta_t = <du, v_t - w_t>,   dw = -beta_t du
       dS' = dS + k_t dw^T,   dk_t += S'_t dw,   dg_t = <dS', S'_t>,   dS_{t-1} = a_t dS'
   where the second line of step t and the first of step t - 1 share one pass (both read
   S_{t-1}).

   Layouts (row-major, contiguous), Tn steps, Tq = Tn / n tokens: k, dk (batch, Tn, H, K);
   v, w, dv (batch, Tn, H, V); beta, dbeta (batch, Tn, H); q, dq (batch, Tq, H, K); o, dout
   (batch, Tq, H, V); g, dg (batch, Tq, H); S0, ST, dST, dS0 (batch, H, K, V); ck (batch, H,
   nck, K, V) with nck = ceil(Tn / CK). Each function does the (batch row, head) pairs
   [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "delta_scan.c"
#include "each_type.h"

#else

void NAME(delta_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict beta, const T *restrict g, const T *restrict S0,
                     T *restrict o, T *restrict w, T *restrict ST, T *restrict ck, T scale,
                     long Tn, long n, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, Tq = Tn / n, KV = K * V;
    T *u = malloc(V * sizeof(T)), *scratch = malloc(2 * V * sizeof(T));
    const T zero = 0;
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict S = ST + p * KV;
        memcpy(S, S0 + p * KV, KV * sizeof(T));
        int decayed = 0;  /* S holds S'_t and w_t is written */
        for (long t = 0; t < Tn; t++) {
            const long row = (b * Tn + t) * H + h, tok = (b * Tq + t / n) * H + h;
            const T *restrict kt = k + row * K, *restrict vt = v + row * V;
            T *restrict wt = w + row * V;
            if (!decayed) {
                if (ck && t % CK == 0) memcpy(ck + (p * nck + t / CK) * KV, S, KV * sizeof(T));
                const T a = t % n == 0 ? EXP(g[tok]) : 1;
                for (long j = 0; j < V; j++) wt[j] = 0;
                for (long i = 0; i < K; i++) {
                    T *restrict Si = S + i * V;
                    const T ki = kt[i];
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        Si[j] *= a;
                        wt[j] += ki * Si[j];
                    }
                }
            }
            const T bt = beta[row];
            for (long j = 0; j < V; j++) u[j] = bt * (vt[j] - wt[j]);
            const int read = t % n == n - 1, t1 = t + 1;
            const int fuse = t1 < Tn && !(ck && t1 % CK == 0);
            /* not read / not fused: the same pass into scratch rows with zero weights */
            T *restrict ot = read ? o + tok * V : scratch;
            T *restrict wn = fuse ? w + (row + H) * V : scratch + V;
            const T *restrict qt = read ? q + tok * K : NULL;
            const T *restrict kn = fuse ? k + (row + H) * K : NULL;
            const T an = fuse && t1 % n == 0 ? EXP(g[(b * Tq + t1 / n) * H + h]) : 1;
            for (long j = 0; j < V; j++) { ot[j] = 0; wn[j] = 0; }
            for (long i = 0; i < K; i++) {
                T *restrict Si = S + i * V;
                const T ki = kt[i], qi = read ? scale * qt[i] : zero;
                const T kni = fuse ? an * kn[i] : zero, sa = fuse ? an : 1;
#pragma omp simd
                for (long j = 0; j < V; j++) {
                    const T s = Si[j] + ki * u[j];
                    ot[j] += qi * s;
                    wn[j] += kni * s;
                    Si[j] = sa * s;
                }
            }
            decayed = fuse;
        }
    }
    free(u);
    free(scratch);
}

void NAME(delta_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict beta, const T *restrict g, const T *restrict w,
                     const T *restrict ck, const T *restrict dST, const T *restrict dout,
                     T *restrict dq, T *restrict dk, T *restrict dv, T *restrict dbeta,
                     T *restrict dg, T *restrict dS0, T scale, long Tn, long n, long H, long K,
                     long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, Tq = Tn / n, KV = K * V;
    T *buf = malloc(CK * KV * sizeof(T));  /* S_t for the steps of one block */
    T *u = malloc(V * sizeof(T)), *du = malloc(V * sizeof(T)), *dw = malloc(V * sizeof(T));
    T *u1 = malloc(V * sizeof(T)), *du1 = malloc(V * sizeof(T)), *zeros = calloc(V, sizeof(T));
    T dkscratch;
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict dS = dS0 + p * KV;  /* the running gradient, ends as dS_0 */
        if (dST) memcpy(dS, dST + p * KV, KV * sizeof(T));
        else memset(dS, 0, KV * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *start = ck + (p * nck + c) * KV, *prev = start;
            for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                const long row = (b * Tn + t) * H + h;
                const T a = t % n == 0 ? EXP(g[(b * Tq + t / n) * H + h]) : 1, bt = beta[row];
                const T *restrict kt = k + row * K, *restrict vt = v + row * V;
                const T *restrict wt = w + row * V;
                T *restrict St = buf + (t - t0) * KV;
                for (long j = 0; j < V; j++) u[j] = bt * (vt[j] - wt[j]);
                for (long i = 0; i < K; i++) {
                    const T *restrict Pi = prev + i * V;
                    T *restrict Si = St + i * V;
                    const T ki = kt[i];
#pragma omp simd
                    for (long j = 0; j < V; j++) Si[j] = a * Pi[j] + ki * u[j];
                }
                prev = St;
            }
            /* the first half of the last step alone: dS += scale q do^T, dq, du, dk = dS u */
            {
                const long t = t1 - 1, row = (b * Tn + t) * H + h;
                const long tok = (b * Tq + t / n) * H + h;
                const int read = t % n == n - 1;
                const T bt = beta[row];
                const T *restrict kt = k + row * K, *restrict vt = v + row * V;
                const T *restrict wt = w + row * V, *restrict St = buf + (t - t0) * KV;
                const T *restrict dot = read ? dout + tok * V : zeros;
                const T *restrict qt = read ? q + tok * K : NULL;
                T *restrict dkt = dk + row * K;
                for (long j = 0; j < V; j++) { u[j] = bt * (vt[j] - wt[j]); du[j] = 0; }
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V;
                    const T *restrict Si = St + i * V;
                    const T qi = read ? scale * qt[i] : 0, ki = kt[i];
                    T sq = 0, sk = 0;
#pragma omp simd reduction(+ : sq, sk)
                    for (long j = 0; j < V; j++) {
                        const T d = dSi[j] + qi * dot[j];
                        dSi[j] = d;
                        sq += Si[j] * dot[j];
                        sk += d * u[j];
                        du[j] += ki * d;
                    }
                    if (read) dq[tok * K + i] = scale * sq;
                    dkt[i] = sk;
                }
            }
            for (long t = t1 - 1; t >= t0; t--) {
                /* du, u hold step t's; the pass finishes step t and, when t > t0, does the
                   first half of step t - 1 (its S_t is this step's S_{t-1}) */
                const long row = (b * Tn + t) * H + h;
                const int gate = t % n == 0;
                const long gtok = (b * Tq + t / n) * H + h;
                const T a = gate ? EXP(g[gtok]) : 1, bt = beta[row];
                const T *restrict kt = k + row * K, *restrict vt = v + row * V;
                const T *restrict wt = w + row * V;
                const T *restrict Sp = t > t0 ? buf + (t - 1 - t0) * KV : start;  /* S_{t-1} */
                T *restrict dkt = dk + row * K;
                T db = 0;
                for (long j = 0; j < V; j++) {
                    dv[row * V + j] = bt * du[j];
                    db += du[j] * (vt[j] - wt[j]);
                    dw[j] = -bt * du[j];
                }
                dbeta[row] = db;
                const int both = t > t0;
                const long r1 = row - H, s1 = t - 1;
                const int read1 = both && s1 % n == n - 1;
                const long tok1 = both ? (b * Tq + s1 / n) * H + h : 0;
                const T *restrict dot1 = read1 ? dout + tok1 * V : zeros;
                const T *restrict qt1 = read1 ? q + tok1 * K : NULL;
                const T *restrict kt1 = both ? k + r1 * K : NULL;
                T *restrict dkt1 = both ? dk + r1 * K : &dkscratch;
                if (both) {
                    const T bt1 = beta[r1];
                    const T *restrict vt1 = v + r1 * V, *restrict wt1 = w + r1 * V;
                    for (long j = 0; j < V; j++) { u1[j] = bt1 * (vt1[j] - wt1[j]); du1[j] = 0; }
                } else {
                    for (long j = 0; j < V; j++) { u1[j] = 0; du1[j] = 0; }
                }
                T sa = 0;
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V;
                    const T *restrict Pi = Sp + i * V;
                    const T ki = kt[i];
                    const T qi = read1 ? scale * qt1[i] : 0, ki1 = both ? kt1[i] : 0;
                    T sk = 0, s = 0, sq1 = 0, sk1 = 0;
#pragma omp simd reduction(+ : sk, s, sq1, sk1)
                    for (long j = 0; j < V; j++) {
                        const T d = dSi[j] + ki * dw[j];
                        sk += Pi[j] * dw[j];
                        s += d * Pi[j];
                        const T d1 = a * d + qi * dot1[j];   /* dS_{t-1} (+ its read) */
                        dSi[j] = d1;
                        sq1 += Pi[j] * dot1[j];
                        sk1 += d1 * u1[j];
                        du1[j] += ki1 * d1;
                    }
                    dkt[i] += a * sk;
                    sa += s;
                    if (both) {
                        if (read1) dq[tok1 * K + i] = scale * sq1;
                        dkt1[i] = sk1;
                    }
                }
                if (gate) dg[gtok] = a * sa;
                { T *x = u; u = u1; u1 = x; x = du; du = du1; du1 = x; }
            }
        }
    }
    free(buf); free(u); free(du); free(dw); free(u1); free(du1); free(zeros);
}

#endif
