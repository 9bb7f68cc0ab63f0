/* The output heads of mamba2, mamba and mlstm, fused: a skip input, a SiLU gate and a
   group norm in one pass forward and one backward over each row of W channels (groups of
   n contiguous channels), instead of a dozen elementwise passes through autograd.

   gate_rms (mamba2; mamba with norm = 0):
       a = y + s xs,   u = a silu(z),   out = u r w,   r = (mean_group(u^2) + eps)^(-1/2)
   (norm = 0: out = u.)  Backward, with sg = sigmoid(z), gu = g w:
       du = r (gu - u r^2 mean_group(gu u))   (norm = 0: du = g),   dw += g u r
       da = du z sg,   dz = du a sg (1 + z (1 - sg)),   dy = da,   dxs = da s,   ds += da xs
   norm_gate (mlstm: GroupNorm per head, then the skip, then the gate):
       yh = (y - mean_group(y)) rstd,   rstd = (var_group(y) + eps)^(-1/2)
       a = yh w + b + s xs,   out = a silu(z)
   Backward: da = g z sg,   dz = g a sg (1 + z (1 - sg)),   dw += da yh,   db += da,
       ds += da xs,   dxs = da s,   dy = rstd (da w - mean_group(da w) - yh mean_group(da w yh))

   Layouts (row-major, contiguous): y, xs, z, out, g, dy, dxs, dz (rows, W); s, w, b (W);
   in gate_rms the rows of xs and z are xst and zst elements apart (strided views: >= W);
   stats: r (rows, W / n) for gate_rms, [mean, rstd] (rows, W / n, 2) for norm_gate; the
   parameter gradients dw, ds, db (W) are this call's own slice (the caller sums slices).
   xs, s may be NULL (no skip). Each function does rows [r0, r1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "gated_norm.c"
#include "each_type.h"

#else

void NAME(gate_rms_fwd)(const T *restrict y, const T *restrict xs, const T *restrict s, const T *restrict z, const T *restrict w, T *restrict out,
                        T *restrict stats, long W, long n, T eps, int norm, long xst, long zst, long r0, long r1) {
    const long G = W / n;
    for (long r = r0; r < r1; r++) {
        const T *restrict yr = y + r * W, *restrict zr = z + r * zst;
        const T *restrict xr = xs ? xs + r * xst : 0;
        T *restrict o = out + r * W;
        if (xr)
            for (long c = 0; c < W; c++) o[c] = (yr[c] + s[c] * xr[c]) * zr[c] / (1 + EXP(-zr[c]));
        else
            for (long c = 0; c < W; c++) o[c] = yr[c] * zr[c] / (1 + EXP(-zr[c]));
        if (!norm) continue;
        for (long g = 0; g < G; g++) {
            T *restrict og = o + g * n;
            T ss = 0;
            for (long c = 0; c < n; c++) ss += og[c] * og[c];
            const T rr = 1 / SQRT(ss / n + eps);
            stats[r * G + g] = rr;
            for (long c = 0; c < n; c++) og[c] *= rr * w[g * n + c];
        }
    }
}

void NAME(gate_rms_bwd)(const T *restrict y, const T *restrict xs, const T *restrict s, const T *restrict z, const T *restrict w,
                        const T *restrict stats, const T *restrict gr, T *restrict dy, T *restrict dxs, T *restrict dz, T *restrict dw, T *restrict ds, long W,
                        long n, int norm, long xst, long zst, long r0, long r1) {
    const long G = W / n;
    T *u = malloc(2 * W * sizeof(T)), *du = u + W;
    if (norm) memset(dw, 0, W * sizeof(T));
    if (xs) memset(ds, 0, W * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const T *restrict yr = y + r * W, *restrict zr = z + r * zst, *restrict g = gr + r * W;
        const T *restrict xr = xs ? xs + r * xst : 0;
        if (xr)
            for (long c = 0; c < W; c++) u[c] = (yr[c] + s[c] * xr[c]) * zr[c] / (1 + EXP(-zr[c]));
        else
            for (long c = 0; c < W; c++) u[c] = yr[c] * zr[c] / (1 + EXP(-zr[c]));
        if (norm) {
            for (long gi = 0; gi < G; gi++) {
                const T rr = stats[r * G + gi];
                const T *restrict ug = u + gi * n, *restrict gg = g + gi * n,
                        *restrict wg = w + gi * n;
                T *restrict dwg = dw + gi * n, *restrict dug = du + gi * n;
                T dot = 0;
                for (long c = 0; c < n; c++) dot += gg[c] * wg[c] * ug[c];
                const T k = rr * rr * dot / n;
                for (long c = 0; c < n; c++) {
                    dwg[c] += gg[c] * ug[c] * rr;
                    dug[c] = rr * (gg[c] * wg[c] - ug[c] * k);
                }
            }
        } else {
            memcpy(du, g, W * sizeof(T));
        }
        T *restrict dyr = dy + r * W, *restrict dzr = dz + r * W;
        T *restrict dxr = xs ? dxs + r * W : 0;
        if (xr)
            for (long c = 0; c < W; c++) {
                const T zc = zr[c], sg = 1 / (1 + EXP(-zc));
                const T a = yr[c] + s[c] * xr[c], da = du[c] * zc * sg;
                dzr[c] = du[c] * a * sg * (1 + zc * (1 - sg));
                dyr[c] = da;
                dxr[c] = da * s[c];
                ds[c] += da * xr[c];
            }
        else
            for (long c = 0; c < W; c++) {
                const T zc = zr[c], sg = 1 / (1 + EXP(-zc)), da = du[c] * zc * sg;
                dzr[c] = du[c] * yr[c] * sg * (1 + zc * (1 - sg));
                dyr[c] = da;
            }
    }
    free(u);
}

void NAME(norm_gate_fwd)(const T *restrict y, const T *restrict xs, const T *restrict s, const T *restrict z, const T *restrict w,
                         const T *restrict b, T *restrict out, T *restrict stats, long W, long n, T eps, long r0, long r1) {
    const long G = W / n;
    T *zero = xs ? 0 : calloc(W, sizeof(T));  /* no skip: s = xs = 0, one loop either way */
    if (!xs) s = zero;
    for (long r = r0; r < r1; r++) {
        const T *restrict yr = y + r * W, *restrict zr = z + r * W;
        const T *restrict xr = xs ? xs + r * W : zero;
        T *restrict o = out + r * W;
        for (long gi = 0; gi < G; gi++) {
            const T *restrict yg = yr + gi * n;
            T mu = 0, var = 0;
            for (long c = 0; c < n; c++) mu += yg[c];
            mu /= n;
            for (long c = 0; c < n; c++) var += (yg[c] - mu) * (yg[c] - mu);
            const T rstd = 1 / SQRT(var / n + eps);
            stats[2 * (r * G + gi)] = mu;
            stats[2 * (r * G + gi) + 1] = rstd;
            for (long c = gi * n; c < (gi + 1) * n; c++) {
                const T a = (yr[c] - mu) * rstd * w[c] + b[c] + s[c] * xr[c];
                o[c] = a * zr[c] / (1 + EXP(-zr[c]));
            }
        }
    }
    free(zero);
}

