/* The delta layers' output head before W_o (layers/_delta_block.py): a per-head RMSNorm,
   then an output gate, fused, forward and backward, one pass over a row each way.

       n = x r,  r = 1 / sqrt(mean_group(x^2) + eps),   y = n w act(z)
       act: 0 none (z unused), 1 silu, 2 sigmoid
   Backward, with a = act(z):
       dz = dy n w act'(z),   dw += dy n a,   dn = dy w a,   dx = r (dn - n mean_group(dn n))

   Layouts (row-major, contiguous): x, z, y, dy, dx, dz (rows, W) with W = groups of G
   contiguous channels; w (W); r (rows, W / G), saved by the forward; dw (W): this call's
   slice of the weight gradient (the caller sums the slices). Each function does the rows
   [r0, r1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "head_norm.c"
#include "each_type.h"

#else

static inline T NAME(sigm)(T z) { return 1 / (1 + EXP(-z)); }

void NAME(head_norm_fwd)(const T *restrict x, const T *restrict z, const T *restrict w,
                         T *restrict y, T *restrict r, long W, long G, T eps, int act,
                         long r0, long r1) {
    const long ng = W / G;
    for (long row = r0; row < r1; row++)
        for (long gi = 0; gi < ng; gi++) {
            const long o = row * W + gi * G;
            const T *restrict xr = x + o;
            T ss = 0;
#pragma omp simd reduction(+ : ss)
            for (long j = 0; j < G; j++) ss += xr[j] * xr[j];
            const T rr = 1 / SQRT(ss / G + eps);
            r[row * ng + gi] = rr;
            T *restrict yr = y + o;
            const T *restrict wr = w + gi * G;
            if (act == 0) {
#pragma omp simd
                for (long j = 0; j < G; j++) yr[j] = xr[j] * rr * wr[j];
            } else {
                const T *restrict zr = z + o;
#pragma omp simd
                for (long j = 0; j < G; j++) {
                    const T s = NAME(sigm)(zr[j]);
                    yr[j] = xr[j] * rr * wr[j] * (act == 1 ? zr[j] * s : s);
                }
            }
        }
}

void NAME(head_norm_bwd)(const T *restrict x, const T *restrict z, const T *restrict w,
                         const T *restrict r, const T *restrict dy, T *restrict dx,
                         T *restrict dz, T *restrict dw, long W, long G, int act, long r0,
                         long r1) {
    const long ng = W / G;
    T *dn = malloc(G * sizeof(T));
    memset(dw, 0, W * sizeof(T));
    for (long row = r0; row < r1; row++)
        for (long gi = 0; gi < ng; gi++) {
            const long o = row * W + gi * G;
            const T *restrict xr = x + o, *restrict dyr = dy + o, *restrict wr = w + gi * G;
            const T rr = r[row * ng + gi];
            T *restrict dwr = dw + gi * G;
            T dot = 0;
            if (act == 0) {
#pragma omp simd reduction(+ : dot)
                for (long j = 0; j < G; j++) {
                    const T n = xr[j] * rr;
                    dwr[j] += dyr[j] * n;
                    dn[j] = dyr[j] * wr[j];
                    dot += dn[j] * n;
                }
            } else {
                const T *restrict zr = z + o;
                T *restrict dzr = dz + o;
#pragma omp simd reduction(+ : dot)
                for (long j = 0; j < G; j++) {
                    const T n = xr[j] * rr, s = NAME(sigm)(zr[j]);
                    const T a = act == 1 ? zr[j] * s : s;
                    const T da = act == 1 ? s * (1 + zr[j] * (1 - s)) : s * (1 - s);
                    const T dnw = dyr[j] * n * wr[j];
                    dzr[j] = dnw * da;
                    dwr[j] += dyr[j] * n * a;
                    dn[j] = dyr[j] * wr[j] * a;
                    dot += dn[j] * n;
                }
            }
            const T m = dot / G;
            T *restrict dxr = dx + o;
#pragma omp simd
            for (long j = 0; j < G; j++) dxr[j] = rr * (dn[j] - xr[j] * rr * m);
        }
    free(dn);
}

#endif
