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
   dg is not summed row by row as written above but block by block (CK steps) from dq and dk:
   within a block, with G the log-decay summed from its start, q reads the state through
   e^{G_t} (e^{G_{t-1}} with the bonus) and k enters it through e^{-G_t}, so
       dg_t = sum_{s >= t} (q_s o dq_s - k_s o dk_s) + rowsum(E o S_{t1-1})
   over the block's steps (the bonus's q term over s > t, its own terms in dq, dk left out),
   E the gradient S_{t1-1} takes from later steps: one reduction a block, not three a step.
   The state runs in column tiles (tile.h); each row's dot products are stored as vectors and
   summed for all rows at once; the rows of step t +- 8 are prefetched.

   q enters times `scale` (q_t above is scale q_t; dq is the gradient of the unscaled q).
   Layouts (row-major, contiguous): q, k, g, dq, dk, dg (batch, T, H, K); v, o, do, dv
   (batch, T, H, V); u (H, K) or NULL; du (batch, H, K) (the caller sums the batch rows);
   S0, S_T, dS_T (may be NULL), dS0 (batch, H, K, V); ck (batch, H, nck, K VP) with
   nck = ceil(T / CK), VP = V rounded up to a multiple of 16 (the state entering steps 0, CK,
   2 CK, ..., column tile by tile, each tile's K x VT block contiguous). Each function does the
   (batch row, head) pairs [p0, p1).

   LightNet's additive gate (layers/lightnet.py) feeds this recurrence its keys and decays:
   per channel, z_t = log(e^{z_{t-1}} + e^{x_t}) (z_{-1} = z0, -inf: empty), k_t = e^{x_t - z_t},
   g_t = z_{t-1} - z_t (0 where z_{t-1} = -inf). Backward, with G_t the gradient of z_t:
       G_t = dz_T [t = T-1] - dk_t k_t - dg_t [z_{t-1} > -inf] + dg_{t+1} + e^{g_{t+1}} G_{t+1},
       dx_t = k_t (dk_t + G_t),   dz0 = dg_0 + e^{g_0} G_0 where z0 > -inf, else 0.
   x, k, g (batch, T, C) with C channels contiguous; z0, zT (batch, C); batch rows [p0, p1).
   Gated slot attention's forget gate (slot_gate_fwd / _bwd) is here too, beside it, and its two
   passes with the softmax between them as one recurrence (gsa_fwd / gsa_bwd).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define TILE_256  /* tuned for tiles of two 256-bit vectors (tile.h) */
#define KERNELS "gla_scan.c"
#include "each_type.h"

#else

#include "tile.h"

/* one state row of a tile: the two kinds of step (the read after the write, or the bonus's
   read before it) */
#define ROW_FWD(acc0, acc1, i, bn)  /* bn: literal 0 or 1 */                                \
    do {                                                                                     \
        const T ki = kt[i], qi = qt[i] * scale;                                              \
        const VEC s0 = S[2 * (i)], s1 = S[2 * (i) + 1];                                      \
        const VEC n0 = at[i] * s0 + ki * vt[0];                                              \
        const VEC n1 = at[i] * s1 + ki * vt[1];                                              \
        S[2 * (i)] = n0;                                                                     \
        S[2 * (i) + 1] = n1;                                                                 \
        acc0 += qi * (bn ? s0 : n0);                                                         \
        acc1 += qi * (bn ? s1 : n1);                                                         \
    } while (0)

/* the rows of step t + PF of the tensors a step reads, fetched ahead: a (batch row, head)
   pair's rows lie H K apart, and at small K a 4 KB page holds few of them, too few for the
   hardware's stride prefetcher */
#define PF 8
static inline void NAME(ahead)(const T *restrict x, long n) {
    for (long off = 0; off < n; off += 64 / (long)sizeof(T)) __builtin_prefetch(x + off);
}

/* sum_i a_i b_i (c_i: times c_i where c is not NULL) in 16 lane sums and a pairwise tree:
   GCC left the `omp simd reduction` loops of the bonus's dot products scalar (one add
   chain, ~11% of gla_bwd's samples in perf at RWKV-6's shape) */
static inline T NAME(dot)(const T *restrict a, const T *restrict b, const T *restrict c,
                          long n) {
    T p[16] = {0};
    long i = 0;
    if (c)
        for (; i + 16 <= n; i += 16)
            for (int l = 0; l < 16; l++) p[l] += a[i + l] * b[i + l] * c[i + l];
    else
        for (; i + 16 <= n; i += 16)
            for (int l = 0; l < 16; l++) p[l] += a[i + l] * b[i + l];
    for (; i < n; i++) p[0] += c ? a[i] * b[i] * c[i] : a[i] * b[i];
    for (int w = 8; w; w >>= 1)
        for (int l = 0; l < w; l++) p[l] += p[l + w];
    return p[0];
}

/* exp(g) of pair p for every step: ab[t K + i] */
static void NAME(decays)(const T *restrict g, T *restrict ab, long b, long h, long Tn, long H,
                         long K) {
    for (long t = 0; t < Tn; t++) {
        const T *restrict gt = g + ((b * Tn + t) * H + h) * K;
        T *restrict at = ab + t * K;
        if (t + PF < Tn) NAME(ahead)(gt + PF * H * K, K);
#pragma omp simd
        for (long i = 0; i < K; i++) at[i] = EXP(gt[i]);
    }
}

/* out[i] += the sum of R[i NV .. i NV + NV), i < K: each row's dot product, its lanes summed
   NV rows at a time (tile.h's add_sums) instead of one horizontal sum a row. R (aligned,
   room for K rounded up to NV rows) is overwritten. */
static inline void NAME(row_sums)(T *restrict R, T *restrict out, long K) {
    for (long i0 = 0; i0 < K; i0 += NV)
        NAME(add_sums)(out + i0, (VEC *)(R + i0 * NV), K - i0 < NV ? K - i0 : NV);
}

/* a row's two vectors' products, added lane-wise into one vector, stored at R's row i */
#define PUT(R, i, x) (*(VEC *)((R) + (i) * NV) = (x))

void NAME(gla_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict u, const T *restrict S0,
                   T *restrict o, T *restrict ST, T *restrict ck, T scale, long Tn, long H, long K,
                   long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V);
    VEC *S = aligned_alloc(32, 2 * K * sizeof(VEC));
    T *ab = malloc((Tn * K + 1) * sizeof(T)), *cb = malloc((Tn + 1) * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        NAME(decays)(g, ab, b, h, Tn, H, K);
        if (u)  /* the bonus's weight q_t . (u o k_t) */
            for (long t = 0; t < Tn; t++) {
                const long rk = ((b * Tn + t) * H + h) * K;
                cb[t] = NAME(dot)(q + rk, u + h * K, k + rk, K) * scale;
            }
        for (long j0 = 0; j0 < V; j0 += VT) {
            const long w = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) NAME(tile_load)(S + 2 * i, S0 + (p * K + i) * V + j0, w);
            for (long t = 0; t < Tn; t++) {
                if (ck && t % CK == 0)
                    memcpy(ck + (p * nck + t / CK) * K * VP + j0 * K, S, 2 * K * sizeof(VEC));
                const long rk = ((b * Tn + t) * H + h) * K, rv = ((b * Tn + t) * H + h) * V;
                if (t + PF < Tn) {
                    NAME(ahead)(q + rk + PF * H * K, K);
                    NAME(ahead)(k + rk + PF * H * K, K);
                    NAME(ahead)(v + rv + j0 + PF * H * V, w);
                }
                const T *restrict qt = q + rk, *restrict kt = k + rk, *restrict at = ab + t * K;
                VEC vt[2], o0 = {0}, o1 = {0}, e0 = {0}, e1 = {0};
                NAME(tile_load)(vt, v + rv + j0, w);
                if (u) {
                    o0 = cb[t] * vt[0];
                    o1 = cb[t] * vt[1];
                }
#define ROWS(bn)                                                                             \
    do {                                                                                     \
        long i = 0;                                                                          \
        for (; i + 1 < K; i += 2) { /* two rows' chains of adds, interleaved */              \
            ROW_FWD(o0, o1, i, bn);                                                          \
            ROW_FWD(e0, e1, i + 1, bn);                                                      \
        }                                                                                    \
        if (i < K) ROW_FWD(o0, o1, i, bn);                                                   \
    } while (0)
                if (u) ROWS(1);
                else ROWS(0);
#undef ROWS
                const VEC ot[2] = {o0 + e0, o1 + e1};
                NAME(tile_store)(o + rv + j0, ot, w);
            }
            for (long i = 0; i < K; i++) NAME(tile_store)(ST + (p * K + i) * V + j0, S + 2 * i, w);
        }
    }
    free(cb);
    free(ab);
    free(S);
}
#undef ROW_FWD

