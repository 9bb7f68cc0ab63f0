/* The per-step reads of Miras' chunk form (ops/memory.py, miras_chunked) for a retention phi
   that is not linear (Memora's row softmax, Moneta's q-scale), forward and backward, one dense
   layer of the memory at a time. Inside a chunk of C steps, from its start U_0,

       W_-1 = U_0,  W_t = a_t W_t-1 - e_t X_t^T G_t,  V_t = U_init + W_t,  y_t = x_t phi(V_t)

   phi (kind 0): softmax over each row (O wide);  (kind 1): V |V|_q^(2-q), the norm over the
   whole I x O matrix;  (kind 2): the identity (Yaad; its dU_init = sum_t x_t^T dy_t is left
   to the caller, one product). Only (I, O) weights live at a time, in cache; the backward recomputes
   a chunk's W_t and phi(V_t) and runs it back in time, dW the gradient reaching W_t:

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

/* sum |v|^q over n values */
static T NAME(qsum)(const T *restrict v, long n, T q) {
    T s = 0;
    if (q == 4) {
        #pragma omp simd reduction(+:s)
        for (long k = 0; k < n; k++) { T u = v[k] * v[k]; s += u * u; }
    } else if (q == 2) {
        for (long k = 0; k < n; k++) s += v[k] * v[k];
    } else {
        for (long k = 0; k < n; k++) s += POW(fabs(v[k]), q);
    }
    return s;
}

/* P = phi(U_init + W) (P may not alias W); the q-norm of V in *norm for kind 1 */
static INLINE void NAME(phi)(const T *restrict u0, const T *restrict W, T *restrict P, long I, long O,
                      int kind, T q, T *norm) {
    long n = I * O;
    for (long k = 0; k < n; k++) P[k] = u0[k] + W[k];
    if (kind == 0) {
        for (long i = 0; i < I; i++) {
            T *restrict p = P + i * O;
            T m = p[0], s = 0;
            #pragma omp simd reduction(max:m)
            for (long o = 1; o < O; o++) m = p[o] > m ? p[o] : m;
            for (long o = 0; o < O; o++) p[o] = EXP(p[o] - m);
            #pragma omp simd reduction(+:s)
            for (long o = 0; o < O; o++) s += p[o];
            T inv = 1 / s;
            for (long o = 0; o < O; o++) p[o] *= inv;
        }
    } else {
        T nq = POW(NAME(qsum)(P, n, q), 1 / q);
        T sc = POW(nq, 2 - q);
        *norm = nq;
        for (long k = 0; k < n; k++) P[k] *= sc;
    }
}

/* Wn = a W - e X^T G (Wn may be W) */
static INLINE void NAME(advance)(const T *W, T *Wn, T at, T et, const T *restrict xs,
                                 const T *restrict gs, long I, long O) {
    for (long i = 0; i < I; i++) {
        T c = et * xs[i];
        const T *w = W + i * O;
        T *wn = Wn + i * O;
        for (long o = 0; o < O; o++) wn[o] = at * w[o] - c * gs[o];
    }
}

/* y += x P over the rows of P (y zeroed first) */
static INLINE void NAME(read)(const T *restrict x, const T *restrict P, T *restrict y, long I,
                              long O) {
    for (long o = 0; o < O; o++) y[o] = 0;
    for (long i = 0; i < I; i++) {
        const T *restrict p = P + i * O;
        for (long o = 0; o < O; o++) y[o] += x[i] * p[o];
    }
}

/* kind 0's step, row by row in cache: W <- a W - e X^T G, y = x softmax_rows(U_init + W);
   the row's exponentials in p (O wide); each row's max and 1 / sum in st (2 I: the maxima,
   then the inverses) for the backward */
