/* Scalar-decay linear attention with q, k shared by groups of heads (Mamba-2's SSD), as its
   recurrence, forward and backward, one (batch row, head) pair at a time:

       S_t = a_t S_{t-1} + k_t v_t^T,   a_t = exp(g_t),   o_t = S_t^T q_t      S: (K, V)

   Every column of S evolves on its own (o_t's column j reads S's column j only), so each
   pair runs in tiles of VT columns (two vectors of T, tile.h): the
   tile of S (K x VT) stays in L1, v_t's and o_t's slices in registers, each state row one
   load, one store and a few fused multiply-adds a step. Backward, with dS the gradient of S_t
   (its own read plus a_{t+1} times the next one's):
       dS = a_{t+1} dS_{t+1} + q_t do_t^T,   dq_t = S_t do_t,   dk_t = dS v_t,   dv_t = dS^T k_t,
       dg_t = <dS, S_t> - <k_t, dk_t>   (= <dS, a_t S_{t-1}>),   dS_0 = a_1 dS_1
   also tile by tile (dq, dk, dg summed over the tiles). S_t is recomputed from the state
   stored every CK steps by the forward (re-deriving S_{t-1} from S_t would divide by a_t);
   a tile's CK states (CK K VT) stay in L2. A last, narrower tile is padded with zero columns
   (zero v and do keep them zero and add nothing).

   Layouts (row-major, contiguous): q, k (batch, T, G, K); v, o, dv (batch, T, H, V);
   g, dg (batch, T, H); S0, S_T, dS_T, dS0 (batch, H, K, V); ck (batch, H, nck, K VP) with
   nck = ceil(T / CK), VP = V rounded up to a multiple of 32 (the state entering steps 0, CK,
   2 CK, ..., tile by tile, each tile's K x VT block contiguous); dq, dk (batch, T, H, K): per
   head, the caller sums the heads of a group. Head h reads group h / (H / G).
   Each function does the (batch row, head) pairs [p0, p1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "ssd_scan.c"
#include "each_type.h"

#else

#include "tile.h"

void NAME(ssd_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict S0, T *restrict o, T *restrict ST,
                   T *restrict ck, long Tn, long G, long H, long K, long V, long p0, long p1) {
    const long R = H / G, nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V);
    VEC *S = aligned_alloc(TILE_BYTES, 2 * K * sizeof(VEC));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        for (long j0 = 0; j0 < V; j0 += VT) {
            const long w = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) NAME(tile_load)(S + 2 * i, S0 + (p * K + i) * V + j0, w);
            for (long t = 0; t < Tn; t++) {
                if (t % CK == 0)
                    memcpy(ck + (p * nck + t / CK) * K * VP + j0 * K, S, 2 * K * sizeof(VEC));
                const long row = (b * Tn + t) * H + h;
                const T a = EXP(g[row]);
                const T *restrict qt = q + ((b * Tn + t) * G + gi) * K;
                const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
                VEC vt[2], o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};  /* o: even and odd rows */
                NAME(tile_load)(vt, v + row * V + j0, w);
#define SSD_FWD_ROW(i, oa, ob)                                                          \
    do {                                                                                \
        const VEC s0 = a * S[2 * (i)] + kt[i] * vt[0], s1 = a * S[2 * (i) + 1] + kt[i] * vt[1]; \
        S[2 * (i)] = s0;                                                                \
        S[2 * (i) + 1] = s1;                                                            \
        oa += qt[i] * s0;                                                               \
        ob += qt[i] * s1;                                                               \
    } while (0)
                long i = 0;
                for (; i + 2 <= K; i += 2) {  /* two chains of adds per half of o, not one */
                    SSD_FWD_ROW(i, o0, o1);
                    SSD_FWD_ROW(i + 1, o2, o3);
                }
                if (i < K) SSD_FWD_ROW(i, o0, o1);
#undef SSD_FWD_ROW
                const VEC ot[2] = {o0 + o2, o1 + o3};
                NAME(tile_store)(o + row * V + j0, ot, w);
            }
            for (long i = 0; i < K; i++) NAME(tile_store)(ST + (p * K + i) * V + j0, S + 2 * i, w);
        }
    }
    free(S);
}

