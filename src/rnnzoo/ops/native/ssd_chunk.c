/* Mamba-2's SSD (ssd_scan.c: S_t = a_t S_{t-1} + k_t v_t^T, a_t = exp(g_t), o_t = S_t^T q_t),
   its backward by chunks of L steps on mm.h's register tiles, from each chunk's start state
   S (Sc: (batch, H, NC, K, V), NC = ceil(T / L), Sc[., 0] = S_0) that ssd_fwd stored. In a
   chunk of n steps, with Gl_t = g_1 + ... + g_t (from the chunk's start), E_ts =
   exp(Gl_t - Gl_s) for s <= t (0 after) and dS the gradient of the chunk's last state (dS_T,
   or what the next chunk passed back), its rows' q, k, v, do stacked as Q, K, V, dO:
       P = dO V^T o E,  A = Q K^T o E                                     (n, n), causal
       dq = diag(e^Gl) dO S^T + P K
       dk = diag(e^(Gl_n - Gl)) V dS^T + P^T Q
       dv = diag(e^(Gl_n - Gl)) K dS + A^T dO
       dS <- e^(Gl_n) dS + Q^T diag(e^Gl) dO       (the gradient of the state before the chunk)
   With ssd_fwd's same-step term o_t += d_t v_t (d not NULL): d_t joins A's diagonal (dv_t +=
   d_t do_t) and dd_t = do_t . v_t is P's diagonal.
   and dS_0 the last of these. P and A are formed in causal row tiles of SSD_TR rows over
   columns [0, the tile's end), the zeros above the diagonal stored but not multiplied; P K,
   P^T Q and A^T dO read only those. Every exp(.) <= 1 for log-decays <= 0. The log-decays'
   gradients (Mamba-2's chunk kernels' identity): S_t's terms carry exp(G_t - G_s) (or
   exp(G_t) S_0) with G_t = g_1 + ... + g_t, so
       dL/dG_t = q_t . dq_t - k_t . dk_t   (+ <dS_T, S_T> at the last step),
       dg_t = the sum of dL/dG_u over u >= t (in double).
   The operands mm.h wants transposed (K^T, V^T, dO^T of a chunk) and the products made
   transposed (dq^T = S dO^T from the stored state as it is; dv^T = dS^T K^T, dS kept as dS^T,
   which dk = V dS^T reads as it is) are copied in 8 x 8 blocks (a strided B packed by mm ran
   at ~1 element a ns: 16% of the kernel).
   Per chunk and step ~4 K V + L (3 K + 2 V) / 2 multiply-adds against the recurrence's 5 K V
   (ssd_bwd before: the forward again on S^T for dq, then dS back with lane sums for dk).

   Layouts (row-major, contiguous) as ssd_scan.c's: q, k (batch, T, G, K); dout, dv
   (batch, T, H, V); v (batch, T, H, V), its (batch, T) rows vr >= H V apart (ssd_fwd's v);
   g, dg, d, dd (batch, T, H; d NULL: none, dd not written); ST, dST, dS0 (batch, H, K, V); dq, dk (batch, T, H, K) per head (the caller sums a group's heads); head
   h reads group h / (H / G). dST may be NULL (no gradient on S_T). The (batch row, head) pairs [p0, p1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ssd_chunk.c"
#include "each_type.h"

#else

#include "mm.h"
#include "transpose.h"

#if defined(__AVX512F__) && !defined(SSD_NT)
#include <immintrin.h>
#define SSD_NT 1
#endif

#define SSD_TR 16

/* n rows of w from src (w apart) to dst (ld apart): the chunk's dq, dk, dv, made in cache,
   written once and read only after the whole kernel (2 x 16.8 + 8.4 MB at mamba3's #17 size),
   by streaming stores where the rows are 64-byte aligned whole lines (no read of each line
   for ownership), else copied. The kernel fences once at its end. */
static inline void NAME(ssd_put)(T *restrict dst, long ld, const T *restrict src, long n, long w) {
#ifdef SSD_NT
    if (((unsigned long)dst & 63) == 0 && (w * sizeof(T)) % 64 == 0 && (ld * sizeof(T)) % 64 == 0) {
        for (long t = 0; t < n; t++)
            for (long i = 0; i < w; i += 64 / sizeof(T))
                if (sizeof(T) == 4)
                    _mm512_stream_ps((float *)(dst + t * ld + i), _mm512_loadu_ps((const float *)(src + t * w + i)));
                else
                    _mm512_stream_pd((double *)(dst + t * ld + i), _mm512_loadu_pd((const double *)(src + t * w + i)));
        return;
    }
#endif
    for (long t = 0; t < n; t++) memcpy(dst + t * ld, src + t * w, w * sizeof(T));
}

