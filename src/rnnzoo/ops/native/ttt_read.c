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
   dtok is per block (the caller sums it). Blocks [b0, b1), all tensors contiguous.
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

/* C (m, n) (+)= A (m, k) B (k, n), one block, A's entry (i, p) at A + i a_rs + p a_cs, B and C
   row-major */
static inline void NAME(ttt_mm)(const T *A, const T *B, T *C, long m, long n, long k,
                                long a_rs, long a_cs, long acc) {
    NAME(mm)(A, B, C, m, n, k, a_rs, a_cs, n, 1, n, 0, 0, 0, acc, 0, m);
}

void NAME(ttt_read_fwd)(const T *restrict X_q, const T *restrict X_k, const T *restrict W,
                        const T *restrict c, const T *restrict G, const T *restrict tok,
                        T *restrict Z, T *restrict S1, long M, long I, long O, long b0, long b1) {
    T *XT = malloc((size_t)(I * M + M * M) * sizeof(T)), *nA = XT + I * M;
    for (long bk = b0; bk < b1; bk++) {
        const T *x = X_q + bk * M * I, *X = X_k + bk * M * I, *w = W + bk * I * O;
        const T *cb = c + bk * O, *g = G + bk * M * O;
        T *z = Z + bk * M * O, *S = S1 + bk * M * M;
        NAME(ttt_transpose)(X, XT, M, I);
        NAME(ttt_mm)(x, XT, S, M, M, I, I, 1, 0);                  /* S = x X^T */
        for (long i = 0; i < M; i++) {
            for (long j = 0; j < M; j++) {
                S[i * M + j] += 1;
                nA[i * M + j] = j <= i ? -tok[i] * S[i * M + j] : 0;
            }
            #pragma omp simd
            for (long o = 0; o < O; o++) z[i * O + o] = cb[o];
        }
        NAME(ttt_mm)(x, w, z, M, O, I, I, 1, 1);                   /* z += x W */
        NAME(ttt_mm)(nA, g, z, M, O, M, M, 1, 1);                  /* z -= A G */
    }
    free(XT);
}

void NAME(ttt_read_bwd)(const T *restrict X_q, const T *restrict X_k, const T *restrict W,
                        const T *restrict G, const T *restrict tok, const T *restrict S1,
                        const T *restrict dZ, T *restrict dXq, T *restrict dXk,
                        T *restrict dW, T *restrict dc, T *restrict dG, T *restrict dtok,
                        long M, long I, long O, long b0, long b1) {
    T *scr = malloc((size_t)(O * M + I * O + 2 * M * M) * sizeof(T));
    T *GT = scr, *WT = GT + O * M, *dS = WT + I * O, *nA = dS + M * M;
    for (long bk = b0; bk < b1; bk++) {
        const T *x = X_q + bk * M * I, *X = X_k + bk * M * I, *w = W + bk * I * O;
        const T *g = G + bk * M * O, *S = S1 + bk * M * M, *dz = dZ + bk * M * O;
        T *dx = dXq + bk * M * I, *dX = dXk + bk * M * I, *dw = dW + bk * I * O;
        T *dcb = dc + bk * O, *dg = dG + bk * M * O, *dt = dtok + bk * M;
        NAME(ttt_transpose)(g, GT, M, O);
        NAME(ttt_mm)(dz, GT, dS, M, M, O, O, 1, 0);                /* dz G^T = -dA */
        for (long i = 0; i < M; i++) {
            T st = 0;
            for (long j = 0; j < M; j++) {
                const T da = j <= i ? -dS[i * M + j] : 0;
                st += S[i * M + j] * da;
                dS[i * M + j] = tok[i] * da;
                nA[i * M + j] = j <= i ? -tok[i] * S[i * M + j] : 0;
            }
            dt[i] = st;
        }
        #pragma omp simd
        for (long o = 0; o < O; o++) dcb[o] = 0;
        for (long i = 0; i < M; i++) {
            #pragma omp simd
            for (long o = 0; o < O; o++) dcb[o] += dz[i * O + o];
        }
        NAME(ttt_mm)(x, dz, dw, I, O, M, 1, I, 0);                 /* dW = x^T dz */
        NAME(ttt_mm)(nA, dz, dg, M, O, M, 1, M, 0);                /* dG = -A^T dz */
        NAME(ttt_transpose)(w, WT, I, O);
        NAME(ttt_mm)(dz, WT, dx, M, I, O, O, 1, 0);                /* dx = dz W^T */
        NAME(ttt_mm)(dS, X, dx, M, I, M, M, 1, 1);                 /*    + dS X */
        NAME(ttt_mm)(dS, x, dX, M, I, M, 1, M, 0);                 /* dX = dS^T x */
    }
    free(scr);
}

#endif
