/* The gated RMSNorms and mlstm's gated head, fused: a skip input, a gate and a group norm
   in one pass forward and one backward over each row of W channels (groups of n contiguous
   channels), instead of a dozen elementwise passes through autograd.

   rms_gate (the gate before the norm, pre = 1: mamba2, and mamba / longhorn without the
   norm; after it, pre = 0: the delta, gla, gsa, hgrn2, lightnet heads, mamba3's SISO head,
   mamba2 with norm_before_gate):
       a = y + s xs (a = y without a skip),   A = act(z) (1 without a gate),
       pre = 1:  out = (a A) r w,   r = (mean_group((a A)^2) + eps)^(-1/2)
       pre = 0:  out = a r w A,     r = (mean_group(a^2) + eps)^(-1/2)
   act: 0 none (z unused), 1 silu, 2 sigmoid; norm = 0: r = 1 (and w may be NULL: ones).
   Backward, with x = a A (pre) or a, nh = x r, d = g w (A if not pre):
       dx = r (d - nh mean_group(d nh))   (norm = 0: dx = d),   dw += g nh (A if not pre)
       da = dx A (pre) or dx,   dz = (dx a if pre, else g nh w) act'(z),
       dy = da,   dxs = da s,   ds += da xs
   norm_gate (mlstm: GroupNorm per head, then the skip, then the gate):
       yh = (y - mean_group(y)) rstd,   rstd = (var_group(y) + eps)^(-1/2)
       a = yh w + b + s xs,   out = a silu(z)
   Backward: da = g z sg,   dz = g a sg (1 + z (1 - sg)),   dw += da yh,   db += da,
       ds += da xs,   dxs = da s,   dy = rstd (da w - mean_group(da w) - yh mean_group(da w yh))

   Layouts (row-major): y, out, g, dy, dxs, dz (rows, W) contiguous; s, w, b (W); in rms_gate
   the rows of xs and z are xst and zst elements apart (strided views: >= W; norm_gate's are
   contiguous); stats: r (rows, W / n) for rms_gate, [mean, rstd] (rows, W / n, 2) for
   norm_gate; the parameter gradients dw, ds, db (W) are this call's own slice (the caller
   sums slices). xs, s may be NULL (no skip). Each function does rows [r0, r1). Plain C;
   compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "gated_norm.c"
#include "each_type.h"

#else

/* sigma(z), act(z) and act'(z) for act 1 (silu) or 2 (sigmoid); branch-free */
#define GATE(z, sg, a, da)                                                                   \
    const T sg = 1 / (1 + EXP(-(z)));                                                        \
    const T a = act == 1 ? (z) * sg : sg;                                                    \
    const T da = act == 1 ? sg * (1 + (z) * (1 - sg)) : sg * (1 - sg)

/* a row's x: y + s xs (or y, no skip), times act(z) when the gate comes first (pre), in
   the row buffer xb (or y itself) */
static inline const T *NAME(rms_row)(const T *restrict yr, const T *restrict xr,
                                     const T *restrict s, const T *restrict zr, long act,
                                     long pre, long W, T *restrict xb) {
    if (pre && act) {
        if (xr) {
#pragma omp simd
            for (long c = 0; c < W; c++) {
                GATE(zr[c], sg, ac, dac);
                (void)dac;
                xb[c] = (yr[c] + s[c] * xr[c]) * ac;
            }
        } else {
#pragma omp simd
            for (long c = 0; c < W; c++) {
                GATE(zr[c], sg, ac, dac);
                (void)dac;
                xb[c] = yr[c] * ac;
            }
        }
        return xb;
    }
    if (!xr) return yr;
#pragma omp simd
    for (long c = 0; c < W; c++) xb[c] = yr[c] + s[c] * xr[c];
    return xb;
}

