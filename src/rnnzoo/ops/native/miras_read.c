/* The per-step reads of Miras' chunk form (ops/memory.py, miras_chunked) for a retention phi
   that is not linear (Memora's row softmax, Moneta's q-scale), forward and backward, one dense
   layer of the memory at a time. Inside a chunk of C steps, from its start U_0,

       W_-1 = U_0,  W_t = a_t W_t-1 - e_t X_t^T G_t,  V_t = U_init + W_t,  y_t = x_t phi(V_t)

   phi (kind 0): softmax over each row (O wide);  (kind 1): V |V|_q^(2-q), the norm over the
   whole I x O matrix;  (kind 2): the identity (Yaad; its dU_init = sum_t x_t^T dy_t is left
   to the caller, one product). The rows of W_t are independent but for the per-step sums
   over them (the q-norm, dx_t, da_t, de_t, dG_t, the softmax's row sums), so every forward
   and backward runs a chunk one weight row at a time (its W_t over the C steps in registers
   or L1, the per-step sums as lane partials, summed NV steps at a time by tile.h's
   hsum_rows; the softmax's exponentials shifted by the row's max at the chunk's start). The backward recomputes a row's W_t and phi(V_t) and
   runs it back in time, dW the gradient reaching W_t:

       identity: dx = V dy,  dV = x dy^T
       softmax: r = P dy,  dx = r,  dV = P o (x (dy - r)^T)
       q-scale: s = n^(2-q), w = x V,  dx = s V dy,  dV = s x dy^T - (q-2)(dy.w) n^(2-2q) V |V|^(q-2)
       dW += dV,  dU_init += dV,  da_t = <dW, W_t-1>,  de_t = -X_t dW G_t,
       dX_t = -e_t dW G_t,  dG_t = -e_t X_t dW,  dW <- a_t dW  (dU_0 = dW at the end)

   Layouts (row-major, contiguous), j indexing the chunks (J = batch * heads * N chunks, head
   h = (j / N) % H): x, dx (J, C, I); y, dy (J, C, O); a, e (J, C); nrm, written by the
   forward and read by the backward: kind 0's row maxima and inverse sums (J, C, 2, I), kind 1's
   q-norms (J, C), unused by kind 2; U_init, dU_init (H, I, O);
   U_0, dU_0, X, dX, G, dG: N pointers each, one a chunk index n, to (batch * heads, I, O),
   (batch * heads, C, I) and (batch * heads, C, O). Each function does the chunks [j0, j1); the backward adds
   into dU_init (each thread its own, zeroed and summed by the caller). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "miras_read.c"
#include "each_type.h"

#else

#ifndef INLINE
#define INLINE inline __attribute__((always_inline))
#endif

#include "assoc_sums.h"
#include "tile.h"
#ifndef UNROLL
#define UNROLL _Pragma("GCC unroll 8")
#endif

/* chunk j's U_0, X and G: chunk n = j % N of (batch, head) j / N, each chunk's tensor apart
   (the chunk loop's own outputs, not stacked) */
#define CHUNK_POINTERS const T *U0j = U0[j % N] + (j / N) * n, \
    *Xj = X[j % N] + (j / N) * C * I, *Gj = G[j % N] + (j / N) * C * O;

/* the lane sums of v[0 .. n) into out[0 .. n), NV at a time (v, rounded up to NV vectors,
   is overwritten) */
static INLINE void NAME(sums)(VEC *restrict v, T *restrict out, long n) {
    for (long b = 0; b < n; b += NV) {
        long m = n - b < NV ? n - b : NV;
        for (long l = m; l < NV; l++) v[b + l] = (VEC){0};
        VEC s = NAME(hsum_rows)(v + b);
        for (long l = 0; l < m; l++) out[b + l] = s[l];
    }
}

/* kinds 1 and 2's forward a row of the weights at a time (as the backward below): row i's
   W_t in registers over the chunk's steps, y_t += x_t[i] (U_init + W_t)[i] into the chunk's
   (C, O) outputs in L1, and for the q-scale the lane partials of sum |V_t|^q, summed once a
   chunk, which then scales y_t (y_t = x_t V_t |V_t|_q^(2-q)). */