static INLINE void NAME(softmax_read)(const T *restrict u0, T *restrict W, T *restrict p, T at, T et,
                               const T *restrict xs, const T *restrict gs, const T *restrict xr,
                               T *restrict y, T *restrict st, long I, long O) {
    for (long o = 0; o < O; o++) y[o] = 0;
    for (long i = 0; i < I; i++) {
        T c = et * xs[i], m = -INFINITY, sum = 0;
        T *restrict w = W + i * O;
        const T *restrict ui = u0 + i * O;
        #pragma omp simd reduction(max:m)
        for (long o = 0; o < O; o++) {
            T wn = at * w[o] - c * gs[o];
            w[o] = wn;
            p[o] = ui[o] + wn;
            m = p[o] > m ? p[o] : m;
        }
        #pragma omp simd
        for (long o = 0; o < O; o++) p[o] = EXP(p[o] - m);
        sum = NAME(total)(p, O);
        st[i] = m;
        st[I + i] = 1 / sum;
        T r = xr[i] / sum;
        #pragma omp simd
        for (long o = 0; o < O; o++) y[o] += r * p[o];
    }
}

/* kind 2's step, row by row: W <- a W - e X^T G, y = x (U_init + W) */
static INLINE void NAME(linear_read)(const T *restrict u0, T *restrict W, T at, T et,
                                     const T *restrict xs, const T *restrict gs,
                                     const T *restrict xr, T *restrict y, long I, long O) {
    for (long o = 0; o < O; o++) y[o] = 0;
    for (long i = 0; i < I; i++) {
        T c = et * xs[i], r = xr[i];
        T *restrict w = W + i * O;
        const T *restrict ui = u0 + i * O;
        #pragma omp simd
        for (long o = 0; o < O; o++) {
            T wn = at * w[o] - c * gs[o];
            w[o] = wn;
            y[o] += r * (ui[o] + wn);
        }
    }
}

/* kind 0's step for the backward, row by row: Wn = a W - e X^T G, P = softmax_rows(U_init + Wn)
   with the forward's row maxima and inverse sums st (one pass a row) */
static INLINE void NAME(softmax_step)(const T *restrict u0, const T *restrict W, T *restrict Wn,
                               T *restrict P, T at, T et, const T *restrict xs,
                               const T *restrict gs, const T *restrict st, long I, long O) {
    for (long i = 0; i < I; i++) {
        T c = et * xs[i], m = st[i], inv = st[I + i];
        const T *restrict w = W + i * O, *restrict ui = u0 + i * O;
        T *restrict wn = Wn + i * O, *restrict p = P + i * O;
        #pragma omp simd
        for (long o = 0; o < O; o++) {
            wn[o] = at * w[o] - c * gs[o];
            p[o] = EXP(ui[o] + wn[o] - m) * inv;
        }
    }
}

/* chunk j's U_0, X and G: chunk n = j % N of (batch, head) j / N, each chunk's tensor apart
   (the chunk loop's own outputs, not stacked) */
#define CHUNK_POINTERS const T *U0j = U0[j % N] + (j / N) * n, \
    *Xj = X[j % N] + (j / N) * C * I, *Gj = G[j % N] + (j / N) * C * O;

static INLINE void NAME(fwd_chunks)(const T *x, const T *u0, const T *const *U0, const T *a,
                                    const T *e, const T *const *X, const T *const *G, T *y, T *nrm, long H,
                                    long N, long C, long I, long O, int kind, T q, long j0,
                                    long j1) {
    long n = I * O;
    T *W = malloc(2 * n * sizeof(T)), *P = W + n;
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        CHUNK_POINTERS
        memcpy(W, U0j, n * sizeof(T));
        for (long t = 0; t < C; t++) {
            long s = j * C + t;
            if (kind == 0) {  /* a row at a time: advance, softmax and read in one pass */
                NAME(softmax_read)(u0h, W, P, a[s], e[s], Xj + t * I, Gj + t * O, x + s * I,
                                   y + s * O, nrm + s * 2 * I, I, O);
                continue;
            }
            if (kind == 2) {
                NAME(linear_read)(u0h, W, a[s], e[s], Xj + t * I, Gj + t * O, x + s * I,
                                  y + s * O, I, O);
                continue;
            }
            NAME(advance)(W, W, a[s], e[s], Xj + t * I, Gj + t * O, I, O);
            NAME(phi)(u0h, W, P, I, O, kind, q, nrm + s);
            NAME(read)(x + s * I, P, y + s * O, I, O);
        }
    }
    free(W);
}

