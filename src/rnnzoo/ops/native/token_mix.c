/* RWKV's token-shift mixes (Peng et al. 2025, arXiv:2503.14456), forward and backward in one
   pass each over the rows: for each of n learned mixes mu_m (D,),

       x_m = x + mu_m o step,     step = x_{t-1} - x_t

   Backward from the n gradients g_m: dx = sum_m g_m, dstep = sum_m mu_m o g_m and
   dmu_m = sum over rows of g_m o step (this call's rows; the caller sums the calls).
   Layouts (row-major, contiguous): x, step, dx, dstep (rows, D); out, g (n, rows, D) (out:
   one tensor; g: n pointers, any of which may be NULL for a zero gradient); mu, dmu (n, D).
   Each function does the rows [r0, r1). Plain C; compiled by rnnzoo.ops.native.

   RWKV-6's ddlerp mixes x_m = x + step o c_m with a per-row c_m = low_m up_m + mu_m
   (low (rows, n, R), up (n, R, D), mu (n, D); upT (n, D, R) is up transposed): mixp_fwd
   writes c (n, rows, D) and the n mixes out (n, rows, D), a block of rows at a time on
   mm.h's tiles; mixp_bwd from the mixes' gradients g_m (n pointers to (rows, D), none
   NULL) gives dx = sum_m g_m, dstep = sum_m g_m o c_m, dlow (rows, n, R) = dc_m up_m^T
   with dc_m = g_m o step (a block at a time, never stored), and this call's partial sums
   dup (n, R, D) = sum low_m^T dc_m, dmu (n, D) = sum dc_m (the caller sums the calls).
   With np > 0 the last np mixes are projected in the same blocks: mixp_fwd writes proj_j
   (np, rows, D) = out_{n-np+j} WT_j (WT (np, D, D): the weights [out, in] transposed), and
   mixp_bwd's last np pointers g are then the projections' gradients gp_j, turned into the
   mixes' gradients gp_j W_j (W (np, D, D)) a block at a time (never stored), and it writes
   this call's partial weight gradients dW (np, D, D) = sum gp_j^T out_{n-np+j} (out: the
   forward's mixes). */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "token_mix.c"
#include "each_type.h"

#else

void NAME(tmix_fwd)(const T *restrict x, const T *restrict step, const T *restrict mu,
                    T *restrict out, long n, long rows, long D, long r0, long r1) {
    for (long m = 0; m < n; m++) {
        const T *restrict mm = mu + m * D;
        for (long r = r0; r < r1; r++) {
            const T *restrict xr = x + r * D, *restrict sr = step + r * D;
            T *restrict o = out + (m * rows + r) * D;
            for (long d = 0; d < D; d++) o[d] = xr[d] + mm[d] * sr[d];
        }
    }
}

void NAME(tmix_bwd)(const T *const *g, const T *restrict step, const T *restrict mu,
                    T *restrict dx, T *restrict dstep, T *restrict dmu, long n, long D,
                    long r0, long r1) {
    memset(dmu, 0, n * D * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const T *restrict sr = step + r * D;
        T *restrict dxr = dx + r * D, *restrict dsr = dstep + r * D;
        for (long d = 0; d < D; d++) { dxr[d] = 0; dsr[d] = 0; }
        for (long m = 0; m < n; m++) {
            if (!g[m]) continue;
            const T *restrict gr = g[m] + r * D, *restrict mm = mu + m * D;
            T *restrict dm = dmu + m * D;
            for (long d = 0; d < D; d++) {
                dxr[d] += gr[d];
                dsr[d] += mm[d] * gr[d];
                dm[d] += gr[d] * sr[d];
            }
        }
    }
}

#include "mm.h"
#define MIX_BLOCK 60  /* rows a block: its c, dc tiles stay in cache between the passes;
                         a multiple of mm.h's 6-row register tiles (64 left a 4-row tail
                         tile a block: the mixes' fwd+bwd ~0.97 at 60) */

