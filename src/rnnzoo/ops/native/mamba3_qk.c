/* Mamba-3's SISO queries and keys for its SSD (layers.mamba3, chunk mode), from the in_proj's
   raw B and C rows in one pass forward and one backward, instead of a dozen passes (and
   fresh tensors) over (B, T, H, d_state) through autograd. Per row (batch, step), group g,
   head h of g:

       Bn = rmsnorm(B_g) wB + bB_h,   Cn = rmsnorm(C_g) wC + bC_h   (rmsnorm(x) = x r,
       r = (mean(x^2) + eps)^(-1/2))
       q = R(theta_h) Cn,   k = s_h R(theta_h) Bn,   cb_h = Cn . Bn
   R(theta) turns the first n adjacent channel pairs (y0 + i y1 = (x0 + i x1) e^{i theta_j},
   given as cos, sin); the other channels pass. Backward, with dq, dk, dcb:
       dCn = R^T dq + dcb Bn,   dBn = s R^T dk + dcb Cn,   ds = (R Bn) . dk,
       dtheta_j = (q0 dq1 - q1 dq0) + (k0 dk1 - k1 dk0) over pair j,
       dbB_h += dBn,   dwB += Bhat sum_h dBn,   e = wB sum_h dBn (Bhat = B_g r),
       dB_g = r (e - Bhat mean(e Bhat))   (the same for C).

   Layouts: Bx, Cx rows S elements apart, G N contiguous channels each (slices of in_proj's
   output); wB, wC (N); bB, bC (H, N); cs, sn, dtheta (rows, H, n); s, cb, ds, dcb (rows, H);
   q, k, dq, dk (rows, H, N) contiguous; dBx, dCx (rows, G N); dwB, dwC (N), dbB, dbC (H, N)
   this call's own sums (the caller adds the slices). Rows [r0, r1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "mamba3_qk.c"
#include "each_type.h"

#else

static inline T NAME(m3_rstd)(const T *restrict x, long N, T eps) {
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (long c = 0; c < N; c++) ss += x[c] * x[c];
    return 1 / SQRT(ss / N + eps);
}

/* y = the row normed (x r w + b); returns nothing */
static inline void NAME(m3_norm)(const T *restrict x, T r, const T *restrict w,
                                 const T *restrict b, T *restrict y, long N) {
#pragma omp simd
    for (long c = 0; c < N; c++) y[c] = x[c] * r * w[c] + b[c];
}

void NAME(m3qk_fwd)(const T *restrict Bx, const T *restrict Cx, long S, const T *restrict wB,
                    const T *restrict wC, const T *restrict bB, const T *restrict bC,
                    const T *restrict cs, const T *restrict sn, const T *restrict s,
                    T *restrict q, T *restrict k, T *restrict cb, T eps, long G, long H, long N,
                    long n, long r0, long r1) {
    const long R = H / G;
    T *bn = malloc(2 * N * sizeof(T)), *cn = bn + N;
    for (long r = r0; r < r1; r++)
        for (long g = 0; g < G; g++) {
            const T *restrict bx = Bx + r * S + g * N, *restrict cx = Cx + r * S + g * N;
            const T rb = NAME(m3_rstd)(bx, N, eps), rc = NAME(m3_rstd)(cx, N, eps);
            for (long h = g * R; h < (g + 1) * R; h++) {
                const long rh = r * H + h;
                NAME(m3_norm)(bx, rb, wB, bB + h * N, bn, N);
                NAME(m3_norm)(cx, rc, wC, bC + h * N, cn, N);
                const T *restrict co = cs + rh * n, *restrict si = sn + rh * n;
                T *restrict qr = q + rh * N, *restrict kr = k + rh * N, sc = s[rh], dot = 0;
#pragma omp simd reduction(+ : dot)
                for (long c = 0; c < N; c++) dot += cn[c] * bn[c];
                cb[rh] = dot;
#pragma omp simd
                for (long j = 0; j < n; j++) {
                    const T b0 = bn[2 * j], b1 = bn[2 * j + 1], c0 = cn[2 * j], c1 = cn[2 * j + 1];
                    qr[2 * j] = c0 * co[j] - c1 * si[j];
                    qr[2 * j + 1] = c0 * si[j] + c1 * co[j];
                    kr[2 * j] = sc * (b0 * co[j] - b1 * si[j]);
                    kr[2 * j + 1] = sc * (b0 * si[j] + b1 * co[j]);
                }
#pragma omp simd
                for (long c = 2 * n; c < N; c++) {
                    qr[c] = cn[c];
                    kr[c] = sc * bn[c];
                }
            }
        }
    free(bn);
}

