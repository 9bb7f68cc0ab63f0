/* Scalar-decay linear attention with q, k shared by groups of heads (Mamba-2's SSD), its
   forward as the recurrence, one (batch row, head) pair at a time:

       S_t = a_t S_{t-1} + k_t v_t^T,   a_t = exp(g_t),   o_t = S_t^T q_t + d_t v_t   S: (K, V)

   (d_t: an optional same-step weight, mamba3's correction of its key's next-step term)

   Every column of S evolves on its own (o_t's column j reads S's column j only), so each
   pair runs in tiles of VT columns (two vectors of T, tile.h), SSD_BLOCK steps through
   every tile in turn (the block's q, k rows read from memory once): the
   tile of S (K x VT) stays in L1, v_t's and o_t's slices in registers, each state row one
   load, one store and two fused multiply-adds a step (one load and one store for up to
   SSD_STEPS steps in a row: ssd_steps): the tile holds S_t e^(-D_t), D_t the
   log-decays summed since it was last exact, so a step adds k_t (e^(-D_t) v_t) without
   scaling the tile and o_t = e^(D_t) (S_t e^(-D_t))^T q_t (three vector operations a row
   before, the decay's product among them: mamba3's K = 128 forward 25 -> ~19 ms). The tile is
   made exact (times e^D) where a chunk's start state is stored and at the end, and a step
   whose D would pass -SSD_SPAN (or is not finite) runs the exact a_t S + k_t v_t instead. With Sc (not NULL) it also stores
   the state before every L-th step, S_0 first (Sc: (batch, H, ceil(T / L), K, V)), from
   which ssd_chunk.c's ssd_bwd_chunk runs the backward by chunks.

   Layouts (row-major, contiguous): q, k (batch, T, G, K); o (batch, T, H, V); v (batch, T, H,
   V) with its (batch, T) rows vr >= H V apart (vr = H V: contiguous; more: a slice of a wider
   row, mamba3's x read in place from in_proj's output);
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
#define SSD_STEPS 3
#define SSD_BLOCK 32

/* ns (1 .. SSD_STEPS, a constant where inlined) steps on the tile S (K rows of two vectors),
   from step rows q0, k0 (qs apart), v0 (the tile's slice, vrs apart), o0 (vs apart), d0 (ds apart; NULL:
   none), c, e (the steps' scales): row i of step u: S += k_u[i] (c_u v_u), then o_u +=
   q_u[i] S (acc[u]: the even rows' halves in 0, 1, the odd rows' in 2, 3), o_u = e_u o_u +
   d_u v_u; each state row loaded and stored once for the ns steps. One step a pass was bound
   by the row's stores as much as by its multiply-adds (mamba3's K = 128 forward alone 0.71x
   with 3 steps; 4 steps' 16 accumulators spill: slower than 3) */
static inline __attribute__((always_inline)) void NAME(ssd_steps)(
        VEC *restrict S, long K, const T *restrict q0, const T *restrict k0, long qs,
        const T *restrict v0, long vrs, T *restrict o0, long vs, const T *restrict d0, long ds,
        const T *restrict c, const T *restrict e, long w, const int ns) {
    VEC vr[SSD_STEPS][2], vt[SSD_STEPS][2], acc[SSD_STEPS][4];
#pragma GCC unroll 8
    for (int u = 0; u < ns; u++) {
        NAME(tile_load)(vr[u], v0 + u * vrs, w);
        vt[u][0] = c[u] * vr[u][0], vt[u][1] = c[u] * vr[u][1];
        acc[u][0] = acc[u][1] = acc[u][2] = acc[u][3] = (VEC){0};
    }
#define SSD_ROW(i, a0, a1)                                                             \
    do {                                                                               \
        VEC s0 = S[2 * (i)], s1 = S[2 * (i) + 1];                                      \
        _Pragma("GCC unroll 8") for (int u = 0; u < ns; u++) {                         \
            const T kk = k0[u * qs + (i)], qq = q0[u * qs + (i)];                      \
            s0 = s0 + kk * vt[u][0], s1 = s1 + kk * vt[u][1];                          \
            acc[u][a0] += qq * s0;                                                     \
            acc[u][a1] += qq * s1;                                                     \
        }                                                                              \
        S[2 * (i)] = s0, S[2 * (i) + 1] = s1;                                          \
    } while (0)
    long i = 0;
    for (; i + 2 <= K; i += 2) {  /* two chains of adds per half of o, not one */
        SSD_ROW(i, 0, 1);
        SSD_ROW(i + 1, 2, 3);
    }
    if (i < K) SSD_ROW(i, 0, 1);
#undef SSD_ROW
#pragma GCC unroll 8
    for (int u = 0; u < ns; u++) {
        const T du = d0 ? d0[u * ds] : 0;  /* the same step's extra term d_t v_t */
        const VEC ot[2] = {e[u] * (acc[u][0] + acc[u][2]) + du * vr[u][0],
                           e[u] * (acc[u][1] + acc[u][3]) + du * vr[u][1]};
        NAME(tile_store)(o0 + u * vs, ot, w);
    }
}

