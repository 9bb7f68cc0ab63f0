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

#endif
