/* blockdiag.h: blockdiag.c's gated row bodies (mlstm's block-diagonal q, k, v maps with
   the gate pre-activations' dense product), shared with mlstm_scan.c's fused q, k and gates
   pass. Included inside a kernel file's typed body (each_type.h) after tile.h; no guard: once
   per type. The layouts are blockdiag.c's (its header comment).

   bd_setup / bd_fwd_rows / bd_bwd_rows / bd_put_back: one call's bs = 4 vector buffers
   (lane-major weights; the backward's weight-gradient accumulators Do, zeroed), the rows
   [r0, r1) through them (any number of calls, the same buffers), and the backward's Do put
   back into dW0 / dW1. */

#ifndef GATE_ROWS  /* rows a block of gate_dots_bwd (their x and dx rows stay in L1) */
#define GATE_ROWS 8
#endif

/* g[j] = G[j, :] . x for j < ng: eight rows at a time, a vector accumulator each (eight
   independent chains: one chain a row waits on its FMA latency), the rest one by one */
static inline void NAME(gate_dots)(const T *restrict G, const T *restrict x, T *restrict g,
                                   long dim, long ng) {
    long j0 = 0;
    for (; j0 + 8 <= ng; j0 += 8) {
        VEC a[8] = {0};
        long c = 0;
        for (; c + NV <= dim; c += NV) {
            const VEC xv = *(const UVEC *)(x + c);
            for (long jj = 0; jj < 8; jj++) a[jj] += *(const UVEC *)(G + (j0 + jj) * dim + c) * xv;
        }
        for (long jj = 0; jj < 8; jj++) {
            T s = NAME(hsum)(a[jj]);
            for (long cc = c; cc < dim; cc++) s += G[(j0 + jj) * dim + cc] * x[cc];
            g[j0 + jj] = s;
        }
    }
    for (; j0 < ng; j0++) {
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (long c = 0; c < dim; c++) s += G[j0 * dim + c] * x[c];
        g[j0] = s;
    }
}

/* for the rows r < nr of a block (x's rows xs apart, dx's and dg's dim and ng apart):
   dx[r] += sum_j dg[r, j] G[j, :] and dG[j, :] += sum_r dg[r, j] x[r], a vector of columns
   at a time: eight of dG's rows held in registers across the block's rows (not loaded and
   stored back once a row), dx's vector across the ng rows of G */
static inline void NAME(gate_dots_bwd)(const T *restrict G, const T *restrict x,
                                       const T *restrict dg, T *restrict dx, T *restrict dG,
                                       long xs, long dim, long ng, long nr) {
    long c = 0;
    for (; c + NV <= dim; c += NV) {
        for (long r = 0; r < nr; r++) {
            VEC d = *(UVEC *)(dx + r * dim + c);
            for (long j = 0; j < ng; j++) d += *(const UVEC *)(G + j * dim + c) * dg[r * ng + j];
            *(UVEC *)(dx + r * dim + c) = d;
        }
        long j0 = 0;
        for (; j0 + 8 <= ng; j0 += 8) {
            VEC a[8];
            for (long jj = 0; jj < 8; jj++) a[jj] = *(UVEC *)(dG + (j0 + jj) * dim + c);
            for (long r = 0; r < nr; r++) {
                const VEC xv = *(const UVEC *)(x + r * xs + c);
                for (long jj = 0; jj < 8; jj++) a[jj] += xv * dg[r * ng + j0 + jj];
            }
            for (long jj = 0; jj < 8; jj++) *(UVEC *)(dG + (j0 + jj) * dim + c) = a[jj];
        }
        for (; j0 < ng; j0++) {
            VEC a = *(UVEC *)(dG + j0 * dim + c);
            for (long r = 0; r < nr; r++) a += *(const UVEC *)(x + r * xs + c) * dg[r * ng + j0];
            *(UVEC *)(dG + j0 * dim + c) = a;
        }
    }
    for (; c < dim; c++)
        for (long r = 0; r < nr; r++)
            for (long j = 0; j < ng; j++) {
                dx[r * dim + c] += G[j * dim + c] * dg[r * ng + j];
                dG[j * dim + c] += dg[r * ng + j] * x[r * xs + c];
            }
}

#if TILE_CAT(TILE_SIZE, NAME()) == 4
typedef int NAME(imask) __attribute__((vector_size(TILE_BYTES)));
#else
typedef long long NAME(imask) __attribute__((vector_size(TILE_BYTES)));
#endif

