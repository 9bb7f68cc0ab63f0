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
   torch.clamp_min does. Where V is a multiple of the vector width (V = 32), a step keeps e,
   o and de in registers and takes each per-row sum over V for NV rows at once (tile.h's
   hsum_rows): one row's sums, divisions and square root after another had been one chain of
   latencies (the op fwd+bwd at B=16, T=512, H=4, m=V=32: 95 -> 57 ms). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "lattice_scan.c"
#include "each_type.h"

#else

#include "tile.h"

/* One step on S (m, V) in place; o (V) gets the read, aux (V + 3 m) keeps e, then per row
   |s_i|^2, a_i and |w_i| for the backward; w (4 m + 2 V) is scratch. Each reduction over a
   row is done for every row in one pass and the per-row scalars in a loop over the rows
   (one row's sums, division and square root after another were one chain of latencies), and
   the sums over the rows (e, o) run in two halves. */
static inline __attribute__((always_inline)) void NAME(lat_step)(T *restrict S, const T *restrict q, const T *restrict k,
                           const T *restrict v, T beta, T *restrict aux, T *restrict o,
                           T *restrict w, long M, long V) {
    const T eps = (T)1e-12;
    T *restrict e = aux, *restrict ss = aux + V, *restrict av = ss + M, *restrict nv = av + M;
    T *restrict c = w, *restrict inv = w + M, *restrict se = w + 2 * M, *restrict ww = w + 3 * M;
    T *restrict e1 = w + 4 * M, *restrict o1 = e1 + V;
    const long M2 = M / 2;
    for (long j = 0; j < V; j++) {
        e[j] = v[j];
        e1[j] = 0;
    }
    for (long i = 0; i < M2; i++) {
        const T ka = k[i], kb = k[M2 + i];
        const T *restrict Sa = S + i * V, *restrict Sb = S + (M2 + i) * V;
        for (long j = 0; j < V; j++) {
            e[j] -= ka * Sa[j];
            e1[j] += kb * Sb[j];
        }
    }
    if (M % 2) for (long j = 0; j < V; j++) e1[j] += k[M - 1] * S[(M - 1) * V + j];
    for (long j = 0; j < V; j++) e[j] -= e1[j];
    for (long i = 0; i < M; i++) {
        const T *restrict Si = S + i * V;
        T s2 = 0, s1 = 0;
#pragma omp simd reduction(+ : s2, s1)
        for (long j = 0; j < V; j++) {
            s2 += Si[j] * Si[j];
            s1 += Si[j] * e[j];
        }
        ss[i] = s2;
        se[i] = s1;
    }
#pragma omp simd
    for (long i = 0; i < M; i++) {
        const T den = ss[i] < eps ? eps : ss[i];
        av[i] = se[i] / den;
        c[i] = beta * k[i];
    }
    for (long i = 0; i < M; i++) {
        T *restrict Si = S + i * V;
        const T a = av[i], ci = c[i];
        T s2 = 0;
#pragma omp simd reduction(+ : s2)
        for (long j = 0; j < V; j++) {
            const T x = Si[j] + ci * (e[j] - a * Si[j]);
            Si[j] = x;
            s2 += x * x;
        }
        ww[i] = s2;
    }
#pragma omp simd
    for (long i = 0; i < M; i++) {
        const T nn = SQRT(ww[i]);
        nv[i] = nn;
        inv[i] = 1 / (nn < eps ? eps : nn);
    }
    for (long j = 0; j < V; j++) {
        o[j] = 0;
        o1[j] = 0;
    }
    for (long i = 0; i < M2; i++) {
        T *restrict Sa = S + i * V, *restrict Sb = S + (M2 + i) * V;
        const T ia = inv[i], ib = inv[M2 + i], qa = q[i], qb = q[M2 + i];
        for (long j = 0; j < V; j++) {
            Sa[j] *= ia;
            Sb[j] *= ib;
            o[j] += qa * Sa[j];
            o1[j] += qb * Sb[j];
        }
    }
    if (M % 2) {
        T *restrict Sl = S + (M - 1) * V;
        for (long j = 0; j < V; j++) {
            Sl[j] *= inv[M - 1];
            o1[j] += q[M - 1] * Sl[j];
        }
    }
    for (long j = 0; j < V; j++) o[j] += o1[j];
}

/* The same step where a row is R = V / NV whole vectors (V = 32: every float and double
   build): e and o stay in registers, and each per-row sum over V is taken for NV rows at
   once by one transposing tree (tile.h's hsum_rows) instead of a tree a row. */