void NAME(gla_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict u, const T *restrict ck,
                   const T *restrict dST, const T *restrict dout, T *restrict dq,
                   T *restrict dk, T *restrict dv, T *restrict dg, T *restrict du,
                   T *restrict dS0, T scale, long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V);
    const long ntile = (V + VT - 1) / VT;
    VEC *dSall = aligned_alloc(32, ntile * 2 * K * sizeof(VEC));  /* D, tile by tile */
    VEC *buf = aligned_alloc(32, CK * 2 * K * sizeof(VEC));  /* one tile's S_t of a block */
    T *ab = malloc((Tn * K + 1) * sizeof(T));
    T *ones = malloc(K * sizeof(T));
    const long KR = (K + NV - 1) / NV * NV;  /* row_sums' groups of NV rows */
    T *Rq = aligned_alloc(32, 3 * KR * sizeof(VEC)), *Rk = Rq + KR * NV, *Rs = Rk + KR * NV;
    T *ends = malloc(2 * K * sizeof(T)), *acc = ends + K;  /* dg's block-end term, its sum */
    T cvs[CK], cbs[CK];  /* the bonus's do . v and q . (u o k) for the steps of a block */
    for (long i = 0; i < K; i++) ones[i] = 1;
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        const T *restrict uh = u ? u + h * K : NULL;
        T *restrict duh = u ? du + p * K : NULL;
        if (u) for (long i = 0; i < K; i++) duh[i] = 0;
        NAME(decays)(g, ab, b, h, Tn, H, K);
        for (long j0 = 0, n = 0; j0 < V; j0 += VT, n++) {
            const long w = V - j0 < VT ? V - j0 : VT;
            const VEC zero = {0};
            VEC *D = dSall + n * 2 * K;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(tile_load)(D + 2 * i, dST + (p * K + i) * V + j0, w);
                else D[2 * i] = D[2 * i + 1] = zero;
            }
        }
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t < t1; t++) {  /* the tiles add their rows' sums here */
                const long rk = ((b * Tn + t) * H + h) * K;
                if (t - CK >= 0) {  /* the next block's rows (written next) */
                    NAME(ahead)(dq + rk - CK * H * K, K);
                    NAME(ahead)(dk + rk - CK * H * K, K);
                    NAME(ahead)(dg + rk - CK * H * K, K);
                }
                memset(dq + rk, 0, K * sizeof(T));
                memset(dk + rk, 0, K * sizeof(T));
                if (u) {  /* do . v and q . (u o k), whole rows */
                    const long rv = ((b * Tn + t) * H + h) * V;
                    cvs[t - t0] = NAME(dot)(dout + rv, v + rv, NULL, V);
                    cbs[t - t0] = NAME(dot)(q + rk, uh, k + rk, K) * scale;
                }
            }
            for (long i = 0; i < K; i++) ends[i] = 0;
            for (long j0 = 0, n = 0; j0 < V; j0 += VT, n++) {
                const long w = V - j0 < VT ? V - j0 : VT;
                VEC *restrict D = dSall + n * 2 * K;
                const UVEC *start = (const UVEC *)(ck + (p * nck + c) * K * VP + j0 * K);
                const UVEC *prev = start;
                for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                    const long rk = ((b * Tn + t) * H + h) * K, rv = ((b * Tn + t) * H + h) * V;
                    if (t + PF < Tn) {
                        NAME(ahead)(k + rk + PF * H * K, K);
                        NAME(ahead)(v + rv + j0 + PF * H * V, w);
                    }
                    const T *restrict kt = k + rk, *restrict at = ab + t * K;
                    VEC *restrict St = buf + (t - t0) * 2 * K, vt[2];
                    NAME(tile_load)(vt, v + rv + j0, w);
                    for (long i = 0; i < K; i++) {
                        St[2 * i] = at[i] * prev[2 * i] + kt[i] * vt[0];
                        St[2 * i + 1] = at[i] * prev[2 * i + 1] + kt[i] * vt[1];
                    }
                    prev = (const UVEC *)St;
                }
                /* rowsum(E o S_{t1-1}), E the gradient S_{t1-1} gets from later steps: D itself
                   with the bonus, a_{t1} o D without */
                const VEC *restrict Se = buf + (t1 - 1 - t0) * 2 * K;
                const T *restrict ae = u || t1 >= Tn ? ones : ab + t1 * K;
                for (long i = 0; i < K; i++)
                    PUT(Rs, i, ae[i] * (D[2 * i] * Se[2 * i] + D[2 * i + 1] * Se[2 * i + 1]));
                NAME(row_sums)(Rs, ends, K);
                for (long t = t1 - 1; t >= t0; t--) {
                    const long rk = ((b * Tn + t) * H + h) * K, rv = ((b * Tn + t) * H + h) * V;
                    if (t - PF >= 0) {
                        NAME(ahead)(q + rk - PF * H * K, K);
                        NAME(ahead)(k + rk - PF * H * K, K);
                        NAME(ahead)(v + rv + j0 - PF * H * V, w);
                        NAME(ahead)(dout + rv + j0 - PF * H * V, w);
                    }
                    const T *restrict qt = q + rk, *restrict kt = k + rk;
                    const T *restrict an = t + 1 < Tn ? ab + (t + 1) * K : ones;
                    const VEC *restrict St = buf + (t - t0) * 2 * K;
                    const VEC *restrict Sp = t > t0 ? St - 2 * K : (const VEC *)start;
                    T *restrict dqt = dq + rk, *restrict dkt = dk + rk;
                    VEC vt[2], dot[2], dv0 = {0}, dv1 = {0}, f0 = {0}, f1 = {0};
                    NAME(tile_load)(vt, v + rv + j0, w);
                    NAME(tile_load)(dot, dout + rv + j0, w);
                    if (!u) {
                        long i = 0;
#define ROW_BWD(acc0, acc1, i)                                                               \
    do {                                                                                     \
        const T qi = qt[i] * scale, ki = kt[i];                                              \
        const VEC s0 = St[2 * (i)], s1 = St[2 * (i) + 1];                                    \
        const VEC d0 = an[i] * D[2 * (i)] + qi * dot[0];                                     \
        const VEC d1 = an[i] * D[2 * (i) + 1] + qi * dot[1];                                 \
        D[2 * (i)] = d0;                                                                     \
        D[2 * (i) + 1] = d1;                                                                 \
        PUT(Rq, i, s0 * dot[0] + s1 * dot[1]);                                               \
        PUT(Rk, i, d0 * vt[0] + d1 * vt[1]);                                                 \
        acc0 += ki * d0;                                                                     \
        acc1 += ki * d1;                                                                     \
    } while (0)
                        for (; i + 1 < K; i += 2) {
                            ROW_BWD(dv0, dv1, i);
                            ROW_BWD(f0, f1, i + 1);
                        }
                        if (i < K) ROW_BWD(dv0, dv1, i);
#undef ROW_BWD
                        NAME(row_sums)(Rq, dqt, K);
                        NAME(row_sums)(Rk, dkt, K);
                    } else {  /* the bonus: D is S_t's gradient here, S_{t-1}'s after the row */
                        const T *restrict at = ab + t * K;
                        const T cv = cvs[t - t0], cb = cbs[t - t0];
                        dv0 = cb * dot[0];
                        dv1 = cb * dot[1];
                        if (n == 0)
#pragma omp simd
                            for (long i = 0; i < K; i++) {
                                dqt[i] += cv * uh[i] * kt[i];
                                dkt[i] += cv * uh[i] * qt[i] * scale;
                                duh[i] += cv * qt[i] * scale * kt[i];
                            }
                        long i = 0;
#define ROW_BON(acc0, acc1, i)                                                               \
    do {                                                                                     \
        const T qi = qt[i] * scale, ki = kt[i];                                              \
        const VEC s0 = St[2 * (i)], s1 = St[2 * (i) + 1];                                    \
        const VEC d0 = D[2 * (i)], d1 = D[2 * (i) + 1];                                      \
        PUT(Rq, i, Sp[2 * (i)] * dot[0] + Sp[2 * (i) + 1] * dot[1]);                         \
        PUT(Rk, i, d0 * vt[0] + d1 * vt[1]);                                                 \
        acc0 += ki * d0;                                                                     \
        acc1 += ki * d1;                                                                     \
        D[2 * (i)] = at[i] * d0 + qi * dot[0];                                               \
        D[2 * (i) + 1] = at[i] * d1 + qi * dot[1];                                           \
    } while (0)
                        for (; i + 1 < K; i += 2) {
                            ROW_BON(dv0, dv1, i);
                            ROW_BON(f0, f1, i + 1);
                        }
                        if (i < K) ROW_BON(dv0, dv1, i);
#undef ROW_BON
                        NAME(row_sums)(Rq, dqt, K);
                        NAME(row_sums)(Rk, dkt, K);
                    }
                    const VEC dvt[2] = {dv0 + f0, dv1 + f1};
                    NAME(tile_store)(dv + rv + j0, dvt, w);
                }
            }
            for (long t = t0; t < t1; t++) {  /* dq so far is the gradient of scale q */
                T *restrict dqt = dq + ((b * Tn + t) * H + h) * K;
#pragma omp simd
                for (long i = 0; i < K; i++) dqt[i] *= scale;
            }
            /* dg over the block from dq and dk: with G the log-decay summed from the block's
               start, q reads through e^{G_t} (e^{G_{t-1}} with the bonus) and k writes through
               e^{-G_t}, so d/dG_t = q_t o dq_t - k_t o dk_t (the bonus's own terms left out)
               plus, at the block's end, the rows of E o S_{t1-1}; dg_t sums them over s >= t
               (the bonus's q term over s > t) */
            for (long i = 0; i < K; i++) acc[i] = 0;
            for (long t = t1 - 1; t >= t0; t--) {
                const long rk = ((b * Tn + t) * H + h) * K;
                const T *restrict qt = q + rk, *restrict kt = k + rk;
                const T *restrict dqt = dq + rk, *restrict dkt = dk + rk;
                T *restrict dgt = dg + rk;
                const T cv = u ? cvs[t - t0] : 0;
#pragma omp simd
                for (long i = 0; i < K; i++) {
                    const T qq = qt[i] * dqt[i], kk_ = kt[i] * dkt[i];
                    dgt[i] = acc[i] + ends[i] - kk_ + (u ? cv * uh[i] * qt[i] * scale * kt[i] : qq);
                    acc[i] += qq - kk_;
                }
            }
        }
        for (long j0 = 0, n = 0; j0 < V; j0 += VT, n++) {  /* dS0: through S_0's decay a_0 */
            const long w = V - j0 < VT ? V - j0 : VT;
            const VEC *D = dSall + n * 2 * K;
            for (long i = 0; i < K; i++) {
                const T ai = u || !Tn ? 1 : ab[i];
                VEC d[2] = {D[2 * i], D[2 * i + 1]};
                d[0] *= ai;
                d[1] *= ai;
                NAME(tile_store)(dS0 + (p * K + i) * V + j0, d, w);
            }
        }
    }
    free(ends);
    free(Rq);
    free(ones);
    free(ab);
    free(buf);
    free(dSall);
}

