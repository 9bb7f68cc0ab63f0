/* RMSNorm over groups of n channels times a per-channel weight, times a gate (the output
   heads of lightnet, lightning_attention, gla, gsa, hgrn2), forward and backward in one pass
   over a row each way:

       out = (o r) w a,   r = 1 / sqrt(mean_group(o^2) + eps),   a = act(z)
       act: 0 none (a = 1, z unused), 1 silu (z sigma(z)), 2 sigmoid (sigma(z))

   Backward, with n^ = o r, dn = dout a w:  do = r (dn - n^ mean_group(dn n^)),
   dz = dout (n^ w) act'(z),  dw += dout a n^ (this call's rows only: the caller sums).
   Layouts: o, z, out, do, dz (rows, W) contiguous, W a multiple of n; w, dw (W); rstd
   (rows, W / n). Rows [r0, r1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "head_norm.c"
#include "each_type.h"

#else

/* sigma(z), act(z) and act'(z) for act 1 (silu) or 2 (sigmoid); branch-free */
#define GATE(z, s, a, da)                                                                    \
    const T s = 1 / (1 + EXP(-(z)));                                                         \
    const T a = act == 1 ? (z) * s : s;                                                      \
    const T da = act == 1 ? s * (1 + (z) * (1 - s)) : s * (1 - s)

void NAME(rms_gate_fwd)(const T *restrict o, const T *restrict z, const T *restrict w,
                        T *restrict out, T *restrict rstd, long W, long n, long act, T eps,
                        long r0, long r1) {
    const long G = W / n;
    for (long r = r0; r < r1; r++)
        for (long g = 0; g < G; g++) {
            const long off = r * W + g * n;
            const T *restrict x = o + off;
            T ss = 0;
#pragma omp simd reduction(+ : ss)
            for (long j = 0; j < n; j++) ss += x[j] * x[j];
            const T rs = 1 / SQRT(ss / n + eps);
            rstd[r * G + g] = rs;
            const T *restrict wg = w + g * n, *restrict zg = z ? z + off : NULL;
            T *restrict y = out + off;
            if (!act) {
#pragma omp simd
                for (long j = 0; j < n; j++) y[j] = x[j] * rs * wg[j];
                continue;
            }
#pragma omp simd
            for (long j = 0; j < n; j++) {
                GATE(zg[j], s, a, da);
                (void)da;
                y[j] = x[j] * rs * wg[j] * a;
            }
        }
}

void NAME(rms_gate_bwd)(const T *restrict o, const T *restrict z, const T *restrict w,
                        const T *restrict rstd, const T *restrict dout, T *restrict dx,
                        T *restrict dz, T *restrict dw, long W, long n, long act, long r0,
                        long r1) {
    const long G = W / n;
    for (long c = 0; c < W; c++) dw[c] = 0;
    for (long r = r0; r < r1; r++)
        for (long g = 0; g < G; g++) {
            const long off = r * W + g * n;
            const T *restrict x = o + off, *restrict dy = dout + off, *restrict wg = w + g * n;
            const T *restrict zg = z ? z + off : NULL;
            T *restrict dxg = dx + off, *restrict dzg = dz ? dz + off : NULL, *restrict dwg = dw + g * n;
            const T rs = rstd[r * G + g];
            T sdn = 0;
            if (!act) {
#pragma omp simd reduction(+ : sdn)
                for (long j = 0; j < n; j++) {
                    const T nh = x[j] * rs, dn = dy[j] * wg[j];
                    dwg[j] += dy[j] * nh;
                    dxg[j] = dn;
                    sdn += dn * nh;
                }
            } else {
#pragma omp simd reduction(+ : sdn)
                for (long j = 0; j < n; j++) {
                    GATE(zg[j], s, a, da);
                    const T nh = x[j] * rs, dn = dy[j] * a * wg[j];
                    dzg[j] = dy[j] * nh * wg[j] * da;
                    dwg[j] += dy[j] * a * nh;
                    dxg[j] = dn;
                    sdn += dn * nh;
                }
            }
            const T m = sdn / n;
#pragma omp simd
            for (long j = 0; j < n; j++) dxg[j] = rs * (dxg[j] - x[j] * rs * m);
        }
}

#undef GATE
#endif