static INLINE void NAME(bwd_chunks)(const T *x, const T *u0, const T *const *U0, const T *a,
                                    const T *e, const T *const *X, const T *const *G,
                                    const T *dy, const T *y, const T *nrm, T *dx,
                                    T *const *dU0, T *du0, T *da, T *de, T *const *dX,
                                    T *const *dG, long H, long N, long C, long I, long O,
                                    int kind, T q, long j0, long j1) {
    long n = I * O;
    /* the chunk's steps in segments of S, the last first: a segment's W (and softmax(V))
       stay in L2 (the whole chunk's, 2 C + 1 matrices, did not) at the cost of advancing W
       from the chunk's start to each segment's (W alone). The q-scale needs no phi(V): its
       norms and its outputs y (for dy . y) come from the forward. */
    long S = (256 * 1024) / ((kind == 0 ? 2 : 1) * n * (long)sizeof(T));
    S = S < 1 ? 1 : (S > C ? C : S);
    /* W_t0-1 .. W_t1-1, softmax(V_t0) .. softmax(V_t1-1), dW, rows of V, dV, dW and da_t's
       terms */
    T *Wb = malloc(((S + 1) * n + (kind == 0 ? S * n : 0) + n + 4 * O) * sizeof(T));
    T *Pb = Wb + (S + 1) * n, *dW = Pb + (kind == 0 ? S * n : 0), *vr = dW + n,
      *dv = vr + O, *dd = dv + O, *dav = dd + O;
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        T *restrict dUi = du0 + ((j / N) % H) * n;   /* accumulated over the chunks */
        CHUNK_POINTERS
        T *dXj = dX[j % N] + (j / N) * C * I, *dGj = dG[j % N] + (j / N) * C * O;
        memset(dW, 0, n * sizeof(T));
        for (long t1 = C, t0; t1 > 0; t1 = t0) {
        t0 = ((t1 - 1) / S) * S;
        memcpy(Wb, U0j, n * sizeof(T));
        for (long t = 0; t < t0; t++)
            NAME(advance)(Wb, Wb, a[j * C + t], e[j * C + t], Xj + t * I,
                          Gj + t * O, I, O);
        for (long t = t0; t < t1; t++) {
            long s = j * C + t, u = t - t0;
            if (kind == 0) {
                NAME(softmax_step)(u0h, Wb + u * n, Wb + (u + 1) * n, Pb + u * n, a[s], e[s],
                                   Xj + t * I, Gj + t * O, nrm + s * 2 * I, I, O);
                continue;
            }
            NAME(advance)(Wb + u * n, Wb + (u + 1) * n, a[s], e[s], Xj + t * I, Gj + t * O, I, O);
        }
        for (long t = t1 - 1; t >= t0; t--) {
            long s = j * C + t, u = t - t0;
            const T *restrict P = Pb + u * n, *restrict Wt = Wb + (u + 1) * n,
                    *restrict Wp = Wb + u * n, *restrict xs = x + s * I, *restrict gs = Gj + t * O,
                    *restrict Xs = Xj + t * I, *restrict dys = dy + s * O;
            T *restrict dxs = dx + s * I;
            /* per row i: dV's row (in dv), then (dW now the gradient reaching W_t) its terms
               of da_t (in dav, O wide), de_t, dX_t, dG_t, and dW <- a_t dW for the step
               before */
            T at = a[s], et = e[s], det = 0, sc = 0, k = 0;
            T *restrict dGs = dGj + t * O;
            for (long o = 0; o < O; o++) { dGs[o] = 0; dav[o] = 0; }
            if (kind == 1) {
                T nq = nrm[s];
                sc = POW(nq, 2 - q);
                /* dy . w with w = x V = y / sc */
                k = -(q - 2) * (NAME(dot)(y + s * O, dys, O) / sc) * POW(nq, 2 - 2 * q);
            }
            for (long i = 0; i < I; i++) {
                const T *restrict p = P + i * O, *restrict ui = u0h + i * O,
                        *restrict wt = Wt + i * O, *restrict wp = Wp + i * O;
                T *restrict dw = dW + i * O, *restrict du = dUi + i * O;
                T xi = xs[i];
                if (kind == 0) {
                    T r = NAME(dot)(p, dys, O);
                    dxs[i] = r;
                    #pragma omp simd
                    for (long o = 0; o < O; o++) dv[o] = p[o] * xi * (dys[o] - r);
                } else {
                    #pragma omp simd
                    for (long o = 0; o < O; o++) vr[o] = ui[o] + wt[o];
                    T r = NAME(dot)(vr, dys, O);
                    if (kind == 2) {  /* dV = x dy^T, its dU_init summed by the caller */
                        dxs[i] = r;
                        #pragma omp simd
                        for (long o = 0; o < O; o++) dv[o] = xi * dys[o];
                    } else {          /* V |V|^(q-2), the power chosen outside the loops */
                        T c = sc * xi;
                        dxs[i] = sc * r;
                        if (q == 4) {
                            #pragma omp simd
                            for (long o = 0; o < O; o++)
                                dv[o] = c * dys[o] + k * vr[o] * vr[o] * vr[o];
                        } else {
                            for (long o = 0; o < O; o++)
                                dv[o] = c * dys[o] + k * vr[o] * POW(fabs(vr[o]), q - 2);
                        }
                    }
                }
                if (kind != 2) {
                    #pragma omp simd
                    for (long o = 0; o < O; o++) du[o] += dv[o];
                }
                #pragma omp simd
                for (long o = 0; o < O; o++) {
                    T d = dw[o] + dv[o];
                    dd[o] = d;
                    dav[o] += d * wp[o];
                    dGs[o] += Xs[i] * d;
                    dw[o] = at * d;
                }
                T gi = NAME(dot)(dd, gs, O);
                dXj[t * I + i] = -et * gi;
                det += Xs[i] * gi;
            }
            for (long o = 0; o < O; o++) dGs[o] *= -et;
            da[s] = NAME(total)(dav, O);
            de[s] = -det;
        }
        }
        memcpy(dU0[j % N] + (j / N) * n, dW, n * sizeof(T));
    }
    free(Wb);
}

