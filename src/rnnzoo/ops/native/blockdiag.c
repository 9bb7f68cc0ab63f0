/* A block-diagonal linear map (xLSTM's headwise q, k, v projections, layers.mlstm), forward
   and backward, at its own cost of bs multiply-adds per output (a batched matrix product
   over bs x bs blocks runs slowly on a CPU, and grouping blocks into wider ones multiplies
   zeros):

       y[r, b bs + o] = sum_i W[b, o, i] x[r, b bs + i]
       dx[r, b bs + i] = sum_o W[b, o, i] dy[r, b bs + o],   dW[b, o, i] += dy[r, b bs + o] x[r, b bs + i]

   Layouts: x (rows, dim) with row stride xs (a view of a wider tensor is fine); y, dy, dx
   (rows, dim) contiguous; W, dW (dim / bs, bs, bs) contiguous, dW this call's own slice
   (the caller sums slices). Each function does rows [r0, r1). Plain C; compiled by
   rnnzoo.ops.native.

   blockdiag_gated_fwd / _bwd: one or two maps of the same x (W1, y1, dy1, dW1 NULL for one)
   and a dense product with few outputs, g[r, j] = sum_c G[j, c] x[r, c] (G (ng, dim), g
   (rows, ng) contiguous: mlstm's gate pre-activations from x_c or x_m), in one pass over
   each row (the forward also writes the sum of all its outputs over its rows to *sum, when
   sum is not NULL: a finiteness check without another pass); the backward sums every part of dx in that pass (no separate products of
   (rows, dim) x (dim, ng) and no additions of (rows, dim) gradients after; dx0 (rows, dim)
   contiguous, or NULL: another consumer's gradient of x, added in the same pass). */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "blockdiag.c"
#include "each_type.h"

#else

#include "tile.h"  /* VEC, UVEC, NV, hsum: the gates' dot products */

/* bodies with bs a parameter that the calls below make a constant where they can (bs = 4,
   xLSTM's default, and 2, 8): the block loops then unroll into straight vector code */
static inline void NAME(fwd_rows)(const T *restrict x, const T *restrict W, T *restrict y,
                                  long xs, long dim, const long bs, long r0, long r1) {
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * xs;
        T *restrict yr = y + r * dim;
        for (long b = 0; b < dim; b += bs) {
            const T *restrict Wb = W + b * bs;
            for (long o = 0; o < bs; o++) {
                T acc = 0;
                for (long i = 0; i < bs; i++) acc += Wb[o * bs + i] * xr[b + i];
                yr[b + o] = acc;
            }
        }
    }
}

static inline void NAME(bwd_rows)(const T *restrict x, const T *restrict W,
                                  const T *restrict dy, T *restrict dx, T *restrict dW, long xs,
                                  long dim, const long bs, long r0, long r1) {
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * xs, *restrict dyr = dy + r * dim;
        T *restrict dxr = dx + r * dim;
        for (long b = 0; b < dim; b += bs) {
            const T *restrict Wb = W + b * bs;
            T *restrict dWb = dW + b * bs;
            for (long i = 0; i < bs; i++) {
                T acc = 0;
                for (long o = 0; o < bs; o++) acc += Wb[o * bs + i] * dyr[b + o];
                dxr[b + i] = acc;
            }
            for (long o = 0; o < bs; o++)
                for (long i = 0; i < bs; i++) dWb[o * bs + i] += dyr[b + o] * xr[b + i];
        }
    }
}

void NAME(blockdiag_fwd)(const T *restrict x, const T *restrict W, T *restrict y, long xs,
                         long dim, long bs, long r0, long r1) {
    if (bs == 4) NAME(fwd_rows)(x, W, y, xs, dim, 4, r0, r1);
    else if (bs == 2) NAME(fwd_rows)(x, W, y, xs, dim, 2, r0, r1);
    else if (bs == 8) NAME(fwd_rows)(x, W, y, xs, dim, 8, r0, r1);
    else NAME(fwd_rows)(x, W, y, xs, dim, bs, r0, r1);
}

void NAME(blockdiag_bwd)(const T *restrict x, const T *restrict W, const T *restrict dy,
                         T *restrict dx, T *restrict dW, long xs, long dim, long bs, long r0,
                         long r1) {
    memset(dW, 0, dim * bs * sizeof(T));
    if (bs == 4) NAME(bwd_rows)(x, W, dy, dx, dW, xs, dim, 4, r0, r1);
    else if (bs == 2) NAME(bwd_rows)(x, W, dy, dx, dW, xs, dim, 2, r0, r1);
    else if (bs == 8) NAME(bwd_rows)(x, W, dy, dx, dW, xs, dim, 8, r0, r1);
    else NAME(bwd_rows)(x, W, dy, dx, dW, xs, dim, bs, r0, r1);
}


#include "blockdiag.h"  /* the gated row bodies (mlstm_scan.c's fused pass shares them) */

void NAME(blockdiag_gated_fwd)(const T *restrict x, const T *restrict W0, const T *restrict W1,
                               const T *restrict G, T *restrict y0, T *restrict y1,
                               T *restrict g, T *restrict sum, long xs, long dim, long bs,
                               long ng, long r0, long r1) {
    long c0;  /* bs = 4: whole vectors of columns on fwd4_vec, the rest scalar */
    T *v = NAME(bd_setup)(W0, W1, dim, bs, 0, &c0);
    NAME(bd_fwd_rows)(x, W0, W1, G, y0, y1, g, xs, dim, bs, ng, r0, r1, v, c0, sum);
    free(v);
}

void NAME(blockdiag_gated_bwd)(const T *restrict x, const T *restrict W0, const T *restrict W1,
                               const T *restrict G, const T *restrict dy0,
                               const T *restrict dy1, const T *restrict dg,
                               const T *restrict dx0, T *restrict dx, T *restrict dW0,
                               T *restrict dW1, T *restrict dG, long xs, long dim, long bs,
                               long ng, long r0, long r1) {
    memset(dW0, 0, dim * bs * sizeof(T));
    if (dW1) memset(dW1, 0, dim * bs * sizeof(T));
    memset(dG, 0, ng * dim * sizeof(T));
    long c0;  /* bs = 4: whole vectors of columns on bwd4_vec, the rest scalar */
    T *v = NAME(bd_setup)(W0, W1, dim, bs, 1, &c0);
    NAME(bd_bwd_rows)(x, W0, W1, G, dy0, dy1, dg, dx, dW0, dW1, dG, xs, dim, bs, ng, r0, r1, v, c0,
                      dx0);
    NAME(bd_put_back)(v, c0, dW0, dW1);
    free(v);
}

#include "tile.h"  /* its names undefined for the next type */
#endif
