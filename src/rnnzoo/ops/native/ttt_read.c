/* The dual-form read of test-time training's dense layers (ops/memory.py: _read_all), one
   mini-batch block at a time, forward and backward: what was three batched products, a
   tril, two adds and a scale a block (and twice as many through autograd) is one pass over
   the block in cache.

   Per block b: queries x (M, I), the mini-batch's inputs X (M, I), its start weights W (I, O)
   and bias c (O), its lr-weighted gradients G (M, O), tok (M) shared by all blocks:
       A_ij = tok_i (x_i . X_j + 1)  for j <= i, else 0
       z    = x W + c - A G
   Backward from dz (M, O):
       dc = sum_i dz_i,  dW = x^T dz,  dG = -A^T dz,  dA_ij = -dz_i . G_j (j <= i)
       dtok_i = sum_{j <= i} (x_i . X_j + 1) dA_ij,   dS_ij = tok_i dA_ij
       dx = dz W^T + dS X,   dX = dS^T x
   The products run on mm.h's register tiles (X^T, G^T and W^T transposed into a per-thread
   scratch first: mm packs a B with strided columns a block at a time, which costs as much).
   dtok is per block (the caller sums it). Blocks [b0, b1); x, X, z (dz, dx, dX) at strides
   (ttt_at), the rest contiguous.
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ttt_read.c"
#include "each_type.h"

#else

#include "mm.h"
#include "transpose.h"

/* out (c, r) = in (r, c)^T (transpose.h's 8 x 8 vector blocks) */
static inline void NAME(ttt_transpose)(const T *restrict in, T *restrict out, long r, long c) {
    NAME(trs)(out, r, in, c, r, c);
}

/* C (m, n) (+)= A (m, k) B (k, n), one block, A's entry (i, p) at A + i a_rs + p a_cs, B's
   rows ldb apart, C's ldc apart */
static inline void NAME(ttt_mm)(const T *A, const T *B, T *C, long m, long n, long k,
                                long a_rs, long a_cs, long ldb, long ldc, long acc) {
    NAME(mm)(A, B, C, m, n, k, a_rs, a_cs, ldb, 1, ldc, 0, 0, 0, acc, 0, m);
}

/* block bk's first entry in a tensor of blocks (B, H, NT) whose strides are s[0..2] (token
   rows s[3] apart): st = {H, NT, then 4 strides a tensor} */
static inline long NAME(ttt_at)(const long *st, const long *s, long bk) {
    const long H = st[0], NT = st[1];
    return bk / (H * NT) * s[0] + bk / NT % H * s[1] + bk % NT * s[2];
}

/* st: H, NT and the strides of x, X, then z (forward) or dz, dx, dX (backward) as ttt_at
   takes them: the queries and inputs may be a layer's (B, T, H, K) tensors viewed as blocks
   (token rows H K apart), no copies */
void NAME(ttt_read_fwd)(const T *restrict X_q, const T *restrict X_k, const T *restrict W,
                        const T *restrict c, const T *restrict G, const T *restrict tok,
                        T *restrict Z, T *restrict S1, const long *restrict st, long M, long I,
                        long O, long b0, long b1) {
    const long *sx = st + 2, *sX = st + 6, *sz = st + 10;
    const long lx = sx[3], lX = sX[3], lz = sz[3];
    T *XT = malloc((size_t)(I * M + M * M) * sizeof(T)), *nA = XT + I * M;
    for (long bk = b0; bk < b1; bk++) {
        const T *x = X_q + NAME(ttt_at)(st, sx, bk), *X = X_k + NAME(ttt_at)(st, sX, bk);
        const T *w = W + bk * I * O, *cb = c + bk * O, *g = G + bk * M * O;
        T *z = Z + NAME(ttt_at)(st, sz, bk), *S = S1 + bk * M * M;
        NAME(trs)(XT, M, X, lX, M, I);                                 /* X^T */
        NAME(ttt_mm)(x, XT, S, M, M, I, lx, 1, M, M, 0);              /* S = x X^T */
        for (long i = 0; i < M; i++) {
            for (long j = 0; j < M; j++) {
                S[i * M + j] += 1;
                nA[i * M + j] = j <= i ? -tok[i] * S[i * M + j] : 0;
            }
            #pragma omp simd
            for (long o = 0; o < O; o++) z[i * lz + o] = cb[o];
        }
        NAME(ttt_mm)(x, w, z, M, O, I, lx, 1, O, lz, 1);              /* z += x W */
        NAME(ttt_mm)(nA, g, z, M, O, M, M, 1, O, lz, 1);              /* z -= A G */
    }
    free(XT);
}