#define LAT_R (V / NV)
#define LAT_LD(p) (*(const UVEC *)(p))
#define LAT_ST(p) (*(UVEC *)(p))
/* out[i0 .. i0 + m) <- the lane sums of x[0 .. m) (x overwritten) */
TILE_INLINE void NAME(lat_sums)(T *restrict out, VEC *restrict x, long m) {
    for (long l = m; l < NV; l++) x[l] = (VEC){0};
    const VEC s = NAME(hsum_rows)(x);
    if (m == NV) LAT_ST(out) = s;
    else for (long l = 0; l < m; l++) out[l] = s[l];
}

static inline __attribute__((always_inline)) void NAME(lat_step_v)(T *restrict S, const T *restrict q, const T *restrict k,
                           const T *restrict v, T beta, T *restrict aux, T *restrict o,
                           T *restrict w, long M, long V) {
    const T eps = (T)1e-12;
    T *restrict ss = aux + V, *restrict av = ss + M, *restrict nv = av + M;
    T *restrict c = w, *restrict inv = w + M, *restrict se = w + 2 * M, *restrict ww = w + 3 * M;
    const long M2 = M / 2;
    VEC e[LAT_R], e1[LAT_R];
    for (long r = 0; r < LAT_R; r++) {
        e[r] = LAT_LD(v + r * NV);
        e1[r] = (VEC){0};
    }
    for (long i = 0; i < M2; i++) {
        const T ka = k[i], kb = k[M2 + i];
        for (long r = 0; r < LAT_R; r++) {
            e[r] -= ka * LAT_LD(S + i * V + r * NV);
            e1[r] += kb * LAT_LD(S + (M2 + i) * V + r * NV);
        }
    }
    if (M % 2)
        for (long r = 0; r < LAT_R; r++) e1[r] += k[M - 1] * LAT_LD(S + (M - 1) * V + r * NV);
    for (long r = 0; r < LAT_R; r++) {
        e[r] -= e1[r];
        LAT_ST(aux + r * NV) = e[r];
    }
    for (long i0 = 0; i0 < M; i0 += NV) {
        const long m = M - i0 < NV ? M - i0 : NV;
        VEC x2[NV], xe[NV];
        for (long l = 0; l < m; l++) {
            const T *restrict Si = S + (i0 + l) * V;
            VEC a2 = (VEC){0}, ae = (VEC){0};
            for (long r = 0; r < LAT_R; r++) {
                const VEC s_ = LAT_LD(Si + r * NV);
                a2 += s_ * s_;
                ae += s_ * e[r];
            }
            x2[l] = a2;
            xe[l] = ae;
        }
        NAME(lat_sums)(ss + i0, x2, m);
        NAME(lat_sums)(se + i0, xe, m);
    }
#pragma omp simd
    for (long i = 0; i < M; i++) {
        const T den = ss[i] < eps ? eps : ss[i];
        av[i] = se[i] / den;
        c[i] = beta * k[i];
    }
    for (long i0 = 0; i0 < M; i0 += NV) {
        const long m = M - i0 < NV ? M - i0 : NV;
        VEC x2[NV];
        for (long l = 0; l < m; l++) {
            T *restrict Si = S + (i0 + l) * V;
            const T a = av[i0 + l], ci = c[i0 + l];
            VEC a2 = (VEC){0};
            for (long r = 0; r < LAT_R; r++) {
                const VEC s_ = LAT_LD(Si + r * NV), x = s_ + ci * (e[r] - a * s_);
                LAT_ST(Si + r * NV) = x;
                a2 += x * x;
            }
            x2[l] = a2;
        }
        NAME(lat_sums)(ww + i0, x2, m);
    }
#pragma omp simd
    for (long i = 0; i < M; i++) {
        const T nn = SQRT(ww[i]);
        nv[i] = nn;
        inv[i] = 1 / (nn < eps ? eps : nn);
    }
    VEC oa[LAT_R], ob[LAT_R];
    for (long r = 0; r < LAT_R; r++) oa[r] = ob[r] = (VEC){0};
    for (long i = 0; i < M2; i++) {
        T *restrict Sa = S + i * V, *restrict Sb = S + (M2 + i) * V;
        const T ia = inv[i], ib = inv[M2 + i], qa = q[i], qb = q[M2 + i];
        for (long r = 0; r < LAT_R; r++) {
            const VEC xa = LAT_LD(Sa + r * NV) * ia, xb = LAT_LD(Sb + r * NV) * ib;
            LAT_ST(Sa + r * NV) = xa;
            LAT_ST(Sb + r * NV) = xb;
            oa[r] += qa * xa;
            ob[r] += qb * xb;
        }
    }
    if (M % 2) {
        T *restrict Sl = S + (M - 1) * V;
        for (long r = 0; r < LAT_R; r++) {
            const VEC x = LAT_LD(Sl + r * NV) * inv[M - 1];
            LAT_ST(Sl + r * NV) = x;
            ob[r] += q[M - 1] * x;
        }
    }
    for (long r = 0; r < LAT_R; r++) LAT_ST(o + r * NV) = oa[r] + ob[r];
}

