/* The causal depthwise short convolution of layers/conv.py (ShortConv), with its SiLU,
   fused, forward and backward.

       s_t = bias + sum_{k<K} w[k] * xp_{t+k},   y_t = silu(s_t) (or s_t)
       xp = [state (K - 1 rows); x (T rows)],    per channel c (the contiguous last dim)
   Backward, with g_t = dy_t silu'(s_t) (s_t recomputed: K multiply-adds per element):
       dxp_{t+k} += w[k] g_t,   dw[k] += g_t xp_{t+k},   dbias += g_t
   run forwards in t: row t of dx first receives from g_t (k = K - 1), so it is set then
   and added to by the next K - 1 steps, while it is still in cache; the state's rows get
   the contributions that land before x.

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

static inline void NAME(pre)(T *restrict s, const T *x, const T *st, const T *restrict w,
                             const T *bias, long b, long t, long Tn, long C, long K) {
    for (long c = 0; c < C; c++) s[c] = bias ? bias[c] : 0;
    for (long k = 0; k < K; k++) {
        const T *restrict xr = NAME(xp_row)(x, st, b, t + k, Tn, C, K), *restrict wk = w + k * C;
        for (long c = 0; c < C; c++) s[c] += wk[c] * xr[c];
    }
}

void NAME(conv_fwd)(const T *x, const T *w, const T *bias, const T *st, T *y, long Tn, long C,
                    long K, int silu, long b0, long b1) {
    for (long b = b0; b < b1; b++)
        for (long t = 0; t < Tn; t++) {
            T *restrict yr = y + (b * Tn + t) * C;
            NAME(pre)(yr, x, st, w, bias, b, t, Tn, C, K);
            if (silu)
                for (long c = 0; c < C; c++) yr[c] = yr[c] / (1 + EXP(-yr[c]));
        }
}

void NAME(conv_bwd)(const T *x, const T *w, const T *bias, const T *st, const T *dy, T *dx,
                    T *dst, T *dw, T *db, long Tn, long C, long K, int silu, long b0, long b1) {
    T *g = malloc(C * sizeof(T));
    for (long b = b0; b < b1; b++) {
        T *restrict dwb = dw + b * K * C, *restrict dbb = db + b * C;
        memset(dwb, 0, K * C * sizeof(T));
        memset(dbb, 0, C * sizeof(T));
        if (K > 1) memset(dst + b * (K - 1) * C, 0, (K - 1) * C * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            const T *restrict dyr = dy + (b * Tn + t) * C;
            if (silu) {
                NAME(pre)(g, x, st, w, bias, b, t, Tn, C, K);
                for (long c = 0; c < C; c++) {
                    const T sg = 1 / (1 + EXP(-g[c]));
                    g[c] = dyr[c] * sg * (1 + g[c] * (1 - sg));
                }
            } else {
                memcpy(g, dyr, C * sizeof(T));
            }
            for (long c = 0; c < C; c++) dbb[c] += g[c];
            for (long k = 0; k < K; k++) {
                const long r = t + k;  /* row of xp */
                const T *restrict xr = NAME(xp_row)(x, st, b, r, Tn, C, K), *restrict wk = w + k * C;
                T *restrict dwk = dwb + k * C;
                T *restrict out = r < K - 1 ? dst + (b * (K - 1) + r) * C
                                            : dx + (b * Tn + r - (K - 1)) * C;
                for (long c = 0; c < C; c++) dwk[c] += g[c] * xr[c];
                if (k == K - 1)
                    for (long c = 0; c < C; c++) out[c] = wk[c] * g[c];
                else
                    for (long c = 0; c < C; c++) out[c] += wk[c] * g[c];
            }
        }
    }
    free(g);
}

#endif