void NAME(m3qk_bwd)(const T *restrict Bx, const T *restrict Cx, long S, const T *restrict wB,
                    const T *restrict wC, const T *restrict bB, const T *restrict bC,
                    const T *restrict cs, const T *restrict sn, const T *restrict s,
                    const T *restrict dq, const T *restrict dk, const T *restrict dcb,
                    T *restrict dBx, T *restrict dCx, T *restrict dwB, T *restrict dwC,
                    T *restrict dbB, T *restrict dbC, T *restrict dtheta, T *restrict ds,
                    T eps, long G, long H, long N, long n, long r0, long r1) {
    const long R = H / G;
    T *bn = malloc(6 * N * sizeof(T)), *cn = bn + N, *db = cn + N, *dc = db + N, *eb = dc + N,
      *ec = eb + N;
    memset(dwB, 0, N * sizeof(T));
    memset(dwC, 0, N * sizeof(T));
    memset(dbB, 0, H * N * sizeof(T));
    memset(dbC, 0, H * N * sizeof(T));
    for (long r = r0; r < r1; r++)
        for (long g = 0; g < G; g++) {
            const T *restrict bx = Bx + r * S + g * N, *restrict cx = Cx + r * S + g * N;
            const T rb = NAME(m3_rstd)(bx, N, eps), rc = NAME(m3_rstd)(cx, N, eps);
            memset(eb, 0, 2 * N * sizeof(T));  /* eb, ec: sum over the group's heads */
            for (long h = g * R; h < (g + 1) * R; h++) {
                const long rh = r * H + h;
                NAME(m3_norm)(bx, rb, wB, bB + h * N, bn, N);
                NAME(m3_norm)(cx, rc, wC, bC + h * N, cn, N);
                const T *restrict co = cs + rh * n, *restrict si = sn + rh * n;
                const T *restrict dqr = dq + rh * N, *restrict dkr = dk + rh * N;
                T *restrict dth = dtheta + rh * n;
                const T sc = s[rh], dd = dcb[rh];
                T dsc = 0;
#pragma omp simd reduction(+ : dsc)
                for (long j = 0; j < n; j++) {
                    const T b0 = bn[2 * j], b1 = bn[2 * j + 1], c0 = cn[2 * j], c1 = cn[2 * j + 1];
                    const T q0 = c0 * co[j] - c1 * si[j], q1 = c0 * si[j] + c1 * co[j];
                    const T k0 = b0 * co[j] - b1 * si[j], k1 = b0 * si[j] + b1 * co[j];
                    const T dq0 = dqr[2 * j], dq1 = dqr[2 * j + 1];
                    const T dk0 = dkr[2 * j], dk1 = dkr[2 * j + 1];
                    dsc += k0 * dk0 + k1 * dk1;
                    dth[j] = (q0 * dq1 - q1 * dq0) + sc * (k0 * dk1 - k1 * dk0);
                    dc[2 * j] = dq0 * co[j] + dq1 * si[j] + dd * b0;
                    dc[2 * j + 1] = dq1 * co[j] - dq0 * si[j] + dd * b1;
                    db[2 * j] = sc * (dk0 * co[j] + dk1 * si[j]) + dd * c0;
                    db[2 * j + 1] = sc * (dk1 * co[j] - dk0 * si[j]) + dd * c1;
                }
#pragma omp simd reduction(+ : dsc)
                for (long c = 2 * n; c < N; c++) {
                    dsc += bn[c] * dkr[c];
                    dc[c] = dqr[c] + dd * bn[c];
                    db[c] = sc * dkr[c] + dd * cn[c];
                }
                ds[rh] = dsc;
                T *restrict dbh = dbB + h * N, *restrict dch = dbC + h * N;
#pragma omp simd
                for (long c = 0; c < N; c++) {
                    dbh[c] += db[c];
                    dch[c] += dc[c];
                    eb[c] += db[c];
                    ec[c] += dc[c];
                }
            }
            T mb = 0, mc = 0;
#pragma omp simd reduction(+ : mb, mc)
            for (long c = 0; c < N; c++) {
                const T xb = bx[c] * rb, xc = cx[c] * rc;
                dwB[c] += eb[c] * xb;
                dwC[c] += ec[c] * xc;
                eb[c] *= wB[c];
                ec[c] *= wC[c];
                mb += eb[c] * xb;
                mc += ec[c] * xc;
            }
            mb /= N;
            mc /= N;
            T *restrict dbr = dBx + r * G * N + g * N, *restrict dcr = dCx + r * G * N + g * N;
#pragma omp simd
            for (long c = 0; c < N; c++) {
                dbr[c] = rb * (eb[c] - bx[c] * rb * mb);
                dcr[c] = rc * (ec[c] - cx[c] * rc * mc);
            }
        }
    free(bn);
}

/* The angles: theta[b, t] = the sum of d[b, u] over u <= t, summed in double and wrapped to
   [0, 2 pi) as torch.remainder (x - 2 pi floor(x / 2 pi)); d, theta (batch, T, W) with W = H n
   (layers.mamba3: the float64 cumsum of its angle steps). Backward: dd[b, t] = the sum of
   dtheta[b, u] over u >= t, in double. Batch rows [b0, b1). */
void NAME(m3_angles_fwd)(const T *restrict d, T *restrict theta, long Tn, long W, long b0,
                         long b1) {
    const double tau = 2 * 3.14159265358979323846;
    double *acc = malloc(W * sizeof(double));
    for (long b = b0; b < b1; b++) {
        for (long i = 0; i < W; i++) acc[i] = 0;
        for (long t = 0; t < Tn; t++) {
            const T *restrict dt = d + (b * Tn + t) * W;
            T *restrict th = theta + (b * Tn + t) * W;
#pragma omp simd
            for (long i = 0; i < W; i++) {
                acc[i] += dt[i];
                th[i] = (T)(acc[i] - tau * floor(acc[i] / tau));
            }
        }
    }
    free(acc);
}

void NAME(m3_angles_bwd)(const T *restrict dtheta, T *restrict dd, long Tn, long W, long b0,
                         long b1) {
    double *acc = malloc(W * sizeof(double));
    for (long b = b0; b < b1; b++) {
        for (long i = 0; i < W; i++) acc[i] = 0;
        for (long t = Tn - 1; t >= 0; t--) {
            const T *restrict g = dtheta + (b * Tn + t) * W;
            T *restrict o = dd + (b * Tn + t) * W;
#pragma omp simd
            for (long i = 0; i < W; i++) {
                acc[i] += g[i];
                o[i] = (T)acc[i];
            }
        }
    }
    free(acc);
}

#endif