/* m[j]: lane l reads lane 4 (l / 4) + j (block-wise broadcast of a block's entry j) */
static inline void NAME(block_masks)(NAME(imask) *m) {
    for (long j = 0; j < 4; j++)
        for (long l = 0; l < NV; l++) m[j][l] = (l & ~3L) | j;
}

/* The map's forward for bs = 4 on whole vectors of columns: lane c = 4 b + o,
   y[c] = sum_i Wi[i][c] x_i[c] with Wi[i][4 b + o] = W[b, o, i] and x_i = x's lanes 4 b + i
   broadcast over each block (a shuffle). Columns [0, nvd). */
static inline void NAME(fwd4_vec)(const T *restrict xr, T *restrict yr, const T *restrict Wi,
                                  long ld, long nvd) {
    NAME(imask) m[4];
    NAME(block_masks)(m);
    for (long c = 0; c < nvd; c += NV) {
        const VEC xv = *(const UVEC *)(xr + c);
        VEC acc = {0};
        for (long i = 0; i < 4; i++) acc += *(const VEC *)(Wi + i * ld + c) * __builtin_shuffle(xv, m[i]);
        *(UVEC *)(yr + c) = acc;
    }
}

/* Wi (the forward's) or Wo (the backward's) for columns [0, c0) of W (c0 / 4, 4, 4): row j,
   lane 4 b + l holds W[b, l, j] (fwd) or W[b, j, l] (bwd) */
static inline void NAME(lane_major)(const T *restrict W, T *restrict out, long ld, long c0,
                                    int bwd) {
    for (long c = 0; c < c0; c++)
        for (long j = 0; j < 4; j++)
            out[j * ld + c] = bwd ? W[(c & ~3L) * 4 + j * 4 + (c & 3)]
                                  : W[(c & ~3L) * 4 + (c & 3) * 4 + j];
}

static inline void NAME(gated_fwd_rows)(const T *restrict x, const T *restrict W0,
                                        const T *restrict W1, const T *restrict G,
                                        T *restrict y0, T *restrict y1, T *restrict g, long xs,
                                        long dim, const long bs, long ng, long r0, long r1,
                                        const T *restrict v, long ld, long c0, T *restrict sum) {
    T total = 0;
    VEC acc[4] = {{0}};
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * xs;
        T *restrict y0r = y0 + r * dim;
        if (c0) {  /* bs = 4's whole vectors (v: Wi of W0, then of W1, 4 rows of ld each) */
            NAME(fwd4_vec)(xr, y0r, v, ld, c0);
            if (W1) NAME(fwd4_vec)(xr, y1 + r * dim, v + 4 * ld, ld, c0);
        }
        for (long b = c0; b < dim; b += bs)
            for (long o = 0; o < bs; o++) {
                T a0 = 0;
                for (long i = 0; i < bs; i++) a0 += W0[(b + o) * bs + i] * xr[b + i];
                y0r[b + o] = a0;
            }
        if (W1) {
            T *restrict y1r = y1 + r * dim;
            for (long b = c0; b < dim; b += bs)
                for (long o = 0; o < bs; o++) {
                    T a1 = 0;
                    for (long i = 0; i < bs; i++) a1 += W1[(b + o) * bs + i] * xr[b + i];
                    y1r[b + o] = a1;
                }
        }
        NAME(gate_dots)(G, xr, g + r * ng, dim, ng);
        if (sum) {  /* the row's outputs summed while in L1 (a finiteness check's sum), in
                       four vector accumulators kept across the rows */
            const T *restrict y1r = W1 ? y1 + r * dim : 0, *restrict gr = g + r * ng;
            long c = 0;
            for (; c + NV <= dim; c += NV) {
                VEC a = *(const UVEC *)(y0r + c);
                if (y1r) a += *(const UVEC *)(y1r + c);
                acc[(c / NV) & 3] += a;
            }
            for (; c < dim; c++) total += y0r[c] + (y1r ? y1r[c] : 0);
            for (long j = 0; j < ng; j++) total += gr[j];
        }
    }
    if (sum) *sum = total + NAME(hsum)(acc[0] + acc[1] + acc[2] + acc[3]);
}

/* The map's backward for bs = 4 on whole vectors of columns (NV lanes = NV / 4 blocks): with
   lane c = 4 b + i and dy_o = dy's lanes 4 b + o broadcast over each block (a shuffle),
       dx[c] (+)= sum_o Wo[o][c] dy_o[c],   Wo[o][4 b + i] = W[b, o, i],
       Do[o][c] += dy_o[c] x[c]             (dW[b, o, i] = Do[o][4 b + i], put back after)
   eight FMAs and four shuffles a vector instead of 32 scalar multiply-adds. Columns past the
   last whole vector: the scalar body. */

