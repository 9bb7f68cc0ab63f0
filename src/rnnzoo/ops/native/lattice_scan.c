/* Lattice's orthogonal slot recurrence (ops/lattice.py), forward and backward, one (batch
   row, head) pair at a time with its (m, V) slots in cache. Per step, slot rows s_i:

       e   = v - sum_i k_i s_i                      (the reconstruction error, V)
       a_i = (s_i . e) / max(|s_i|^2, eps)          (e's part along s_i)
       w_i = s_i + c_i (e - a_i s_i),  c_i = beta k_i
       s'_i = w_i / max(|w_i|, eps),   o = sum_i q_i s'_i

   Backward, with g_i = dS'_i + q_i do (the gradient of the new row: the next step's plus the
   read's), r_i = e - a_i s_i, n_i = max(|w_i|, eps):
       dq_i = s'_i . do
       dw_i = (g_i - s'_i (s'_i . g_i)) / n_i        (g_i / eps where |w_i| < eps)
       dc_i = dw_i . r_i  ->  dbeta += k_i dc_i,  dk_i = beta dc_i
       da_i = -c_i (dw_i . s_i),  dse_i = da_i / den_i,  dss_i = -da_i a_i / den_i (|s_i|^2 >= eps)
       de   = sum_i (c_i dw_i + dse_i s_i)
       ds_i = (1 - c_i a_i) dw_i + dse_i e + 2 dss_i s_i - k_i de,   dk_i -= s_i . de,  dv = de
   The forward keeps e and the per-row scalars |s_i|^2, a_i, |w_i| of every step (aux) and
   the state every CK steps (ck); the backward recomputes a block's states from them, one
   pass a row a step: s'_i = (s_i + c_i (e - a_i s_i)) / max(|w_i|, eps).

   Layouts (row-major, contiguous): q, k, dq, dk (batch, T, H, m); v, o, dv (batch, T, H, V);
   beta, dbeta (batch, T, H); S0, S_T, dS_T, dS0 (batch, H, m, V); ck (batch, H, nck, m, V),
   nck = ceil(T / CK), the state entering steps 0, CK, 2 CK, ...; aux (batch, H, T, V + 3 m). Each function does the
   (batch row, head) pairs [p0, p1). The clamps keep a NaN (x < eps ? eps : x), as
   torch.clamp_min does. Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "lattice_scan.c"
#include "each_type.h"

#else

/* One step on S (m, V) in place; o (V) gets the read, aux (V + 3 m) keeps e, then per row
   |s_i|^2, a_i and |w_i| for the backward. */
static inline __attribute__((always_inline)) void NAME(lat_step)(T *restrict S, const T *restrict q, const T *restrict k,
                           const T *restrict v, T beta, T *restrict aux, T *restrict o,
                           long M, long V) {
    const T eps = (T)1e-12;
    T *restrict e = aux, *restrict kept = aux + V;
    for (long j = 0; j < V; j++) e[j] = v[j];
    for (long i = 0; i < M; i++) {
        const T ki = k[i];
        const T *restrict Si = S + i * V;
        for (long j = 0; j < V; j++) e[j] -= ki * Si[j];
    }
    for (long j = 0; j < V; j++) o[j] = 0;
    for (long i = 0; i < M; i++) {
        T *restrict Si = S + i * V;
        T ss = 0, se = 0;
#pragma omp simd reduction(+ : ss, se)
        for (long j = 0; j < V; j++) {
            ss += Si[j] * Si[j];
            se += Si[j] * e[j];
        }
        const T den = ss < eps ? eps : ss, a = se / den, c = beta * k[i];
        T ww = 0;
#pragma omp simd reduction(+ : ww)
        for (long j = 0; j < V; j++) {
            const T w = Si[j] + c * (e[j] - a * Si[j]);
            Si[j] = w;
            ww += w * w;
        }
        const T nn = SQRT(ww), inv = 1 / (nn < eps ? eps : nn), qi = q[i];
        for (long j = 0; j < V; j++) {
            Si[j] *= inv;
            o[j] += qi * Si[j];
        }
        kept[i] = ss;
        kept[M + i] = a;
        kept[2 * M + i] = nn;
    }
}

static inline __attribute__((always_inline)) void NAME(fwd_body)(
        const T *restrict q, const T *restrict k, const T *restrict v, const T *restrict beta,
        const T *restrict S0, T *restrict o, T *restrict ST, T *restrict ck, T *restrict aux,
        long Tn, long H, long M, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, NA = V + 3 * M;
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict S = ST + p * M * V;
        memcpy(S, S0 + p * M * V, M * V * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            if (t % CK == 0) memcpy(ck + (p * nck + t / CK) * M * V, S, M * V * sizeof(T));
            const long row = (b * Tn + t) * H + h;
            NAME(lat_step)(S, q + row * M, k + row * M, v + row * V, beta[row],
                           aux + (p * Tn + t) * NA, o + row * V, M, V);
        }
    }
}

