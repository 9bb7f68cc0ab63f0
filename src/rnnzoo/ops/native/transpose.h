/* transpose.h: dst = src^T for the kernels of rnnzoo.ops.native (shared header, included
   inside a kernel file's typed body, see each_type.h: its names are NAME()'s, one set per
   type). path_chunk.c's 32 x 32 / 32 x 64 blocks and attention.c's keys and values as
   columns for mm (whose own packing of a B with strided columns, b_cs != 1, is a scalar
   transpose).

       trs(dst, ldd, src, lds, rows, cols): dst (cols, rows; row stride ldd) = src (rows,
       cols; row stride lds) transposed

   float in 8 x 8 blocks of vector shuffles (GCC / Clang vector types: 8 loads, 24 shuffles
   and 8 stores a block; a scalar transpose stores one value at a time at a stride, about
   1 ns each), the edges (rows or columns past a multiple of 8) and double one value at a
   time. */
typedef float NAME(tr_v8) __attribute__((vector_size(32), aligned(4), may_alias));
typedef int NAME(tr_i8) __attribute__((vector_size(32)));

static inline void NAME(tr8)(float *restrict dst, long ldd, const float *restrict src,
                             long lds) {
    typedef NAME(tr_v8) v8;
    const NAME(tr_i8) lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15},
                      l2 = {0, 1, 8, 9, 4, 5, 12, 13}, h2 = {2, 3, 10, 11, 6, 7, 14, 15},
                      l4 = {0, 1, 2, 3, 8, 9, 10, 11}, h4 = {4, 5, 6, 7, 12, 13, 14, 15};
    v8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = *(const v8 *)(src + i * lds);
    for (int i = 0; i < 4; i++) {  /* pairs of rows interleaved, then pairs of pairs */
        t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], lo);
        t[2 * i + 1] = __builtin_shuffle(r[2 * i], r[2 * i + 1], hi);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = __builtin_shuffle(t[4 * i], t[4 * i + 2], l2);
        u[4 * i + 1] = __builtin_shuffle(t[4 * i], t[4 * i + 2], h2);
        u[4 * i + 2] = __builtin_shuffle(t[4 * i + 1], t[4 * i + 3], l2);
        u[4 * i + 3] = __builtin_shuffle(t[4 * i + 1], t[4 * i + 3], h2);
    }
    for (int i = 0; i < 4; i++) {  /* columns i and i + 4: the two halves of u[i], u[i + 4] */
        *(v8 *)(dst + i * ldd) = __builtin_shuffle(u[i], u[i + 4], l4);
        *(v8 *)(dst + (i + 4) * ldd) = __builtin_shuffle(u[i], u[i + 4], h4);
    }
}

static inline void NAME(trs)(T *restrict dst, long ldd, const T *restrict src, long lds,
                             long rows, long cols) {
    long r8 = 0, c8 = 0;
    if (sizeof(T) == sizeof(float)) {
        r8 = rows / 8 * 8, c8 = cols / 8 * 8;
        for (long i = 0; i < r8; i += 8)
            for (long j = 0; j < c8; j += 8)
                NAME(tr8)((float *)dst + j * ldd + i, ldd, (const float *)src + i * lds + j, lds);
    }
    for (long i = 0; i < rows; i++)  /* the edges: columns past c8 of the first r8 rows, */
        for (long j = i < r8 ? c8 : 0; j < cols; j++)  /* every column of the rest */
            dst[j * ldd + i] = src[i * lds + j];
}
