/* Causal attention through a polynomial kernel of the scores, unnormalised (Based's and
   ReBased's parallel form, ops.feature_maps): per (batch x head) row, queries q_i, keys k_j,
   values v_j (the caller's v carries a column of ones for the normaliser),

       s_ij = q_i . k_j,   P_ij = kernel(s_ij) (j <= i; else 0),   o_i = sum_j P_ij v_j
       kernel(s) = 1 + s + s^2 / 2 (taylor) or s^2 (square)

   and its backward: dP = do v^T, dv = P^T do, ds = dP kernel'(s) (1 + s, or 2 s), dq = ds k,
   dk = ds^T q. Whole head-rows a call, in causal tiles of `tile` queries [i0, i1) over keys
   [0, i1), each tile by bands (its first rows over fewer keys: bands.h, as attention.c's);
   the products on mm.h, the tiles' scores s kept for the backward when S is not NULL (else
   recomputed there). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "poly_attn.c"
#include "each_type.h"

#else

#include "mm.h"
#include "bands.h"  /* BANDS, KEY_BANDS: a causal tile's bands */
#include "transpose.h"

/* P = kernel(s) on and below each row's diagonal (row r: keys j <= i0 + r), zeros past it up
   to e; s, P (t, e) */
static inline void NAME(pa_kernel)(const T *restrict s, T *restrict P, long t, long e, long i0,
                                   int square) {
    for (long r = 0; r < t; r++) {
        const long end = i0 + r + 1 < e ? i0 + r + 1 : e;
        const T *restrict sr = s + r * e;
        T *restrict pr = P + r * e;
        if (square)
            for (long j = 0; j < end; j++) pr[j] = sr[j] * sr[j];
        else
            for (long j = 0; j < end; j++) pr[j] = 1 + sr[j] + (T)0.5 * sr[j] * sr[j];
        for (long j = end; j < e; j++) pr[j] = 0;
    }
}

/* Head-rows [n0, n1) of N: q, k (N, T, d), v (N, T, W) -> out (N, T, W); the tiles' scores
   kept in S (N, PT) when not NULL (tile after tile, t i1 entries each). */
void NAME(pa_heads_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        T *restrict out, T *restrict S, long T_, long d, long W, long tile,
                        long square, long PT, long n0, long n1) {
    const long Tn = T_;
    T *kT = malloc((size_t)(d * Tn + 2 * tile * Tn + 1) * sizeof(T));
    T *sb = kT + d * Tn, *P = sb + tile * Tn;
    for (long n = n0; n < n1; n++) {
        const T *qn = q + n * Tn * d, *kn = k + n * Tn * d, *vn = v + n * Tn * W;
        NAME(trs)(kT, Tn, kn, d, Tn, d);
        T *Sn = S ? S + n * PT : sb;
        for (long i0 = 0; i0 < Tn; i0 += tile) {
            const long i1 = i0 + tile < Tn ? i0 + tile : Tn, t = i1 - i0, e = i1;
            BANDS NAME(mm)(qn + i0 * d, kT, Sn, t, c, d, d, 1, Tn, 1, e, 0, 0, 0, 0, r, r1);
            NAME(pa_kernel)(Sn, P, t, e, i0, (int)square);
            BANDS NAME(mm)(P, vn, out + (n * Tn + i0) * W, t, W, c, e, 1, W, 1, W, 0, 0, 0, 0,
                           r, r1);
            if (S) Sn += t * e;
        }
    }
    free(kT);
}

/* Its backward for head-rows [n0, n1): do (N, T, W) -> dq, dk (N, T, d), dv (N, T, W)
   (written whole), the scores read from S (pa_heads_fwd's layout) or, when NULL,
   recomputed. */
void NAME(pa_heads_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict do_, const T *restrict S, T *restrict dq,
                        T *restrict dk, T *restrict dv, long T_, long d, long W, long tile,
                        long square, long PT, long n0, long n1) {
    const long Tn = T_;
    T *vT = malloc((size_t)((W + d + 3 * tile) * Tn + 1) * sizeof(T));
    T *kT = vT + W * Tn, *P = kT + d * Tn, *dP = P + tile * Tn, *sb = dP + tile * Tn;
    for (long n = n0; n < n1; n++) {
        const T *qn = q + n * Tn * d, *kn = k + n * Tn * d, *vn = v + n * Tn * W;
        const T *don = do_ + n * Tn * W;
        T *dqn = dq + n * Tn * d, *dkn = dk + n * Tn * d, *dvn = dv + n * Tn * W;
        NAME(trs)(vT, Tn, vn, W, Tn, W);
        if (!S) NAME(trs)(kT, Tn, kn, d, Tn, d);
        memset(dkn, 0, (size_t)(Tn * d) * sizeof(T));
        memset(dvn, 0, (size_t)(Tn * W) * sizeof(T));
        const T *Sn = S ? S + n * PT : sb;
        for (long i0 = 0; i0 < Tn; i0 += tile) {
            const long i1 = i0 + tile < Tn ? i0 + tile : Tn, t = i1 - i0, e = i1;
            if (!S)
                BANDS NAME(mm)(qn + i0 * d, kT, sb, t, c, d, d, 1, Tn, 1, e, 0, 0, 0, 0, r,
                               r1);
            NAME(pa_kernel)(Sn, P, t, e, i0, (int)square);
            BANDS NAME(mm)(don + i0 * W, vT, dP, t, c, W, W, 1, Tn, 1, e, 0, 0, 0, 0, r, r1);
            KEY_BANDS NAME(mm)(P + r * e, don + (i0 + r) * W, dvn, e, W, t - r, 1, e, W, 1,
                               W, 0, 0, 0, 1, c0, c);
            for (long r = 0; r < t; r++) {   /* dP -> ds = dP kernel'(s), zeros past the diagonal */
                const long end = i0 + r + 1 < e ? i0 + r + 1 : e;
                const T *restrict sr = Sn + r * e;
                T *restrict g = dP + r * e;
                if (square)
                    for (long j = 0; j < end; j++) g[j] *= 2 * sr[j];
                else
                    for (long j = 0; j < end; j++) g[j] *= 1 + sr[j];
                for (long j = end; j < e; j++) g[j] = 0;
            }
            BANDS NAME(mm)(dP, kn, dqn + i0 * d, t, d, c, e, 1, d, 1, d, 0, 0, 0, 0, r, r1);
            KEY_BANDS NAME(mm)(dP + r * e, qn + (i0 + r) * d, dkn, e, d, t - r, 1, e, d, 1, d,
                               0, 0, 0, 1, c0, c);
            if (S) Sn += t * e;
        }
    }
    free(vT);
}

#endif