/* One backward step where a row is whole vectors (as lat_step_v): S, Sn the states before and
   after the step, e and kept its aux, g the per-row scratch (9 m), dW every row's dw (m V);
   dS (m V) in: the gradient of Sn, out: of S. */
static inline __attribute__((always_inline)) void NAME(lat_bwd_step_v)(
        const T *restrict S, const T *restrict Sn, const T *restrict e, const T *restrict qt,
        const T *restrict kt, const T *restrict dot, T bt, T *restrict dvt, T *restrict dqt,
        T *restrict dkt, T *restrict dbt, T *restrict dS, T *restrict dW, T *restrict g,
        long M, long V) {
    const T eps = (T)1e-12;
    const T *restrict ssv = e + V, *restrict av = ssv + M, *restrict nv = av + M;
    T *restrict sg = g, *restrict inv = g + M, *restrict cc = g + 2 * M, *restrict dc = g + 3 * M,
      *restrict dws = g + 4 * M, *restrict dse = g + 5 * M, *restrict dss = g + 6 * M,
      *restrict keep = g + 7 * M, *restrict sd = g + 8 * M;
    const long M2 = M / 2;
    VEC dov[LAT_R], ev[LAT_R];
    for (long r = 0; r < LAT_R; r++) {
        dov[r] = LAT_LD(dot + r * NV);
        ev[r] = LAT_LD(e + r * NV);
    }
    for (long i0 = 0; i0 < M; i0 += NV) {  /* s'.g and s'.do of every row */
        const long m = M - i0 < NV ? M - i0 : NV;
        VEC xa[NV], xd[NV];
        for (long l = 0; l < m; l++) {
            const T *restrict Ni = Sn + (i0 + l) * V, *restrict dSi = dS + (i0 + l) * V;
            const T qi = qt[i0 + l];
            VEC a = (VEC){0}, d = (VEC){0};
            for (long r = 0; r < LAT_R; r++) {
                const VEC n_ = LAT_LD(Ni + r * NV);
                a += n_ * (LAT_LD(dSi + r * NV) + qi * dov[r]);
                d += n_ * dov[r];
            }
            xa[l] = a;
            xd[l] = d;
        }
        NAME(lat_sums)(sg + i0, xa, m);
        NAME(lat_sums)(dqt + i0, xd, m);
    }
#pragma omp simd
    for (long i = 0; i < M; i++) {
        const int small = nv[i] < eps;
        inv[i] = 1 / (small ? eps : nv[i]);
        if (small) sg[i] = 0;
        cc[i] = bt * kt[i];
    }
    for (long i0 = 0; i0 < M; i0 += NV) {  /* dw, and dw.r, dw.s of every row */
        const long m = M - i0 < NV ? M - i0 : NV;
        VEC xc[NV], xs[NV];
        for (long l = 0; l < m; l++) {
            const long i = i0 + l;
            const T *restrict Si = S + i * V, *restrict Ni = Sn + i * V;
            const T *restrict dSi = dS + i * V;
            T *restrict dwi = dW + i * V;
            const T qi = qt[i], gi = sg[i], iv = inv[i], a = av[i];
            VEC x = (VEC){0}, y = (VEC){0};
            for (long r = 0; r < LAT_R; r++) {
                const VEC s_ = LAT_LD(Si + r * NV);
                const VEC d = (LAT_LD(dSi + r * NV) + qi * dov[r] - LAT_LD(Ni + r * NV) * gi) * iv;
                LAT_ST(dwi + r * NV) = d;
                x += d * (ev[r] - a * s_);
                y += d * s_;
            }
            xc[l] = x;
            xs[l] = y;
        }
        NAME(lat_sums)(dc + i0, xc, m);
        NAME(lat_sums)(dws + i0, xs, m);
    }
    T db = 0;
#pragma omp simd reduction(+ : db)
    for (long i = 0; i < M; i++) {
        const T ss = ssv[i], den = ss < eps ? eps : ss, a = av[i];
        const T da = -cc[i] * dws[i];
        db += kt[i] * dc[i];
        dkt[i] = bt * dc[i];
        dse[i] = da / den;
        dss[i] = ss < eps ? 0 : -da * a / den;
        keep[i] = 1 - cc[i] * a;
    }
    *dbt = db;
    VEC da_[LAT_R], db_[LAT_R];
    for (long r = 0; r < LAT_R; r++) da_[r] = db_[r] = (VEC){0};
#define LAT_DE(i, acc)                                                                         \
    do {                                                                                       \
        const T *restrict Si_ = S + (i) * V, *restrict dwi_ = dW + (i) * V;                   \
        T *restrict dSi_ = dS + (i) * V;                                                       \
        const T ci_ = cc[i], di_ = dse[i], d2_ = 2 * dss[i], kp_ = keep[i];                   \
        for (long r = 0; r < LAT_R; r++) {                                                     \
            const VEC s_ = LAT_LD(Si_ + r * NV), w_ = LAT_LD(dwi_ + r * NV);                   \
            acc[r] += ci_ * w_ + di_ * s_;                                                     \
            LAT_ST(dSi_ + r * NV) = kp_ * w_ + di_ * ev[r] + d2_ * s_;                         \
        }                                                                                      \
    } while (0)
    for (long i = 0; i < M2; i++) {  /* de in two halves of the rows; the new dS */
        LAT_DE(i, da_);
        LAT_DE(M2 + i, db_);
    }
    if (M % 2) LAT_DE(M - 1, db_);
#undef LAT_DE
    VEC de[LAT_R];
    for (long r = 0; r < LAT_R; r++) {
        de[r] = da_[r] + db_[r];
        LAT_ST(dvt + r * NV) = de[r];
    }
    for (long i0 = 0; i0 < M; i0 += NV) {
        const long m = M - i0 < NV ? M - i0 : NV;
        VEC xs[NV];
        for (long l = 0; l < m; l++) {
            const T *restrict Si = S + (i0 + l) * V;
            T *restrict dSi = dS + (i0 + l) * V;
            const T ki = kt[i0 + l];
            VEC x = (VEC){0};
            for (long r = 0; r < LAT_R; r++) {
                x += LAT_LD(Si + r * NV) * de[r];
                LAT_ST(dSi + r * NV) = LAT_LD(dSi + r * NV) - ki * de[r];
            }
            xs[l] = x;
        }
        NAME(lat_sums)(sd + i0, xs, m);
    }
#pragma omp simd
    for (long i = 0; i < M; i++) dkt[i] -= sd[i];
}