void NAME(ssd_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict ck, const T *restrict dST,
                   const T *restrict dout, T *restrict dq, T *restrict dk, T *restrict dv,
                   T *restrict dg, T *restrict dS0, long Tn, long G, long H, long K, long V,
                   long p0, long p1) {
    const long R = H / G, nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V), ntile = (V + VT - 1) / VT;
    VEC *dSall = aligned_alloc(TILE_BYTES, ntile * 2 * K * sizeof(VEC));  /* dS, tile by tile */
    VEC *buf = aligned_alloc(TILE_BYTES, CK * 2 * K * sizeof(VEC));  /* one tile's S_t of a block */
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        for (long j0 = 0, n = 0; j0 < V; j0 += VT, n++) {
            const long w = V - j0 < VT ? V - j0 : VT;
            const VEC zero = {0};
            VEC *dS = dSall + n * 2 * K;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(tile_load)(dS + 2 * i, dST + (p * K + i) * V + j0, w);
                else dS[2 * i] = dS[2 * i + 1] = zero;
            }
        }
        /* block by block backward, the tiles inside a block (its dq, dk rows stay in cache
           while the tiles add to them) */
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t < t1; t++) {
                const long row = (b * Tn + t) * H + h;
                memset(dq + row * K, 0, K * sizeof(T));
                memset(dk + row * K, 0, K * sizeof(T));
                dg[row] = 0;
            }
            for (long j0 = 0, n = 0; j0 < V; j0 += VT, n++) {
                const long w = V - j0 < VT ? V - j0 : VT;
                VEC *restrict dS = dSall + n * 2 * K;
                const UVEC *prev = (const UVEC *)(ck + (p * nck + c) * K * VP + j0 * K);
                for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                    const long row = (b * Tn + t) * H + h;
                    const T a = EXP(g[row]);
                    const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
                    VEC *restrict St = buf + (t - t0) * 2 * K, vt[2];
                    NAME(tile_load)(vt, v + row * V + j0, w);
                    for (long i = 0; i < K; i++) {
                        St[2 * i] = a * prev[2 * i] + kt[i] * vt[0];
                        St[2 * i + 1] = a * prev[2 * i + 1] + kt[i] * vt[1];
                    }
                    prev = (const UVEC *)St;
                }
                T a_next = t1 < Tn ? EXP(g[(b * Tn + t1) * H + h]) : 1;
                for (long t = t1 - 1; t >= t0; t--) {
                    const long row = (b * Tn + t) * H + h;
                    const T *restrict qt = q + ((b * Tn + t) * G + gi) * K;
                    const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
                    const VEC *restrict St = buf + (t - t0) * 2 * K;
                    T *restrict dqt = dq + row * K, *restrict dkt = dk + row * K;
                    VEC vt[2], dot[2], dgv = {0};
                    VEC dv0 = {0}, dv1 = {0}, dv2 = {0}, dv3 = {0}, gv0 = {0}, gv1 = {0}, gv2 = {0}, gv3 = {0};
                    NAME(tile_load)(vt, v + row * V + j0, w);
                    NAME(tile_load)(dot, dout + row * V + j0, w);
                    /* one state row: dS's, then its sums for dk and dq (returned as vectors
                       over the tile's columns), dv's and <dS, S_t>'s terms in the even or odd
                       row's accumulators (two chains each, not one) */
#define SSD_ROW(i, pk, pq, ga, gb, da, db)                                                       \
    do {                                                                                 \
        const T qi_ = qt[i], ki_ = kt[i];                                                \
        const VEC d0 = a_next * dS[2 * (i)] + qi_ * dot[0];                              \
        const VEC d1 = a_next * dS[2 * (i) + 1] + qi_ * dot[1];                          \
        const VEC s0 = St[2 * (i)], s1 = St[2 * (i) + 1];                                \
        dS[2 * (i)] = d0;                                                                \
        dS[2 * (i) + 1] = d1;                                                            \
        pk = d0 * vt[0] + d1 * vt[1];                                                    \
        pq = s0 * dot[0] + s1 * dot[1];                                                  \
        ga += d0 * s0;                                                                   \
        gb += d1 * s1;                                                                   \
        da += ki_ * d0;                                                                  \
        db += ki_ * d1;                                                                  \
    } while (0)
                    long i = 0;
                    for (; i + NV <= K; i += NV) {  /* NV rows, their sums as one transpose */
                        VEC pk[NV], pq[NV];
                        for (long r = 0; r < NV; r += 2) {
                            SSD_ROW(i + r, pk[r], pq[r], gv0, gv1, dv0, dv1);
                            SSD_ROW(i + r + 1, pk[r + 1], pq[r + 1], gv2, gv3, dv2, dv3);
                        }
                        const VEC sk = NAME(hsum_rows)(pk), sq = NAME(hsum_rows)(pq);
                        *(UVEC *)(dkt + i) += sk;
                        *(UVEC *)(dqt + i) += sq;
                        dgv -= *(const UVEC *)(kt + i) * sk;
                    }
                    T dgt = 0;
                    for (; i < K; i++) {
                        VEC pk, pq;
                        SSD_ROW(i, pk, pq, gv0, gv1, dv0, dv1);
                        const T sk = NAME(hsum)(pk);
                        dqt[i] += NAME(hsum)(pq);
                        dkt[i] += sk;
                        dgt -= kt[i] * sk;
                    }
#undef SSD_ROW
                    dg[row] += dgt + NAME(hsum)(dgv + (gv0 + gv1) + (gv2 + gv3));
                    const VEC dvt[2] = {dv0 + dv2, dv1 + dv3};
                    NAME(tile_store)(dv + row * V + j0, dvt, w);
                    a_next = EXP(g[row]);
                }
            }
        }
        const T a0 = Tn ? EXP(g[b * Tn * H + h]) : 1;  /* through S_0's decay a_0 */
        for (long j0 = 0, n = 0; j0 < V; j0 += VT, n++) {
            const long w = V - j0 < VT ? V - j0 : VT;
            const VEC *dS = dSall + n * 2 * K;
            for (long i = 0; i < K; i++) {
                const VEC d[2] = {a0 * dS[2 * i], a0 * dS[2 * i + 1]};
                NAME(tile_store)(dS0 + (p * K + i) * V + j0, d, w);
            }
        }
    }
    free(dSall);
    free(buf);
}

#include "tile.h"  /* its names undefined for the next type */
#endif