void NAME(ttt_read_bwd)(const T *restrict X_q, const T *restrict X_k, const T *restrict W,
                        const T *restrict G, const T *restrict tok, const T *restrict S1,
                        const T *restrict dZ, T *restrict dXq, T *restrict dXk,
                        T *restrict dW, T *restrict dc, T *restrict dG, T *restrict dtok,
                        const long *restrict st, long M, long I, long O, long b0, long b1) {
    const long *sx = st + 2, *sX = st + 6, *sz = st + 10, *sdx = st + 14, *sdX = st + 18;
    const long lx = sx[3], lX = sX[3], lz = sz[3], ldx = sdx[3], ldX = sdX[3];
    T *scr = malloc((size_t)(O * M + I * O + 2 * M * M) * sizeof(T));
    T *GT = scr, *WT = GT + O * M, *dS = WT + I * O, *nA = dS + M * M;
    for (long bk = b0; bk < b1; bk++) {
        const T *x = X_q + NAME(ttt_at)(st, sx, bk), *X = X_k + NAME(ttt_at)(st, sX, bk);
        const T *w = W + bk * I * O;
        const T *g = G + bk * M * O, *S = S1 + bk * M * M, *dz = dZ + NAME(ttt_at)(st, sz, bk);
        T *dx = dXq + NAME(ttt_at)(st, sdx, bk), *dX = dXk + NAME(ttt_at)(st, sdX, bk);
        T *dw = dW + bk * I * O;
        T *dcb = dc + bk * O, *dg = dG + bk * M * O, *dt = dtok + bk * M;
        NAME(ttt_transpose)(g, GT, M, O);
        NAME(ttt_mm)(dz, GT, dS, M, M, O, lz, 1, M, M, 0);            /* dz G^T = -dA */
        for (long i = 0; i < M; i++) {
            T st_ = 0;
            for (long j = 0; j < M; j++) {
                const T da = j <= i ? -dS[i * M + j] : 0;
                st_ += S[i * M + j] * da;
                dS[i * M + j] = tok[i] * da;
                nA[i * M + j] = j <= i ? -tok[i] * S[i * M + j] : 0;
            }
            dt[i] = st_;
        }
        #pragma omp simd
        for (long o = 0; o < O; o++) dcb[o] = 0;
        for (long i = 0; i < M; i++) {
            #pragma omp simd
            for (long o = 0; o < O; o++) dcb[o] += dz[i * lz + o];
        }
        NAME(ttt_mm)(x, dz, dw, I, O, M, 1, lx, lz, O, 0);            /* dW = x^T dz */
        NAME(ttt_mm)(nA, dz, dg, M, O, M, 1, M, lz, O, 0);            /* dG = -A^T dz */
        NAME(ttt_transpose)(w, WT, I, O);
        NAME(ttt_mm)(dz, WT, dx, M, I, O, lz, 1, I, ldx, 0);           /* dx = dz W^T */
        NAME(ttt_mm)(dS, X, dx, M, I, M, M, 1, lX, ldx, 1);            /*    + dS X */
        NAME(ttt_mm)(dS, x, dX, M, I, M, 1, M, lx, ldX, 0);            /* dX = dS^T x */
    }
    free(scr);
}

#endif
