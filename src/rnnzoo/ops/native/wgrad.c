/* The weight gradient of a product r W^T (ops.native.linear's weight_grad, every layer's
   Linear): out (G, K) = g^T r = sum_n g[n, :]^T r[n, :], g (N, G) and r (N, K) row-major
   and dense (the projection's output gradient and input as they are: no transposed copy).

   wgrad(out, db, g, r, N, G, K, i0, i1) writes rows [i0, i1) of out (a thread's share),
   and db[i0, i1) = the column sums of g (a bias's gradient) where db is not NULL: read
   while g's block is in cache (torch's g.sum(0) reads (8192, 644) from memory again, ~2 ms).
   Register tiles of WG_R rows of out by 2 vectors of its columns (16 of the 32 AVX-512
   registers; ops.native.cells' weight gradients take it too): per n, 2 vectors of r's row and WG_R
   of g's entries (adjacent in g's row) broadcast; n in blocks of WG_MC rows (a block of r
   stays in L1, out's tiles are read and written once a block). oneDNN's product runs these
   shapes (N = 8192, K = 128, G from 8 to ~1000) at ~75-110 GFLOP/s on one Zen 5 core,
   copying its transposed first operand each call. Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "wgrad.c"
#include "each_type.h"

#else

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
/* r's vectors stay in registers (else GCC folds each load into the rows' FMAs) */
#define WG_KEEP(v) __asm__("" : "+x"(v))
#else
#define WG_KEEP(v) ((void)0)
#endif
#if defined(__AVX512F__)
#define WG_VB 64
#ifndef WG_R
#define WG_R 8
#endif
#else
#define WG_VB 32
#ifndef WG_R
#define WG_R 4
#endif
#endif
#ifndef WG_NV
#define WG_NV 2
#endif
#ifndef WG_MC
#define WG_MC 64
#endif
typedef T NAME(wg_vec) __attribute__((vector_size(WG_VB), aligned(sizeof(T)), may_alias));
#define WG_VL ((long)(WG_VB / sizeof(T)))

static inline __attribute__((always_inline)) void NAME(wg_tile)(
    T *out, long ldo, const T *A, long lda, const T *Bm, long ldb, long M, int first,
    const long R, const long NV) {
    NAME(wg_vec) acc[WG_R][WG_NV];
    for (long r = 0; r < R; r++)
        for (long j = 0; j < NV; j++)
            acc[r][j] = first ? (NAME(wg_vec)){0} : *(const NAME(wg_vec) *)(out + r * ldo + j * WG_VL);
    for (long m = 0; m < M; m++) {
        NAME(wg_vec) bv[WG_NV];
        for (long j = 0; j < NV; j++) {
            bv[j] = *(const NAME(wg_vec) *)(Bm + m * ldb + j * WG_VL);
            WG_KEEP(bv[j]);
        }
        for (long r = 0; r < R; r++) {
            const T s = A[m * lda + r];
            for (long j = 0; j < NV; j++) acc[r][j] += s * bv[j];
        }
    }
    for (long r = 0; r < R; r++)
        for (long j = 0; j < NV; j++) *(NAME(wg_vec) *)(out + r * ldo + j * WG_VL) = acc[r][j];
}

void NAME(wgrad)(T *restrict out, T *restrict db, const T *restrict g, const T *restrict r,
                 long N, long G, long K, long i0, long i1) {
    if (db)
        for (long i = i0; i < i1; i++) db[i] = 0;
    if (N <= 0) {
        for (long i = i0; i < i1; i++) memset(out + i * K, 0, K * sizeof(T));
        return;
    }
    for (long m0 = 0; m0 < N; m0 += WG_MC) {
        const long mc = N - m0 < WG_MC ? N - m0 : WG_MC;
        const int first = m0 == 0;
        const T *gb = g + m0 * G, *rb = r + m0 * K;
        if (db)  /* the bias gradient: g's column sums, while the block is in cache */
            for (long m = 0; m < mc; m++)
#pragma omp simd
                for (long i = i0; i < i1; i++) db[i] += gb[m * G + i];
        for (long i = i0; i < i1; i += WG_R) {
            const long R = i1 - i < WG_R ? i1 - i : WG_R;
            long j = 0;
#define WG_(RR, NV) NAME(wg_tile)(out + i * K + j, K, gb + i, G, rb + j, K, mc, first, RR, NV)
            for (; j + WG_NV * WG_VL <= K; j += WG_NV * WG_VL) {
                if (R == WG_R) WG_(WG_R, WG_NV);
                else WG_(R, WG_NV);
            }
            for (; j + WG_VL <= K; j += WG_VL) {
                if (R == WG_R) WG_(WG_R, 1);
                else WG_(R, 1);
            }
#undef WG_
            for (; j < K; j++)
                for (long ii = i; ii < i + R; ii++) {
                    T acc = first ? 0 : out[ii * K + j];
                    for (long m = 0; m < mc; m++) acc += gb[m * G + ii] * rb[m * K + j];
                    out[ii * K + j] = acc;
                }
        }
    }
}
#undef WG_VL
#undef WG_VB
#undef WG_R
#undef WG_KEEP
#undef WG_MC
#undef WG_NV
#endif
