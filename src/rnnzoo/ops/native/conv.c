/* The causal depthwise short convolution of layers/conv.py (ShortConv), with its SiLU,
   fused, forward and backward.

       s_t = bias + sum_{k<K} w[k] * xp_{t+k},   y_t = silu(s_t) (or s_t)
       xp = [state (K - 1 rows); x (T rows)],    per channel c (the contiguous last dim)
   Backward, with g_t = dy_t silu'(s_t) (s_t recomputed: K multiply-adds per element):
       dxp_{t+k} += w[k] g_t,   dw[k] += g_t xp_{t+k},   dbias += g_t
   run forwards in t: row t of dx first receives from g_t (k = K - 1), so it is set then
   and added to by the next K - 1 steps, while it is still in cache; the state's rows get
   the contributions that land before x.

   conv_l2_fwd / conv_l2_bwd also L2-normalise the first nn groups of G channels of each
   output row after the SiLU (the delta layers' q and k heads), r (batch, T, nn) holding the
   factors; through a norm n = y r the backward takes r (dn - n (n . dn)).

   conv_l2_fwd3 / conv_l2_bwd3 take y (and dy) as three contiguous pieces of its channels,
   widths w0, w1 and C - w0 - w1 (the delta layers' q, k and v: no split copies before their
   recurrences and no cat of the pieces' gradients after). The forward writes each piece of a
   row in one pass (pre-activation and SiLU: two loops a run of SILU_RUN channels, pre_act),
   then its norms, where no piece boundary falls
   inside a norm group (the delta layers: whole heads; C = 896, B=16 T=512, 1 thread, with
   the streaming below: 13.3 -> 10.0 ms), else the row through a scratch row; the backward
   reads dy's pieces in place there too, else through a scratch row.

   Every SiLU (forward, and silu / silu' backward) takes a run of SILU_RUN channels in two
   loops: the pre-activation s and 1 + exp(-s) into a scratch run, then the division and what
   follows it (pre_exp). In one loop a vector's chain of dependent operations (the K taps,
   exp's polynomial, the division waiting on it: ~80 cycles) let a Zen 3 core hold only ~3
   vectors in flight; split, each loop runs at its throughput. The call alone (C = 896, B=16
   T=512, 1 thread, 11-15 alternated pairs): forward 16.2 -> 11.4 ms (0.71; 0.69 without
   norms), fwd+bwd 44.6 -> 33.6 ms (0.77; 0.87 without norms); same arithmetic (the forward
   bitwise equal, the backward within the rounding of where the compiler contracts an FMA).

   A call whose rows hold >= STREAM_MIN bytes writes y (forward) and dx (backward) with
   streaming stores through a scratch row (no read of the lines first; the next op finds
   them in memory either way). A missing bias is a row of zeros: `bias ? bias[c] : 0` in a
   vector loop became a masked load from NULL, completed by a slow assist (conv_bwd without
   a bias, C = 896: 40 -> 15 ms; lattice's 16.8 -> 6.2 ms).

   Layouts (row-major, contiguous): x, y, dy, dx (batch, T, C); w (K, C) = weight
   transposed; bias (C) or NULL; state, dstate (batch, K - 1, C); dw (batch, K, C) and
   dbias (batch, C): one slice per batch row, summed by the caller.
   Each function does the batch rows [b0, b1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "conv.c"
#include "each_type.h"

#else

/* row r of xp = [state; x] for batch row b */
static inline const T *NAME(xp_row)(const T *x, const T *st, long b, long r, long Tn, long C,
                                    long K) {
    return r < K - 1 ? st + (b * (K - 1) + r) * C : x + (b * Tn + r - (K - 1)) * C;
}

#if defined(__AVX__) && !defined(CONV_NO_STREAM)
#include <immintrin.h>
#define CONV_STREAM 1
#endif

/* whether a call's outputs go past the caches (streaming stores, no read of the lines
   first): its rows [b0, b1) hold at least STREAM_MIN bytes of y (or dx), more than the
   caches keep for the next op (C = 896: the delta layers' q, k, v, 29 MB at B=16 T=512) */
#define STREAM_MIN (8L << 20)
static inline int NAME(streamed)(long rows, long C) {
    return rows * C * (long)sizeof(T) >= STREAM_MIN;
}