/* the exported kernels: the bodies above with the row width O a constant for the common
   widths (short rows' loops otherwise spend more on their set-up than on their work) */
#define WIDTHS(CALL) switch (O) { case 32: CALL(32); break; case 64: CALL(64); break; \
    case 128: CALL(128); break; default: CALL(O); }

void NAME(miras_read_fwd)(const T *x, const T *u0, const T *const *U0, const T *a,
                          const T *e, const T *const *X, const T *const *G, T *y, T *nrm, long H, long N, long C, long I,
                          long O, int kind, T q, long j0, long j1) {
#define FWD(W) NAME(fwd_chunks)(x, u0, U0, a, e, X, G, y, nrm, H, N, C, I, W, kind, q, j0, j1)
    WIDTHS(FWD)
#undef FWD
}

void NAME(miras_read_bwd)(const T *x, const T *u0, const T *const *U0, const T *a,
                          const T *e, const T *const *X, const T *const *G, const T *dy,
                          const T *y, const T *nrm, T *dx, T *const *dU0, T *du0, T *da, T *de,
                          T *const *dX, T *const *dG, long H, long N, long C,
                          long I, long O, int kind, T q, long j0, long j1) {
#define BWD(W) NAME(bwd_chunks)(x, u0, U0, a, e, X, G, dy, y, nrm, dx, dU0, du0, da, de, dX, \
                                dG, H, N, C, I, W, kind, q, j0, j1)
    WIDTHS(BWD)
#undef BWD
}
#undef WIDTHS
#undef CHUNK_POINTERS

#endif
