/* Scalar-decay linear attention with q, k shared by groups of heads (Mamba-2's SSD), as its
   recurrence, forward and backward, one (batch row, head) pair at a time:

       S_t = a_t S_{t-1} + k_t v_t^T,   a_t = exp(g_t),   o_t = S_t^T q_t      S: (K, V)

   Every column of S evolves on its own (o_t's column j reads S's column j only), so each
   pair runs in tiles of VT columns (two vectors of T, tile.h): the
   tile of S (K x VT) stays in L1, v_t's and o_t's slices in registers, each state row one
   load, one store and a few fused multiply-adds a step. The backward is two sweeps, neither
   storing a state: dq_t = S_t do_t is this forward again on the transposed state
   (S_t^T = a_t S_{t-1}^T + v_t k_t^T, read by do_t: ssd_scan.py calls ssd_fwd with q, k, v
   = do, v, k and S_0^T), then ssd_bwd runs the gradient back from dS_T, with dS the gradient
   of S_t (its own read plus a_{t+1} times the next one's):
       dS = a_{t+1} dS_{t+1} + q_t do_t^T,  dk_t = dS v_t,  dv_t = dS^T k_t,  dS_0 = a_1 dS_1;
   and the log-decays' gradients from those (Mamba-2's chunk kernels' identity): with G_t =
   g_1 + ... + g_t, S_t's terms carry exp(G_t - G_s) (or exp(G_t) S_0), so
       dL/dG_t = q_t . dq_t - k_t . dk_t   (+ <dS_T, S_T> at the last step),
       dg_t = the sum of dL/dG_u over u >= t.
   (dk summed over ssd_bwd's tiles; a last, narrower tile is padded with zero columns: zero
   v and do keep them zero and add nothing.)

   Layouts (row-major, contiguous): q, k (batch, T, G, K); v, o, dv (batch, T, H, V);
   g, dg (batch, T, H); S0, S_T, dS_T, dS0 (batch, H, K, V); dq (ssd_bwd's input), dk
   (batch, T, H, K): per head, the caller sums the heads of a group. Head h reads group
   h / (H / G).
   Each function does the (batch row, head) pairs [p0, p1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ssd_scan.c"
#include "each_type.h"

#else

#include "tile.h"

void NAME(ssd_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict S0, T *restrict o, T *restrict ST,
                   long Tn, long G, long H, long K, long V, long p0, long p1) {
    const long R = H / G;
    VEC *S = aligned_alloc(TILE_BYTES, 2 * K * sizeof(VEC));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        for (long j0 = 0; j0 < V; j0 += VT) {
            const long w = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) NAME(tile_load)(S + 2 * i, S0 + (p * K + i) * V + j0, w);
            for (long t = 0; t < Tn; t++) {
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

/* out[0 .. m) = (first ? 0 : out) + the lane sums of x[0 .. m) (x overwritten) */
TILE_INLINE void NAME(put_sums)(T *restrict out, VEC *restrict x, long m, long first) {
    if (first && m == NV) {
        *(UVEC *)out = NAME(hsum_rows)(x);
        return;
    }
    if (first)
        for (long i = 0; i < m; i++) out[i] = 0;
    NAME(add_sums)(out, x, m);
}

void NAME(ssd_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict ST, const T *restrict dST,
                   const T *restrict dout, const T *restrict dq, T *restrict dk,
                   T *restrict dv, T *restrict dg, T *restrict dS0, long Tn, long G, long H,
                   long K, long V, long p0, long p1) {
    const long R = H / G;
    VEC *dS = aligned_alloc(TILE_BYTES, 2 * K * sizeof(VEC));  /* dS of one tile */
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        double last = 0;  /* <dS_T, S_T> */
        if (dST)
            for (long e = p * K * V; e < (p + 1) * K * V; e++) last += (double)dST[e] * ST[e];
        for (long j0 = 0; j0 < V; j0 += VT) {  /* backward: dS, dk_t = dS v_t, dv_t = dS^T k_t */
            const long w = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(tile_load)(dS + 2 * i, dST + (p * K + i) * V + j0, w);
                else dS[2 * i] = dS[2 * i + 1] = (VEC){0};
            }
            T a_next = 1;
            for (long t = Tn - 1; t >= 0; t--) {
                const long row = (b * Tn + t) * H + h;
                const T *restrict qt = q + ((b * Tn + t) * G + gi) * K;
                const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
                T *restrict dkt = dk + row * K;
                VEC vt[2], dot[2], dv0 = {0}, dv1 = {0}, dv2 = {0}, dv3 = {0};
                NAME(tile_load)(vt, v + row * V + j0, w);
                NAME(tile_load)(dot, dout + row * V + j0, w);
                for (long i = 0; i < K; i += NV) {
                    const long m = K - i < NV ? K - i : NV;
                    VEC pk[NV];
                    for (long r = 0; r < m; r++) {  /* dv in two chains of adds a half */
                        const T qi = qt[i + r], ki = kt[i + r];
                        const VEC d0 = a_next * dS[2 * (i + r)] + qi * dot[0];
                        const VEC d1 = a_next * dS[2 * (i + r) + 1] + qi * dot[1];
                        dS[2 * (i + r)] = d0;
                        dS[2 * (i + r) + 1] = d1;
                        pk[r] = d0 * vt[0] + d1 * vt[1];
                        if (r & 1) {
                            dv2 += ki * d0;
                            dv3 += ki * d1;
                        } else {
                            dv0 += ki * d0;
                            dv1 += ki * d1;
                        }
                    }
                    NAME(put_sums)(dkt + i, pk, m, j0 == 0);
                }
                const VEC dvt[2] = {dv0 + dv2, dv1 + dv3};
                NAME(tile_store)(dv + row * V + j0, dvt, w);
                a_next = EXP(g[row]);
            }
            for (long i = 0; i < K; i++) {  /* through S_0's decay a_1 (1 when T = 0) */
                const VEC d[2] = {a_next * dS[2 * i], a_next * dS[2 * i + 1]};
                NAME(tile_store)(dS0 + (p * K + i) * V + j0, d, w);
            }
        }
        double acc = last;  /* dg_t: the dL/dG_u for u >= t (summed in double: T terms) */
        for (long t = Tn - 1; t >= 0; t--) {
            const long row = (b * Tn + t) * H + h;
            const T *restrict qt = q + ((b * Tn + t) * G + gi) * K;
            const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
            const T *restrict dqt = dq + row * K, *restrict dkt = dk + row * K;
            T s = 0;
#pragma omp simd reduction(+:s)
            for (long i = 0; i < K; i++) s += qt[i] * dqt[i] - kt[i] * dkt[i];
            acc += s;
            dg[row] = (T)acc;
        }
    }
    free(dS);
}

#include "tile.h"  /* its names undefined for the next type */
#endif
