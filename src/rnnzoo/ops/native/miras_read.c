/* The per-step reads of Miras' chunk form (ops/memory.py, miras_chunked) for a retention phi
   that is not linear (Memora's row softmax, Moneta's q-scale), forward and backward, one dense
   layer of the memory at a time. Inside a chunk of C steps, from its start U_0,

       W_-1 = U_0,  W_t = a_t W_t-1 - e_t X_t^T G_t,  V_t = U_init + W_t,  y_t = x_t phi(V_t)

   phi (kind 0): softmax over each row (O wide);  (kind 1): V |V|_q^(2-q), the norm over the
   whole I x O matrix. Only (I, O) weights live at a time, in cache; the backward recomputes
   a chunk's W_t and phi(V_t) and runs it back in time, dW the gradient reaching W_t:

       softmax: r = P dy,  dx = r,  dV = P o (x (dy - r)^T)
       q-scale: s = n^(2-q), w = x V,  dx = s V dy,  dV = s x dy^T - (q-2)(dy.w) n^(2-2q) V |V|^(q-2)
       dW += dV,  dU_init += dV,  da_t = <dW, W_t-1>,  de_t = -X_t dW G_t,
       dX_t = -e_t dW G_t,  dG_t = -e_t X_t dW,  dW <- a_t dW  (dU_0 = dW at the end)

   Layouts (row-major, contiguous), j indexing the chunks (J = batch * heads * chunks, head
   h = (j / N) % H): x, X (J, C, I); G, y, dy (J, C, O); a, e (J, C); U_init (H, I, O); U_0,
   dU_0, dU_init (J, I, O) (dU_init one slice per chunk, summed by the caller). Each function
   does the chunks [j0, j1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "miras_read.c"
#include "each_type.h"

#else

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
static void NAME(phi)(const T *restrict u0, const T *restrict W, T *restrict P, long I, long O,
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
static inline void NAME(advance)(const T *W, T *Wn, T at, T et, const T *restrict xs,
                                 const T *restrict gs, long I, long O) {
    for (long i = 0; i < I; i++) {
        T c = et * xs[i];
        const T *w = W + i * O;
        T *wn = Wn + i * O;
        for (long o = 0; o < O; o++) wn[o] = at * w[o] - c * gs[o];
    }
}

/* y += x P over the rows of P (y zeroed first) */
static inline void NAME(read)(const T *restrict x, const T *restrict P, T *restrict y, long I,
                              long O) {
    for (long o = 0; o < O; o++) y[o] = 0;
    for (long i = 0; i < I; i++) {
        const T *restrict p = P + i * O;
        for (long o = 0; o < O; o++) y[o] += x[i] * p[o];
    }
}

/* kind 0's step, row by row in cache: W <- a W - e X^T G, y = x softmax_rows(U_init + W);
   the row's exponentials in p (O wide) */
static void NAME(softmax_read)(const T *restrict u0, T *restrict W, T *restrict p, T at, T et,
                               const T *restrict xs, const T *restrict gs, const T *restrict xr,
                               T *restrict y, long I, long O) {
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
        #pragma omp simd reduction(+:sum)
        for (long o = 0; o < O; o++) {
            p[o] = EXP(p[o] - m);
            sum += p[o];
        }
        T r = xr[i] / sum;
        #pragma omp simd
        for (long o = 0; o < O; o++) y[o] += r * p[o];
    }
}

/* kind 0's step for the backward, row by row: Wn = a W - e X^T G, P = softmax_rows(U_init + Wn) */
static void NAME(softmax_step)(const T *restrict u0, const T *restrict W, T *restrict Wn,
                               T *restrict P, T at, T et, const T *restrict xs,
                               const T *restrict gs, long I, long O) {
    for (long i = 0; i < I; i++) {
        T c = et * xs[i], m = -INFINITY, sum = 0;
        const T *restrict w = W + i * O, *restrict ui = u0 + i * O;
        T *restrict wn = Wn + i * O, *restrict p = P + i * O;
        #pragma omp simd reduction(max:m)
        for (long o = 0; o < O; o++) {
            wn[o] = at * w[o] - c * gs[o];
            p[o] = ui[o] + wn[o];
            m = p[o] > m ? p[o] : m;
        }
        #pragma omp simd reduction(+:sum)
        for (long o = 0; o < O; o++) {
            p[o] = EXP(p[o] - m);
            sum += p[o];
        }
        T inv = 1 / sum;
        #pragma omp simd
        for (long o = 0; o < O; o++) p[o] *= inv;
    }
}

void NAME(miras_read_fwd)(const T *x, const T *u0, const T *U0, const T *a, const T *e,
                          const T *X, const T *G, T *y, long H, long N, long C, long I, long O,
                          int kind, T q, long j0, long j1) {
    long n = I * O;
    T *W = malloc(2 * n * sizeof(T)), *P = W + n, norm;
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        memcpy(W, U0 + j * n, n * sizeof(T));
        for (long t = 0; t < C; t++) {
            long s = j * C + t;
            if (kind == 0) {  /* a row at a time: advance, softmax and read in one pass */
                NAME(softmax_read)(u0h, W, P, a[s], e[s], X + s * I, G + s * O, x + s * I,
                                   y + s * O, I, O);
                continue;
            }
            NAME(advance)(W, W, a[s], e[s], X + s * I, G + s * O, I, O);
            NAME(phi)(u0h, W, P, I, O, kind, q, &norm);
            NAME(read)(x + s * I, P, y + s * O, I, O);
        }
    }
    free(W);
}

