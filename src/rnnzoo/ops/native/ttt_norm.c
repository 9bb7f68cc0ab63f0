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
   (rows laid out (B, H, per, D)).

   ttt_out_fwd / ttt_out_bwd: the TTT layers' output o = q + LN(z) w + b (ops/memory.py:
   inner_output, F.layer_norm's biased variance), a row at a time (ATen: a layer norm, an
   add and an addcmul, their backward two products and two sums over the rows):
       zh = (z - mean z) / s,  s = sqrt(mean (z - mean z)^2 + eps),  o = q + zh w + b;
   backward from g: dq = g (the caller's), u = g w,  dz = (u - mean u - zh mean(u zh)) / s,
   and this call's sums over its rows of g zh and g into dw, db ((H, D), accumulated in
   double). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ttt_norm.c"
#include "each_type.h"

#else

#include "ttt_norm.h"

void NAME(ttt_norm_fwd)(const T *restrict Z, const T *restrict tg, const T *restrict w,
                        const T *restrict b, T *restrict G, long D, long per, long H,
                        double eps, long r0, long r1) {
    T *zh = malloc(2 * D * sizeof(T)), *u = zh + D;
    for (long r = r0; r < r1; r++) {
        const long h = (r / per) % H;
        NAME(ttt_norm_fwd_row)(Z + r * D, tg + r * D, w + h * D, b + h * D, G + r * D, zh, u,
                               D, (T)eps);
    }
    free(zh);
}

void NAME(ttt_norm_bwd)(const T *restrict Z, const T *restrict tg, const T *restrict w,
                        const T *restrict b, const T *restrict dG, T *restrict dZ,
                        T *restrict dt, T *restrict dw, T *restrict db, long D, long per,
                        long H, double eps, long r0, long r1) {
    T *sc = malloc(5 * D * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const long h = (r / per) % H, o = r * D;
        NAME(ttt_norm_bwd_row)(Z + o, tg + o, w + h * D, b + h * D, dG + o, dZ + o, dt + o,
                               dw + o, db + o, sc, D, (T)eps);
    }
    free(sc);
}

void NAME(ttt_out_fwd)(const T *restrict q, const T *restrict z, const T *restrict w,
                       const T *restrict b, T *restrict o, long D, long per, long H,
                       double eps, long r0, long r1) {
    T *zh = malloc(D * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const long h = (r / per) % H;
        const T *restrict qr = q + r * D, *restrict wh = w + h * D, *restrict bh = b + h * D;
        T *restrict orow = o + r * D;
        NAME(ttt_norm_row)(z + r * D, zh, D, (T)eps);
#pragma omp simd
        for (long c = 0; c < D; c++) orow[c] = qr[c] + zh[c] * wh[c] + bh[c];
    }
    free(zh);
}

void NAME(ttt_out_bwd)(const T *restrict z, const T *restrict w, const T *restrict g,
                       T *restrict dz, T *restrict dw, T *restrict db, long D, long per,
                       long H, double eps, long r0, long r1) {
    double *acc = calloc(2 * H * D, sizeof(double)), *accb = acc + H * D;
    T *zh = malloc(2 * D * sizeof(T)), *u = zh + D;
    for (long r = r0; r < r1; r++) {
        const long h = (r / per) % H;
        const T *restrict gr = g + r * D, *restrict wh = w + h * D;
        double *restrict aw = acc + h * D, *restrict ab = accb + h * D;
        const T s = NAME(ttt_norm_row)(z + r * D, zh, D, (T)eps);
#pragma omp simd
        for (long c = 0; c < D; c++) u[c] = gr[c] * wh[c];
        NAME(ttt_norm_jac)(u, zh, s, dz + r * D, D);  /* dz = J (g w) */
#pragma omp simd
        for (long c = 0; c < D; c++) {
            aw[c] += (double)(gr[c] * zh[c]);
            ab[c] += (double)gr[c];
        }
    }
    for (long i = 0; i < H * D; i++) {
        dw[i] = (T)acc[i];
        db[i] = (T)accb[i];
    }
    free(zh);
    free(acc);
}

#endif
