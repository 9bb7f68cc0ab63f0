/* tile.h: column tiles of a recurrent state for the kernels of rnnzoo.ops.native (shared
   header, included inside a kernel file's typed body, see each_type.h; a second include
   undefines its macros for the next type).

   A tile is VT = two vectors of T of one state row (TILE_BYTES wide: 64 where the compiler
   targets AVX-512, else 32; so VT = 32 or 16 floats, 16 or 8 doubles), as GCC and Clang
   vector types (VEC: aligned, for the kernels' own buffers, which take aligned_alloc(
   TILE_BYTES, ...); loads and stores of the caller's tensors go through tile_load /
   tile_store, unaligned). A row's last tile, w < VT columns wide, is padded with zeros.
   TILE_PAD(V): V rounded up to a multiple of 32 (every VT divides it), the width of a
   buffer holding every tile of a row (the Python side pads the same). */
#ifndef TILE_H_TYPE
#define TILE_H_TYPE
#if defined(__AVX512F__) && !defined(TILE_256)  /* a kernel tuned for 256-bit tiles defines TILE_256 */
#define TILE_BYTES 64
#else
#define TILE_BYTES 32
#endif
#define VEC NAME(vec)
#define UVEC NAME(uvec)
#define NV ((long)(TILE_BYTES / sizeof(T)))
#define VT (2 * NV)
#define TILE_PAD(V) (((V) + 31) / 32 * 32)
#define TILE_INLINE static inline __attribute__((always_inline))
/* NV for the preprocessor: NAME() is _f32 or _f64 */
#define TILE_CAT2(a, b) a##b
#define TILE_CAT(a, b) TILE_CAT2(a, b)
#define TILE_SIZE_f32 4
#define TILE_SIZE_f64 8
#define TILE_LANES (TILE_BYTES / TILE_CAT(TILE_SIZE, NAME()))

typedef T VEC __attribute__((vector_size(TILE_BYTES), may_alias));
typedef T UVEC __attribute__((vector_size(TILE_BYTES), aligned(sizeof(T)), may_alias));

/* x[0], x[1] <- src[0 .. w), zeros past w */
TILE_INLINE void NAME(tile_load)(VEC *restrict x, const T *restrict src, long w) {
    if (w == VT) {
        x[0] = *(const UVEC *)src;
        x[1] = *(const UVEC *)(src + NV);
        return;
    }
    T tmp[VT] __attribute__((aligned(TILE_BYTES)));
    for (long j = 0; j < VT; j++) tmp[j] = j < w ? src[j] : 0;
    x[0] = *(const VEC *)tmp;
    x[1] = *(const VEC *)(tmp + NV);
}

/* dst[0 .. w) <- x[0], x[1] */
TILE_INLINE void NAME(tile_store)(T *restrict dst, const VEC *restrict x, long w) {
    if (w == VT) {
        *(UVEC *)dst = x[0];
        *(UVEC *)(dst + NV) = x[1];
        return;
    }
    T tmp[VT] __attribute__((aligned(TILE_BYTES)));
    *(VEC *)tmp = x[0];
    *(VEC *)(tmp + NV) = x[1];
    for (long j = 0; j < w; j++) dst[j] = tmp[j];
}

/* the sum of x's lanes as a tree (halves added, then their halves: a scalar loop over the
   lanes would be one serial chain of adds) */
TILE_INLINE T NAME(hsum)(VEC x) {
    typedef T half __attribute__((vector_size(16)));
#if TILE_BYTES == 64
    typedef T mid __attribute__((vector_size(32)));
    union { VEC v; mid h[2]; } u0 = {x};
    union { mid v; half h[2]; } u = {u0.h[0] + u0.h[1]};
#else
    union { VEC v; half h[2]; } u = {x};
#endif
    half s = u.h[0] + u.h[1];
#if TILE_CAT(TILE_SIZE, NAME()) == 4
    return (s[0] + s[2]) + (s[1] + s[3]);
#else
    return s[0] + s[1];
#endif
}

/* r[l] = the sum of x[l]'s lanes for the NV vectors x[0 .. NV): a transpose of sums (at
   each level pairs of vectors become one, each lane the sum of two neighbours of one of
   them: NV - 1 adds of two shuffles for NV rows, where NV hsum trees take NV (log2 NV + 1)
   shuffles and adds and leave scalars). Overwrites x. Where __builtin_shufflevector is
   missing, one hsum a row. */
#if defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
#define SV __builtin_shufflevector
TILE_INLINE VEC NAME(hsum_rows)(VEC *restrict x) {
#if TILE_LANES == 16
    for (int i = 0; i < 8; i++)
        x[i] = SV(x[2 * i], x[2 * i + 1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
               + SV(x[2 * i], x[2 * i + 1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    for (int i = 0; i < 4; i++)
        x[i] = SV(x[2 * i], x[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
               + SV(x[2 * i], x[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    for (int i = 0; i < 2; i++)
        x[i] = SV(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
               + SV(x[2 * i], x[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    return SV(x[0], x[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
           + SV(x[0], x[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
#elif TILE_LANES == 8
    for (int i = 0; i < 4; i++)
        x[i] = SV(x[2 * i], x[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14)
               + SV(x[2 * i], x[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int i = 0; i < 2; i++)
        x[i] = SV(x[2 * i], x[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13)
               + SV(x[2 * i], x[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return SV(x[0], x[1], 0, 1, 2, 3, 8, 9, 10, 11) + SV(x[0], x[1], 4, 5, 6, 7, 12, 13, 14, 15);
#else
    for (int i = 0; i < 2; i++)
        x[i] = SV(x[2 * i], x[2 * i + 1], 0, 4, 2, 6) + SV(x[2 * i], x[2 * i + 1], 1, 5, 3, 7);
    return SV(x[0], x[1], 0, 1, 4, 5) + SV(x[0], x[1], 2, 3, 6, 7);
#endif
}
#undef SV
#else
TILE_INLINE VEC NAME(hsum_rows)(VEC *restrict x) {
    VEC r;
    for (long l = 0; l < NV; l++) r[l] = NAME(hsum)(x[l]);
    return r;
}
#endif

/* out[i] += the lane sums of x[i], i < m <= NV (x is overwritten; x[m ..] unused) */
TILE_INLINE void NAME(add_sums)(T *restrict out, VEC *restrict x, long m) {
    if (m == NV) {
        *(UVEC *)out += NAME(hsum_rows)(x);
        return;
    }
    for (long i = m; i < NV; i++) x[i] = (VEC){0};
    const VEC s = NAME(hsum_rows)(x);
    for (long i = 0; i < m; i++) out[i] += s[i];
}

#else
#undef TILE_H_TYPE
#undef VEC
#undef UVEC
#undef NV
#undef VT
#undef TILE_PAD
#undef TILE_INLINE
#undef TILE_CAT2
#undef TILE_CAT
#undef TILE_SIZE_f32
#undef TILE_SIZE_f64
#undef TILE_BYTES
#undef TILE_LANES
#endif