/* dst[0 .. n) <- src[0 .. n): with streaming stores where nt is set, dst 32-byte aligned and
   n T's a whole number of 32-byte vectors, else memcpy */
static inline void NAME(put_row)(T *restrict dst, const T *restrict src, long n, int nt) {
#ifdef CONV_STREAM
    if (nt && ((unsigned long)dst & 31) == 0 && (n * (long)sizeof(T)) % 32 == 0) {
        for (long j = 0; j < n * (long)sizeof(T) / 32; j++)
            _mm256_stream_si256((__m256i *)dst + j, _mm256_loadu_si256((const __m256i *)src + j));
        return;
    }
#endif
    (void)nt;
    memcpy(dst, src, n * sizeof(T));
}

static inline void NAME(stream_done)(int nt) {
#ifdef CONV_STREAM
    if (nt) _mm_sfence();  /* the streaming stores seen before the caller's threads join */
#endif
    (void)nt;
}

/* the L2 norm of the first nn groups of G channels of a row y (the delta layers' q and k
   heads after their conv and SiLU): y <- y r, r = 1 / max(|y|, 1e-6) (sqrt_eps: 1 / sqrt(|y|^2
   + 1e-6)), r stored negated where the floor holds it constant */
static inline void NAME(l2_rows)(T *restrict y, T *restrict r, long nn, long G, int sqrt_eps) {
    for (long gi = 0; gi < nn; gi++) {
        T *restrict yg = y + gi * G, ss = 0;
#pragma omp simd reduction(+ : ss)
        for (long j = 0; j < G; j++) ss += yg[j] * yg[j];
        const int floor = !sqrt_eps && ss <= (T)1e-12;
        const T rr = sqrt_eps ? 1 / SQRT(ss + (T)1e-6) : 1 / SQRT(floor ? (T)1e-12 : ss);
        for (long j = 0; j < G; j++) yg[j] *= rr;
        r[gi] = floor ? -rr : rr;
    }
}

/* y's pieces: y[i] (batch, T, wd[i]) holds channels [wd[0] + .. + wd[i-1], + wd[i]) */
static inline void NAME(put)(T *const *y, const long *wd, long row, const T *src, int nt) {
    for (int i = 0; i < 3 && wd[i]; src += wd[i], i++)
        NAME(put_row)(y[i] + row * wd[i], src, wd[i], nt);
}

static inline void NAME(get)(T *dst, const T *const *y, const long *wd, long row) {
    for (int i = 0; i < 3 && wd[i]; dst += wd[i], i++)
        memcpy(dst, y[i] + row * wd[i], wd[i] * sizeof(T));
}

/* whether the backward reads dy's pieces in place (no row copy through a scratch row): no
   boundary between two pieces inside a norm group (always so for the delta layers, whose
   pieces are whole heads) */
static inline int NAME(in_place)(const long *wd, long nn, long G) {
    for (long i = 0, off = 0; i < 2 && wd[i]; i++) {
        off += wd[i];
        if (off < nn * G && off % G) return 0;
    }
    return 1;
}

/* the channels a silu pass takes at a time: its exp's in one loop, its divisions in the next */
#define SILU_RUN 64

/* the pre-activation v = bias + sum_k w[k] xr[k] of channels [c, c + m) into o[0 .. m) and
   1 + exp(-v) into e[0 .. m), m <= SILU_RUN: the first of a SiLU's two loops (pre_act) */
static inline __attribute__((always_inline)) void NAME(pre_exp)(
    T *restrict o, T *restrict e, const T *const *xr, const T *restrict w,
    const T *restrict bias, long c, long m, long C, const long K) {
#pragma GCC ivdep
    for (long j = 0; j < m; j++) {
        T v = bias[c + j];
        for (long k = 0; k < K; k++) v += w[k * C + c + j] * xr[k][c + j];
        o[j] = v;
        e[j] = 1 + EXP(-v);
    }
}