void NAME(norm_gate_bwd)(const T *restrict y, const T *restrict xs, const T *restrict s, const T *restrict z, const T *restrict w,
                         const T *restrict b, const T *restrict stats, const T *restrict gr, T *restrict dy, T *restrict dxs, T *restrict dz, T *restrict dw,
                         T *restrict db, T *restrict ds, long W, long n, long r0, long r1) {
    const long G = W / n;
    T *dyh = malloc(W * sizeof(T)), *zero = calloc(W, sizeof(T));
    memset(dw, 0, W * sizeof(T));
    memset(db, 0, W * sizeof(T));
    if (xs) memset(ds, 0, W * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const T *restrict yr = y + r * W, *restrict zr = z + r * W, *restrict g = gr + r * W;
        const T *restrict xr = xs ? xs + r * W : 0;
        T *restrict dyr = dy + r * W, *restrict dzr = dz + r * W;
        T *restrict dxr = xs ? dxs + r * W : 0;
        const T *restrict xk = xr ? xr : zero, *restrict sk = xr ? s : zero;
        for (long gi = 0; gi < G; gi++) {
            const T mu = stats[2 * (r * G + gi)], rstd = stats[2 * (r * G + gi) + 1];
            T m1 = 0, m2 = 0;
            const long c0 = gi * n, c1 = (gi + 1) * n;
            if (xr)
                for (long c = c0; c < c1; c++) {
                    const T da = g[c] * zr[c] / (1 + EXP(-zr[c]));
                    dxr[c] = da * s[c];
                    ds[c] += da * xr[c];
                }
            for (long c = c0; c < c1; c++) {
                const T yh = (yr[c] - mu) * rstd, zc = zr[c], sg = 1 / (1 + EXP(-zc));
                const T a = yh * w[c] + b[c] + sk[c] * xk[c];
                const T da = g[c] * zc * sg;
                dzr[c] = g[c] * a * sg * (1 + zc * (1 - sg));
                dw[c] += da * yh;
                db[c] += da;
                dyh[c] = da * w[c];
                m1 += dyh[c];
                m2 += dyh[c] * yh;
            }
            m1 /= n;
            m2 /= n;
            for (long c = gi * n; c < (gi + 1) * n; c++)
                dyr[c] = rstd * (dyh[c] - m1 - (yr[c] - mu) * rstd * m2);
        }
    }
    free(dyh);
    free(zero);
}

#endif
