/* bands.h: a causal tile's bands for the kernels of rnnzoo.ops.native (shared header,
   included inside a kernel file's typed body, see each_type.h: its names are NAME()'s, one
   set per type); attention.c's sb_heads_* and sm_heads_*, poly_attn.c's pa_heads_*.

   Band m = 1, 2, ... of a tile of queries [i0, i0 + t) over keys [0, e) is rows [R(m-1),
   R(m)) (queries i0 + r, R(0) = 0) over keys [0, C(m)) only, C(m) = i0 + 16 m (whole
   vectors) and R(m) the multiple of 6 (mm's row tile) at or below 16 m, until C(m) reaches
   e: the last band is the remaining rows over all e keys. Keys [C(m-1), C(m)) then get
   queries [R(m-1), t) only. The products skip ~70% of the diagonal block's upper triangle
   (1440 of 2016 entries at t = 64). Row r reads keys j <= i0 + r only (r < R(m) <= 16 m).

       BANDS      rows [r, r1) over keys [0, c) for each band of the tile (t, i0, e)
       KEY_BANDS  keys [c0, c) and their queries [r, t) for each band */
static inline void NAME(band)(long t, long i0, long e, long m, long *r, long *c) {
    const long rr = 16 * m / 6 * 6, cc = i0 + 16 * m, last = cc >= e || rr >= t;
    *r = last ? t : rr;
    *c = last ? e : cc;
}

#ifndef BANDS
#define BANDS for (long m = 1, r = 0, r1, c; NAME(band)(t, i0, e, m, &r1, &c), r < t; m++, r = r1)
#define KEY_BANDS for (long m = 1, r = 0, c0 = 0, r1, c; \
                       NAME(band)(t, i0, e, m, &r1, &c), c0 < e; m++, r = r1, c0 = c)
#endif