/* act(bias + sum_k w[k] xr[k]) of channels [c, c + n) into o (n T's); bias never NULL (a
   row of zeros instead: `bias ? bias[c] : 0` became a masked load from NULL, which the CPU
   completes by a slow fault-suppressing assist, the call 2-4x slower). The SiLU's
   1 + exp(-v) goes to a scratch run of SILU_RUN channels and its division to a second loop:
   in one loop each vector's chain (the taps, exp's polynomial, the division that waits for
   it: ~80 cycles) left only ~3 vectors in flight (C = 896, one batch row, a Zen 3 core: 1.7
   -> 0.9 ns an element; the same arithmetic, bitwise equal). */
static inline __attribute__((always_inline)) void NAME(pre_act)(
    T *restrict o, const T *const *xr, const T *restrict w, const T *restrict bias, long c,
    long n, long C, const long K, int silu) {
    if (!silu) {
#pragma GCC ivdep
        for (long j = 0; j < n; j++) {
            T v = bias[c + j];
            for (long k = 0; k < K; k++) v += w[k * C + c + j] * xr[k][c + j];
            o[j] = v;
        }
        return;
    }
    T e[SILU_RUN] __attribute__((aligned(64)));
    for (long j0 = 0; j0 < n; j0 += SILU_RUN) {
        const long m = n - j0 < SILU_RUN ? n - j0 : SILU_RUN;
        NAME(pre_exp)(o + j0, e, xr, w, bias, c + j0, m, C, K);
#pragma GCC ivdep
        for (long j = 0; j < m; j++) o[j0 + j] *= 1 / e[j];
    }
}

/* bias, or a row of C zeros (*zb, for the caller to free) where it is NULL */
static inline const T *NAME(bias_row)(const T *bias, long C, T **zb) {
    *zb = bias ? NULL : calloc(C, sizeof(T));
    return bias ? bias : *zb;
}

/* The forward of batch rows [b0, b1), a row a piece at a time: the pre-activation and SiLU in
   one pass (pre_act), the norms of its groups, written to the piece directly, or through a
   scratch row where the call streams (put_row); where a piece boundary falls inside a norm
   group the whole row through the scratch row (then put). */
static inline __attribute__((always_inline)) void NAME(fwd_body)(
    const T *x, const T *w, const T *bias, const T *st, T *const *y, const long *wd, T *r,
    long Tn, long C, const long K, int silu, long nn, long G, int sqrt_eps, long b0, long b1) {
    const int nt = NAME(streamed)((b1 - b0) * Tn, C), blocks = NAME(in_place)(wd, nn, G);
    T *s = aligned_alloc(64, (C * sizeof(T) + 63) / 64 * 64), *zb;
    const T *xr[K], *bb = NAME(bias_row)(bias, C, &zb);
    for (long b = b0; b < b1; b++)
        for (long t = 0; t < Tn; t++) {
            const long row = b * Tn + t;
            for (long k = 0; k < K; k++) xr[k] = NAME(xp_row)(x, st, b, t + k, Tn, C, K);
            if (!blocks) {
                NAME(pre_act)(s, xr, w, bb, 0, C, C, K, silu);
                if (nn) NAME(l2_rows)(s, r + row * nn, nn, G, sqrt_eps);
                NAME(put)(y, wd, row, s, nt);
                continue;
            }
            for (long i = 0, off = 0; i < 3 && wd[i]; off += wd[i], i++) {  /* piece i */
                const long n = wd[i], ng = off + n < nn * G ? n / G : off < nn * G ? nn - off / G : 0;
                T *restrict dst = y[i] + row * n, *restrict o = nt ? s : dst;
                NAME(pre_act)(o, xr, w, bb, off, n, C, K, silu);
                if (ng) NAME(l2_rows)(o, r + row * nn + off / G, ng, G, sqrt_eps);
                if (nt) NAME(put_row)(dst, o, n, 1);
            }
        }
    NAME(stream_done)(nt);
    free(s);
    free(zb);
}

static void NAME(fwd_rows)(const T *x, const T *w, const T *bias, const T *st, T *const *y,
                           const long *wd, T *r, long Tn, long C, long K, int silu, long nn,
                           long G, int sqrt_eps, long b0, long b1) {
#define FWD(KC) NAME(fwd_body)(x, w, bias, st, y, wd, r, Tn, C, KC, silu, nn, G, sqrt_eps, b0, b1)
    if (K == 4) FWD(4);  /* the loops over k unrolled for every layer's default width (one
                            specialisation: each costs ~2 s of compile) */
    else FWD(K);
#undef FWD
}