static inline void NAME(bwd4_vec)(const T *restrict x, const T *restrict dy,
                                  T *restrict dx, const T *restrict Wo, T *restrict Do,
                                  long ld, long nvd, int add, long xs, long dim, long nr) {
    /* rows r < nr (x's xs apart, dy's and dx's dim apart): Wo's and Do's vectors of a column
       block held in registers across the rows (Do not loaded and stored back once a row) */
    NAME(imask) m[4];
    NAME(block_masks)(m);
    for (long c = 0; c < nvd; c += NV) {
        VEC w[4], D[4];
        for (long o = 0; o < 4; o++) {
            w[o] = *(const VEC *)(Wo + o * ld + c);
            D[o] = *(const VEC *)(Do + o * ld + c);
        }
        for (long r = 0; r < nr; r++) {
            const VEC xv = *(const UVEC *)(x + r * xs + c), dv = *(const UVEC *)(dy + r * dim + c);
            VEC acc = {0};
            if (add) acc = *(const UVEC *)(dx + r * dim + c);
            for (long o = 0; o < 4; o++) {
                const VEC d = __builtin_shuffle(dv, m[o]);
                acc += w[o] * d;
                D[o] += d * xv;
            }
            *(UVEC *)(dx + r * dim + c) = acc;
        }
        for (long o = 0; o < 4; o++) *(VEC *)(Do + o * ld + c) = D[o];
    }
}

/* (v: bs = 4's vector buffers Wo0, Do0, Wo1, Do1 (4 rows of ld each) for the columns [0, c0),
   NULL with c0 = 0 for the scalar body alone; dx0, rows dim apart as dx's, or NULL: added to
   dx (another consumer's gradient of x, summed here instead of by a pass after)) */
static inline void NAME(gated_bwd_rows)(const T *restrict x, const T *restrict W0,
                                        const T *restrict W1, const T *restrict G,
                                        const T *restrict dy0, const T *restrict dy1,
                                        const T *restrict dg, T *restrict dx, T *restrict dW0,
                                        T *restrict dW1, T *restrict dG, long xs, long dim,
                                        const long bs, long ng, long r0, long r1, T *restrict v,
                                        long ld, long c0, const T *restrict dx0) {
    for (long ra = r0; ra < r1; ra += GATE_ROWS) {  /* blocks of rows (in L1) */
        const long nr = r1 - ra < GATE_ROWS ? r1 - ra : GATE_ROWS;
        if (dx0) memcpy(dx + ra * dim, dx0 + ra * dim, nr * dim * sizeof(T));
        if (c0) {
            NAME(bwd4_vec)(x + ra * xs, dy0 + ra * dim, dx + ra * dim, v, v + 4 * ld, ld, c0,
                           dx0 != NULL, xs, dim, nr);
            if (W1)
                NAME(bwd4_vec)(x + ra * xs, dy1 + ra * dim, dx + ra * dim, v + 8 * ld,
                               v + 12 * ld, ld, c0, 1, xs, dim, nr);
        }
        for (long r = ra; r < ra + nr && c0 < dim; r++) {  /* the scalar body's columns */
            const T *restrict xr = x + r * xs, *restrict d0 = dy0 + r * dim;
            T *restrict dxr = dx + r * dim;
            for (long b = c0; b < dim; b += bs) {
                for (long i = 0; i < bs; i++) {
                    T acc = 0;
                    for (long o = 0; o < bs; o++) acc += W0[(b + o) * bs + i] * d0[b + o];
                    dxr[b + i] = dx0 ? dxr[b + i] + acc : acc;
                }
                for (long o = 0; o < bs; o++)
                    for (long i = 0; i < bs; i++) dW0[(b + o) * bs + i] += d0[b + o] * xr[b + i];
            }
            if (W1) {
                const T *restrict d1 = dy1 + r * dim;
                for (long b = c0; b < dim; b += bs) {
                    for (long i = 0; i < bs; i++) {
                        T acc = 0;
                        for (long o = 0; o < bs; o++) acc += W1[(b + o) * bs + i] * d1[b + o];
                        dxr[b + i] += acc;
                    }
                    for (long o = 0; o < bs; o++)
                        for (long i = 0; i < bs; i++)
                            dW1[(b + o) * bs + i] += d1[b + o] * xr[b + i];
                }
            }
        }
        NAME(gate_dots_bwd)(G, x + ra * xs, dg + ra * ng, dx + ra * dim, dG, xs, dim, ng, nr);
    }
}