void NAME(ssd_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict g, const T *restrict d, const T *restrict S0,
                   T *restrict o, T *restrict ST, T *restrict Sc, long L, long Tn, long G, long H, long K, long V, long vr,
                   long p0, long p1) {
    const long R = H / G, NC = L > 0 ? (Tn + L - 1) / L : 0;
    /* the pair's state, every tile of it (a tile: K rows of two vectors) */
    VEC *S = aligned_alloc(TILE_BYTES, 2 * K * ((V + VT - 1) / VT) * sizeof(VEC));
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
            VEC *St = S + 2 * K * (j0 / VT);
            const long w = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) NAME(tile_load)(St + 2 * i, S0 + (p * K + i) * V + j0, w);
        }
        /* blocks of SSD_BLOCK steps, each through every tile in turn: the block's q and k
           rows come from memory for the first tile and from cache for the others (a pass of
           all T steps a tile read a pair's 2 x 256 KB of them from L3 or memory again per
           tile) */
        for (long tb = 0; tb < Tn; tb += SSD_BLOCK) {
            const long te = Tn - tb < SSD_BLOCK ? Tn : tb + SSD_BLOCK;
            for (long j0 = 0; j0 < V; j0 += VT) {
                VEC *St = S + 2 * K * (j0 / VT);
                const long w = V - j0 < VT ? V - j0 : VT;
                for (long t = tb; t < te;) {
                    const long row = (b * Tn + t) * H + h;
                    if (m[t] != 1)
                        for (long i = 0; i < K; i++) St[2 * i] *= m[t], St[2 * i + 1] *= m[t];
                    if (Sc && t % L == 0)  /* the chunk's start state, for ssd_bwd_chunk */
                        for (long i = 0; i < K; i++) {
                            T *dst = Sc + ((p * NC + t / L) * K + i) * V + j0;
#if SSD_STREAM
                            if (sizeof(T) == 4 && w == VT && (uintptr_t)dst % 64 == 0) {
                                /* streamed past the cache: the backward reads it much later */
                                _mm512_stream_ps((float *)dst, (__m512)St[2 * i]);
                                _mm512_stream_ps((float *)(dst + NV), (__m512)St[2 * i + 1]);
                            } else
#endif
                                NAME(tile_store)(dst, St + 2 * i, w);
                        }
                    if (ma[t] != 1)
                        for (long i = 0; i < K; i++) St[2 * i] *= ma[t], St[2 * i + 1] *= ma[t];
                    /* steps t .. t + ns - 1 in one pass over the tile where the later ones
                       have nothing of their own before them (no scaling, no stored state); the
                       same operations in the same order as step by step (equal outputs) */
                    int ns = 1;
                    while (ns < SSD_STEPS && t + ns < te && m[t + ns] == 1  /* ma: at starts only */
                           && !(Sc && (t + ns) % L == 0))
                        ns++;
                    /* later steps' q, k rows (G K apart) into L1 for the block's first tile:
                       mamba3's are per head (two 16.8 MB tensors) and ssd_fwd there was bound
                       by their reads */
                    for (long u = t + SSD_AHEAD; u < t + SSD_AHEAD + ns && u < Tn; u++) {
                        if (j0 == 0) {
                            const char *qa = (const char *)(q + ((b * Tn + u) * G + gi) * K);
                            const char *ka = (const char *)(k + ((b * Tn + u) * G + gi) * K);
                            for (long x = 0; x < (long)(K * sizeof(T)); x += 64)
                                __builtin_prefetch(qa + x, 0, 3), __builtin_prefetch(ka + x, 0, 3);
                        }
                        /* and v_t's tile slice (rows H V apart: past a page every few steps) */
                        const char *va = (const char *)(v + (b * Tn + u) * vr + h * V + j0);
                        for (long x = 0; x < (long)(w * sizeof(T)); x += 64) __builtin_prefetch(va + x, 0, 3);
                    }
                    const T *qt = q + ((b * Tn + t) * G + gi) * K, *kt = k + ((b * Tn + t) * G + gi) * K;
                    const T *dt = d ? d + row : NULL;
#define SSD_RUN(ns) NAME(ssd_steps)(St, K, qt, kt, G * K, v + (b * Tn + t) * vr + h * V + j0, \
                                    vr, o + row * V + j0, H * V, dt, H, c + t, e + t, w, ns)
                    if (ns == SSD_STEPS) SSD_RUN(SSD_STEPS);
                    else if (ns == 2) SSD_RUN(2);
                    else SSD_RUN(1);
#undef SSD_RUN
                    t += ns;
                }
            }
        }
        for (long j0 = 0; j0 < V; j0 += VT) {
            VEC *St = S + 2 * K * (j0 / VT);
            const long w = V - j0 < VT ? V - j0 : VT;
            if (m[Tn] != 1)
                for (long i = 0; i < K; i++) St[2 * i] *= m[Tn], St[2 * i + 1] *= m[Tn];
            for (long i = 0; i < K; i++) NAME(tile_store)(ST + (p * K + i) * V + j0, St + 2 * i, w);
        }
    }
#if SSD_STREAM
    _mm_sfence();
#endif
    free(S), free(m), free(c), free(e), free(D), free(ma), free(A);
}

#undef SSD_SPAN
#undef SSD_AHEAD
#undef SSD_STEPS
#undef SSD_BLOCK
#undef SSD_STREAM
#include "tile.h"  /* its names undefined for the next type */
#endif
