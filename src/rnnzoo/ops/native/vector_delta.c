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

   One pass over the state a step each way: the forward's update of step t also sums
   z_{t+1} = S_t^T a_{t+1}; the backward's dS_{t-1} of step t also adds step t-1's own read
   and sums its dr, dk, db, dz (both read S_{t-1} and dS). The backward's other pass rebuilds
   the states of a block.

   With after = 1 the erase reads the decayed state, a_t = p_t o d_t (a holds p: KDA, GDN-2);
   w may hold one log-decay a head (Kw = 1, Comba) instead of one a key channel (Kw = K).

   Layouts (row-major, contiguous): r, k, a, b and their gradients (batch, T, H, K); w, dw
   (batch, T, H, Kw);
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
static inline void NAME(decays)(T *restrict d, const T *restrict w, long K, long Kw) {
    const T lo = sizeof(T) == 4 ? (T)-87 : (T)-708;
    if (Kw == K) for (long i = 0; i < K; i++) d[i] = w[i] < lo ? 0 : EXP(w[i]);
    else for (long i = 0; i < K; i++) d[i] = w[0] < lo ? 0 : EXP(w[0]);  /* one a head */
}

void NAME(vdelta_fwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict S0, T *restrict o, T *restrict z, T *restrict ST,
                      T *restrict ck, T scale, long after, long Kw, long Tn, long H, long K,
                      long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK;
    T *d = malloc(K * sizeof(T)), *dn = malloc(K * sizeof(T)), *u = malloc(V * sizeof(T));
    T *zc = malloc(V * sizeof(T)), *zn = malloc(V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
        T *restrict S = ST + p * K * V;
        memcpy(S, S0 + p * K * V, K * V * sizeof(T));
        if (Tn == 0) continue;
        for (long j = 0; j < V; j++) zc[j] = 0;  /* z_0 = S_0^T a_0 */
        NAME(decays)(dn, w + (bb * Tn * H + h) * Kw, K, Kw);
        for (long i = 0; i < K; i++) {
            const T ai = a[(bb * Tn * H + h) * K + i] * (after ? dn[i] : 1);
            for (long j = 0; j < V; j++) zc[j] += ai * S[i * V + j];
        }
        for (long t = 0; t < Tn; t++) {
            if (ck && t % CK == 0) memcpy(ck + (p * nck + t / CK) * K * V, S, K * V * sizeof(T));
            const long row = (bb * Tn + t) * H + h;
            const T *restrict rt = r + row * K, *restrict kt = k + row * K;
            const T *restrict vt = v + row * V;
            const T *restrict an = t + 1 < Tn ? a + (row + H) * K : NULL;  /* a_{t+1} */
            T *restrict ot = o + row * V;
            NAME(decays)(d, w + row * Kw, K, Kw);
            if (an && after) NAME(decays)(dn, w + (row + H) * Kw, K, Kw);
            for (long j = 0; j < V; j++) { z[row * V + j] = zc[j]; ot[j] = 0; zn[j] = 0; }
            if (!b) for (long j = 0; j < V; j++) u[j] = vt[j] - zc[j];
            for (long i = 0; i < K; i++) {
                T *restrict Si = S + i * V;
                const T di = d[i], ki = kt[i], ri = scale * rt[i];
                const T ani = an ? an[i] * (after ? dn[i] : 1) : 0;
                if (b) {
                    const T bi = b[row * K + i];
                    for (long j = 0; j < V; j++) {
                        const T x = di * Si[j] + bi * zc[j] + ki * vt[j];
                        Si[j] = x;
                        ot[j] += ri * x;
                        zn[j] += ani * x;
                    }
                } else {
                    for (long j = 0; j < V; j++) {
                        const T x = di * Si[j] + ki * u[j];
                        Si[j] = x;
                        ot[j] += ri * x;
                        zn[j] += ani * x;
                    }
                }
            }
            T *tmp = zc; zc = zn; zn = tmp;
        }
    }
    free(d); free(dn); free(u); free(zc); free(zn);
}

/* S_t for the steps [t0, t1) of a block into buf, from the state entering t0. */
static void NAME(rebuild)(const T *restrict w, const T *restrict k, const T *restrict v,
                          const T *restrict b, const T *restrict z, const T *start,
                          T *restrict buf, T *restrict d, T *restrict u, long bb, long h,
                          long t0, long t1, long Kw, long Tn, long H, long K, long V) {
    const T *prev = start;
    for (long t = t0; t < t1; t++) {
        const long row = (bb * Tn + t) * H + h;
        const T *restrict kt = k + row * K, *restrict vt = v + row * V, *restrict zt = z + row * V;
        T *restrict St = buf + (t - t0) * K * V;
        NAME(decays)(d, w + row * Kw, K, Kw);
        if (!b) for (long j = 0; j < V; j++) u[j] = vt[j] - zt[j];
        for (long i = 0; i < K; i++) {
            const T di = d[i], ki = kt[i];
            const T *restrict Pi = prev + i * V;
            T *restrict Si = St + i * V;
            if (b) {
                const T bi = b[row * K + i];
                for (long j = 0; j < V; j++) Si[j] = di * Pi[j] + bi * zt[j] + ki * vt[j];
            } else {
                for (long j = 0; j < V; j++) Si[j] = di * Pi[j] + ki * u[j];
            }
        }
        prev = St;
    }
}