static INLINE void NAME(fwd_rows)(const T *x, const T *u0, const T *const *U0, const T *a,
                                  const T *e, const T *const *X, const T *const *G, T *y,
                                  T *nrm, long H, long N, long C, long I, long O, int kind, T q,
                                  int q4, long j0, long j1) {
    const long n = I * O, VO = (O + NV - 1) / NV, CP = (C + NV - 1) / NV * NV;
    long nv = 2 * C * VO + VO + CP;     /* G_t, y_t (C VO each), U_init's row, sum partials */
    size_t bytes = nv * sizeof(VEC) + CP * sizeof(T);
    bytes = (bytes + TILE_BYTES - 1) / TILE_BYTES * TILE_BYTES;
    VEC *buf = aligned_alloc(TILE_BYTES, bytes);
    memset(buf, 0, bytes);
    VEC *Gb = buf, *yb = Gb + C * VO, *ub = yb + C * VO, *qv = ub + VO;
    T *qs = (T *)(qv + CP);
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        CHUNK_POINTERS
        const T *aj = a + j * C, *ej = e + j * C, *xj = x + j * C * I;
        for (long t = 0; t < C; t++) {
            T *g = (T *)(Gb + t * VO);
            for (long o = 0; o < O; o++) g[o] = Gj[t * O + o];
            for (long v = 0; v < VO; v++) yb[t * VO + v] = (VEC){0};
            qv[t] = (VEC){0};
        }
        for (long i = 0; i < I; i++) {
            T *u = (T *)ub;
            VEC w[VO];
            T *wr = (T *)w;
            for (long o = 0; o < O; o++) { u[o] = u0h[i * O + o]; wr[o] = U0j[i * O + o]; }
            for (long o = O; o < VO * NV; o++) wr[o] = 0;
            for (long t = 0; t < C; t++) {
                T at = aj[t], c = ej[t] * Xj[t * I + i], xi = xj[t * I + i];
                const VEC *gt = Gb + t * VO;
                VEC *yt = yb + t * VO, qacc = (VEC){0};
                UNROLL
                for (long v = 0; v < VO; v++) {
                    w[v] = at * w[v] - c * gt[v];
                    VEC vr = ub[v] + w[v];
                    yt[v] += xi * vr;
                    if (kind == 1) {
                        if (q4) {
                            VEC v2 = vr * vr;
                            qacc += v2 * v2;
                        } else {
                            for (long l = 0; l < NV; l++) qacc[l] += POW(fabs(vr[l]), q);
                        }
                    }
                }
                if (kind == 1) qv[t] += qacc;
            }
        }
        if (kind == 1) NAME(sums)(qv, qs, C);
        for (long t = 0; t < C; t++) {
            T sc = 1;
            if (kind == 1) {
                T nq = POW(qs[t], 1 / q);
                sc = POW(nq, 2 - q);
                nrm[j * C + t] = nq;
            }
            const T *yr = (const T *)(yb + t * VO);
            T *ys = y + (j * C + t) * O;
            for (long o = 0; o < O; o++) ys[o] = sc * yr[o];
        }
    }
    free(buf);
}

/* kind 0's forward a row of the weights at a time too: row i's W_t in registers over the
   chunk's steps, its P_t row exp(V_t - m) for every step in L1 (C rows) and their sums as
   lane partials summed NV steps at a time (a step at a time, every row and step took a max
   and a sum across its lanes), then y_t += x_t[i] / s_t P_t. The shift m is the row's max of
   V at the chunk's start, one horizontal max a row and chunk: the softmax is blind to it, and
   where a step's sum s_t leaves [1e-20, 1e30] (V_t drifted ~45 from it, or not finite) the
   row's steps are done again, each with its own max. The backward takes each step's m and
   1 / s_t (nrm) as before. */
