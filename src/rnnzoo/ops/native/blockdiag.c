/* A block-diagonal linear map (xLSTM's headwise q, k, v projections, layers.mlstm), forward
   and backward, at its own cost of bs multiply-adds per output (a batched matrix product
   over bs x bs blocks runs slowly on a CPU, and grouping blocks into wider ones multiplies
   zeros):

       y[r, b bs + o] = sum_i W[b, o, i] x[r, b bs + i]
       dx[r, b bs + i] = sum_o W[b, o, i] dy[r, b bs + o],   dW[b, o, i] += dy[r, b bs + o] x[r, b bs + i]

   Layouts: x (rows, dim) with row stride xs (a view of a wider tensor is fine); y, dy, dx
   (rows, dim) contiguous; W, dW (dim / bs, bs, bs) contiguous, dW this call's own slice
   (the caller sums slices). Each function does rows [r0, r1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "blockdiag.c"
#include "each_type.h"

#else

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

#endif