void NAME(rms_gate_fwd)(const T *restrict y, const T *restrict xs, const T *restrict s,
                        const T *restrict z, const T *restrict w, T *restrict out,
                        T *restrict stats, long W, long n, T eps, long act, long pre, long norm,
                        long xst, long zst, long r0, long r1) {
    const long G = W / n;
    T *xb = malloc(2 * W * sizeof(T)), *ones = xb + W;
    for (long c = 0; c < W; c++) ones[c] = 1;
    const T *restrict wv = w ? w : ones;
    for (long r = r0; r < r1; r++) {
        const T *restrict zr = z ? z + r * zst : 0, *restrict xr = xs ? xs + r * xst : 0;
        T *restrict o = out + r * W;
        if (!norm && !w && !(act && !pre)) {  /* out = x, written in place */
            const T *x = NAME(rms_row)(y + r * W, xr, s, zr, act, pre, W, o);
            if (x != o) memcpy(o, x, W * sizeof(T));
            continue;
        }
        const T *restrict x = NAME(rms_row)(y + r * W, xr, s, zr, act, pre, W, xb);
        for (long g = 0; g < G; g++) {
            const long c0 = g * n;
            T rs = 1;
            if (norm) {
                T ss = 0;
#pragma omp simd reduction(+ : ss)
                for (long c = c0; c < c0 + n; c++) ss += x[c] * x[c];
                rs = 1 / SQRT(ss / n + eps);
                stats[r * G + g] = rs;
            }
            if (act && !pre) {
#pragma omp simd
                for (long c = c0; c < c0 + n; c++) {
                    GATE(zr[c], sg, ac, dac);
                    (void)dac;
                    o[c] = x[c] * rs * wv[c] * ac;
                }
            } else {
#pragma omp simd
                for (long c = c0; c < c0 + n; c++) o[c] = x[c] * rs * wv[c];
            }
        }
    }
    free(xb);
}

void NAME(rms_gate_bwd)(const T *restrict y, const T *restrict xs, const T *restrict s,
                        const T *restrict z, const T *restrict w, const T *restrict stats,
                        const T *restrict gr, T *restrict dy, T *restrict dxs, T *restrict dz,
                        T *restrict dw, T *restrict ds, long W, long n, long act, long pre,
                        long norm, long xst, long zst, long r0, long r1) {
    const long G = W / n;
    T *xb = malloc(4 * W * sizeof(T)), *ones = xb + W, *dn = ones + W, *dwb = dn + W;
    for (long c = 0; c < W; c++) ones[c] = 1;
    const T *restrict wv = w ? w : ones;
    T *restrict dwr = w ? dw : dwb;  /* no weight: its sums go to scratch */
    memset(dwr, 0, W * sizeof(T));
    if (xs) memset(ds, 0, W * sizeof(T));
    const int gated = act && pre;  /* dx, the gradient of x, goes to dn, then through the gate */
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = xs ? xs + r * xst : 0, *restrict g = gr + r * W;
        const T *restrict yr = y + r * W, *restrict zr = z ? z + r * zst : 0;
        const T *restrict x = NAME(rms_row)(yr, xr, s, zr, act, pre, W, xb);
        T *restrict dyr = dy + r * W, *restrict dzr = act ? dz + r * W : 0;
        T *restrict dx = gated ? dn : dyr;
        if (!norm && !w && !(act && !pre)) {  /* out = x */
            memcpy(dx, g, W * sizeof(T));
        } else {
            for (long gi = 0; gi < G; gi++) {
                const long c0 = gi * n;
                const T rs = norm ? stats[r * G + gi] : 1;
                T sdn = 0;
                if (act && !pre) {  /* out = nh w A, nh = x rs */
#pragma omp simd reduction(+ : sdn)
                    for (long c = c0; c < c0 + n; c++) {
                        GATE(zr[c], sg, ac, dac);
                        const T nh = x[c] * rs, d = g[c] * ac * wv[c];
                        dzr[c] = g[c] * nh * wv[c] * dac;
                        dwr[c] += g[c] * ac * nh;
                        dx[c] = d;
                        sdn += d * nh;
                    }
                } else {  /* out = nh w */
#pragma omp simd reduction(+ : sdn)
                    for (long c = c0; c < c0 + n; c++) {
                        const T nh = x[c] * rs, d = g[c] * wv[c];
                        dwr[c] += g[c] * nh;
                        dx[c] = d;
                        sdn += d * nh;
                    }
                }
                if (!norm) continue;
                const T m = sdn / n;
#pragma omp simd
                for (long c = c0; c < c0 + n; c++) dx[c] = rs * (dx[c] - x[c] * rs * m);
            }
        }
        if (gated) {  /* x = a A: da = dx A, dz = dx a A', a = y + s xs */
            if (xr) {
                T *restrict dxr = dxs + r * W;
#pragma omp simd
                for (long c = 0; c < W; c++) {
                    GATE(zr[c], sg, ac, dac);
                    const T a = yr[c] + s[c] * xr[c], da = dn[c] * ac;
                    dzr[c] = dn[c] * a * dac;
                    dyr[c] = da;
                    dxr[c] = da * s[c];
                    ds[c] += da * xr[c];
                }
            } else {
#pragma omp simd
                for (long c = 0; c < W; c++) {
                    GATE(zr[c], sg, ac, dac);
                    dzr[c] = dn[c] * yr[c] * dac;
                    dyr[c] = dn[c] * ac;
                }
            }
        } else if (xr) {
            T *restrict dxr = dxs + r * W;
#pragma omp simd
            for (long c = 0; c < W; c++) {
                dxr[c] = dyr[c] * s[c];
                ds[c] += dyr[c] * xr[c];
            }
        }
    }
    free(xb);
}