static INLINE void NAME(softmax_rows)(const T *x, const T *u0, const T *const *U0, const T *a,
                                      const T *e, const T *const *X, const T *const *G, T *y,
                                      T *nrm, long H, long N, long C, long I, long O, long j0,
                                      long j1) {
    const long n = I * O, VO = (O + NV - 1) / NV, CP = (C + NV - 1) / NV * NV;
    long nv = 3 * C * VO + 2 * VO + CP;   /* G_t, y_t, P_t (C VO each), U_init's row, the
                                             pad mask, the sums' lane partials */
    size_t bytes = nv * sizeof(VEC) + (CP + 2 * C) * sizeof(T);
    bytes = (bytes + TILE_BYTES - 1) / TILE_BYTES * TILE_BYTES;
    VEC *buf = aligned_alloc(TILE_BYTES, bytes);
    memset(buf, 0, bytes);
    VEC *Gb = buf, *yb = Gb + C * VO, *Pb = yb + C * VO, *ub = Pb + C * VO, *mk = ub + VO,
        *sv = mk + VO;
    T *ss = (T *)(sv + CP), *mt = ss + CP, *iv = mt + C;
    for (long o = 0; o < O; o++) ((T *)mk)[o] = 1;    /* pad lanes 0: out of the sums */
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        CHUNK_POINTERS
        const T *aj = a + j * C, *ej = e + j * C, *xj = x + j * C * I;
        for (long t = 0; t < C; t++) {
            T *g = (T *)(Gb + t * VO);
            for (long o = 0; o < O; o++) g[o] = Gj[t * O + o];
            for (long v = 0; v < VO; v++) yb[t * VO + v] = (VEC){0};
        }
        for (long i = 0; i < I; i++) {
            T *u = (T *)ub, m0 = -INFINITY;
            #pragma omp simd reduction(max:m0)
            for (long o = 0; o < O; o++) {
                u[o] = u0h[i * O + o];
                T v0 = u[o] + U0j[i * O + o];
                m0 = v0 > m0 ? v0 : m0;
            }
            for (int exact = 0; exact < 2; exact++) {
                VEC w[VO];
                T *wr = (T *)w, m = m0;
                for (long o = 0; o < O; o++) wr[o] = U0j[i * O + o];
                for (long o = O; o < VO * NV; o++) wr[o] = 0;
                for (long t = 0; t < C; t++) {
                    T at = aj[t], c = ej[t] * Xj[t * I + i];
                    const VEC *gt = Gb + t * VO;
                    VEC *pv = Pb + t * VO;
                    T *p = (T *)pv;
                    UNROLL
                    for (long v = 0; v < VO; v++) {
                        w[v] = at * w[v] - c * gt[v];
                        pv[v] = ub[v] + w[v];
                    }
                    if (exact) {
                        m = -INFINITY;
                        #pragma omp simd reduction(max:m)
                        for (long o = 0; o < O; o++) m = p[o] > m ? p[o] : m;
                    }
                    mt[t] = m;
                    #pragma omp simd
                    for (long o = 0; o < VO * NV; o++) p[o] = EXP(p[o] - m);
                    if (O % NV) pv[VO - 1] *= mk[VO - 1];
                    VEC s = (VEC){0};
                    UNROLL
                    for (long v = 0; v < VO; v++) s += pv[v];
                    sv[t] = s;
                }
                NAME(sums)(sv, ss, C);
                int ok = 1;
                for (long t = 0; t < C; t++) ok &= ss[t] >= (T)1e-20 && ss[t] <= (T)1e30;
                if (ok) break;
            }
            #pragma omp simd
            for (long t = 0; t < C; t++) iv[t] = 1 / ss[t];
            for (long t = 0; t < C; t++) {
                T r = xj[t * I + i] * iv[t], *st = nrm + (j * C + t) * 2 * I;
                st[i] = mt[t];
                st[I + i] = iv[t];
                const VEC *pv = Pb + t * VO;
                VEC *yt = yb + t * VO;
                UNROLL
                for (long v = 0; v < VO; v++) yt[v] += r * pv[v];
            }
        }
        for (long t = 0; t < C; t++) {
            const T *yr = (const T *)(yb + t * VO);
            T *ys = y + (j * C + t) * O;
            for (long o = 0; o < O; o++) ys[o] = yr[o];
        }
    }
    free(buf);
}

static INLINE void NAME(fwd_chunks)(const T *x, const T *u0, const T *const *U0, const T *a,
                                    const T *e, const T *const *X, const T *const *G, T *y, T *nrm, long H,
                                    long N, long C, long I, long O, int kind, T q, int q4,
                                    long j0, long j1) {
    if (kind == 0)
        NAME(softmax_rows)(x, u0, U0, a, e, X, G, y, nrm, H, N, C, I, O, j0, j1);
    else
        NAME(fwd_rows)(x, u0, U0, a, e, X, G, y, nrm, H, N, C, I, O, kind, q, q4, j0, j1);
}

/* the backward a row of the weights at a time: the rows of W_t (and of phi) are independent
   but for the per-step sums (dx_t, da_t, de_t, dX_t over a row; dG_t over the rows), so each
   row i runs the whole chunk forward (its C + 1 rows of W, O wide, in L1) and back (dW's and
   dU_init's row in registers), and the row sums of all C steps are lane partials summed by
   one transposing tree (hsum_rows) per NV steps instead of a horizontal sum per step. A row
   is OP = O rounded up to NV wide, its pad lanes zero throughout (W, G, dy, U_init and the
   softmax's P are zero there, so dV and dW are). */