void NAME(vdelta_bwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict z, const T *restrict ck, const T *restrict dST,
                      const T *restrict dout, T *restrict dr, T *restrict dw, T *restrict dk,
                      T *restrict dv, T *restrict da, T *restrict db, T *restrict dS0, T scale,
                      long after, long Kw, long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK;
    T *buf = malloc(CK * K * V * sizeof(T));  /* S_t for the steps of one block */
    T *d = malloc(K * sizeof(T)), *u = malloc(V * sizeof(T));
    T *dzc = malloc(V * sizeof(T)), *dzn = malloc(V * sizeof(T)), *dvn = malloc(V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
        T *restrict dS = dS0 + p * K * V;  /* the running gradient, ends as dS_0 */
        if (dST) memcpy(dS, dST + p * K * V, K * V * sizeof(T));
        else memset(dS, 0, K * V * sizeof(T));
        if (Tn == 0) continue;
        long c = nck - 1, t0 = c * CK;
        NAME(rebuild)(w, k, v, b, z, ck + (p * nck + c) * K * V, buf, d, u, bb, h, t0, Tn, Kw, Tn,
                      H, K, V);
        /* Step t (from Tn, a step that only hands dS_{T-1} its own read, down to 0): the
           transpose of step t (when t < Tn), fused with step t-1's read (when t > 0). */
        for (long t = Tn; t >= 0; t--) {
            const long row = (bb * Tn + t) * H + h, prow = row - H;  /* steps t, t-1 */
            const T *restrict Sp = t - 1 >= t0 ? buf + (t - 1 - t0) * K * V
                                               : ck + (p * nck + c) * K * V;  /* S_{t-1} */
            const T *restrict at = t < Tn ? a + row * K : NULL;
            if (t < Tn) NAME(decays)(d, w + row * Kw, K, Kw);
            else for (long i = 0; i < K; i++) d[i] = 1;
            if (t == Tn) for (long j = 0; j < V; j++) dzc[j] = 0;
            const T *restrict rp = r + prow * K, *restrict kp = k + prow * K;
            const T *restrict vp = v + prow * V, *restrict zp = z + prow * V;
            const T *restrict dop = dout + prow * V;
            if (t > 0) {
                for (long j = 0; j < V; j++) { dzn[j] = 0; dvn[j] = 0; }
                if (!b) for (long j = 0; j < V; j++) u[j] = vp[j] - zp[j];
            }
            T dw_head = 0;
            for (long i = 0; i < K; i++) {
                T *restrict dSi = dS + i * V;
                const T *restrict Pi = Sp + i * V;
                const T di = d[i], ea = after ? di : 1, ai = at ? at[i] * ea : 0;
                T sa = 0, sd = 0;
                if (t == 0) {
#pragma omp simd reduction(+ : sa, sd)
                    for (long j = 0; j < V; j++) {
                        sa += Pi[j] * dzc[j];
                        sd += dSi[j] * Pi[j];
                        dSi[j] = di * dSi[j] + ai * dzc[j];
                    }
                } else if (b) {
                    const T ri = scale * rp[i], ki = kp[i], bi = b[prow * K + i];
                    T sr = 0, sk = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sd, sr, sk, sb)
                    for (long j = 0; j < V; j++) {
                        sa += Pi[j] * dzc[j];
                        sd += dSi[j] * Pi[j];
                        const T g = di * dSi[j] + ai * dzc[j] + ri * dop[j];
                        dSi[j] = g;
                        sr += Pi[j] * dop[j];
                        sk += g * vp[j];
                        sb += g * zp[j];
                        dzn[j] += bi * g;
                        dvn[j] += ki * g;
                    }
                    dr[prow * K + i] = scale * sr;
                    dk[prow * K + i] = sk;
                    db[prow * K + i] = sb;
                } else {
                    const T ri = scale * rp[i], ki = kp[i];
                    T sr = 0, sk = 0;
#pragma omp simd reduction(+ : sa, sd, sr, sk)
                    for (long j = 0; j < V; j++) {
                        sa += Pi[j] * dzc[j];
                        sd += dSi[j] * Pi[j];
                        const T g = di * dSi[j] + ai * dzc[j] + ri * dop[j];
                        dSi[j] = g;
                        sr += Pi[j] * dop[j];
                        sk += g * u[j];
                        dzn[j] += ki * g;  /* du of step t-1 */
                    }
                    dr[prow * K + i] = scale * sr;
                    dk[prow * K + i] = sk;
                }
                if (t < Tn) {  /* a = p e^w after the decay: e^w's share of dw */
                    da[row * K + i] = sa * ea;
                    const T gw = di * sd + (after ? sa * ai : 0);
                    if (Kw == K) dw[row * K + i] = gw;
                    else dw_head += gw;
                }
            }
            if (t < Tn && Kw != K) dw[row] = dw_head;
            if (t == 0) break;
            if (b) for (long j = 0; j < V; j++) dv[prow * V + j] = dvn[j];
            else for (long j = 0; j < V; j++) { dv[prow * V + j] = dzn[j]; dzn[j] = -dzn[j]; }
            T *tmp = dzc; dzc = dzn; dzn = tmp;
            if (t == t0 && c > 0) {  /* step t-1 opens the block before */
                c--; t0 = c * CK;
                NAME(rebuild)(w, k, v, b, z, ck + (p * nck + c) * K * V, buf, d, u, bb, h, t0,
                              t0 + CK, Kw, Tn, H, K, V);
            }
        }
    }
    free(buf); free(d); free(u); free(dzc); free(dzn); free(dvn);
}

#endif