void NAME(miras_read_bwd)(const T *x, const T *u0, const T *U0, const T *a, const T *e,
                          const T *X, const T *G, const T *dy, T *dx, T *dU0, T *du0, T *da,
                          T *de, T *dX, T *dG, long H, long N, long C, long I, long O, int kind,
                          T q, long j0, long j1) {
    long n = I * O;
    /* W_-1 .. W_C-1, phi(V_0) .. phi(V_C-1), dW, the q-norms, a row of V |V|^(q-2) */
    T *Wb = malloc(((C + 1) * n + C * n + n + C + O) * sizeof(T));
    T *Pb = Wb + (C + 1) * n, *dW = Pb + C * n, *norms = dW + n, *mv = norms + C;
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        memcpy(Wb, U0 + j * n, n * sizeof(T));
        for (long t = 0; t < C; t++) {
            long s = j * C + t;
            if (kind == 0) {
                NAME(softmax_step)(u0h, Wb + t * n, Wb + (t + 1) * n, Pb + t * n, a[s], e[s],
                                   X + s * I, G + s * O, I, O);
                continue;
            }
            NAME(advance)(Wb + t * n, Wb + (t + 1) * n, a[s], e[s], X + s * I, G + s * O, I, O);
            NAME(phi)(u0h, Wb + (t + 1) * n, Pb + t * n, I, O, kind, q, norms + t);
        }
        T *restrict dUi = du0 + j * n;
        memset(dW, 0, n * sizeof(T));
        memset(dUi, 0, n * sizeof(T));
        for (long t = C - 1; t >= 0; t--) {
            long s = j * C + t;
            const T *restrict P = Pb + t * n, *restrict Wt = Wb + (t + 1) * n,
                    *restrict Wp = Wb + t * n, *restrict xs = x + s * I, *restrict gs = G + s * O,
                    *restrict Xs = X + s * I, *restrict dys = dy + s * O;
            T *restrict dxs = dx + s * I;
            /* per row i: dV's row, then (dW now the gradient reaching W_t) its terms of
               da_t, de_t, dX_t, dG_t, and dW <- a_t dW for the step before */
            T at = a[s], et = e[s], dat = 0, det = 0, sc = 0, k = 0;
            T *restrict dGs = dG + s * O;
            for (long o = 0; o < O; o++) dGs[o] = 0;
            if (kind == 1) {
                T nq = norms[t], dot = 0;
                sc = POW(nq, 2 - q);
                for (long i = 0; i < I; i++) {
                    const T *restrict p = P + i * O;
                    #pragma omp simd reduction(+:dot)
                    for (long o = 0; o < O; o++) dot += xs[i] * p[o] * dys[o];
                }
                /* dy . w with w = x V = (x P) / sc */
                k = -(q - 2) * (dot / sc) * POW(nq, 2 - 2 * q);
            }
            for (long i = 0; i < I; i++) {
                const T *restrict p = P + i * O, *restrict ui = u0h + i * O,
                        *restrict wt = Wt + i * O, *restrict wp = Wp + i * O;
                T *restrict dw = dW + i * O, *restrict du = dUi + i * O;
                T r = 0, gi = 0;
                if (kind == 0) {
                    #pragma omp simd reduction(+:r)
                    for (long o = 0; o < O; o++) r += p[o] * dys[o];
                    dxs[i] = r;
                    T xi = xs[i];
                    #pragma omp simd reduction(+:dat, gi)
                    for (long o = 0; o < O; o++) {
                        T dv = p[o] * xi * (dys[o] - r);
                        du[o] += dv;
                        T d = dw[o] + dv;
                        dat += d * wp[o];
                        gi += d * gs[o];
                        dGs[o] += Xs[i] * d;
                        dw[o] = at * d;
                    }
                } else {
                    T c = sc * xs[i];
                    /* mv = V |V|^(q-2) for this row, the power chosen outside the loops */
                    if (q == 4) {
                        #pragma omp simd reduction(+:r)
                        for (long o = 0; o < O; o++) {
                            T v = ui[o] + wt[o];
                            r += v * dys[o];
                            mv[o] = v * v * v;
                        }
                    } else {
                        for (long o = 0; o < O; o++) {
                            T v = ui[o] + wt[o];
                            r += v * dys[o];
                            mv[o] = v * POW(fabs(v), q - 2);
                        }
                    }
                    #pragma omp simd reduction(+:dat, gi)
                    for (long o = 0; o < O; o++) {
                        T dv = c * dys[o] + k * mv[o];
                        du[o] += dv;
                        T d = dw[o] + dv;
                        dat += d * wp[o];
                        gi += d * gs[o];
                        dGs[o] += Xs[i] * d;
                        dw[o] = at * d;
                    }
                    dxs[i] = sc * r;
                }
                dX[s * I + i] = -et * gi;
                det += Xs[i] * gi;
            }
            for (long o = 0; o < O; o++) dGs[o] *= -et;
            da[s] = dat;
            de[s] = -det;
        }
        memcpy(dU0 + j * n, dW, n * sizeof(T));
    }
    free(Wb);
}

#endif