static INLINE void NAME(bwd_chunks)(const T *x, const T *u0, const T *const *U0, const T *a,
                                    const T *e, const T *const *X, const T *const *G,
                                    const T *dy, const T *y, const T *nrm, T *dx,
                                    T *const *dU0, T *du0, T *da, T *de, T *const *dX,
                                    T *const *dG, long H, long N, long C, long I, long O,
                                    int kind, T q, int q4, long j0, long j1) {
    const long n = I * O, VO = (O + NV - 1) / NV, CP = (C + NV - 1) / NV * NV;
    /* vectors: dy_t, G_t, dG_t (C VO each), W_-1 .. W_C-1 ((C + 1) VO), P_t (C VO), the
       row of U_init (VO), the lane partials of three sums (3 CP); then scalars: the three
       sums (3 CP), the q-scale's two factors, da_t and de_t's sums (4 C) */
    long nv = (5 * C + 1) * VO + VO + 3 * CP;
    size_t bytes = nv * sizeof(VEC) + (3 * CP + 4 * C) * sizeof(T);
    bytes = (bytes + TILE_BYTES - 1) / TILE_BYTES * TILE_BYTES;
    VEC *buf = aligned_alloc(TILE_BYTES, bytes);
    memset(buf, 0, bytes);
    VEC *dyb = buf, *Gb = dyb + C * VO, *dGb = Gb + C * VO, *Wr = dGb + C * VO,
        *Pr = Wr + (C + 1) * VO, *ub = Pr + C * VO, *rv = ub + VO, *av = rv + CP,
        *gv = av + CP;
    T *rs = (T *)(gv + CP), *gsum = rs + 2 * CP, *sc = gsum + CP, *kk = sc + C,
      *dat = kk + C, *det = dat + C;
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        T *dUi = du0 + ((j / N) % H) * n;   /* accumulated over the chunks */
        CHUNK_POINTERS
        T *dXj = dX[j % N] + (j / N) * C * I, *dGj = dG[j % N] + (j / N) * C * O;
        const T *dyj = dy + j * C * O, *aj = a + j * C, *ej = e + j * C, *xj = x + j * C * I;
        for (long t = 0; t < C; t++) {
            T *d = (T *)(dyb + t * VO), *g = (T *)(Gb + t * VO);
            for (long o = 0; o < O; o++) { d[o] = dyj[t * O + o]; g[o] = Gj[t * O + o]; }
            for (long v = 0; v < VO; v++) dGb[t * VO + v] = (VEC){0};
            av[t] = (VEC){0};
            det[t] = 0;
            if (kind == 1) {
                T nq = nrm[j * C + t];
                sc[t] = POW(nq, 2 - q);
                /* dy . w with w = x V = y / sc */
                kk[t] = -(q - 2) * (NAME(dot)(y + (j * C + t) * O, dyj + t * O, O) / sc[t])
                        * POW(nq, 2 - 2 * q);
            }
        }
        for (long i = 0; i < I; i++) {
            T *u = (T *)ub, *w0 = (T *)Wr;
            for (long o = 0; o < O; o++) { u[o] = u0h[i * O + o]; w0[o] = U0j[i * O + o]; }
            VEC w[VO];          /* the running row in registers, stored for the way back */
            UNROLL
            for (long v = 0; v < VO; v++) w[v] = Wr[v];
            for (long t = 0; t < C; t++) {      /* the row of W_t, and of P_t for the softmax */
                T at = aj[t], c = ej[t] * Xj[t * I + i];
                const VEC *gt = Gb + t * VO;
                VEC *wt = Wr + (t + 1) * VO;
                UNROLL
                for (long v = 0; v < VO; v++) {
                    w[v] = at * w[v] - c * gt[v];
                    wt[v] = w[v];
                }
                if (kind == 0) {
                    const T *st = nrm + (j * C + t) * 2 * I, *wr = (const T *)wt;
                    T m = st[i], inv = st[I + i], *p = (T *)(Pr + t * VO);
                    #pragma omp simd
                    for (long o = 0; o < O; o++) p[o] = EXP(u[o] + wr[o] - m) * inv;
                    VEC r = (VEC){0};
                    for (long v = 0; v < VO; v++) r += Pr[t * VO + v] * dyb[t * VO + v];
                    rv[t] = r;
                }
            }
            if (kind == 0) NAME(sums)(rv, rs, C);   /* r_t = P_t dy_t, which dV_t takes */
            VEC dw[VO], du[VO];
            UNROLL
            for (long v = 0; v < VO; v++) { dw[v] = (VEC){0}; du[v] = (VEC){0}; }
            for (long t = C - 1; t >= 0; t--) {
                T at = aj[t], xi = xj[t * I + i], Xi = Xj[t * I + i], r = rs[t];
                T c = kind == 1 ? sc[t] * xi : xi, k = kk[t];
                const VEC *dyt = dyb + t * VO, *wt = Wr + (t + 1) * VO, *wp = Wr + t * VO,
                          *gt = Gb + t * VO, *pt = Pr + t * VO;
                VEC *dgt = dGb + t * VO;
                VEC racc = (VEC){0}, aacc = (VEC){0}, gacc = (VEC){0};
                UNROLL
                for (long v = 0; v < VO; v++) {
                    VEC dv;
                    if (kind == 0) {
                        dv = pt[v] * (xi * (dyt[v] - r));
                    } else {
                        VEC vr = ub[v] + wt[v];
                        racc += vr * dyt[v];
                        if (kind == 2) {
                            dv = c * dyt[v];
                        } else if (q4) {
                            dv = c * dyt[v] + k * (vr * vr * vr);
                        } else {    /* V |V|^(q-2), lane by lane */
                            VEC pw;
                            for (long l = 0; l < NV; l++) pw[l] = POW(fabs(vr[l]), q - 2);
                            dv = c * dyt[v] + k * (vr * pw);
                        }
                    }
                    if (kind != 2) du[v] += dv;
                    VEC dd = dw[v] + dv;
                    aacc += dd * wp[v];
                    dgt[v] += Xi * dd;
                    gacc += dd * gt[v];
                    dw[v] = at * dd;
                }
                if (kind != 0) rv[t] = racc;
                av[t] += aacc;      /* da_t's lane partials: over all rows, summed once */
                gv[t] = gacc;
            }
            if (kind != 0) NAME(sums)(rv, rs, C);
            NAME(sums)(gv, gsum, C);
            for (long t = 0; t < C; t++) {
                dx[(j * C + t) * I + i] = kind == 1 ? sc[t] * rs[t] : rs[t];
                dXj[t * I + i] = -ej[t] * gsum[t];
                det[t] += Xj[t * I + i] * gsum[t];
            }
            const T *dwr = (const T *)dw, *dur = (const T *)du;
            T *dU0r = dU0[j % N] + (j / N) * n + i * O, *dUr = dUi + i * O;
            for (long o = 0; o < O; o++) dU0r[o] = dwr[o];
            if (kind != 2)
                for (long o = 0; o < O; o++) dUr[o] += dur[o];
        }
        NAME(sums)(av, dat, C);
        for (long t = 0; t < C; t++) {
            const T *dg = (const T *)(dGb + t * VO);
            for (long o = 0; o < O; o++) dGj[t * O + o] = -ej[t] * dg[o];
            da[j * C + t] = dat[t];
            de[j * C + t] = -det[t];
        }
    }
    free(buf);
}