#include "log1p.h"  /* NAME(log1p_unit) */

void NAME(gate_fwd)(const T *restrict x, const T *restrict z0, T *restrict kout,
                    T *restrict gout, T *restrict zT, long Tn, long C, long p0, long p1) {
    for (long b = p0; b < p1; b++) {
        T *restrict z = zT + b * C;
        memcpy(z, z0 + b * C, C * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            const T *restrict xt = x + (b * Tn + t) * C;
            T *restrict kt = kout + (b * Tn + t) * C, *restrict gt = gout + (b * Tn + t) * C;
#pragma omp simd
            for (long c = 0; c < C; c++) {  /* logaddexp; NaN stays NaN */
                const T zp = z[c], xc = xt[c];
                const int empty = zp == -INFINITY;
                const T d = empty ? 0 : zp - xc, m = d > 0 ? zp : xc;
                const T zn = empty ? xc : m + NAME(log1p_unit)(EXP(d > 0 ? -d : d));
                gt[c] = empty ? 0 : zp - zn;
                kt[c] = EXP(xc - zn);
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

/* expm1(x) for x <= 0: its Taylor series in Horner form above -1/2 (to x^9 in float, x^17
   in double), e^x - 1 below (no cancellation there: e^x < 0.61) */
static inline T NAME(expm1_neg)(T x) {
    static const T c[16] = {1.0 / 17, 1.0 / 16, 1.0 / 15, 1.0 / 14, 1.0 / 13, 1.0 / 12,
                            1.0 / 11, 1.0 / 10, 1.0 / 9, 1.0 / 8, 1.0 / 7, 1.0 / 6,
                            1.0 / 5, 1.0 / 4, 1.0 / 3, 1.0 / 2};
    T p = 1;
    for (int i = sizeof(T) == 4 ? 8 : 0; i < 16; i++) p = 1 + p * x * c[i];
    return x > (T)-0.5 ? x * p : EXP(x) - 1;
}

/* Gated slot attention's forget gate (layers/gsa.py), elementwise over entries [n0, n1):
       la = logsigmoid(f) inv_n,   s = 1 - e^la = -expm1(la)
   with logsigmoid(f) = min(f, 0) - log1p(e^-|f|); backward, from dla and ds:
       df = (dla - ds e^la) sigmoid(-f) inv_n. */
void NAME(slot_gate_fwd)(const T *restrict f, T *restrict la, T *restrict s, T inv_n,
                         long n0, long n1) {
#pragma omp simd
    for (long i = n0; i < n1; i++) {
        const T x = f[i], l = ((x < 0 ? x : 0) - NAME(log1p_unit)(EXP(x < 0 ? x : -x))) * inv_n;
        la[i] = l;
        s[i] = -NAME(expm1_neg)(l);
    }
}

void NAME(slot_gate_bwd)(const T *restrict f, const T *restrict la, const T *restrict dla,
                         const T *restrict ds, T *restrict df, T inv_n, long n0, long n1) {
#pragma omp simd
    for (long i = n0; i < n1; i++)
        df[i] = (dla[i] - ds[i] * EXP(la[i])) * inv_n / (1 + EXP(f[i]));
}

/* Gated slot attention's two passes as one recurrence (ops.gsa, layers/gsa.py). Both states
   decay per slot m, so their slot rows side by side, W = [hk^T | hv] (M, K + V), follow
       W_t = diag(a_t) W_{t-1} + s_t [k_t | v_t]^T,   a_t = e^{la_t},
       sc_t = W_t[:, :K] (scale q_t),  P_t = softmax(sc_t),  o_t = W_t[:, K:]^T P_t,
   a step a sweep over the M rows (the scores as each row's dot product, its lanes summed
   NV rows at a time), the softmax, and a pass over W_t's value columns for o: the (M) scores
   never leave the step. K and V are padded to KP, VP (multiples of 8, zeros) in W's rows of
   RW = KP + VP. Backward, with D_t the gradient of W_t and x_t = [k_t | v_t]:
       dP_t = W_t[:, K:] do_t,   dsc_t = P_t o (dP_t - P_t . dP_t),
       D_t = a_{t+1} o D_{t+1} + [dsc_t (scale q_t) | P_t do_t^T],
       dq_t = scale W_t[:, :K]^T dsc_t,  [dk_t | dv_t] = D_t^T s_t,  ds_t = D_t x_t,
   and la's gradient block by block (GCK steps) as gla_bwd's: with G the log-decay summed
   from the block's start, dla_t = sum_{r >= t} (sc_r o dsc_r + P_r o dP_r - s_r o ds_r) + the
   rows of (a_{t1} o D_{t1}) o W_{t1-1} at the block's end t1. A block runs forward first
   from the state the forward stored at its start (ck (batch, H, nck, M RW)), W_t in place,
   with sc_t, P_t, dP_t, dsc_t and dq_t (nothing of W_t kept), then backward with D alone.
   Inputs are gathered a block at a time into padded rows, outputs scattered at its end.
   Layouts: q, k, dq, dk (batch, T, H, K); v, o, do, dv (batch, T, H, V); s, la, ds, dla
   (batch, T, H, M); hk (batch, H, K, M), hv (batch, H, M, V) (hk0, hv0, hkT, hvT, their
   gradients; dhkT, dhvT may be NULL). Pairs [p0, p1). */
#define gsa_pad(n) (((n) + 7) / 8 * 8)

/* W's rows from the states hk (K, M) and hv (M, V) of one pair, zeros in the padding */
static void NAME(gsa_load)(T *restrict W, const T *restrict hk, const T *restrict hv, long K,
                           long V, long M, long RW) {
    const long KP = gsa_pad(K);
    memset(W, 0, M * RW * sizeof(T));
    for (long i = 0; i < K; i++)
        for (long m = 0; m < M; m++) W[m * RW + i] = hk[i * M + m];
    for (long m = 0; m < M; m++) memcpy(W + m * RW + KP, hv + m * V, V * sizeof(T));
}

static void NAME(gsa_store)(const T *restrict W, T *restrict hk, T *restrict hv, long K,
                            long V, long M, long RW) {
    const long KP = gsa_pad(K);
    for (long i = 0; i < K; i++)
        for (long m = 0; m < M; m++) hk[i * M + m] = W[m * RW + i];
    for (long m = 0; m < M; m++) memcpy(hv + m * V, W + m * RW + KP, V * sizeof(T));
}

/* x <- [k_t | v_t] and qv <- scale q_t, padded with zeros */
static inline void NAME(gsa_row)(T *restrict x, T *restrict qv, const T *restrict qt,
                                 const T *restrict kt, const T *restrict vt, T scale, long K,
                                 long V) {
    const long KP = gsa_pad(K), VP = gsa_pad(V);
    for (long i = 0; i < KP; i++) x[i] = i < K ? kt[i] : 0;
    for (long j = 0; j < VP; j++) x[KP + j] = j < V ? vt[j] : 0;
    for (long i = 0; i < KP; i++) qv[i] = i < K ? scale * qt[i] : 0;
}

/* out[c] = sum_m w[m] X[m nr + c], c < n vectors: four chains of adds over m */
static inline void NAME(gsa_colsum)(const T *restrict w, const VEC *restrict X, long nr,
                                    long M, long n, VEC *restrict out) {
    for (long c = 0; c < n; c++) {
        VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        long m = 0;
        for (; m + 3 < M; m += 4) {
            a0 += w[m] * X[m * nr + c];
            a1 += w[m + 1] * X[(m + 1) * nr + c];
            a2 += w[m + 2] * X[(m + 2) * nr + c];
            a3 += w[m + 3] * X[(m + 3) * nr + c];
        }
        for (; m < M; m++) a0 += w[m] * X[m * nr + c];
        out[c] = (a0 + a1) + (a2 + a3);
    }
}

#include "softmax_row.h"

#define GCK 32  /* gsa's checkpoint interval */
#define GSA_INLINE static inline __attribute__((always_inline))

/* a (MP) row of e^{la} or of s, zeros past M */
static inline void NAME(gsa_mrow)(T *restrict dst, const T *restrict src, long M, long MP, int ex) {
    if (ex) {
#pragma omp simd
        for (long m = 0; m < M; m++) dst[m] = EXP(src[m]);
    } else {
        memcpy(dst, src, M * sizeof(T));
    }
    for (long m = M; m < MP; m++) dst[m] = 0;
}

/* the rows of steps [t0, t1) of pair (b, h) in x (n wide) fetched ahead (a block's worth
   while the block before it computes: a row is touched once a block) */
static inline void NAME(gsa_ahead)(const T *x, long n, long b, long h, long t0, long t1,
                                   long Tn, long H) {
    for (long t = t0; t < t1; t++) NAME(ahead)(x + ((b * Tn + t) * H + h) * n, n);
}

/* gsa_ahead on each input of the passes: q, k (K wide), v (V), s, la (M) */
static inline void NAME(gsa_ahead_inputs)(const T *q, const T *k, const T *v, const T *s,
                                          const T *la, long b, long h, long t0, long t1,
                                          long Tn, long H, long K, long V, long M) {
    NAME(gsa_ahead)(q, K, b, h, t0, t1, Tn, H);
    NAME(gsa_ahead)(k, K, b, h, t0, t1, Tn, H);
    NAME(gsa_ahead)(v, V, b, h, t0, t1, Tn, H);
    NAME(gsa_ahead)(s, M, b, h, t0, t1, Tn, H);
    NAME(gsa_ahead)(la, M, b, h, t0, t1, Tn, H);
}

/* steps [t0, t1) of pair (b, h) into a block's buffers (rows padded with zeros): xb [k | v]
   (RW a step), qb scale q (KP), sb s and ab e^{la} (MP) */
static void NAME(gsa_gather)(const T *restrict q, const T *restrict k, const T *restrict v,
                             const T *restrict s, const T *restrict la, T *restrict xb,
                             T *restrict qb, T *restrict sb, T *restrict ab, T scale, long b,
                             long h, long t0, long t1, long Tn, long H, long K, long V,
                             long M) {
    const long KP = gsa_pad(K), VP = gsa_pad(V), RW = KP + VP, MP = gsa_pad(M);
    NAME(gsa_ahead_inputs)(q, k, v, s, la, b, h, t0, t1, Tn, H, K, V, M);
    for (long t = t0; t < t1; t++) {
        const long r = (b * Tn + t) * H + h, i = t - t0;
        NAME(gsa_row)(xb + i * RW, qb + i * KP, q + r * K, k + r * K, v + r * V, scale, K, V);
        NAME(gsa_mrow)(sb + i * MP, s + r * M, M, MP, 0);
        NAME(gsa_mrow)(ab + i * MP, la + r * M, M, MP, 1);
    }
}

/* the forward over pairs [p0, p1), nk = KP / NV and nv = VP / NV vectors a row (constants
   where gsa_fwd dispatches a common shape: the row loops unroll). A block of GCK steps at a
   time: its input rows gathered, its outputs scattered at its end. */
GSA_INLINE void NAME(gsa_fwd_pairs)(const T *restrict q, const T *restrict k,
                                    const T *restrict v, const T *restrict s,
                                    const T *restrict la, const T *restrict hk0,
                                    const T *restrict hv0, T *restrict o, T *restrict hkT,
                                    T *restrict hvT, T *restrict ck, T scale, long Tn, long H, long K, long V,
                                    long M, long p0, long p1, const long nk, const long nv) {
    const long nr = nk + nv, RW = nr * NV, KP = nk * NV, VP = nv * NV, MP = gsa_pad(M);
    const long nck = (Tn + GCK - 1) / GCK, MR = (M + NV - 1) / NV * NV;
    VEC *W = aligned_alloc(32, M * RW * sizeof(T));
    T *xb = aligned_alloc(32, GCK * (RW + KP + VP + 4 * MP) * sizeof(T));
    T *qb = xb + GCK * RW, *ob = qb + GCK * KP, *sb = ob + GCK * VP, *ab = sb + GCK * MP;
    T *scb = ab + GCK * MP, *pb = scb + GCK * MP;
    T *R = aligned_alloc(32, MR * NV * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        NAME(gsa_load)((T *)W, hk0 + p * K * M, hv0 + p * M * V, K, V, M, RW);
        for (long c = 0; c < nck; c++) {
            const long t0 = c * GCK, t1 = t0 + GCK < Tn ? t0 + GCK : Tn;
            if (ck) memcpy(ck + (p * nck + c) * M * RW, W, M * RW * sizeof(T));
            NAME(gsa_gather)(q, k, v, s, la, xb, qb, sb, ab, scale, b, h, t0, t1, Tn, H, K, V, M);
            {  /* the next block's rows, or the next pair's first */
                const long nb = t1 < Tn ? b : (p + 1) / H, nh = t1 < Tn ? h : (p + 1) % H;
                const long u0 = t1 < Tn ? t1 : 0, u1 = u0 + GCK < Tn ? u0 + GCK : Tn;
                if (t1 < Tn || p + 1 < p1)
                    NAME(gsa_ahead_inputs)(q, k, v, s, la, nb, nh, u0, u1, Tn, H, K, V, M);
            }
            for (long t = t0; t < t1; t++) {
                const long i = t - t0;
                const VEC *restrict x = (const VEC *)(xb + i * RW), *restrict qv = (const VEC *)(qb + i * KP);
                const T *restrict st = sb + i * MP, *restrict at = ab + i * MP;
                T *restrict sct = scb + i * MP, *restrict P = pb + i * MP;
                for (long m = 0; m < M; m++) {
                    VEC *restrict Wm = W + m * nr, acc = {0}, acc2 = {0};
                    const T am = at[m], sm = st[m];
                    long cc = 0;
                    for (; cc + 1 < nk; cc += 2) {
                        const VEC w0 = am * Wm[cc] + sm * x[cc];
                        const VEC w1 = am * Wm[cc + 1] + sm * x[cc + 1];
                        Wm[cc] = w0;
                        Wm[cc + 1] = w1;
                        acc += w0 * qv[cc];
                        acc2 += w1 * qv[cc + 1];
                    }
                    if (cc < nk) {
                        const VEC w = am * Wm[cc] + sm * x[cc];
                        Wm[cc] = w;
                        acc += w * qv[cc];
                    }
                    for (cc = nk; cc < nr; cc++) Wm[cc] = am * Wm[cc] + sm * x[cc];
                    PUT(R, m, acc + acc2);
                }
                for (long m = 0; m < M; m++) sct[m] = 0;
                NAME(row_sums)(R, sct, M);
                memcpy(P, sct, M * sizeof(T));
                T Z;
                NAME(softmax_row)(P, M, &Z);
                NAME(gsa_colsum)(P, W + nk, nr, M, nv, (VEC *)(ob + i * VP));
            }
            for (long t = t0; t < t1; t++) {
                const long r = (b * Tn + t) * H + h, i = t - t0;
                memcpy(o + r * V, ob + i * VP, V * sizeof(T));
            }
        }
        NAME(gsa_store)((const T *)W, hkT + p * K * M, hvT + p * M * V, K, V, M, RW);
    }
    free(R);
    free(xb);
    free(W);
}

void NAME(gsa_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict s, const T *restrict la, const T *restrict hk0,
                   const T *restrict hv0, T *restrict o, T *restrict hkT, T *restrict hvT,
                   T *restrict ck, T scale, long Tn, long H,
                   long K, long V, long M, long p0, long p1) {
    const long nk = gsa_pad(K) / NV, nv = gsa_pad(V) / NV;
#define GSA_FWD(a, b) NAME(gsa_fwd_pairs)(q, k, v, s, la, hk0, hv0, o, hkT, hvT, ck,         \
                                          scale, Tn, H, K, V, M, p0, p1, a, b)
#if TILE_LANES == 8  /* float, head_dim 32 (the double build keeps the general form) */
    if (nk == 4 && nv == 4) GSA_FWD(4, 4);
    else
#endif
        GSA_FWD(nk, nv);
#undef GSA_FWD
}

/* one backward step's sweep over the rows m: D <- a_{t+1} o D + [dsc q~ | P do], its rows'
   dot products with x = [k | v] into R, acc = D^T s */
GSA_INLINE void NAME(gsa_bwd_rows)(VEC *restrict D, const VEC *restrict x,
                                   const VEC *restrict qv, const VEC *restrict dov,
                                   const T *restrict an, const T *restrict dsc,
                                   const T *restrict Pt, const T *restrict st, T *restrict R,
                                   VEC *restrict acc, long M, const long nk, const long nv) {
    const long nr = nk + nv;
    for (long c = 0; c < nr; c++) acc[c] = (VEC){0};
    for (long m = 0; m < M; m++) {
        VEC *restrict Dm = D + m * nr, e = {0}, e2 = {0};
        const T a1 = an[m], dm = dsc[m], pm = Pt[m], sm = st[m];
        for (long c = 0; c < nk; c++) {
            const VEC d = a1 * Dm[c] + dm * qv[c];
            Dm[c] = d;
            e += d * x[c];
            acc[c] += sm * d;
        }
        for (long c = nk; c < nr; c++) {
            const VEC d = a1 * Dm[c] + pm * dov[c - nk];
            Dm[c] = d;
            e2 += d * x[c];
            acc[c] += sm * d;
        }
        PUT(R, m, e + e2);
    }
}

/* the backward, a block of GCK steps at a time: forward over the block from its checkpoint,
   W_t in place, with dP_t (in the same row pass), dsc_t and dq_t (a second pass over W_t's
   key columns); then backward over the block with D alone (no W_t kept) */
GSA_INLINE void NAME(gsa_bwd_pairs)(const T *restrict q, const T *restrict k,
                                    const T *restrict v, const T *restrict s,
                                    const T *restrict la, const T *restrict ck,
                                    const T *restrict dout, const T *restrict dhkT,
                                    const T *restrict dhvT, T *restrict dq, T *restrict dk,
                                    T *restrict dv, T *restrict ds, T *restrict dla,
                                    T *restrict dhk0, T *restrict dhv0, T scale, long Tn, long H,
                                    long K, long V, long M, long p0, long p1, const long nk,
                                    const long nv, VEC *restrict acc) {
    const long nr = nk + nv, RW = nr * NV, KP = nk * NV, VP = nv * NV, MP = gsa_pad(M);
    const long nck = (Tn + GCK - 1) / GCK, MR = (M + NV - 1) / NV * NV;
    VEC *D = aligned_alloc(32, M * RW * sizeof(T)), *W = aligned_alloc(32, M * RW * sizeof(T));
    /* the block's rows: inputs x, q, do, s, e^la (one more step), sc, P; dP, dsc; outputs
       dk|dv, dq, ds, dla */
    T *xb = aligned_alloc(32, (GCK * (2 * RW + 2 * KP + VP + 8 * MP) + MP) * sizeof(T));
    T *qb = xb + GCK * RW, *dob = qb + GCK * KP, *sb = dob + GCK * VP, *scb = sb + GCK * MP;
    T *pb = scb + GCK * MP, *dkvb = pb + GCK * MP, *dqb = dkvb + GCK * RW, *dsb = dqb + GCK * KP;
    T *dlab = dsb + GCK * MP, *dPb = dlab + GCK * MP, *dscb = dPb + GCK * MP, *ab = dscb + GCK * MP;
    T *R = aligned_alloc(32, 2 * MR * NV * sizeof(T)), *R2 = R + MR * NV;
    T *ones = malloc(3 * M * sizeof(T));
    T *restrict ends = ones + M, *restrict gacc = ends + M;
    for (long m = 0; m < M; m++) ones[m] = 1;
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        T *restrict Dt = (T *)D;
        memset(D, 0, M * RW * sizeof(T));
        if (dhkT)
            for (long i = 0; i < K; i++)
                for (long m = 0; m < M; m++) Dt[m * RW + i] = dhkT[(p * K + i) * M + m];
        if (dhvT)
            for (long m = 0; m < M; m++)
                memcpy(Dt + m * RW + KP, dhvT + (p * M + m) * V, V * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * GCK, t1 = t0 + GCK < Tn ? t0 + GCK : Tn, n = t1 - t0;
            NAME(gsa_gather)(q, k, v, s, la, xb, qb, sb, ab, scale, b, h, t0, t1, Tn, H, K, V, M);
            if (t1 < Tn) NAME(gsa_mrow)(ab + n * MP, la + ((b * Tn + t1) * H + h) * M, M, MP, 1);
            for (long t = t0; t < t1; t++) {
                const long r = (b * Tn + t) * H + h, i = t - t0;
                for (long j = 0; j < VP; j++) dob[i * VP + j] = j < V ? dout[r * V + j] : 0;
            }
            if (c > 0) {  /* the block before's rows */
                const long u0 = t0 - GCK;
                NAME(gsa_ahead)(dout, V, b, h, u0, t0, Tn, H);
            }
            const T *an_end = t1 < Tn ? ab + n * MP : ones;
            memcpy(W, ck + (p * nck + c) * M * RW, M * RW * sizeof(T));
            for (long i = 0; i < n; i++) {  /* forward: W_t, dP_t, dsc_t, dq_t */
                const VEC *restrict x = (const VEC *)(xb + i * RW);
                const VEC *restrict dov = (const VEC *)(dob + i * VP);
                const T *restrict at = ab + i * MP, *restrict st = sb + i * MP;
                const VEC *restrict qv = (const VEC *)(qb + i * KP);
                T *restrict Pt = pb + i * MP, *restrict sct = scb + i * MP;
                T *restrict dP = dPb + i * MP, *restrict dsc = dscb + i * MP;
                for (long m = 0; m < M; m++) {  /* W_t, its scores and dP = W_t[:, K:] do */
                    VEC *restrict Wm = W + m * nr, e = {0}, f = {0};
                    const T am = at[m], sm = st[m];
                    for (long cc = 0; cc < nk; cc++) {
                        const VEC w = am * Wm[cc] + sm * x[cc];
                        Wm[cc] = w;
                        f += w * qv[cc];
                    }
                    for (long cc = nk; cc < nr; cc++) {
                        const VEC w = am * Wm[cc] + sm * x[cc];
                        Wm[cc] = w;
                        e += w * dov[cc - nk];
                    }
                    PUT(R, m, e);
                    PUT(R2, m, f);
                }
                memset(dP, 0, M * sizeof(T));
                NAME(row_sums)(R, dP, M);
                memset(sct, 0, M * sizeof(T));
                NAME(row_sums)(R2, sct, M);
                memcpy(Pt, sct, M * sizeof(T));
                T Z;
                NAME(softmax_row)(Pt, M, &Z);
                T dot = 0;
#pragma omp simd reduction(+ : dot)
                for (long m = 0; m < M; m++) dot += Pt[m] * dP[m];
#pragma omp simd
                for (long m = 0; m < M; m++) dsc[m] = Pt[m] * (dP[m] - dot);
                NAME(gsa_colsum)(dsc, W, nr, M, nk, (VEC *)(dqb + i * KP));
            }
            {  /* the block end's rows of (a_{t1} o D) o W_{t1-1} */
                for (long m = 0; m < M; m++) {
                    VEC e = {0};
                    for (long cc = 0; cc < nr; cc++) e += D[m * nr + cc] * W[m * nr + cc];
                    PUT(R, m, an_end[m] * e);
                }
                for (long m = 0; m < M; m++) ends[m] = gacc[m] = 0;
                NAME(row_sums)(R, ends, M);
            }
            for (long i = n - 1; i >= 0; i--) {
                const T *restrict an = i + 1 < n ? ab + (i + 1) * MP : an_end;
                const T *restrict Pt = pb + i * MP, *restrict sct = scb + i * MP,
                        *restrict st = sb + i * MP, *restrict dP = dPb + i * MP,
                        *restrict dsc = dscb + i * MP;
                NAME(gsa_bwd_rows)(D, (const VEC *)(xb + i * RW), (const VEC *)(qb + i * KP),
                                   (const VEC *)(dob + i * VP), an, dsc, Pt, st, R, acc, M,
                                   nk, nv);
                T *restrict dst = dsb + i * MP, *restrict dlt = dlab + i * MP;
                memset(dst, 0, M * sizeof(T));
                NAME(row_sums)(R, dst, M);
                memcpy(dkvb + i * RW, acc, RW * sizeof(T));
#pragma omp simd
                for (long m = 0; m < M; m++) {
                    gacc[m] += sct[m] * dsc[m] + Pt[m] * dP[m] - st[m] * dst[m];
                    dlt[m] = ends[m] + gacc[m];
                }
            }
            for (long t = t0; t < t1; t++) {
                const long r = (b * Tn + t) * H + h, i = t - t0;
                for (long j = 0; j < K; j++) dq[r * K + j] = scale * dqb[i * KP + j];
                memcpy(dk + r * K, dkvb + i * RW, K * sizeof(T));
                memcpy(dv + r * V, dkvb + i * RW + KP, V * sizeof(T));
                memcpy(ds + r * M, dsb + i * MP, M * sizeof(T));
                memcpy(dla + r * M, dlab + i * MP, M * sizeof(T));
            }
        }
        /* the entering state's gradient: through step 0's decay (ab holds block 0's) */
        const T *a0 = Tn ? ab : ones;
        for (long m = 0; m < M; m++) {
            for (long i = 0; i < K; i++) dhk0[(p * K + i) * M + m] = a0[m] * Dt[m * RW + i];
            for (long j = 0; j < V; j++) dhv0[(p * M + m) * V + j] = a0[m] * Dt[m * RW + KP + j];
        }
    }
    free(ones);
    free(R);
    free(xb);
    free(W);
    free(D);
}

void NAME(gsa_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict s, const T *restrict la, const T *restrict ck,
                   const T *restrict dout,
                   const T *restrict dhkT, const T *restrict dhvT, T *restrict dq,
                   T *restrict dk, T *restrict dv, T *restrict ds, T *restrict dla,
                   T *restrict dhk0, T *restrict dhv0, T scale, long Tn, long H, long K, long V,
                   long M, long p0, long p1) {
    const long nk = gsa_pad(K) / NV, nv = gsa_pad(V) / NV;
#define GSA_BWD(a, b, acc)                                                                   \
    NAME(gsa_bwd_pairs)(q, k, v, s, la, ck, dout, dhkT, dhvT, dq, dk, dv, ds, dla,  \
                        dhk0, dhv0, scale, Tn, H, K, V, M, p0, p1, a, b, acc)
#if TILE_LANES == 8  /* float, head_dim 32: the sums in registers */
    if (nk == 4 && nv == 4) {
        VEC acc[8];
        GSA_BWD(4, 4, acc);
    } else
#endif
    {
        VEC *acc = aligned_alloc(32, (nk + nv) * sizeof(VEC));
        GSA_BWD(nk, nv, acc);
        free(acc);
    }
#undef GSA_BWD
}
#undef GSA_INLINE
#undef GCK

#undef gsa_pad
#undef PUT
#undef PF
#include "tile.h"  /* its names undefined for the next type */
#endif