static inline void NAME(ssd_mm)(const T *A, const T *B, T *C, long m, long n, long k, long a_rs,
                                long a_cs, long ldb, long b_cs, long ldc, long acc) {
    if (m > 0 && n > 0) NAME(mm)(A, B, C, m, n, k, a_rs, a_cs, ldb, b_cs, ldc, 0, 0, 0, acc, 0, m);
}

/* dst (d, n) = src^T, src n rows of d, ld apart: transpose.h's 8 x 8 blocks of shuffles */
static inline void NAME(ssd_transpose)(T *restrict dst, const T *restrict src, long n, long d,
                                       long ld) {
    NAME(trs)(dst, n, src, ld, n, d);
}

void NAME(ssd_bwd_chunk)(const T *restrict q, const T *restrict k, const T *restrict v,
                         const T *restrict g, const T *restrict d, const T *restrict Sc,
                         const T *restrict ST,
                         const T *restrict dST, const T *restrict dout, T *restrict dq,
                         T *restrict dk, T *restrict dv, T *restrict dg, T *restrict dd,
                         T *restrict dS0,
                         long Tn, long G, long H, long K, long V, long vr, long L, long p0,
                         long p1) {
    const long R = H / G, NC = (Tn + L - 1) / L, qs = G * K, vs = H * V, ks = H * K;
    double *Gl = malloc(L * sizeof(double));
    T *Gf = malloc(L * sizeof(T));
    T *P = malloc(L * L * sizeof(T)), *A = malloc(L * L * sizeof(T));
    T *dOs = malloc(L * V * sizeof(T)), *Kt = malloc(K * L * sizeof(T));
    /* dS kept transposed (V, K): dk = V dS^T reads it as it is, dv^T = dS^T K^T from the K^T
       of the chunk (a (V, n) transpose a chunk, not dS's (K, V) one) */
    T *Vt = malloc(V * L * sizeof(T)), *dSt = malloc(K * V * sizeof(T));
    T *St = malloc(V * L * sizeof(T));  /* dv^T */
    T *dOt = malloc(V * L * sizeof(T)), *dqt = malloc(K * L * sizeof(T));  /* dO^T, dq^T */
    /* the chunk's dq, dk (n, K) and dv (n, V), rows K and V apart, put out at its end */
    T *dqc = malloc(L * K * sizeof(T)), *dkc = malloc(L * K * sizeof(T));
    T *dvc = malloc(L * V * sizeof(T));
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H, gi = h / R;
        double last = 0;  /* <dS_T, S_T> */
        if (dST) {
            NAME(ssd_transpose)(dSt, dST + p * K * V, K, V, V);
            for (long e = 0; e < K * V; e++) last += (double)dST[p * K * V + e] * ST[p * K * V + e];
        } else
            memset(dSt, 0, K * V * sizeof(T));
        double acc = last;  /* dg's running sum, from the last step back */
        for (long c = NC - 1; c >= 0; c--) {
            const long t0 = c * L, n = Tn - t0 < L ? Tn - t0 : L;
            const T *qc = q + ((b * Tn + t0) * G + gi) * K, *kc = k + ((b * Tn + t0) * G + gi) * K;
            const T *vc = v + (b * Tn + t0) * vr + h * V, *oc = dout + ((b * Tn + t0) * H + h) * V;
            const long row0 = (b * Tn + t0) * H + h;  /* the chunk's first (batch, T, H) row */
            const T *gc = g + row0;
            if (c > 0) {  /* the previous chunk's start state and rows into L2 while this one
                             runs (the chunks go backwards, so the hardware does not see the
                             stream: its reads were ~40% of the kernel's own time) */
                const long u0 = t0 - L;
                const char *sp = (const char *)(Sc + (p * NC + c - 1) * K * V);
                for (long x = 0; x < (long)(K * V * sizeof(T)); x += 64) __builtin_prefetch(sp + x, 0, 2);
                for (long t = 0; t < L; t++) {
                    const char *qr = (const char *)(q + ((b * Tn + u0 + t) * G + gi) * K);
                    const char *kr = (const char *)(k + ((b * Tn + u0 + t) * G + gi) * K);
                    const char *vrow = (const char *)(v + (b * Tn + u0 + t) * vr + h * V);
                    const char *orr = (const char *)(dout + ((b * Tn + u0 + t) * H + h) * V);
                    for (long x = 0; x < (long)(K * sizeof(T)); x += 64)
                        __builtin_prefetch(qr + x, 0, 2), __builtin_prefetch(kr + x, 0, 2);
                    for (long x = 0; x < (long)(V * sizeof(T)); x += 64)
                        __builtin_prefetch(vrow + x, 0, 2), __builtin_prefetch(orr + x, 0, 2);
                }
            }
            double run = 0;
            for (long t = 0; t < n; t++) Gf[t] = (T)(Gl[t] = run += gc[t * H]);
            for (long t = 0; t < n; t++) {
                const T e = EXP((T)Gl[t]);
#pragma omp simd
                for (long j = 0; j < V; j++) dOs[t * V + j] = e * oc[t * vs + j];
            }
            NAME(ssd_transpose)(Kt, kc, n, K, qs);
            NAME(ssd_transpose)(Vt, vc, n, V, vr);
            /* the start state's and the last state's gradient's terms; dq^T = S dO^T from
               the stored state as it is (dO^T and dq^T transposed: V n + K n elements
               against S^T's K V) */
            NAME(ssd_transpose)(dOt, dOs, n, V, V);
            NAME(ssd_mm)(Sc + (p * NC + c) * K * V, dOt, dqt, K, n, V, V, 1, n, 1, n, 0);
            NAME(trs)(dqc, K, dqt, n, K, n);
            NAME(ssd_mm)(vc, dSt, dkc, n, K, V, vr, 1, K, 1, K, 0);
            NAME(ssd_mm)(dSt, Kt, St, V, n, K, K, 1, n, 1, n, 0);  /* dv^T */
            NAME(trs)(dvc, V, St, n, V, n);
            for (long t = 0; t < n; t++) {
                const T w = EXP((T)(Gl[n - 1] - Gl[t]));
#pragma omp simd
                for (long i = 0; i < K; i++) dkc[t * K + i] *= w;
#pragma omp simd
                for (long j = 0; j < V; j++) dvc[t * V + j] *= w;
            }
            const T an = EXP((T)Gl[n - 1]);
#pragma omp simd
            for (long e = 0; e < K * V; e++) dSt[e] *= an;
            NAME(ssd_mm)(dOs, qc, dSt, V, K, n, 1, V, qs, 1, K, 1);
            /* the causal tiles of P and A */
            for (long i0 = 0; i0 < n; i0 += SSD_TR) {
                const long i1 = i0 + SSD_TR < n ? i0 + SSD_TR : n;
                NAME(ssd_mm)(oc + i0 * vs, Vt, P + i0 * n, i1 - i0, i1, V, vs, 1, n, 1, n, 0);
                NAME(ssd_mm)(qc + i0 * qs, Kt, A + i0 * n, i1 - i0, i1, K, qs, 1, n, 1, n, 0);
                for (long t = i0; t < i1; t++) {
                    T *restrict pr = P + t * n, *restrict ar = A + t * n;
                    const T gt = Gf[t];
#pragma omp simd
                    for (long s = 0; s <= t; s++) {
                        const T e = EXP(gt - Gf[s]);
                        pr[s] *= e;
                        ar[s] *= e;
                    }
                    for (long s = t + 1; s < i1; s++) pr[s] = ar[s] = 0;
                    if (d) {  /* o_t's d_t v_t: A's diagonal, dd_t = do_t . v_t = P_tt */
                        ar[t] += d[row0 + t * H];
                        dd[row0 + t * H] = pr[t];
                    }
                }
            }
            for (long i0 = 0; i0 < n; i0 += SSD_TR) {
                const long i1 = i0 + SSD_TR < n ? i0 + SSD_TR : n, m = i1 - i0;
                NAME(ssd_mm)(P + i0 * n, kc, dqc + i0 * K, m, K, i1, n, 1, qs, 1, K, 1);
                NAME(ssd_mm)(P + i0 * n + i0, qc + i0 * qs, dkc + i0 * K, m, K, n - i0, 1, n, qs,
                             1, K, 1);
                NAME(ssd_mm)(A + i0 * n + i0, oc + i0 * vs, dvc + i0 * V, m, V, n - i0, 1, n, vs,
                             1, V, 1);
            }
            /* dg_t: the dL/dG_u for u >= t, from the chunk's final dq, dk while they are in
               cache (a pass over the whole row after the chunks read q, k, dq, dk again from
               memory: ~14% of the kernel's own time) */
            for (long t = n - 1; t >= 0; t--) {
                const T *restrict qt = qc + t * qs, *restrict kt = kc + t * qs;
                const T *restrict dqt = dqc + t * K, *restrict dkt = dkc + t * K;
                T s = 0;
#pragma omp simd reduction(+:s)
                for (long i = 0; i < K; i++) s += qt[i] * dqt[i] - kt[i] * dkt[i];
                acc += s;
                dg[row0 + t * H] = (T)acc;
            }
            NAME(ssd_put)(dq + row0 * K, ks, dqc, n, K);
            NAME(ssd_put)(dk + row0 * K, ks, dkc, n, K);
            NAME(ssd_put)(dv + row0 * V, vs, dvc, n, V);
        }
        NAME(ssd_transpose)(dS0 + p * K * V, dSt, V, K, K);
    }
    free(Gl), free(Gf), free(P), free(A), free(dOs), free(Kt), free(Vt), free(dSt), free(St);
    free(dOt), free(dqt), free(dqc), free(dkc), free(dvc);
#ifdef SSD_NT
    _mm_sfence();  /* the streaming stores seen before the caller's threads join */
#endif
}
#undef SSD_TR
#endif