void NAME(conv_fwd)(const T *x, const T *w, const T *bias, const T *st, T *y, long Tn, long C,
                    long K, int silu, long b0, long b1) {
    T *ys[3] = {y, NULL, NULL};
    const long wd[3] = {C, 0, 0};
    NAME(fwd_rows)(x, w, bias, st, ys, wd, NULL, Tn, C, K, silu, 0, 1, 0, b0, b1);
}

/* conv_fwd, then the L2 norm of the first nn groups of G channels of each row (l2_rows);
   r (batch, T, nn) keeps the norms' factors for the backward */
void NAME(conv_l2_fwd)(const T *x, const T *w, const T *bias, const T *st, T *y, T *r,
                       long Tn, long C, long K, int silu, long nn, long G, int sqrt_eps,
                       long b0, long b1) {
    T *ys[3] = {y, NULL, NULL};
    const long wd[3] = {C, 0, 0};
    NAME(fwd_rows)(x, w, bias, st, ys, wd, r, Tn, C, K, silu, nn, G, sqrt_eps, b0, b1);
}

/* conv_l2_fwd into the three pieces y0, y1, y2 of widths w0, w1, C - w0 - w1 */
void NAME(conv_l2_fwd3)(const T *x, const T *w, const T *bias, const T *st, T *y0, T *y1,
                        T *y2, T *r, long Tn, long C, long K, int silu, long nn, long G,
                        int sqrt_eps, long w0, long w1, long b0, long b1) {
    T *ys[3] = {y0, y1, y2};
    const long wd[3] = {w0, w1, C - w0 - w1};
    NAME(fwd_rows)(x, w, bias, st, ys, wd, r, Tn, C, K, silu, nn, G, sqrt_eps, b0, b1);
}

/* through a norm group's factor rs (r, negated on the floor): g <- g r (dy - n (n . dy)),
   n = s r (g r dy alone on the floor) */
static inline void NAME(norm_grad)(T *restrict g, const T *restrict s, const T *restrict dy,
                                   T rs, long G) {
    const T rr = rs < 0 ? -rs : rs;
    T dot = 0;
    if (rs > 0)
#pragma omp simd reduction(+ : dot)
        for (long j = 0; j < G; j++) dot += s[j] * dy[j];
    dot *= rr * rr;
    for (long j = 0; j < G; j++) g[j] *= rr * (dy[j] - s[j] * dot);
}

/* the backward of batch rows [b0, b1), K a constant where bwd_rows dispatches it (the loops
   over k unrolled: one pass over a row for the pre-activation and SiLU (two loops a run of
   SILU_RUN channels, pre_exp), one for dbias and
   dw, one for dx). g_t goes to a ring of its last K + 1 rows, from which row t of dxp is
   gathered whole, dxp_t = sum_k w[k] g_{t-k} (g = 0 outside [0, T)): one store an element
   where the scatter form added into K rows. Without norms (dy whole) the pre-activation,
   silu' and dy's product are one pass over a row (the call alone, B=16 T=512, 1 thread:
   C = 384 8.3 -> 6.4 ms, C = 896 18.3 -> 13.3), dy's pieces read in place (mamba2's x, B,
   C: C = 384 in pieces 256 / 64 / 64 8.2-8.7 -> 7.6-7.7 ms, as fast as whole). dbias, dw and dxp take two steps a pass (odd t:
   steps t - 1 and t), which loads and stores dw's rows and loads w's once for two steps
   (C = 896, B=16 T=512: the backward 22.0 -> 19.7 ms with dw's pairs alone). */
