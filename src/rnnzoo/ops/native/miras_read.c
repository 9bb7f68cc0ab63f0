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

#ifndef T
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "exp.h"

#define T float
#define EXP exp_f
#define POW powf
#define NAME(f) f##_f32
#include __FILE__
#undef T
#undef EXP
#undef POW
#undef NAME
#define T double
#define EXP exp_d
#define POW pow
#define NAME(f) f##_f64
#include __FILE__

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

/* W <- a W - e X^T G */
static inline void NAME(advance)(T *restrict W, T at, T et, const T *restrict xs,
                                 const T *restrict gs, long I, long O) {
    for (long i = 0; i < I; i++) {
        T c = et * xs[i];
        T *restrict w = W + i * O;
        for (long o = 0; o < O; o++) w[o] = at * w[o] - c * gs[o];
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
            NAME(advance)(W, a[s], e[s], X + s * I, G + s * O, I, O);
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
    /* W_-1 .. W_C-1, phi(V_0) .. phi(V_C-1), dW, the q-norms */
    T *Wb = malloc(((C + 1) * n + C * n + n + C) * sizeof(T));
    T *Pb = Wb + (C + 1) * n, *dW = Pb + C * n, *norms = dW + n;
    for (long j = j0; j < j1; j++) {
        const T *u0h = u0 + ((j / N) % H) * n;
        memcpy(Wb, U0 + j * n, n * sizeof(T));
        for (long t = 0; t < C; t++) {
            long s = j * C + t;
            memcpy(Wb + (t + 1) * n, Wb + t * n, n * sizeof(T));
            NAME(advance)(Wb + (t + 1) * n, a[s], e[s], X + s * I, G + s * O, I, O);
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
            if (kind == 0) {
                for (long i = 0; i < I; i++) {
                    const T *restrict p = P + i * O;
                    T r = 0;
                    #pragma omp simd reduction(+:r)
                    for (long o = 0; o < O; o++) r += p[o] * dys[o];
                    dxs[i] = r;
                    T *restrict dw = dW + i * O, *restrict du = dUi + i * O;
                    for (long o = 0; o < O; o++) {
                        T dv = p[o] * xs[i] * (dys[o] - r);
                        dw[o] += dv;
                        du[o] += dv;
                    }
                }
            } else {
                T nq = norms[t], sc = POW(nq, 2 - q), dot = 0;
                for (long i = 0; i < I; i++) {
                    const T *restrict p = P + i * O;
                    #pragma omp simd reduction(+:dot)
                    for (long o = 0; o < O; o++) dot += xs[i] * p[o] * dys[o];
                }
                /* dy . w with w = x V = (x P) / sc */
                T k = -(q - 2) * (dot / sc) * POW(nq, 2 - 2 * q);
                for (long i = 0; i < I; i++) {
                    const T *restrict ui = u0h + i * O, *restrict wt = Wt + i * O;
                    T *restrict dw = dW + i * O, *restrict du = dUi + i * O;
                    T r = 0, c = sc * xs[i];
                    #pragma omp simd reduction(+:r)
                    for (long o = 0; o < O; o++) {
                        T v = ui[o] + wt[o];
                        r += v * dys[o];
                        T m = q == 4 ? v * v : (q == 2 ? 1 : POW(fabs(v), q - 2));
                        T dv = c * dys[o] + k * v * m;
                        dw[o] += dv;
                        du[o] += dv;
                    }
                    dxs[i] = sc * r;
                }
            }
            /* dW is now the gradient reaching W_t */
            T at = a[s], et = e[s], dat = 0, det = 0;
            T *restrict dGs = dG + s * O;
            for (long o = 0; o < O; o++) dGs[o] = 0;
            for (long i = 0; i < I; i++) {
                const T *restrict dw = dW + i * O, *restrict wp = Wp + i * O;
                T gi = 0;
                #pragma omp simd reduction(+:dat, gi)
                for (long o = 0; o < O; o++) {
                    dat += dw[o] * wp[o];
                    gi += dw[o] * gs[o];
                    dGs[o] += Xs[i] * dw[o];
                }
                dX[s * I + i] = -et * gi;
                det += Xs[i] * gi;
            }
            for (long o = 0; o < O; o++) dGs[o] *= -et;
            da[s] = dat;
            de[s] = -det;
            for (long k = 0; k < n; k++) dW[k] *= at;
        }
        memcpy(dU0 + j * n, dW, n * sizeof(T));
    }
    free(Wb);
}

#endif
