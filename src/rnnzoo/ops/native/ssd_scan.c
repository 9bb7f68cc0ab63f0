/* Scalar-decay linear attention with q, k shared by groups of heads (Mamba-2's SSD), its
   forward as the recurrence, one (batch row, head) pair at a time:

       S_t = a_t S_{t-1} + k_t v_t^T,   a_t = exp(g_t),   o_t = S_t^T q_t + d_t v_t   S: (K, V)

   (d_t: an optional same-step weight, mamba3's correction of its key's next-step term)

   Every column of S evolves on its own (o_t's column j reads S's column j only), so each
   pair runs in tiles of VT columns (two vectors of T, tile.h): the
   tile of S (K x VT) stays in L1, v_t's and o_t's slices in registers, each state row one
   load, one store and two fused multiply-adds a step: the tile holds S_t e^(-D_t), D_t the
   log-decays summed since it was last exact, so a step adds k_t (e^(-D_t) v_t) without
   scaling the tile and o_t = e^(D_t) (S_t e^(-D_t))^T q_t (three vector operations a row
   before, the decay's product among them: mamba3's K = 128 forward 25 -> ~19 ms). The tile is
   made exact (times e^D) where a chunk's start state is stored and at the end, and a step
   whose D would pass -SSD_SPAN (or is not finite) runs the exact a_t S + k_t v_t instead. With Sc (not NULL) it also stores
   the state before every L-th step, S_0 first (Sc: (batch, H, ceil(T / L), K, V)), from
   which ssd_chunk.c's ssd_bwd_chunk runs the backward by chunks.

   Layouts (row-major, contiguous): q, k (batch, T, G, K); v, o (batch, T, H, V);
   g, d (batch, T, H) (d may be NULL: none); S0, S_T (batch, H, K, V). Head h reads group h / (H / G).
   The (batch row, head) pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ssd_scan.c"
#include "each_type.h"

#else

#include "tile.h"

#if defined(__AVX512F__) && TILE_BYTES == 64
#include <immintrin.h>
#define SSD_STREAM 1
#else
#define SSD_STREAM 0
#endif

/* log-decay span of the scaled tile: e^20 ~ 5e8, well inside float's range */
#define SSD_SPAN 20
#define SSD_AHEAD 4

