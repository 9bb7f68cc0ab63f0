/* newton_schulz.c: Muon's Newton-Schulz iteration on the Gram matrix (ops/atlas.py,
   newton_schulz), one s x l matrix X (s <= l) at a time, in cache:

       G = X X^T,  A_0 = G / nu^2,  nu = sqrt(tr G) + eps (eps alone where tr G <= 0)
       P_i = a I + b A_i + c A_i A_i,  Q_i = P_i Q_{i-1} (Q_0 = P_0),  A_{i+1} = (P_i A_i) P_i
       Y   = R X,  R = Q_{steps-1} / nu

   ns_fwd: X (n, s, l) -> Y. ns_bwd: (X, dY) -> dX, recomputing G and the iterates (kept per
   matrix in a workspace) and running the chain rule back as autograd does on the PyTorch
   form, but with the transposes of the iterates (symmetric: polynomials in A_0) taken as the
   matrices themselves, which differs from it by rounding. Matrices [start, stop) of the n. */
#ifndef T
#define KERNELS "newton_schulz.c"
#include "each_type.h"
#else

#include "mm.h"  /* mm: the register-tiled batched product (shared with attention.c) */

/* out[i * s + j] = A_i . B_j for the s rows of l of A and B, where s is one vector's width
   (16 floats with AVX-512) and divides l: a row's s dots as s vectors of lane sums,
   reduced by one transposing tree (hsum_rows). With A = B, G = X X^T is exactly symmetric
   (the same products summed in the same tree). Returns 0 (nothing done) for other s, l. */
static int NAME(dots)(const T *A, const T *B, T *out, long s, long l)
{
    /* tile.h's vector types and hsum_rows stay declared after mm.h (only its macros go) */
    typedef NAME(vec) V;
    typedef NAME(uvec) U;
    enum { NW = sizeof(V) / sizeof(T) };
    if (s != NW || l % NW)
        return 0;
    for (long i = 0; i < NW; i++) {
        V x[NW];
#pragma GCC unroll 16
        for (long j = 0; j < NW; j++) x[j] = (V){0};
        for (long m = 0; m < l; m += NW) {
            const V a = *(const U *)(A + i * l + m);
#pragma GCC unroll 16
            for (long j = 0; j < NW; j++) x[j] += a * *(const U *)(B + j * l + m);
        }
        *(U *)(out + i * NW) = NAME(hsum_rows)(x);
    }
    return 1;
}

/* Z = X Y (s = 16): Y's 16 rows held in vectors of 16, each row of Z one chain of 16
   broadcast multiply-adds (the same sums, in the same order, as mm), R rows' chains
   interleaved (independent multiply-adds back to back, not one row's dependent chain) */
static inline void NAME(sq16)(const T *restrict X, const T *restrict Y, T *restrict Z)
{
    typedef T R16 __attribute__((vector_size(16 * sizeof(T)), aligned(sizeof(T)), may_alias));
    enum { R = 4 };
    R16 y[16];
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++) y[p] = *(const R16 *)(Y + 16 * p);  /* no memcpy to the stack */
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += R) {
        R16 acc[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r] = X[16 * (i + r)] * y[0];
#pragma GCC unroll 16
        for (int p = 1; p < 16; p++)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r] += X[16 * (i + r) + p] * y[p];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) *(R16 *)(Z + 16 * (i + r)) = acc[r];
    }
}

/* Z = X Y, s x s, Z distinct from X and Y. Every product of the iteration and its backward
   is of polynomials in the symmetric A_0 (A_k, P_k, Q_k, P_k A_k: symmetric up to rounding),
   so the backward's transposes of them are taken as the matrices themselves. */
