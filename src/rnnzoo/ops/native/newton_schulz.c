/* newton_schulz.c: Muon's Newton-Schulz iteration on the Gram matrix (ops/atlas.py,
   newton_schulz), one s x l matrix X (s <= l) at a time, in cache:

       G = X X^T,  A_0 = G / nu^2,  nu = sqrt(tr G) + eps (eps alone where tr G <= 0)
       P_i = a I + b A_i + c A_i A_i,  Q_i = P_i Q_{i-1} (Q_0 = P_0),  A_{i+1} = (P_i A_i) P_i
       Y   = R X,  R = Q_{steps-1} / nu

   ns_fwd: X (n, s, l) -> Y. ns_bwd: (X, dY) -> dX, recomputing G and the iterates (kept per
   matrix in a workspace) and running the chain rule back with every transpose written out,
   as autograd does on the PyTorch form. Matrices [start, stop) of the n. */
#ifndef T
#define KERNELS "newton_schulz.c"
#include "each_type.h"
#else

#include "mm.h"  /* mm: the register-tiled batched product (shared with attention.c) */

/* Z = X Y (tx: X^T, ty: Y^T), s x s, Z distinct from X and Y (Y^T transposed on the stack:
   mm's own packing of a strided B allocates a buffer a call) */
static void NAME(sq)(const T *X, const T *Y, T *Z, long s, int tx, int ty)
{
    T Yt[ty ? s * s : 1];
    if (ty) {
        for (long i = 0; i < s; i++)
            for (long j = 0; j < s; j++) Yt[j * s + i] = Y[i * s + j];
        Y = Yt;
    }
    NAME(mm)(X, Y, Z, s, s, s, tx ? 1 : s, tx ? s : 1, s, 1, s, 0, 0, 0, 0, 0, s);
}

/* A += alpha * X (s x s) */
static void NAME(axpy)(T *A, const T *X, T alpha, long s)
{
    for (long i = 0; i < s * s; i++) A[i] += alpha * X[i];
}

static T NAME(norm)(const T *G, long s, T eps, T *tr)
{
    T t = 0;
    for (long i = 0; i < s; i++) t += G[i * s + i];
    *tr = t;
    return (t > 0 ? SQRT(t) : 0) + eps;
}

/* The iterates of one matrix: A_i, P_i, Q_i (i < steps) in W (3 steps s^2), from G. */
static T NAME(iterate)(const T *G, T *W, long s, int steps, T a, T b, T c, T eps, T *tr)
{
    long s2 = s * s;
    T nu = NAME(norm)(G, s, eps, tr), *A = W, *P = W + steps * s2, *Q = W + 2 * steps * s2;
    for (long i = 0; i < s2; i++) A[i] = G[i] / (nu * nu);
    T tmp[s2];
    for (int k = 0; k < steps; k++) {
        T *Ak = A + k * s2, *Pk = P + k * s2, *Qk = Q + k * s2;
        NAME(sq)(Ak, Ak, Pk, s, 0, 0);
        for (long i = 0; i < s2; i++) Pk[i] = c * Pk[i] + b * Ak[i];
        for (long i = 0; i < s; i++) Pk[i * s + i] += a;
        if (k == 0) memcpy(Qk, Pk, s2 * sizeof(T));
        else NAME(sq)(Pk, Qk - s2, Qk, s, 0, 0);
        if (k + 1 < steps) {
            NAME(sq)(Pk, Ak, tmp, s, 0, 0);
            NAME(sq)(tmp, Pk, Ak + s2, s, 0, 0);
        }
    }
    return nu;
}

/* G = X X^T (s x s) of X (s x l), both triangles from one dot each: exactly symmetric. */
static void NAME(gram)(const T *X, T *G, long s, long l)
{
    for (long i = 0; i < s; i++)
        for (long j = i; j < s; j++) {
            const T *x = X + i * l, *y = X + j * l;
            T acc = 0;
#pragma omp simd reduction(+ : acc)
            for (long m = 0; m < l; m++) acc += x[m] * y[m];
            G[i * s + j] = G[j * s + i] = acc;
        }
}

/* Y (+)= R X (s x s times s x l; acc: add to Y). */
static void NAME(apply)(const T *R, const T *X, T *Y, long s, long l, int acc)
{
    NAME(mm)(R, X, Y, s, l, s, s, 1, l, 1, l, 0, 0, 0, acc, 0, s);
}

void NAME(ns_fwd)(const T *X, T *Y, long s, long l, int steps, double a, double b, double c,
                  double eps, long start, long stop)
{
    long s2 = s * s;
    T *W = malloc((3 * steps + 2) * s2 * sizeof(T)), tr;
    T *G = W + 3 * steps * s2, *R = G + s2;
    for (long m = start; m < stop; m++) {
        NAME(gram)(X + m * s * l, G, s, l);
        T nu = NAME(iterate)(G, W, s, steps, a, b, c, eps, &tr);
        const T *Q = W + (3 * steps - 1) * s2;
        for (long i = 0; i < s2; i++) R[i] = Q[i] / nu;
        NAME(apply)(R, X + m * s * l, Y + m * s * l, s, l, 0);
    }
    free(W);
}