static inline __attribute__((always_inline)) void NAME(fwd_body)(
        const T *restrict q, const T *restrict k, const T *restrict v, const T *restrict beta,
        const T *restrict S0, T *restrict o, T *restrict ST, T *restrict ck, T *restrict aux,
        long Tn, long H, long M, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, NA = V + 3 * M;
    T *w = malloc((4 * M + 2 * V) * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict S = ST + p * M * V;
        memcpy(S, S0 + p * M * V, M * V * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            if (t % CK == 0) memcpy(ck + (p * nck + t / CK) * M * V, S, M * V * sizeof(T));
            const long row = (b * Tn + t) * H + h;
            if (V % NV == 0)
                NAME(lat_step_v)(S, q + row * M, k + row * M, v + row * V, beta[row],
                                 aux + (p * Tn + t) * NA, o + row * V, w, M, V);
            else
                NAME(lat_step)(S, q + row * M, k + row * M, v + row * V, beta[row],
                               aux + (p * Tn + t) * NA, o + row * V, w, M, V);
        }
    }
    free(w);
}

static inline __attribute__((always_inline)) void NAME(bwd_body)(
        const T *restrict q, const T *restrict k, const T *restrict v, const T *restrict beta,
        const T *restrict ck, const T *restrict aux, const T *restrict dST,
        const T *restrict dout, T *restrict dq, T *restrict dk, T *restrict dv,
        T *restrict dbeta, T *restrict dS0, long Tn, long H, long M, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, MV = M * V, NA = V + 3 * M, M2 = M / 2;
    const T eps = (T)1e-12;
    T *bufS = malloc(((CK + 2) * MV + 9 * M + V) * sizeof(T));
    T *restrict dW = bufS + (CK + 1) * MV;  /* every row's dw */
    T *restrict sg = dW + MV, *restrict inv = sg + M, *restrict cc = inv + M,
      *restrict dc = cc + M, *restrict dws = dc + M, *restrict dse = dws + M,
      *restrict dss = dse + M, *restrict keep = dss + M, *restrict sd = keep + M,
      *restrict de1 = sd + M;
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
                    const T iv = 1 / (nn < eps ? eps : nn);
                    for (long j = 0; j < V; j++) Ni[j] = (Si[j] + ci * (e[j] - a * Si[j])) * iv;
                }
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (b * Tn + t) * H + h, j0 = t - t0;
                const T *restrict S = bufS + j0 * MV, *restrict Sn = bufS + (j0 + 1) * MV;
                const T *restrict e = aux + (p * Tn + t) * NA, *restrict kept = e + V;
                if (V % NV == 0) {
                    NAME(lat_bwd_step_v)(S, Sn, e, q + row * M, k + row * M, dout + row * V,
                                         beta[row], dv + row * V, dq + row * M, dk + row * M,
                                         dbeta + row, dS, dW, sg, M, V);
                    continue;
                }
                const T *restrict ssv = kept, *restrict av = kept + M, *restrict nv = kept + 2 * M;
                const T *restrict qt = q + row * M, *restrict kt = k + row * M;
                const T *restrict dot = dout + row * V;
                T *restrict de = dv + row * V, *restrict dqt = dq + row * M,
                  *restrict dkt = dk + row * M;  /* dv = de, accumulated in place */
                const T bt = beta[row];
                for (long i = 0; i < M; i++) {  /* s'.g, s'.do for every row */
                    const T *restrict Ni = Sn + i * V, *restrict dSi = dS + i * V;
                    const T qi = qt[i];
                    T a = 0, d = 0;
#pragma omp simd reduction(+ : a, d)
                    for (long j = 0; j < V; j++) {
                        a += Ni[j] * (dSi[j] + qi * dot[j]);
                        d += Ni[j] * dot[j];
                    }
                    sg[i] = a;
                    dqt[i] = d;
                }