void NAME(mixp_fwd)(const T *restrict x, const T *restrict step, const T *restrict low,
                    const T *restrict up, const T *restrict mu, T *restrict c,
                    T *restrict out, const T *restrict WT, T *restrict proj, long np, long n,
                    long rows, long D, long R, long r0, long r1) {
    for (long b0 = r0; b0 < r1; b0 += MIX_BLOCK) {
        const long b1 = b0 + MIX_BLOCK < r1 ? b0 + MIX_BLOCK : r1;
        for (long m = 0; m < n; m++)  /* c_m = low_m up_m on this block's rows */
            NAME(mm)(low + m * R, up + m * R * D, c + m * rows * D, rows, D, R, n * R, 1, D, 1,
                     D, 0, 0, 0, 0, b0, b1);
        for (long r = b0; r < b1; r++) {
            const T *restrict xr = x + r * D, *restrict sr = step + r * D;
            for (long m = 0; m < n; m++) {
                T *restrict cr = c + (m * rows + r) * D, *restrict o = out + (m * rows + r) * D;
                const T *restrict mm = mu + m * D;
                for (long d = 0; d < D; d++) {
                    const T v = cr[d] + mm[d];
                    cr[d] = v;
                    o[d] = xr[d] + sr[d] * v;
                }
            }
        }
        for (long j = 0; j < np; j++)  /* proj_j = out_{n-np+j} WT_j on the block, in cache */
            NAME(mm)(out + (n - np + j) * rows * D, WT + j * D * D, proj + j * rows * D, rows, D,
                     D, D, 1, D, 1, D, 0, 0, 0, 0, b0, b1);
    }
}

void NAME(mixp_bwd)(const T *const *g, const T *restrict c, const T *restrict step,
                    const T *restrict low, const T *restrict upT, const T *restrict W,
                    const T *restrict out, T *restrict dW, T *restrict dx, T *restrict dstep,
                    T *restrict dlow, T *restrict dup, T *restrict dmu, long np, long n,
                    long rows, long D, long R, long r0, long r1) {
    memset(dmu, 0, n * D * sizeof(T));
    memset(dup, 0, n * R * D * sizeof(T));
    if (np) memset(dW, 0, np * D * D * sizeof(T));
    T *dc = malloc((size_t)n * MIX_BLOCK * D * sizeof(T));
    T *gb = np ? malloc((size_t)np * MIX_BLOCK * D * sizeof(T)) : 0;
    for (long b0 = r0; b0 < r1; b0 += MIX_BLOCK) {
        const long b1 = b0 + MIX_BLOCK < r1 ? b0 + MIX_BLOCK : r1, nb = b1 - b0;
        for (long j = 0; j < np; j++) {  /* the last np mixes' gradients gp_j W_j on the
                                            block, and dW_j += gp_j^T out_{n-np+j} */
            const T *gp = g[n - np + j] + b0 * D;
            NAME(mm)(gp, W + j * D * D, gb + j * MIX_BLOCK * D, nb, D, D, D, 1, D, 1, D, 0, 0, 0,
                     0, 0, nb);
            NAME(mm)(gp, out + ((n - np + j) * rows + b0) * D, dW + j * D * D, D, D, nb, 1, D, D,
                     1, D, 0, 0, 0, 1, 0, D);
        }
        for (long r = b0; r < b1; r++) {
            const T *restrict sr = step + r * D;
            T *restrict dxr = dx + r * D, *restrict dsr = dstep + r * D;
            for (long d = 0; d < D; d++) { dxr[d] = 0; dsr[d] = 0; }
            for (long m = 0; m < n; m++) {
                const T *restrict gr = m < n - np ? g[m] + r * D
                                       : gb + ((m - n + np) * MIX_BLOCK + r - b0) * D;
                const T *restrict cr = c + (m * rows + r) * D;
                T *restrict dcr = dc + (m * MIX_BLOCK + r - b0) * D, *restrict dm = dmu + m * D;
                for (long d = 0; d < D; d++) {
                    const T v = gr[d] * sr[d];
                    dxr[d] += gr[d];
                    dsr[d] += gr[d] * cr[d];
                    dcr[d] = v;
                    dm[d] += v;
                }
            }
        }
        for (long m = 0; m < n; m++) {
            const T *dcm = dc + m * MIX_BLOCK * D;
            /* dlow[:, m] = dc_m up_m^T on the block; dup_m += low_m^T dc_m */
            NAME(mm)(dcm, upT + m * D * R, dlow + b0 * n * R + m * R, nb, R, D, D, 1, R, 1,
                     n * R, 0, 0, 0, 0, 0, nb);
            NAME(mm)(low + b0 * n * R + m * R, dcm, dup + m * R * D, R, D, nb, 1, n * R, D, 1,
                     D, 0, 0, 0, 1, 0, R);
        }
    }
    free(dc);
    free(gb);
}

