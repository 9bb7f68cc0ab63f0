/* A wide column tile: WV = 4 vectors of a state row (WT columns, two of tile.h's tiles), for
   the recurrences whose every step waits for a sum over all K rows of the step before
   (momentum_scan.c, delta_scan.c, vector_delta.c): twice a tile.h tile's independent work
   between one step's end and the next step's start, half the per-step work a column. Their
   checkpoints are rows of WT columns at column j0 of a TILE_PAD(V) row (a multiple of WT).
   Also prefetches of a step's rows (a (batch, head) pair's rows lie H rows apart: a page
   boundary every few steps, where the hardware prefetcher stops). Included after tile.h inside
   each_type.h's per-type body; a second inclusion undefines its macros (as tile.h). */
#ifndef WIDE_H_TYPE
#define WIDE_H_TYPE
#define WV 4
#define WT (WV * NV)

/* x[0 .. WV) <- src[0 .. w), zeros past w */
TILE_INLINE void NAME(wide_load)(VEC *restrict x, const T *restrict src, long w) {
    NAME(tile_load)(x, src, w < VT ? w : VT);
    NAME(tile_load)(x + 2, src + VT, w > VT ? w - VT : 0);
}

/* dst[0 .. w) <- x[0 .. WV) */
TILE_INLINE void NAME(wide_store)(T *restrict dst, const VEC *restrict x, long w) {
    NAME(tile_store)(dst, x, w < VT ? w : VT);
    if (w > VT) NAME(tile_store)(dst + VT, x + 2, w - VT);
}

/* the cache lines of x[0 .. n) fetched ahead, for reading or for writing */
TILE_INLINE void NAME(pf_read)(const T *x, long n) {
    for (long j = 0; j < n; j += 64 / (long)sizeof(T)) __builtin_prefetch(x + j, 0, 3);
}
TILE_INLINE void NAME(pf_write)(T *x, long n) {
    for (long j = 0; j < n; j += 64 / (long)sizeof(T)) __builtin_prefetch(x + j, 1, 3);
}

#else
#undef WIDE_H_TYPE
#undef WV
#undef WT
#endif