void NAME(ssd_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict d, const T *restrict S0,
                   T *restrict o, T *restrict ST, T *restrict Sc, long L, long Tn, long G, long H, long K, long V, long p0,
                   long p1) {
    const long R = H / G, NC = L > 0 ? (Tn + L - 1) / L : 0;
    VEC *S = aligned_alloc(TILE_BYTES, 2 * K * sizeof(VEC));
    /* a pair's per-step factors, shared by its tiles: the tile times m_t before step t
       (1: none; where it is made exact), then S e^(-D) += k_t (c_t v_t), o_t = e_t (...) */
    T *m = malloc((Tn + 1) * sizeof(T)), *c = malloc(Tn * sizeof(T)), *e = malloc(Tn * sizeof(T));
    /* ma_t: a_t itself, applied after the store, where a stored chunk start's own step runs
       exact (m_t there makes the stored state exact: a_t must not reach Sc) */
    T *ma = malloc(Tn * sizeof(T));
    double *D = malloc((Tn + 1) * sizeof(double)), *A = malloc(Tn * sizeof(double));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        double run = 0;  /* the log-decays summed since the tile was last exact */
        for (long t = 0; t <= Tn; t++) {
            const int start = Sc && t % L == 0;
            D[t] = 0;  /* m_t's log (0: none) */
            if (t == Tn || start) {  /* exact at a stored chunk start, and at the end */
                D[t] = run, run = 0;
                if (t == Tn) break;
            }
            A[t] = 0;
            run += g[(b * Tn + t) * H + h];
            if (!(run >= -SSD_SPAN)) {  /* past the span, or not finite: the exact step */
                if (start) A[t] = run;  /* a_t S + k_t v_t, a_t after the stored state */
                else D[t] += run;
                run = 0;
            }
            c[t] = (T)-run, e[t] = (T)run;
        }
#pragma omp simd
        for (long t = 0; t <= Tn; t++) m[t] = EXP((T)D[t]);
#pragma omp simd
        for (long t = 0; t < Tn; t++) ma[t] = EXP((T)A[t]);
#pragma omp simd
        for (long t = 0; t < Tn; t++) c[t] = EXP(c[t]), e[t] = EXP(e[t]);
        for (long j0 = 0; j0 < V; j0 += VT) {
            const long w = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) NAME(tile_load)(S + 2 * i, S0 + (p * K + i) * V + j0, w);
            for (long t = 0; t < Tn; t++) {
                const long row = (b * Tn + t) * H + h;
                if (m[t] != 1)
                    for (long i = 0; i < K; i++) S[2 * i] *= m[t], S[2 * i + 1] *= m[t];
                if (Sc && t % L == 0)  /* the chunk's start state, for ssd_bwd_chunk */
                    for (long i = 0; i < K; i++) {
                        T *dst = Sc + ((p * NC + t / L) * K + i) * V + j0;
#if SSD_STREAM
                        if (sizeof(T) == 4 && w == VT && (uintptr_t)dst % 64 == 0) {
                            /* streamed past the cache: the backward reads it much later */
                            _mm512_stream_ps((float *)dst, (__m512)S[2 * i]);
                            _mm512_stream_ps((float *)(dst + NV), (__m512)S[2 * i + 1]);
                        } else
#endif
                            NAME(tile_store)(dst, S + 2 * i, w);
                    }
                if (ma[t] != 1)
                    for (long i = 0; i < K; i++) S[2 * i] *= ma[t], S[2 * i + 1] *= ma[t];
                const T *restrict qt = q + ((b * Tn + t) * G + gi) * K;
                const T *restrict kt = k + ((b * Tn + t) * G + gi) * K;
                /* a later step's q, k rows (G K apart) into L1: mamba3's are per head (two
                   16.8 MB tensors) and ssd_fwd there was bound by their reads */
                if (t + SSD_AHEAD < Tn) {
                    const char *qa = (const char *)(qt + SSD_AHEAD * G * K);
                    const char *ka = (const char *)(kt + SSD_AHEAD * G * K);
                    for (long x = 0; x < (long)(K * sizeof(T)); x += 64)
                        __builtin_prefetch(qa + x, 0, 3), __builtin_prefetch(ka + x, 0, 3);
                    /* and v_t's tile slice (rows H V apart: past a page every few steps) */
                    const char *va = (const char *)(v + (row + SSD_AHEAD * H) * V + j0);
                    for (long x = 0; x < (long)(w * sizeof(T)); x += 64) __builtin_prefetch(va + x, 0, 3);
                }
                VEC vr[2], vt[2], o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};  /* o: even, odd rows */
                NAME(tile_load)(vr, v + row * V + j0, w);
                vt[0] = c[t] * vr[0], vt[1] = c[t] * vr[1];
#define SSD_FWD_ROW(i, oa, ob)                                                          \
    do {                                                                                \
        const VEC s0 = S[2 * (i)] + kt[i] * vt[0], s1 = S[2 * (i) + 1] + kt[i] * vt[1]; \
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
                const T dt = d ? d[row] : 0;  /* the same step's extra term d_t v_t */
                const VEC ot[2] = {e[t] * (o0 + o2) + dt * vr[0], e[t] * (o1 + o3) + dt * vr[1]};
                NAME(tile_store)(o + row * V + j0, ot, w);
            }
            if (m[Tn] != 1)
                for (long i = 0; i < K; i++) S[2 * i] *= m[Tn], S[2 * i + 1] *= m[Tn];
            for (long i = 0; i < K; i++) NAME(tile_store)(ST + (p * K + i) * V + j0, S + 2 * i, w);
        }
    }
#if SSD_STREAM
    _mm_sfence();
#endif
    free(S), free(m), free(c), free(e), free(D), free(ma), free(A);
}

#undef SSD_SPAN
#undef SSD_AHEAD
#undef SSD_STREAM
#include "tile.h"  /* its names undefined for the next type */
#endif