/* RWKV-6's token shift and first mix: step_t = x_{t-1} - x_t (x_{-1} = xlast, (B, D)) and
   xx = x + step o mu, x (B, T, D), the batches [b0, b1); backward from the gradients of step
   and xx (e = gstep + gxx o mu): dx_t = gxx_t - e_t + e_{t+1}, dxlast = e_0 and this call's
   dmu = sum gxx o step. */
void NAME(shift_fwd)(const T *restrict x, const T *restrict xlast, const T *restrict mu,
                     T *restrict step, T *restrict xx, long Tn, long D, long b0, long b1) {
    for (long b = b0; b < b1; b++)
        for (long t = 0; t < Tn; t++) {
            const long o = (b * Tn + t) * D;
            const T *restrict prev = t ? x + o - D : xlast + b * D;
            for (long d = 0; d < D; d++) {
                const T s = prev[d] - x[o + d];
                step[o + d] = s;
                xx[o + d] = x[o + d] + s * mu[d];
            }
        }
}

void NAME(shift_bwd)(const T *restrict gstep, const T *restrict gxx, const T *restrict step,
                     const T *restrict mu, T *restrict dx, T *restrict dxlast,
                     T *restrict dmu, long Tn, long D, long b0, long b1) {
    /* t ascending, e_t carried in a row (descending rows ran at ~1/4 of the forward's
       bandwidth: 3.1 against 0.8 ms at RWKV-6's #17 shape) */
    T *ebuf = malloc(2 * (D ? D : 1) * sizeof(T));
    memset(dmu, 0, D * sizeof(T));
    for (long b = b0; b < b1; b++) {
        const long o0 = b * Tn * D;
        if (Tn)
            for (long d = 0; d < D; d++) {
                ebuf[d] = gstep[o0 + d] + gxx[o0 + d] * mu[d];
                dxlast[b * D + d] = ebuf[d];
            }
        for (long t = 0; t < Tn; t++) {  /* e_t in one half of ebuf, e_{t+1} in the other */
            const long o = o0 + t * D;
            T *restrict e = ebuf + (t & 1) * D, *restrict en = ebuf + (~t & 1) * D;
            if (t + 1 < Tn)
                for (long d = 0; d < D; d++) {
                    en[d] = gstep[o + D + d] + gxx[o + D + d] * mu[d];
                    dx[o + d] = en[d] + gxx[o + d] - e[d];
                    dmu[d] += gxx[o + d] * step[o + d];
                }
            else
                for (long d = 0; d < D; d++) {
                    dx[o + d] = (T)0 + gxx[o + d] - e[d];
                    dmu[d] += gxx[o + d] * step[o + d];
                }
        }
    }
    free(ebuf);
}

/* RWKV-7's output head before its projection, per token and head h (rows N, H heads): the
   head's group norm, the bonus term and the gate,

       y = (n + s v) o g,   n = (x - mean x) / sqrt(var x + eps) o nw_h + nb_h,
       s = sum_i r_i k_i rk_{h,i}

   x, v, g, y, dy and their gradients (N, H, V); r, k, dr, dk (N, H, K); rk, drk (H, K);
   nw, nb, dnw, dnb (H, V). Backward from dy: gp = dy o g, dg = dy o (n + s v), dv = s gp,
   ds = <gp, v>, dr = ds k o rk, dk = ds r o rk, the norm's dx = (m - mean m - xh mean(m o xh))
   / sqrt(var + eps) with xh the normalised x and m = gp o nw, and this call's partial sums
   drk = sum_n ds r o k, dnw = sum_n gp o xh, dnb = sum_n gp (the caller sums the calls).
   Each function does the tokens [r0, r1). */
static inline T NAME(head_norm)(const T *restrict x, long V, T eps, T *restrict rs) {
    T mu = 0, var = 0;
#pragma omp simd reduction(+ : mu)
    for (long j = 0; j < V; j++) mu += x[j];
    mu /= V;
#pragma omp simd reduction(+ : var)
    for (long j = 0; j < V; j++) var += (x[j] - mu) * (x[j] - mu);
    *rs = 1 / SQRT(var / V + eps);
    return mu;
}