static inline __attribute__((always_inline)) void NAME(bwd_body)(
    const T *x, const T *w, const T *bias, const T *st, const T *const *dy, const long *wd,
    const T *r, T *dx, T *dst, T *dw, T *db, long Tn, long C, const long K, int silu, long nn,
    long G, long b0, long b1) {
    const int direct = NAME(in_place)(wd, nn, G);
    const int fused = !nn;  /* no norm: no s row, no pass for dy (its pieces read in place) */
    const long R = K + 1, tn = Tn + K - 1;  /* the ring's rows; dxp's rows */
    T *ring = malloc(R * C * sizeof(T)), *s = malloc(C * sizeof(T));
    T *dyrow = direct ? NULL : malloc(C * sizeof(T));
    const int nt = NAME(streamed)((b1 - b0) * Tn, C);  /* dx's rows through xs, streamed */
    T *xs = nt ? aligned_alloc(64, (2 * C * sizeof(T) + 63) / 64 * 64) : NULL, *zb;
    const T *bb = NAME(bias_row)(bias, C, &zb);
    const T *xr[K], *wk[K], *gk[K + 1];
    T *dwk[K], ex[SILU_RUN] __attribute__((aligned(64)));  /* a run's 1 + exp(-s) */
    for (long k = 0; k < K; k++) wk[k] = w + k * C;
    for (long b = b0; b < b1; b++) {
        T *restrict dbb = db + b * C;
        memset(dw + b * K * C, 0, K * C * sizeof(T));
        memset(dbb, 0, C * sizeof(T));
        memset(ring, 0, R * C * sizeof(T));
        for (long k = 0; k < K; k++) dwk[k] = dw + (b * K + k) * C;
        for (long t = 0; t < tn; t++) {
            T *restrict g = ring + t % R * C;
            if (t < Tn) {
                const long row = b * Tn + t;
                for (long k = 0; k < K; k++) xr[k] = NAME(xp_row)(x, st, b, t + k, Tn, C, K);
                if (fused)  /* g = dy silu'(s) (or dy) in one pass over each piece of dy */
                    for (long i = 0, off = 0; i < 3 && wd[i]; off += wd[i], i++) {
                        const T *restrict dp = dy[i] + row * wd[i];
                        const long e = off + wd[i];
                        if (silu)
                            for (long c0 = off; c0 < e; c0 += SILU_RUN) {
                                const long m = e - c0 < SILU_RUN ? e - c0 : SILU_RUN;
                                NAME(pre_exp)(g + c0, ex, xr, w, bb, c0, m, C, K);  /* g: s */
#pragma GCC ivdep
                                for (long c = c0; c < c0 + m; c++) {
                                    const T sc = g[c], sg = 1 / ex[c - c0];
                                    g[c] = dp[c - off] * sg * (1 + sc * (1 - sg));
                                }
                            }
                        else
                            memcpy(g + off, dp, wd[i] * sizeof(T));
                    }
                else if (silu) {  /* the pre-activation, silu' and silu in one pass (the
                    channels past the norms, dy in place: g = silu' dy there, no s) */
                    const long e0 = direct ? nn * G : C;
                    for (long c0 = 0; c0 < e0; c0 += SILU_RUN) {
                        const long m = e0 - c0 < SILU_RUN ? e0 - c0 : SILU_RUN;
                        NAME(pre_exp)(s + c0, ex, xr, w, bb, c0, m, C, K);
#pragma GCC ivdep
                        for (long c = c0; c < c0 + m; c++) {
                            const T sc = s[c], sg = 1 / ex[c - c0];
                            g[c] = sg * (1 + sc * (1 - sg));  /* silu' */
                            s[c] = sc * sg;                   /* silu */
                        }
                    }
                    if (direct)
                        for (long i = 0, off = 0; i < 3 && wd[i]; off += wd[i], i++) {
                            const T *restrict dp = dy[i] + row * wd[i];
                            const long e = off + wd[i];
                            for (long c0 = off > e0 ? off : e0; c0 < e; c0 += SILU_RUN) {
                                const long m = e - c0 < SILU_RUN ? e - c0 : SILU_RUN;
                                NAME(pre_exp)(g + c0, ex, xr, w, bb, c0, m, C, K);  /* g: s */
#pragma GCC ivdep
                                for (long c = c0; c < c0 + m; c++) {
                                    const T sc = g[c], sg = 1 / ex[c - c0];
                                    g[c] = sg * (1 + sc * (1 - sg)) * dp[c - off];
                                }
                            }
                        }
                } else if (nn) {
#pragma GCC ivdep
                    for (long c = 0; c < C; c++) {
                        T sc = bb[c];
                        for (long k = 0; k < K; k++) sc += wk[k][c] * xr[k][c];
                        s[c] = sc;
                        g[c] = 1;
                    }
                } else {
                    for (long c = 0; c < C; c++) g[c] = 1;
                }
                if (fused) {
                } else if (direct) {  /* dy read in place, piece by piece */
                    for (long i = 0, off = 0; i < 3 && wd[i]; off += wd[i], i++) {
                        const T *restrict dp = dy[i] + row * wd[i];
                        const long n = wd[i], ge = off + n < nn * G ? off + n : nn * G;
                        for (long gi = off / G; gi < ge / G; gi++)
                            NAME(norm_grad)(g + gi * G, s + gi * G, dp + gi * G - off,
                                            r[row * nn + gi], G);
                        if (!silu)
                            for (long c = ge > off ? ge : off; c < off + n; c++) g[c] *= dp[c - off];
                    }
                } else {
                    NAME(get)(dyrow, dy, wd, row);
                    for (long gi = 0; gi < nn; gi++)
                        NAME(norm_grad)(g + gi * G, s + gi * G, dyrow + gi * G, r[row * nn + gi],
                                        G);
                    for (long c = nn * G; c < C; c++) g[c] *= dyrow[c];
                }
                if (t % 2 == 1) {  /* dbias, dw: steps t - 1 and t in one pass (the
                    accumulator rows loaded and stored once for two steps; g_{t-1} is still in
                    the ring, xp's rows t - 1 .. t + K - 1 are xr1) */
                    const T *restrict gp = ring + (t - 1) % R * C;
                    const T *xr1[K + 1];
                    xr1[0] = NAME(xp_row)(x, st, b, t - 1, Tn, C, K);
                    for (long k = 0; k < K; k++) xr1[k + 1] = xr[k];
#pragma GCC ivdep
                    for (long c = 0; c < C; c++) {
                        const T gc = g[c], gq = gp[c];
                        dbb[c] += gq + gc;
                        for (long k = 0; k < K; k++) dwk[k][c] += gq * xr1[k][c] + gc * xr1[k + 1][c];
                    }
                } else if (t == Tn - 1) {  /* a step alone (the last, when even) */
#pragma GCC ivdep
                    for (long c = 0; c < C; c++) {
                        const T gc = g[c];
                        dbb[c] += gc;
                        for (long k = 0; k < K; k++) dwk[k][c] += gc * xr[k][c];
                    }
                }
            } else {
                memset(g, 0, C * sizeof(T));
            }
            /* dxp's rows t - 1 and t in one pass (w's rows loaded once for both; the ring
               holds g_{t-K} .. g_t), or row t alone (the last, when even) */
            if (t % 2 == 0 && t < tn - 1) continue;
            for (long k = 0; k <= K; k++) gk[k] = ring + (t - k + R) % R * C;  /* g_{t-k} */
            T *restrict dout = t < K - 1 ? dst + (b * (K - 1) + t) * C
                                         : dx + (b * Tn + t - (K - 1)) * C;
            T *restrict out = xs ? xs + C : dout;
            if (t % 2 == 1) {
                T *restrict dout0 = t - 1 < K - 1 ? dst + (b * (K - 1) + t - 1) * C
                                                  : dx + (b * Tn + t - 1 - (K - 1)) * C;
                T *restrict out0 = xs ? xs : dout0;
#pragma GCC ivdep
                for (long c = 0; c < C; c++) {
                    T acc = 0, acc0 = 0;
                    for (long k = 0; k < K; k++) {
                        acc += wk[k][c] * gk[k][c];
                        acc0 += wk[k][c] * gk[k + 1][c];
                    }
                    out[c] = acc;
                    out0[c] = acc0;
                }
                if (xs) NAME(put_row)(dout0, out0, C, 1);
            } else {
#pragma GCC ivdep
                for (long c = 0; c < C; c++) {
                    T acc = 0;
                    for (long k = 0; k < K; k++) acc += wk[k][c] * gk[k][c];
                    out[c] = acc;
                }
            }
            if (xs) NAME(put_row)(dout, out, C, 1);
        }
    }
    NAME(stream_done)(nt);
    free(xs);
    free(zb);
    free(ring);
    free(s);
    free(dyrow);
}