#undef GATE

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
            const long c0 = gi * n, c1 = c0 + n;
            T mu = 0, var = 0;
#pragma omp simd reduction(+ : mu)
            for (long c = c0; c < c1; c++) mu += yr[c];
            mu /= n;
#pragma omp simd reduction(+ : var)
            for (long c = c0; c < c1; c++) var += (yr[c] - mu) * (yr[c] - mu);
            const T rstd = 1 / SQRT(var / n + eps);
            stats[2 * (r * G + gi)] = mu;
            stats[2 * (r * G + gi) + 1] = rstd;
#pragma omp simd
            for (long c = c0; c < c1; c++) {
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
    /* no skip: s = xs = 0 and dxs, ds go to scratch (one loop either way) */
    T *dyh = malloc(W * sizeof(T)), *zero = xs ? 0 : calloc(3 * W, sizeof(T));
    T *restrict dsk = xs ? ds : zero + W;
    const T *restrict sk = xs ? s : zero;
    memset(dw, 0, W * sizeof(T));
    memset(db, 0, W * sizeof(T));
    memset(dsk, 0, W * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const T *restrict yr = y + r * W, *restrict zr = z + r * W, *restrict g = gr + r * W;
        const T *restrict xk = xs ? xs + r * W : zero;
        T *restrict dyr = dy + r * W, *restrict dzr = dz + r * W;
        T *restrict dxr = xs ? dxs + r * W : zero + 2 * W;
        for (long gi = 0; gi < G; gi++) {
            const T mu = stats[2 * (r * G + gi)], rstd = stats[2 * (r * G + gi) + 1];
            T m1 = 0, m2 = 0;
            const long c0 = gi * n, c1 = (gi + 1) * n;
#pragma omp simd reduction(+ : m1, m2)
            for (long c = c0; c < c1; c++) {
                const T yh = (yr[c] - mu) * rstd, zc = zr[c], sg = 1 / (1 + EXP(-zc));
                const T a = yh * w[c] + b[c] + sk[c] * xk[c];
                const T da = g[c] * zc * sg;
                dzr[c] = g[c] * a * sg * (1 + zc * (1 - sg));
                dxr[c] = da * sk[c];
                dsk[c] += da * xk[c];
                dw[c] += da * yh;
                db[c] += da;
                const T d = da * w[c];
                dyh[c] = d;
                m1 += d;
                m2 += d * yh;
            }
            m1 /= n;
            m2 /= n;
#pragma omp simd
            for (long c = c0; c < c1; c++)
                dyr[c] = rstd * (dyh[c] - m1 - (yr[c] - mu) * rstd * m2);
        }
    }
    free(dyh);
    free(zero);
}

#endif
