/* tile.h: column tiles of a recurrent state for the kernels of rnnzoo.ops.native (shared
   header, included inside a kernel file's typed body, see each_type.h; a second include
   undefines its macros for the next type).

   A tile is VT = two 256-bit vectors of T (16 floats or 8 doubles) of one state row, as GCC
   and Clang vector types (VEC: aligned, for the kernels' own buffers; loads and stores of the
   caller's tensors go through tile_load / tile_store, unaligned). A row's last tile, w < VT
   columns wide, is padded with zeros. TILE_PAD(V): V rounded up to a multiple of 16 (both
   types' VT divide it), the width of a buffer holding every tile of a row. */
#ifndef TILE_H_TYPE
#define TILE_H_TYPE
#define VEC NAME(vec)
#define UVEC NAME(uvec)
#define NV ((long)(32 / sizeof(T)))
#define VT (2 * NV)
#define TILE_PAD(V) (((V) + 15) / 16 * 16)
#define TILE_INLINE static inline __attribute__((always_inline))

typedef T VEC __attribute__((vector_size(32), may_alias));
typedef T UVEC __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));

/* x[0], x[1] <- src[0 .. w), zeros past w */
TILE_INLINE void NAME(tile_load)(VEC *restrict x, const T *restrict src, long w) {
    if (w == VT) {
        x[0] = *(const UVEC *)src;
        x[1] = *(const UVEC *)(src + NV);
        return;
    }
    T tmp[VT] __attribute__((aligned(32)));
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
    T tmp[VT] __attribute__((aligned(32)));
    *(VEC *)tmp = x[0];
    *(VEC *)(tmp + NV) = x[1];
    for (long j = 0; j < w; j++) dst[j] = tmp[j];
}

/* the sum of x's lanes as a tree (halves added, then their halves: a scalar loop over the
   lanes would be one serial chain of adds) */
TILE_INLINE T NAME(hsum)(VEC x) {
    typedef T half __attribute__((vector_size(16)));
    union { VEC v; half h[2]; } u = {x};
    half s = u.h[0] + u.h[1];
    if (NV == 8) return (s[0] + s[2 % (NV / 2)]) + (s[1] + s[3 % (NV / 2)]);  /* in range for both */
    return s[0] + s[1];
}

#else
#undef TILE_H_TYPE
#undef VEC
#undef UVEC
#undef NV
#undef VT
#undef TILE_PAD
#undef TILE_INLINE
#endif