static void NAME(bwd_rows)(const T *x, const T *w, const T *bias, const T *st,
                           const T *const *dy, const long *wd, const T *r, T *dx, T *dst,
                           T *dw, T *db, long Tn, long C, long K, int silu, long nn, long G,
                           long b0, long b1) {
#define BWD(KC) NAME(bwd_body)(x, w, bias, st, dy, wd, r, dx, dst, dw, db, Tn, C, KC, silu, \
                               nn, G, b0, b1)
    if (K == 4) BWD(4);
    else BWD(K);
#undef BWD
}

void NAME(conv_bwd)(const T *x, const T *w, const T *bias, const T *st, const T *dy, T *dx,
                    T *dst, T *dw, T *db, long Tn, long C, long K, int silu, long b0, long b1) {
    const T *dys[3] = {dy, NULL, NULL};
    const long wd[3] = {C, 0, 0};
    NAME(bwd_rows)(x, w, bias, st, dys, wd, NULL, dx, dst, dw, db, Tn, C, K, silu, 0, 1, b0, b1);
}

/* conv_bwd through conv_l2_fwd's norms (r from it) */
void NAME(conv_l2_bwd)(const T *x, const T *w, const T *bias, const T *st, const T *dy,
                       const T *r, T *dx, T *dst, T *dw, T *db, long Tn, long C, long K,
                       int silu, long nn, long G, long b0, long b1) {
    const T *dys[3] = {dy, NULL, NULL};
    const long wd[3] = {C, 0, 0};
    NAME(bwd_rows)(x, w, bias, st, dys, wd, r, dx, dst, dw, db, Tn, C, K, silu, nn, G, b0, b1);
}

