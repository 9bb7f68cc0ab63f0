/* lanes.h: the sums of NV vectors' lanes at once, for the kernels of rnnzoo.ops.native that
   reduce many state rows a step (vector_delta.c). Included after tile.h inside
   a kernel file's typed body (each_type.h); a second include undefines its macros for the
   next type. GCC and Clang vector shuffles. */
#ifndef LANES_H_TYPE
#define LANES_H_TYPE

/* x[0 .. NV) <- the lane sums of x[0 .. NV) as one vector (lane r: the sum of x[r]): a
   transposing tree of shuffles and adds, NV - 1 adds where NV horizontal sums take ~3 NV */
#if defined(__clang__)
#define LANES_SHUF(x, y, ...) __builtin_shufflevector(x, y, __VA_ARGS__)
#else
#define LANES_SHUF(x, y, ...) __builtin_shuffle(x, y, (NAME(lanes_idx)){__VA_ARGS__})
#endif
#define lanes_float_float 1
#define LANES_CAT(a, b) a##b
#define LANES_XCAT(a, b) LANES_CAT(a, b)
#if LANES_XCAT(lanes_float_, T)  /* T is float: 8 lanes */
typedef int NAME(lanes_idx) __attribute__((vector_size(32)));
TILE_INLINE VEC NAME(lane_sums)(const VEC *x) {
    VEC p[4], q[2];
    for (int r = 0; r < 4; r++)
        p[r] = LANES_SHUF(x[2 * r], x[2 * r + 1], 0, 8, 2, 10, 4, 12, 6, 14)
             + LANES_SHUF(x[2 * r], x[2 * r + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int r = 0; r < 2; r++)
        q[r] = LANES_SHUF(p[2 * r], p[2 * r + 1], 0, 1, 8, 9, 4, 5, 12, 13)
             + LANES_SHUF(p[2 * r], p[2 * r + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return LANES_SHUF(q[0], q[1], 0, 1, 2, 3, 8, 9, 10, 11) + LANES_SHUF(q[0], q[1], 4, 5, 6, 7, 12, 13, 14, 15);
}
#else  /* double: 4 lanes */
typedef long long NAME(lanes_idx) __attribute__((vector_size(32)));
TILE_INLINE VEC NAME(lane_sums)(const VEC *x) {
    const VEC p0 = LANES_SHUF(x[0], x[1], 0, 4, 2, 6) + LANES_SHUF(x[0], x[1], 1, 5, 3, 7);
    const VEC p1 = LANES_SHUF(x[2], x[3], 0, 4, 2, 6) + LANES_SHUF(x[2], x[3], 1, 5, 3, 7);
    return LANES_SHUF(p0, p1, 0, 1, 4, 5) + LANES_SHUF(p0, p1, 2, 3, 6, 7);
}
#endif

/* out[i] += lane sums of x[i], i < m <= NV (x[m ..] unused) */
TILE_INLINE void NAME(add_sums)(T *restrict out, VEC *x, long m) {
    if (m == NV) {
        *(UVEC *)out += NAME(lane_sums)(x);
        return;
    }
    for (long i = m; i < NV; i++) x[i] = (VEC){0};
    const VEC s = NAME(lane_sums)(x);
    for (long i = 0; i < m; i++) out[i] += s[i];
}

#else
#undef LANES_H_TYPE
#undef LANES_SHUF
#undef lanes_float_float
#undef LANES_CAT
#undef LANES_XCAT
#endif