/* the exported kernels: the bodies above with the row width O a constant for the common
   widths (short rows' loops otherwise spend more on their set-up than on their work) */
#define WIDTHS(CALL, K, Q4) switch (O) { case 32: CALL(32, K, Q4); break; \
    case 64: CALL(64, K, Q4); break; case 128: CALL(128, K, Q4); break; default: CALL(O, K, Q4); }
/* and the kind a constant too (its branches out of the inner loops), q = 4 apart (a general
   q, its powers lane by lane, is not worth a body per width: one, compiled once) */
#define EACH(CALL) switch (kind) { case 0: WIDTHS(CALL, 0, 0) break; \
    case 1: if (q == 4) { WIDTHS(CALL, 1, 1) } else { CALL(O, 1, 0); } break; \
    default: WIDTHS(CALL, 2, 0) }

void NAME(miras_read_fwd)(const T *x, const T *u0, const T *const *U0, const T *a,
                          const T *e, const T *const *X, const T *const *G, T *y, T *nrm, long H, long N, long C, long I,
                          long O, int kind, T q, long j0, long j1) {
#define FWD(W, K, Q4) NAME(fwd_chunks)(x, u0, U0, a, e, X, G, y, nrm, H, N, C, I, W, K, q, Q4, \
                                      j0, j1)
    EACH(FWD)
#undef FWD
}

void NAME(miras_read_bwd)(const T *x, const T *u0, const T *const *U0, const T *a,
                          const T *e, const T *const *X, const T *const *G, const T *dy,
                          const T *y, const T *nrm, T *dx, T *const *dU0, T *du0, T *da, T *de,
                          T *const *dX, T *const *dG, long H, long N, long C,
                          long I, long O, int kind, T q, long j0, long j1) {
#define BWD(W, K, Q4) NAME(bwd_chunks)(x, u0, U0, a, e, X, G, dy, y, nrm, dx, dU0, du0, da, de, \
                                       dX, dG, H, N, C, I, W, K, q, Q4, j0, j1)
    EACH(BWD)
#undef BWD
}
#undef EACH
#undef WIDTHS
#undef CHUNK_POINTERS
#include "tile.h"  /* its names undefined for the next type */

#endif