/* conv_l2_bwd with dy in conv_l2_fwd3's three pieces */
void NAME(conv_l2_bwd3)(const T *x, const T *w, const T *bias, const T *st, const T *dy0,
                        const T *dy1, const T *dy2, const T *r, T *dx, T *dst, T *dw, T *db,
                        long Tn, long C, long K, int silu, long nn, long G, long w0, long w1,
                        long b0, long b1) {
    const T *dys[3] = {dy0, dy1, dy2};
    const long wd[3] = {w0, w1, C - w0 - w1};
    NAME(bwd_rows)(x, w, bias, st, dys, wd, r, dx, dst, dw, db, Tn, C, K, silu, nn, G, b0, b1);
}

/* Mamba-2's values v = u x beside the conv (x: the conv's first piece read as (rows, V), u one
   scale a row: dt per step and head); the backward in one pass over each row: dx = u dv + dxs
   (dxs: x's other gradient, the skip's; NULL: none) and du = x . dv (16 lane partials added as
   a tree). Rows [r0, r1) of the B T H rows. */
static inline __attribute__((always_inline)) void NAME(scale_row)(
    const T *restrict x, T u, const T *restrict dv, const T *restrict dxs, T *restrict dx,
    T *restrict du, long V) {
    T p[16] = {0};
    long c = 0;
    for (; c + 16 <= V; c += 16)
#pragma GCC ivdep
        for (int l = 0; l < 16; l++) {
            p[l] += x[c + l] * dv[c + l];
            dx[c + l] = u * dv[c + l] + (dxs ? dxs[c + l] : 0);
        }
    for (; c < V; c++) {
        p[0] += x[c] * dv[c];
        dx[c] = u * dv[c] + (dxs ? dxs[c] : 0);
    }
    for (int w = 8; w; w >>= 1)
        for (int l = 0; l < w; l++) p[l] += p[l + w];
    *du = p[0];
}

void NAME(scale_bwd)(const T *restrict x, const T *restrict u, const T *restrict dv,
                     const T *restrict dxs, T *restrict dx, T *restrict du, long V, long r0,
                     long r1) {
    if (dxs)
        for (long r = r0; r < r1; r++)
            NAME(scale_row)(x + r * V, u[r], dv + r * V, dxs + r * V, dx + r * V, du + r, V);
    else
        for (long r = r0; r < r1; r++)
            NAME(scale_row)(x + r * V, u[r], dv + r * V, NULL, dx + r * V, du + r, V);
}

#endif