/* bs = 4 with whole vectors of columns: the lane-major weights of W0 (and W1) for the
   columns [0, *c0), forward Wi (4 rows of ld = *c0 each, W0's then W1's) or backward Wo and
   Do (Wo0, Do0, Wo1, Do1: 16 rows, Do zero); NULL with *c0 = 0 when the scalar bodies do all
   (free() it after) */
static inline T *NAME(bd_setup)(const T *restrict W0, const T *restrict W1, long dim, long bs,
                                int bwd, long *c0) {
    *c0 = 0;
    if (bs != 4 || dim < NV) return NULL;
    const long ld = dim / NV * NV;
    T *v = aligned_alloc(TILE_BYTES, (bwd ? 16 : 8) * ld * sizeof(T));
    for (long m = 0; m < 2; m++) {
        const T *restrict W = m ? W1 : W0;
        if (!W) continue;
        NAME(lane_major)(W, v + (bwd ? 8 : 4) * m * ld, ld, ld, bwd);
        if (bwd) memset(v + (8 * m + 4) * ld, 0, 4 * ld * sizeof(T));
    }
    *c0 = ld;
    return v;
}

/* the backward's Do into dW0 / dW1 (dW[b, o, i] = Do[o][4 b + i], columns [0, c0)) */
static inline void NAME(bd_put_back)(const T *restrict v, long c0, T *restrict dW0,
                                     T *restrict dW1) {
    for (long m = 0; m < 2; m++) {
        T *restrict dW = m ? dW1 : dW0;
        if (!dW || !c0) continue;
        const T *restrict Do = v + (8 * m + 4) * c0;
        for (long c = 0; c < c0; c++)
            for (long o = 0; o < 4; o++) dW[(c & ~3L) * 4 + o * 4 + (c & 3)] = Do[o * c0 + c];
    }
}

/* gated_fwd_rows with bs a constant where it can be (4, 2, 8; 4 alone where the including
   file defines BD_ONLY4); v, c0 from bd_setup */
static inline void NAME(bd_fwd_rows)(const T *restrict x, const T *restrict W0,
                                     const T *restrict W1, const T *restrict G, T *restrict y0,
                                     T *restrict y1, T *restrict g, long xs, long dim, long bs,
                                     long ng, long r0, long r1, const T *restrict v, long c0,
                                     T *restrict sum) {
    if (bs == 4)
        NAME(gated_fwd_rows)(x, W0, W1, G, y0, y1, g, xs, dim, 4, ng, r0, r1, v, c0, c0, sum);
#ifndef BD_ONLY4
    else if (bs == 2)
        NAME(gated_fwd_rows)(x, W0, W1, G, y0, y1, g, xs, dim, 2, ng, r0, r1, v, c0, c0, sum);
    else if (bs == 8)
        NAME(gated_fwd_rows)(x, W0, W1, G, y0, y1, g, xs, dim, 8, ng, r0, r1, v, c0, c0, sum);
#endif
    else
        NAME(gated_fwd_rows)(x, W0, W1, G, y0, y1, g, xs, dim, bs, ng, r0, r1, v, c0, c0, sum);
}

/* gated_bwd_rows likewise (dW0, dW1, dG accumulate: zero them first; dx0 as there) */
static inline void NAME(bd_bwd_rows)(const T *restrict x, const T *restrict W0,
                                     const T *restrict W1, const T *restrict G,
                                     const T *restrict dy0, const T *restrict dy1,
                                     const T *restrict dg, T *restrict dx, T *restrict dW0,
                                     T *restrict dW1, T *restrict dG, long xs, long dim, long bs,
                                     long ng, long r0, long r1, T *restrict v, long c0,
                                     const T *restrict dx0) {
    if (bs == 4)
        NAME(gated_bwd_rows)(x, W0, W1, G, dy0, dy1, dg, dx, dW0, dW1, dG, xs, dim, 4, ng, r0, r1,
                             v, c0, c0, dx0);
#ifndef BD_ONLY4
    else if (bs == 2)
        NAME(gated_bwd_rows)(x, W0, W1, G, dy0, dy1, dg, dx, dW0, dW1, dG, xs, dim, 2, ng, r0, r1,
                             v, c0, c0, dx0);
    else if (bs == 8)
        NAME(gated_bwd_rows)(x, W0, W1, G, dy0, dy1, dg, dx, dW0, dW1, dG, xs, dim, 8, ng, r0, r1,
                             v, c0, c0, dx0);
#endif
    else
        NAME(gated_bwd_rows)(x, W0, W1, G, dy0, dy1, dg, dx, dW0, dW1, dG, xs, dim, bs, ng, r0,
                             r1, v, c0, c0, dx0);
}