#pragma omp simd
                for (long i = 0; i < M; i++) {
                    const int small = nv[i] < eps;
                    inv[i] = 1 / (small ? eps : nv[i]);
                    if (small) sg[i] = 0;
                    cc[i] = bt * kt[i];
                }
                for (long i = 0; i < M; i++) {  /* dw, and dw.r, dw.s for every row */
                    const T *restrict Si = S + i * V, *restrict Ni = Sn + i * V;
                    const T *restrict dSi = dS + i * V;
                    T *restrict dwi = dW + i * V;
                    const T qi = qt[i], g = sg[i], iv = inv[i], a = av[i];
                    T x = 0, y = 0;
#pragma omp simd reduction(+ : x, y)
                    for (long j = 0; j < V; j++) {
                        const T d = (dSi[j] + qi * dot[j] - Ni[j] * g) * iv;
                        dwi[j] = d;
                        x += d * (e[j] - a * Si[j]);
                        y += d * Si[j];
                    }
                    dc[i] = x;
                    dws[i] = y;
                }
                T db = 0;
#pragma omp simd reduction(+ : db)
                for (long i = 0; i < M; i++) {
                    const T ss = ssv[i], den = ss < eps ? eps : ss, a = av[i];
                    const T da = -cc[i] * dws[i];
                    db += kt[i] * dc[i];
                    dkt[i] = bt * dc[i];
                    dse[i] = da / den;
                    dss[i] = ss < eps ? 0 : -da * a / den;
                    keep[i] = 1 - cc[i] * a;
                }
                dbeta[row] = db;
                for (long j = 0; j < V; j++) {
                    de[j] = 0;
                    de1[j] = 0;
                }
                for (long i = 0; i < M; i++) {  /* de (in two halves of the rows), new dS */
                    const T *restrict Si = S + i * V, *restrict dwi = dW + i * V;
                    T *restrict dSi = dS + i * V;
                    T *restrict acc = i < M2 ? de : de1;
                    const T ci = cc[i], di = dse[i], d2 = 2 * dss[i], kp = keep[i];
                    for (long j = 0; j < V; j++) {
                        acc[j] += ci * dwi[j] + di * Si[j];
                        dSi[j] = kp * dwi[j] + di * e[j] + d2 * Si[j];
                    }
                }
                for (long j = 0; j < V; j++) de[j] += de1[j];
                for (long i = 0; i < M; i++) {
                    const T *restrict Si = S + i * V;
                    T *restrict dSi = dS + i * V;
                    const T ki = kt[i];
                    T x = 0;
#pragma omp simd reduction(+ : x)
                    for (long j = 0; j < V; j++) {
                        x += Si[j] * de[j];
                        dSi[j] -= ki * de[j];
                    }
                    sd[i] = x;
                }
#pragma omp simd
                for (long i = 0; i < M; i++) dkt[i] -= sd[i];
            }
        }
    }
    free(bufS);
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

#include "tile.h"  /* its names undefined for the next type */

#endif