/* dG of one matrix from dR, its iterates recomputed in W from G. */
static void NAME(poly_bwd)(const T *g, const T *dr, T *dg, T *W, long s, int steps, T a, T b,
                           T c, T eps)
{
    long s2 = s * s;
    T tr;
    T *dQ = W + 3 * steps * s2, *dA = dQ + s2, *dP = dA + s2, *t1 = dP + s2, *t2 = t1 + s2;
    T *A = W, *P = W + steps * s2, *Q = W + 2 * steps * s2;
    T nu = NAME(iterate)(g, W, s, steps, a, b, c, eps, &tr);
    T dnu = 0;
    const T *Qf = Q + (steps - 1) * s2;
    for (long i = 0; i < s2; i++) {
        dQ[i] = dr[i] / nu;
        dnu -= dr[i] * Qf[i] / (nu * nu);
    }
    for (long i = 0; i < s2; i++) dA[i] = 0;
    for (int k = steps - 1; k >= 0; k--) {
        T *Ak = A + k * s2, *Pk = P + k * s2;
        /* Q_k = P_k Q_{k-1} */
        if (k > 0) {
            NAME(sq)(dQ, Q + (k - 1) * s2, dP, s, 0, 1);
            NAME(sq)(Pk, dQ, t1, s, 1, 0);
            memcpy(dQ, t1, s2 * sizeof(T));
        } else {
            memcpy(dP, dQ, s2 * sizeof(T));
        }
        if (k + 1 < steps) {  /* A_{k+1} = V P_k, V = P_k A_k; dA holds dA_{k+1} */
            NAME(sq)(Pk, Ak, t1, s, 0, 0);               /* V */
            NAME(sq)(t1, dA, t2, s, 1, 0);               /* V^T dA */
            NAME(axpy)(dP, t2, 1, s);
            NAME(sq)(dA, Pk, t1, s, 0, 1);               /* dV = dA P^T */
            NAME(sq)(t1, Ak, t2, s, 0, 1);               /* dV A^T */
            NAME(axpy)(dP, t2, 1, s);
            NAME(sq)(Pk, t1, dA, s, 1, 0);               /* dA_k = P^T dV */
        } else {
            for (long i = 0; i < s2; i++) dA[i] = 0;
        }
        /* P_k = a I + b A_k + c A_k A_k */
        NAME(sq)(dP, Ak, t1, s, 0, 1);
        NAME(sq)(Ak, dP, t2, s, 1, 0);
        for (long i = 0; i < s2; i++) dA[i] += b * dP[i] + c * (t1[i] + t2[i]);
    }
    /* A_0 = G / nu^2 */
    T dot = 0;
    for (long i = 0; i < s2; i++) {
        dg[i] = dA[i] / (nu * nu);
        dot += dA[i] * g[i];
    }
    dnu -= 2 * dot / (nu * nu * nu);
    if (tr > 0) {
        T dtr = dnu / (2 * SQRT(tr));
        for (long i = 0; i < s; i++) dg[i * s + i] += dtr;
    }
}

/* dX from dY: Y = R X with R = R(G), G = X X^T: dX = R^T dY + (dG + dG^T) X,
   dR = dY X^T. */
void NAME(ns_bwd)(const T *X, const T *dY, T *dX, long s, long l, int steps, double a,
                  double b, double c, double eps, long start, long stop)
{
    long s2 = s * s;
    T *W = malloc((3 * steps + 9) * s2 * sizeof(T)), tr;
    T *G = W + (3 * steps + 5) * s2, *R = G + s2, *dR = R + s2, *dG = dR + s2;
    for (long m = start; m < stop; m++) {
        const T *x = X + m * s * l, *dy = dY + m * s * l;
        T *dx = dX + m * s * l;
        NAME(gram)(x, G, s, l);
        for (long i = 0; i < s; i++)
            for (long j = 0; j < s; j++) {
                const T *u = dy + i * l, *v = x + j * l;
                T acc = 0;
#pragma omp simd reduction(+ : acc)
                for (long q = 0; q < l; q++) acc += u[q] * v[q];
                dR[i * s + j] = acc;
            }
        NAME(poly_bwd)(G, dR, dG, W, s, steps, a, b, c, eps);   /* leaves the iterates in W */
        T nu = NAME(norm)(G, s, eps, &tr);
        const T *Q = W + (3 * steps - 1) * s2;
        for (long i = 0; i < s2; i++) R[i] = Q[i] / nu;
        /* dX = R^T dY + (dG + dG^T) X */
        for (long i = 0; i < s; i++)
            for (long k = 0; k < s; k++) {
                dR[i * s + k] = R[k * s + i];              /* R^T, in dR's place */
                G[i * s + k] = dG[i * s + k] + dG[k * s + i];
            }
        NAME(apply)(dR, dy, dx, s, l, 0);
        NAME(apply)(G, x, dx, s, l, 1);
    }
    free(W);
}
#endif