void NAME(bonus_fwd)(const T *restrict x, const T *restrict nw, const T *restrict nb,
                     const T *restrict r, const T *restrict k, const T *restrict v,
                     const T *restrict g, const T *restrict rk, T *restrict y, T eps, long H,
                     long K, long V, long r0, long r1) {
    for (long n = r0; n < r1; n++)
        for (long h = 0; h < H; h++) {
            const long q = (n * H + h) * K, u = (n * H + h) * V;
            const T *restrict rkh = rk + h * K, *restrict w = nw + h * V, *restrict bi = nb + h * V;
            T s = 0, rs;
#pragma omp simd reduction(+ : s)
            for (long i = 0; i < K; i++) s += r[q + i] * k[q + i] * rkh[i];
            const T mu = NAME(head_norm)(x + u, V, eps, &rs);
            for (long j = 0; j < V; j++)
                y[u + j] = ((x[u + j] - mu) * rs * w[j] + bi[j] + s * v[u + j]) * g[u + j];
        }
}

void NAME(bonus_bwd)(const T *restrict dy, const T *restrict x, const T *restrict nw,
                     const T *restrict nb, const T *restrict r, const T *restrict k,
                     const T *restrict v, const T *restrict g, const T *restrict rk,
                     T *restrict dx, T *restrict dr, T *restrict dk, T *restrict dv,
                     T *restrict dg, T *restrict drk, T *restrict dnw, T *restrict dnb, T eps,
                     long H, long K, long V, long r0, long r1) {
    memset(drk, 0, H * K * sizeof(T));
    memset(dnw, 0, H * V * sizeof(T));
    memset(dnb, 0, H * V * sizeof(T));
    for (long n = r0; n < r1; n++)
        for (long h = 0; h < H; h++) {
            const long q = (n * H + h) * K, u = (n * H + h) * V;
            const T *restrict rkh = rk + h * K, *restrict w = nw + h * V, *restrict bi = nb + h * V;
            T *restrict drkh = drk + h * K, *restrict dwh = dnw + h * V, *restrict dbh = dnb + h * V;
            T s = 0, ds = 0, rs, mm = 0, mx = 0;
#pragma omp simd reduction(+ : s)
            for (long i = 0; i < K; i++) s += r[q + i] * k[q + i] * rkh[i];
            const T mu = NAME(head_norm)(x + u, V, eps, &rs);
#pragma omp simd reduction(+ : ds, mm, mx)
            for (long j = 0; j < V; j++) {
                const T gp = dy[u + j] * g[u + j], xh = (x[u + j] - mu) * rs, m = gp * w[j];
                dg[u + j] = dy[u + j] * (xh * w[j] + bi[j] + s * v[u + j]);
                dv[u + j] = s * gp;
                ds += gp * v[u + j];
                dwh[j] += gp * xh;
                dbh[j] += gp;
                mm += m, mx += m * xh;
            }
            mm /= V, mx /= V;
            for (long j = 0; j < V; j++) {
                const T xh = (x[u + j] - mu) * rs;
                dx[u + j] = (dy[u + j] * g[u + j] * w[j] - mm - xh * mx) * rs;
            }
            for (long i = 0; i < K; i++) {
                dr[q + i] = ds * k[q + i] * rkh[i];
                dk[q + i] = ds * r[q + i] * rkh[i];
                drkh[i] += ds * r[q + i] * k[q + i];
            }
        }
}

/* RWKV-7's keys, per token and head h (rows N, H heads of K; D = H K; the parameters kk,
   ka (D,)):

       a = sigmoid(ap),   kap = -k o kk,   nk = kap / max(|kap|, eps),
       kt = k o (1 - ka + a o ka),   b = -nk o a,   w = wc sigmoid(wp)

   k, ap, wp, w, kt, nk, b and their gradients (N, D);
   kk, ka, dkk, dka (D,). Backward: dn = dnk - db o a, dkap = (dn - nk <nk, dn>) / max(|kap|,
   eps) (<.> taken as 0 at the floor), dk = dkt o (1 - ka + a ka) - dkap o kk,
   dap = (dkt o k o ka - db o nk) a (1 - a), dwp = dw wc s (1 - s) with s = sigmoid(wp), and
   this call's partial sums dkk = sum_n -dkap o k, dka = sum_n dkt o k o (a - 1). Each function
   does the tokens [r0, r1). */
static inline T NAME(sig)(T x) { return 1 / (1 + EXP(-x)); }