static inline __attribute__((always_inline)) void NAME(bwd_body)(
        const T *restrict q, const T *restrict k, const T *restrict v, const T *restrict beta,
        const T *restrict ck, const T *restrict aux, const T *restrict dST,
        const T *restrict dout, T *restrict dq, T *restrict dk, T *restrict dv,
        T *restrict dbeta, T *restrict dS0, long Tn, long H, long M, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, MV = M * V, NA = V + 3 * M;
    const T eps = (T)1e-12;
    T *bufS = malloc((CK + 1) * MV * sizeof(T)), *dw = malloc(V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict dS = dS0 + p * MV;  /* the running gradient, ends as dS_0 */
        if (dST) memcpy(dS, dST + p * MV, MV * sizeof(T));
        else memset(dS, 0, MV * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            memcpy(bufS, ck + (p * nck + c) * MV, MV * sizeof(T));
            for (long t = t0; t < t1; t++) {  /* the block's states, from the kept e, a, |w| */
                const long row = (b * Tn + t) * H + h, j0 = t - t0;
                const T *restrict S = bufS + j0 * MV, *restrict kt = k + row * M;
                const T *restrict e = aux + (p * Tn + t) * NA, *restrict kept = e + V;
                T *restrict Sn = bufS + (j0 + 1) * MV;
                const T bt = beta[row];
                for (long i = 0; i < M; i++) {
                    const T *restrict Si = S + i * V;
                    T *restrict Ni = Sn + i * V;
                    const T a = kept[M + i], nn = kept[2 * M + i], ci = bt * kt[i];
                    const T inv = 1 / (nn < eps ? eps : nn);
                    for (long j = 0; j < V; j++) Ni[j] = (Si[j] + ci * (e[j] - a * Si[j])) * inv;
                }
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (b * Tn + t) * H + h, j0 = t - t0;
                const T *restrict S = bufS + j0 * MV, *restrict Sn = bufS + (j0 + 1) * MV;
                const T *restrict e = aux + (p * Tn + t) * NA, *restrict kept = e + V;
                const T *restrict qt = q + row * M, *restrict kt = k + row * M;
                const T *restrict dot = dout + row * V;
                T *restrict de = dv + row * V, *restrict dqt = dq + row * M,
                  *restrict dkt = dk + row * M;  /* dv = de, accumulated in place */
                const T bt = beta[row];
                for (long j = 0; j < V; j++) de[j] = 0;
                T db = 0;
                for (long i = 0; i < M; i++) {
                    const T *restrict Si = S + i * V, *restrict Ni = Sn + i * V;
                    T *restrict dSi = dS + i * V;
                    const T ss = kept[i], a = kept[M + i];
                    const T nn = kept[2 * M + i], qi = qt[i], ci = bt * kt[i];
                    const T den = ss < eps ? eps : ss;
                    const int small = nn < eps;
                    const T inv = 1 / (small ? eps : nn);
                    T sg = 0, sdo = 0;  /* s'.g, s'.do */
#pragma omp simd reduction(+ : sg, sdo)
                    for (long j = 0; j < V; j++) {
                        sg += Ni[j] * (dSi[j] + qi * dot[j]);
                        sdo += Ni[j] * dot[j];
                    }
                    dqt[i] = sdo;
                    if (small) sg = 0;
                    T dc = 0, dws = 0;
#pragma omp simd reduction(+ : dc, dws)
                    for (long j = 0; j < V; j++) {
                        const T d = (dSi[j] + qi * dot[j] - Ni[j] * sg) * inv;
                        dw[j] = d;
                        dc += d * (e[j] - a * Si[j]);
                        dws += d * Si[j];
                    }
                    db += kt[i] * dc;
                    dkt[i] = bt * dc;
                    const T da = -ci * dws, dse = da / den;
                    const T dss = ss < eps ? 0 : -da * a / den;
                    const T keep = 1 - ci * a;
                    for (long j = 0; j < V; j++) {
                        de[j] += ci * dw[j] + dse * Si[j];
                        dSi[j] = keep * dw[j] + dse * e[j] + 2 * dss * Si[j];
                    }
                }
                for (long i = 0; i < M; i++) {
                    const T *restrict Si = S + i * V;
                    T *restrict dSi = dS + i * V;
                    const T ki = kt[i];
                    T sd = 0;
#pragma omp simd reduction(+ : sd)
                    for (long j = 0; j < V; j++) {
                        sd += Si[j] * de[j];
                        dSi[j] -= ki * de[j];
                    }
                    dkt[i] -= sd;
                }
                dbeta[row] = db;
            }
        }
    }
    free(bufS);
    free(dw);
}

/* The default head width (V = 32) compiled as a constant: every row loop without a remainder
   or a runtime trip count (the op fwd+bwd ~15% faster at B=16, T=512, H=4, m=V=32). */
void NAME(lattice_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                       const T *restrict beta, const T *restrict S0, T *restrict o,
                       T *restrict ST, T *restrict ck, T *restrict aux, long Tn, long H,
                       long M, long V, long p0, long p1) {
    if (V == 32) NAME(fwd_body)(q, k, v, beta, S0, o, ST, ck, aux, Tn, H, M, 32, p0, p1);
    else NAME(fwd_body)(q, k, v, beta, S0, o, ST, ck, aux, Tn, H, M, V, p0, p1);
}

void NAME(lattice_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                       const T *restrict beta, const T *restrict ck, const T *restrict aux,
                       const T *restrict dST, const T *restrict dout, T *restrict dq,
                       T *restrict dk, T *restrict dv, T *restrict dbeta, T *restrict dS0,
                       long Tn, long H, long M, long V, long p0, long p1) {
    if (V == 32)
        NAME(bwd_body)(q, k, v, beta, ck, aux, dST, dout, dq, dk, dv, dbeta, dS0, Tn, H, M, 32,
                       p0, p1);
    else
        NAME(bwd_body)(q, k, v, beta, ck, aux, dST, dout, dq, dk, dv, dbeta, dS0, Tn, H, M, V,
                       p0, p1);
}

#endif
