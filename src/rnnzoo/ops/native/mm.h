/* mm.h: a batched small-matrix product in registers (shared header, included inside a kernel
   file's typed body, see each_type.h; it includes tile.h and undefines its names again, so
   include it where tile.h is not already in use). attention.c exports it as `mm` (attention,
   stick-breaking, Based / ReBased's block products); newton_schulz.c runs its s x s and
   s x l products on it.

   C_b (m, n) = A_b (m, k) B_b (k, n), or C_b += it (acc), for the blocks b of a batch: A's
   entry (i, p) at A + b sa + i a_rs + p a_cs (A or A^T by its strides), B's rows ldb apart,
   C's ldc apart (unit columns both). Rows r in [r0, r1) of the batch's b m rows (b = r / m),
   MM_ROWS rows by a tile of VT columns in registers, A's entries broadcast; a last tile of
   exactly one vector reads B in place, one narrower or between one and two vectors reads B's
   columns packed into a zero-padded buffer. MKL's bmm takes its AVX2 code on AMD CPUs and
   runs these head-dim-wide products at ~60 GFLOP/s; this one runs at the build's vector
   width. */
#include "tile.h"

#define MM_ROWS 6
TILE_INLINE void NAME(mm_tile)(const T *restrict a, const T *restrict b, T *restrict c,
                               long rb, long k, long a_rs, long a_cs, long ldb, long ldc,
                               long w, long acc, long two) {
    VEC s[MM_ROWS][2];
    for (long r = 0; r < MM_ROWS; r++) s[r][0] = s[r][1] = (VEC){0};
    for (long p = 0; p < k; p++) {
        const VEC x0 = *(const UVEC *)(b + p * ldb);
        const VEC x1 = two ? (VEC)*(const UVEC *)(b + p * ldb + NV) : x0;
        for (long r = 0; r < MM_ROWS; r++) {
            if (r >= rb) break;
            const T y = a[r * a_rs + p * a_cs];
            s[r][0] += y * x0;
            if (two) s[r][1] += y * x1;
        }
    }
    for (long r = 0; r < rb; r++) {
        if (acc) {
            VEC x[2];
            NAME(tile_load)(x, c + r * ldc, w);
            s[r][0] += x[0];
            s[r][1] += x[1];
        }
        NAME(tile_store)(c + r * ldc, s[r], w);
    }
}

void NAME(mm)(const T *restrict A, const T *restrict B, T *restrict C, long m, long n, long k,
              long a_rs, long a_cs, long ldb, long ldc, long sa, long sb, long sc, long acc,
              long r0, long r1) {
    const long full = n / VT * VT, tw = n - full, pack = tw && tw != NV;
    T *pad = pack ? aligned_alloc(TILE_BYTES, (size_t)(k > 0 ? k : 1) * VT * sizeof(T)) : 0;
    long packed = -1;
    for (long r = r0; r < r1;) {
        const long bi = r / m, i = r % m;
        long rb = m - i < r1 - r ? m - i : r1 - r;
        rb = rb < MM_ROWS ? rb : MM_ROWS;
        const T *a = A + bi * sa + i * a_rs;
        const T *b = B + bi * sb;
        T *c = C + bi * sc + i * ldc;
        for (long j = 0; j < full; j += VT) {
            if (rb == MM_ROWS)
                NAME(mm_tile)(a, b + j, c + j, MM_ROWS, k, a_rs, a_cs, ldb, ldc, VT, acc, 1);
            else
                NAME(mm_tile)(a, b + j, c + j, rb, k, a_rs, a_cs, ldb, ldc, VT, acc, 1);
        }
        if (tw == NV) {  /* one vector a row, read in place */
            if (rb == MM_ROWS)
                NAME(mm_tile)(a, b + full, c + full, MM_ROWS, k, a_rs, a_cs, ldb, ldc, NV, acc, 0);
            else
                NAME(mm_tile)(a, b + full, c + full, rb, k, a_rs, a_cs, ldb, ldc, NV, acc, 0);
        } else if (tw) {
            if (packed != bi) {  /* this block's last columns of B, zero-padded to VT */
                for (long p = 0; p < k; p++)
                    for (long j = 0; j < VT; j++) pad[p * VT + j] = j < tw ? b[p * ldb + full + j] : 0;
                packed = bi;
            }
            /* a tail within one vector's width runs one vector a row */
            if (rb == MM_ROWS && tw > NV)
                NAME(mm_tile)(a, pad, c + full, MM_ROWS, k, a_rs, a_cs, VT, ldc, tw, acc, 1);
            else if (rb == MM_ROWS)
                NAME(mm_tile)(a, pad, c + full, MM_ROWS, k, a_rs, a_cs, VT, ldc, tw, acc, 0);
            else
                NAME(mm_tile)(a, pad, c + full, rb, k, a_rs, a_cs, VT, ldc, tw, acc, 1);
        }
        r += rb;
    }
    free(pad);
}
#undef MM_ROWS
#include "tile.h"  /* its names undefined for the next type */