void NAME(keys_fwd)(const T *restrict k, const T *restrict ap, const T *restrict wp,
                    const T *restrict kk, const T *restrict ka, T *restrict w, T *restrict kt,
                    T *restrict nk, T *restrict b, T wc, T eps, long H, long K, long r0,
                    long r1) {
    const long D = H * K;
    for (long n = r0; n < r1; n++)
        for (long h = 0; h < H; h++) {
            const long q = n * D + h * K;
            T ss = 0;
#pragma omp simd reduction(+ : ss)
            for (long i = 0; i < K; i++) {
                const T x = k[q + i] * kk[h * K + i];
                ss += x * x;
            }
            const T rn = 1 / SQRT(ss > eps * eps ? ss : eps * eps);
            for (long i = 0; i < K; i++) {
                const long c = h * K + i;
                const T a = NAME(sig)(ap[q + i]), kn = -k[q + i] * kk[c] * rn;
                nk[q + i] = kn;
                b[q + i] = -(kn * a);
                kt[q + i] = k[q + i] * (1 - ka[c] + a * ka[c]);
                w[q + i] = wc * NAME(sig)(wp[q + i]);
            }
        }
}

void NAME(keys_bwd)(const T *restrict dw, const T *restrict dkt, const T *restrict dnk,
                    const T *restrict db, const T *restrict k, const T *restrict ap,
                    const T *restrict wp, const T *restrict kk, const T *restrict ka,
                    T *restrict dk, T *restrict dap, T *restrict dwp, T *restrict dkk,
                    T *restrict dka, T wc, T eps, long H, long K, long r0, long r1) {
    const long D = H * K;
    T *A = malloc(2 * K * sizeof(T)), *DN = A + K;  /* a head's a and dn */
    memset(dkk, 0, D * sizeof(T));
    memset(dka, 0, D * sizeof(T));
    for (long n = r0; n < r1; n++)
        for (long h = 0; h < H; h++) {
            const long q = n * D + h * K;
            const T *restrict kh = kk + h * K, *restrict ah = ka + h * K;
            T *restrict dkkh = dkk + h * K, *restrict dkah = dka + h * K;
            T ss = 0, dot = 0;
#pragma omp simd reduction(+ : ss)
            for (long i = 0; i < K; i++) {
                const T x = k[q + i] * kh[i];
                ss += x * x;
            }
            const int floor = ss <= eps * eps;
            const T rn = 1 / SQRT(floor ? eps * eps : ss);
#pragma omp simd reduction(+ : dot)
            for (long i = 0; i < K; i++) {
                const T a = NAME(sig)(ap[q + i]), kn = -k[q + i] * kh[i] * rn;
                const T dn = dnk[q + i] - db[q + i] * a;
                A[i] = a, DN[i] = dn;
                dot += kn * dn;
            }
            if (floor) dot = 0;
#pragma omp simd
            for (long i = 0; i < K; i++) {
                const T a = A[i], kn = -k[q + i] * kh[i] * rn, gt = dkt[q + i];
                const T dkap = (DN[i] - kn * dot) * rn;
                dk[q + i] = gt * (1 - ah[i] + a * ah[i]) - dkap * kh[i];
                dap[q + i] = (gt * k[q + i] * ah[i] - db[q + i] * kn) * a * (1 - a);
                dkkh[i] -= dkap * k[q + i];
                dkah[i] += gt * k[q + i] * (a - 1);
                const T sw = NAME(sig)(wp[q + i]);
                dwp[q + i] = dw[q + i] * wc * sw * (1 - sw);
            }
        }
    free(A);
}

/* y = tanh x (exp.h's TANH: about an ulp relative), elementwise over [j0, j1) (RWKV-6's two
   low-rank tanhs; ATen's float32 tanh costs ~6x its sigmoid at 1 thread). */
void NAME(tanh_fwd)(const T *restrict x, T *restrict y, long j0, long j1) {
    #pragma omp simd
    for (long j = j0; j < j1; j++) y[j] = TANH(x[j]);
}

/* y = -exp x elementwise over [j0, j1) (RWKV-6's log-decay), on exp.h's exponential, which
   clamps its argument to its normal results: above the clamp (88 float, 709 double) as
   e^20 exp(x - 20) (-inf past the largest finite exp, as libm); below it (-87, -708) the
   smallest normal (~1e-38, ~1e-308) where libm gives a subnormal or 0. */
void NAME(negexp_fwd)(const T *restrict x, T *restrict y, long j0, long j1) {
    const T hi = sizeof(T) == 4 ? (T)88 : (T)709, e20 = (T)485165195.40979028;
    #pragma omp simd
    for (long j = j0; j < j1; j++) {
        const int up = x[j] > hi;  /* one exp either way: its argument and factor selected */
        y[j] = -(EXP(up ? x[j] - 20 : x[j]) * (up ? e20 : 1));
    }
}

#endif
