/* mm.h: a batched small-matrix product in registers (shared header, included inside a kernel
   file's typed body, see each_type.h; it includes tile.h and undefines its names again, so
   include it where tile.h is not already in use). attention.c exports it as `mm` (attention,
   stick-breaking, Based / ReBased's block products); newton_schulz.c runs its s x s and
   s x l products on it.

   C_b (m, n) = A_b (m, k) B_b (k, n), or C_b += it (acc), for the blocks b of a batch: A's
   entry (i, p) at A + b sa + i a_rs + p a_cs (A or A^T by its strides), B's (p, j) at
   B + b sb + p ldb + j b_cs, C's rows ldc apart (unit columns). Rows r in [r0, r1) of the batch's b m rows (b = r / m),
   MM_ROWS rows by a tile of VT columns in registers, A's entries broadcast; a last tile of
   exactly one vector reads B in place, one narrower or between one and two vectors reads B's
   columns packed into a zero-padded buffer, and a B with strided columns is packed whole
   (a block at a time, in cache: torch's transposing copy of many 32 x 32 blocks ran at
   ~1 element a ns). MKL's bmm takes its AVX2 code on AMD CPUs and
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

/* one tile of columns [j, j + w) of rb rows: w > NV reads two vectors of B's rows, else one
   (B readable NV columns past j: in place when w == NV, else a zero-padded buffer) */
TILE_INLINE void NAME(mm_cols)(const T *restrict a, const T *restrict b, T *restrict c, long rb,
                               long k, long a_rs, long a_cs, long ldb, long ldc, long w,
                               long acc) {
    if (rb == MM_ROWS && w > NV)
        NAME(mm_tile)(a, b, c, MM_ROWS, k, a_rs, a_cs, ldb, ldc, w, acc, 1);
    else if (rb == MM_ROWS)
        NAME(mm_tile)(a, b, c, MM_ROWS, k, a_rs, a_cs, ldb, ldc, w, acc, 0);
    else if (w > NV)
        NAME(mm_tile)(a, b, c, rb, k, a_rs, a_cs, ldb, ldc, w, acc, 1);
    else
        NAME(mm_tile)(a, b, c, rb, k, a_rs, a_cs, ldb, ldc, w, acc, 0);
}

void NAME(mm)(const T *restrict A, const T *restrict B, T *restrict C, long m, long n, long k,
              long a_rs, long a_cs, long ldb, long b_cs, long ldc, long sa, long sb, long sc,
              long acc, long r0, long r1) {
    /* B with strided columns (b_cs != 1, B^T of a row-major tensor) is packed whole, a
       block at a time, into rows of npad columns (zeros past n); else only a last tile
       that is neither VT nor NV wide, into rows of VT */
    const long full = n / VT * VT, tw = n - full, npad = (n + VT - 1) / VT * VT;
    const long whole = b_cs != 1, pw = whole ? npad : VT;
    T *pad = whole || (tw && tw != NV)
             ? aligned_alloc(TILE_BYTES, (size_t)(k > 0 ? k : 1) * pw * sizeof(T)) : 0;
    long packed = -1;
    for (long r = r0; r < r1;) {
        const long bi = r / m, i = r % m;
        long rb = m - i < r1 - r ? m - i : r1 - r;
        rb = rb < MM_ROWS ? rb : MM_ROWS;
        const T *a = A + bi * sa + i * a_rs;
        const T *b = B + bi * sb;
        T *c = C + bi * sc + i * ldc;
        if (whole) {
            if (packed != bi) {
                for (long j = 0; j < npad; j++)
                    for (long p = 0; p < k; p++) pad[p * npad + j] = j < n ? b[p * ldb + j * b_cs] : 0;
                packed = bi;
            }
            for (long j = 0; j < n; j += VT)
                NAME(mm_cols)(a, pad + j, c + j, rb, k, a_rs, a_cs, npad, ldc,
                              n - j < VT ? n - j : VT, acc);
            r += rb;
            continue;
        }
        for (long j = 0; j < full; j += VT)
            NAME(mm_cols)(a, b + j, c + j, rb, k, a_rs, a_cs, ldb, ldc, VT, acc);
        if (tw == NV) {  /* one vector a row, read in place */
            NAME(mm_cols)(a, b + full, c + full, rb, k, a_rs, a_cs, ldb, ldc, NV, acc);
        } else if (tw) {
            if (packed != bi) {  /* this block's last columns of B, zero-padded to VT */
                for (long p = 0; p < k; p++)
                    for (long j = 0; j < VT; j++) pad[p * VT + j] = j < tw ? b[p * ldb + full + j] : 0;
                packed = bi;
            }
            NAME(mm_cols)(a, pad, c + full, rb, k, a_rs, a_cs, VT, ldc, tw, acc);
        }
        r += rb;
    }
    free(pad);
}
#undef MM_ROWS
#include "tile.h"  /* its names undefined for the next type */