static void NAME(sq)(const T *X, const T *Y, T *Z, long s)
{
    if (s == 16)
        NAME(sq16)(X, Y, Z);
    else
        NAME(mm)(X, Y, Z, s, s, s, s, 1, s, 1, s, 0, 0, 0, 0, 0, s);
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

/* The iterates of one matrix: A_i, P_i, Q_i (i < steps) in W (3 steps s^2), from G; V_i =
   P_i A_i (i < steps - 1) at V unless V is 0. */
static T NAME(iterate)(const T *G, T *W, T *V, long s, int steps, T a, T b, T c, T eps, T *tr)
{
    long s2 = s * s;
    T nu = NAME(norm)(G, s, eps, tr), *A = W, *P = W + steps * s2, *Q = W + 2 * steps * s2;
    for (long i = 0; i < s2; i++) A[i] = G[i] / (nu * nu);
    T tmp[s2];
    for (int k = 0; k < steps; k++) {
        T *Ak = A + k * s2, *Pk = P + k * s2, *Qk = Q + k * s2;
        NAME(sq)(Ak, Ak, Pk, s);
        for (long i = 0; i < s2; i++) Pk[i] = c * Pk[i] + b * Ak[i];
        for (long i = 0; i < s; i++) Pk[i * s + i] += a;
        if (k == 0) memcpy(Qk, Pk, s2 * sizeof(T));
        else NAME(sq)(Pk, Qk - s2, Qk, s);
        if (k + 1 < steps) {
            T *Vk = V ? V + k * s2 : tmp;
            NAME(sq)(Pk, Ak, Vk, s);
            NAME(sq)(Vk, Pk, Ak + s2, s);
        }
    }
    return nu;
}

/* G = X X^T (s x s) of X (s x l), both triangles from one dot each: exactly symmetric. */
static void NAME(gram)(const T *X, T *G, long s, long l)
{
    if (NAME(dots)(X, X, G, s, l))
        return;
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
        T nu = NAME(iterate)(G, W, 0, s, steps, a, b, c, eps, &tr);
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
    T *V = t2 + s2;  /* V_k = P_k A_k, kept from the recomputed iteration */
    T nu = NAME(iterate)(g, W, V, s, steps, a, b, c, eps, &tr);
    T dq = 0;  /* the sums below as vector reductions (a scalar chain of s^2 adds each) */
    const T *Qf = Q + (steps - 1) * s2;
#pragma omp simd reduction(+ : dq)
    for (long i = 0; i < s2; i++) {
        dQ[i] = dr[i] / nu;
        dq += dr[i] * Qf[i];
    }
    T dnu = -dq / (nu * nu);
    for (long i = 0; i < s2; i++) dA[i] = 0;
    for (int k = steps - 1; k >= 0; k--) {
        T *Ak = A + k * s2, *Pk = P + k * s2;
        /* Q_k = P_k Q_{k-1} */
        if (k > 0) {
            NAME(sq)(dQ, Q + (k - 1) * s2, dP, s);
            NAME(sq)(Pk, dQ, t1, s);
            memcpy(dQ, t1, s2 * sizeof(T));
        } else {
            memcpy(dP, dQ, s2 * sizeof(T));
        }
        if (k + 1 < steps) {  /* A_{k+1} = V P_k, V = P_k A_k; dA holds dA_{k+1} */
            NAME(sq)(V + k * s2, dA, t2, s);       /* V^T dA */
            NAME(axpy)(dP, t2, 1, s);
            NAME(sq)(dA, Pk, t1, s);               /* dV = dA P^T */
            NAME(sq)(t1, Ak, t2, s);               /* dV A^T */
            NAME(axpy)(dP, t2, 1, s);
            NAME(sq)(Pk, t1, dA, s);               /* dA_k = P^T dV */
        } else {
            for (long i = 0; i < s2; i++) dA[i] = 0;
        }
        /* P_k = a I + b A_k + c A_k A_k */
        NAME(sq)(dP, Ak, t1, s);
        NAME(sq)(Ak, dP, t2, s);
        for (long i = 0; i < s2; i++) dA[i] += b * dP[i] + c * (t1[i] + t2[i]);
    }
    /* A_0 = G / nu^2 */
    T dot = 0;
#pragma omp simd reduction(+ : dot)
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
    T *W = malloc((4 * steps + 9) * s2 * sizeof(T)), tr;
    T *G = W + (4 * steps + 5) * s2, *R = G + s2, *dR = R + s2, *dG = dR + s2;
    for (long m = start; m < stop; m++) {
        const T *x = X + m * s * l, *dy = dY + m * s * l;
        T *dx = dX + m * s * l;
        NAME(gram)(x, G, s, l);
        for (long i = 0; i < s && !NAME(dots)(dy, x, dR, s, l); i++)  /* dR = dY X^T */
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
        /* dX = R^T dY + (dG + dG^T) X (R symmetric, as the iterates) */
        for (long i = 0; i < s; i++)
            for (long k = 0; k < s; k++) G[i * s + k] = dG[i * s + k] + dG[k * s + i];
        NAME(apply)(R, dy, dx, s, l, 0);
        NAME(apply)(G, x, dx, s, l, 1);
    }
    free(W);
}
#endif
