/* The gradient of test-time training's inner loss through its layer norm (ops/memory.py:
   _norm_loss_grad, the TTT layers' mini-batch loop, Titans with its norm), a row of D at a
   time, and that gradient's own backward: ~17 small torch ops forward and ~35 backward
   a mini-batch become one pass each.

   Per row z (D), target t, the head's norm weight w and bias b:
       d = z - mean z,  s = sqrt(mean d^2 + eps),  zh = d / s,  e = zh w + b - t,  u = e w
       G = J u,   J x = (x - mean x - zh mean(x zh)) / s         (J: the norm's Jacobian, symmetric)
   Backward from g (of G), with c = mean(u d), m = mean u, S = sum g (u - m), gd = sum g d:
       r = J g,  de = r w,  dt = -de,  db = de,  dw = e r + zh de
       dz = J (w de) + center(v),   v = -S d / (D s^3) - (g c + gd u / D) / s^3 + 3 gd c d / (D s^5)
   (v: G's dependence on z through s and zh; checked against autograd in float64).
   dw, db are per row: the caller sums them over the rows of a head.
   Rows r in [r0, r1) of a contiguous (rows, D) block; a row's head is (r / per) % H
   (rows laid out (B, H, per, D)). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ttt_norm.c"
#include "each_type.h"

#else

/* mean, s and zh of one row into zh; returns s */
static inline T NAME(ttt_norm_row)(const T *restrict z, T *restrict zh, long D, T eps) {
    T mu = 0, v = 0;
    #pragma omp simd reduction(+:mu)
    for (long j = 0; j < D; j++) mu += z[j];
    mu /= D;
    #pragma omp simd reduction(+:v)
    for (long j = 0; j < D; j++) {
        zh[j] = z[j] - mu;
        v += zh[j] * zh[j];
    }
    T s = SQRT(v / D + eps), is = 1 / s;
    #pragma omp simd
    for (long j = 0; j < D; j++) zh[j] *= is;
    return s;
}

/* out = J x = (x - mean x - zh mean(x zh)) / s */
static inline void NAME(ttt_norm_jac)(const T *restrict x, const T *restrict zh, T s,
                                      T *restrict out, long D) {
    T sx = 0, sxz = 0;
    #pragma omp simd reduction(+:sx, sxz)
    for (long j = 0; j < D; j++) {
        sx += x[j];
        sxz += x[j] * zh[j];
    }
    const T is = 1 / s;
    sx /= D;
    sxz /= D;
    #pragma omp simd
    for (long j = 0; j < D; j++) out[j] = (x[j] - sx - zh[j] * sxz) * is;
}

void NAME(ttt_norm_fwd)(const T *restrict Z, const T *restrict tg, const T *restrict w,
                        const T *restrict b, T *restrict G, long D, long per, long H,
                        double eps, long r0, long r1) {
    T *zh = malloc(2 * D * sizeof(T)), *u = zh + D;
    for (long r = r0; r < r1; r++) {
        const long h = (r / per) % H;
        const T *z = Z + r * D, *t = tg + r * D, *wh = w + h * D, *bh = b + h * D;
        T s = NAME(ttt_norm_row)(z, zh, D, (T)eps);
        #pragma omp simd
        for (long j = 0; j < D; j++) u[j] = (zh[j] * wh[j] + bh[j] - t[j]) * wh[j];
        NAME(ttt_norm_jac)(u, zh, s, G + r * D, D);
    }
    free(zh);
}

void NAME(ttt_norm_bwd)(const T *restrict Z, const T *restrict tg, const T *restrict w,
                        const T *restrict b, const T *restrict dG, T *restrict dZ,
                        T *restrict dt, T *restrict dw, T *restrict db, long D, long per,
                        long H, double eps, long r0, long r1) {
    T *zh = malloc(5 * D * sizeof(T)), *e = zh + D, *u = e + D, *rg = u + D, *x = rg + D;
    for (long r = r0; r < r1; r++) {
        const long h = (r / per) % H;
        const T *z = Z + r * D, *t = tg + r * D, *wh = w + h * D, *bh = b + h * D;
        const T *g = dG + r * D;
        T *dz = dZ + r * D;
        const T s = NAME(ttt_norm_row)(z, zh, D, (T)eps);
        T m = 0, c = 0, S = 0, gd = 0, sg = 0;
        #pragma omp simd reduction(+:m, c, S, gd, sg)
        for (long j = 0; j < D; j++) {
            e[j] = zh[j] * wh[j] + bh[j] - t[j];
            u[j] = e[j] * wh[j];
            m += u[j];
            c += u[j] * zh[j];          /* mean(u d) = s mean(u zh) */
            gd += g[j] * zh[j];         /* sum g d = s sum g zh */
            sg += g[j];
            S += g[j] * u[j];
        }
        m /= D;
        c *= s / D;
        gd *= s;
        S -= sg * m;
        NAME(ttt_norm_jac)(g, zh, s, rg, D);
        #pragma omp simd
        for (long j = 0; j < D; j++) {
            const T de = rg[j] * wh[j];
            dt[r * D + j] = -de;
            db[r * D + j] = de;
            dw[r * D + j] = e[j] * rg[j] + zh[j] * de;
            x[j] = wh[j] * de;
        }
        NAME(ttt_norm_jac)(x, zh, s, dz, D);
        /* center(v), d = s zh: v = zh (3 gd c / (D s^4) - S / (D s^2)) - (g c + gd u / D) / s^3 */
        const T is3 = 1 / (s * s * s), a = (3 * gd * c / (s * s) - S) / (D * s * s);
        const T gdD = gd / D;
        T mv = 0;
        #pragma omp simd reduction(+:mv)
        for (long j = 0; j < D; j++) {
            x[j] = zh[j] * a - (g[j] * c + gdD * u[j]) * is3;
            mv += x[j];
        }
        mv /= D;
        #pragma omp simd
        for (long j = 0; j < D; j++) dz[j] += x[j] - mv;
    }
    free(zh);
}

#endif
