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
   this call's own sums (the caller adds the slices). m3qkt_fwd / bwd (below) run these rows
   with their angles formed in the pass. Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "mamba3_qk.c"
#include "each_type.h"

#else

#if defined(__AVX512F__) && !defined(M3_STREAM)
#include <immintrin.h>
#define M3_STREAM 1
#endif

/* dst[0 .. n) <- src: rows written once and read only after the whole tensor is (q and k,
   which the SSD reads after this pass; 2 x 16.8 MB at the #17 size), by streaming stores (no
   read of each line for ownership first) where dst is 64-byte aligned and n fills whole
   lines, else a copy. The caller fences (_mm_sfence) before returning. */
static inline void NAME(m3_stream)(T *restrict dst, const T *restrict src, long n) {
#ifdef M3_STREAM
    if (((unsigned long)dst & 63) == 0 && (n * sizeof(T)) % 64 == 0) {
        for (long i = 0; i < n; i += 64 / sizeof(T))
            if (sizeof(T) == 4) _mm512_stream_ps((float *)(dst + i), _mm512_loadu_ps((const float *)(src + i)));
            else _mm512_stream_pd((double *)(dst + i), _mm512_loadu_pd((const double *)(src + i)));
        return;
    }
#endif
    memcpy(dst, src, n * sizeof(T));
}

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

/* one row's q, k, cb (all groups; row pointers: bx, cx its raw B and C, co, si (H, n), sr,
   cbr (H), qr, kr (H, N)); bn: 4 N scratch */
static inline void NAME(m3qk_row_fwd)(const T *restrict bx0, const T *restrict cx0,
                                      const T *restrict wB, const T *restrict wC,
                                      const T *restrict bB, const T *restrict bC,
                                      const T *restrict cos_, const T *restrict sin_,
                                      const T *restrict sr, T *restrict q, T *restrict k,
                                      T *restrict cbr, T *restrict fin, T eps, long G, long H,
                                      long N, long n, T *restrict bn) {
    const long R = H / G;
    T *restrict cn = bn + N, *restrict qr = bn + 2 * N, *restrict kr = bn + 3 * N;
    for (long g = 0; g < G; g++) {
        const T *restrict bx = bx0 + g * N, *restrict cx = cx0 + g * N;
        const T rb = NAME(m3_rstd)(bx, N, eps), rc = NAME(m3_rstd)(cx, N, eps);
        for (long h = g * R; h < (g + 1) * R; h++) {
            NAME(m3_norm)(bx, rb, wB, bB + h * N, bn, N);
            NAME(m3_norm)(cx, rc, wC, bC + h * N, cn, N);
            const T *restrict co = cos_ + h * n, *restrict si = sin_ + h * n;
            T sc = sr[h], dot = 0;
#pragma omp simd reduction(+ : dot)
            for (long c = 0; c < N; c++) dot += cn[c] * bn[c];
            cbr[h] = dot;
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
            if (fin) {  /* the head's q and k summed: finite only if every entry is */
                T f = 0;
#pragma omp simd reduction(+ : f)
                for (long c = 0; c < N; c++) f += qr[c] + kr[c];
                fin[h] = f;
            }
            NAME(m3_stream)(q + h * N, qr, N);  /* the row's q and k from scratch */
            NAME(m3_stream)(k + h * N, kr, N);
        }
    }
}

/* one row's backward (row pointers as m3qk_row_fwd's; dbx, dcx (G N), dth (H, n), dsr (H));
   adds to dwB, dwC, dbB, dbC; w: 6 N scratch */
static inline void NAME(m3qk_row_bwd)(const T *restrict bx0, const T *restrict cx0,
                                      const T *restrict wB, const T *restrict wC,
                                      const T *restrict bB, const T *restrict bC,
                                      const T *restrict cos_, const T *restrict sin_,
                                      const T *restrict sr, const T *restrict dq,
                                      const T *restrict dk, const T *restrict dcbr,
                                      T *restrict dbx0, T *restrict dcx0, T *restrict dwB,
                                      T *restrict dwC, T *restrict dbB, T *restrict dbC,
                                      T *restrict dth0, T *restrict dsr, T eps, long G, long H,
                                      long N, long n, T *restrict w) {
    const long R = H / G;
    T *restrict bn = w, *restrict cn = w + N, *restrict db = w + 2 * N, *restrict dc = w + 3 * N,
      *restrict eb = w + 4 * N, *restrict ec = w + 5 * N;
    for (long g = 0; g < G; g++) {
        const T *restrict bx = bx0 + g * N, *restrict cx = cx0 + g * N;
        const T rb = NAME(m3_rstd)(bx, N, eps), rc = NAME(m3_rstd)(cx, N, eps);
        memset(eb, 0, 2 * N * sizeof(T));  /* eb, ec: sum over the group's heads */
        for (long h = g * R; h < (g + 1) * R; h++) {
            NAME(m3_norm)(bx, rb, wB, bB + h * N, bn, N);
            NAME(m3_norm)(cx, rc, wC, bC + h * N, cn, N);
            const T *restrict co = cos_ + h * n, *restrict si = sin_ + h * n;
            const T *restrict dqr = dq + h * N, *restrict dkr = dk + h * N;
            T *restrict dth = dth0 + h * n;
            const T sc = sr[h], dd = dcbr[h];
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
            dsr[h] = dsc;
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
        T *restrict dbr = dbx0 + g * N, *restrict dcr = dcx0 + g * N;
#pragma omp simd
        for (long c = 0; c < N; c++) {
            dbr[c] = rb * (eb[c] - bx[c] * rb * mb);
            dcr[c] = rc * (ec[c] - cx[c] * rc * mc);
        }
    }
}

static inline void NAME(m3qk_zero)(T *dwB, T *dwC, T *dbB, T *dbC, long H, long N) {
    memset(dwB, 0, N * sizeof(T));
    memset(dwC, 0, N * sizeof(T));
    memset(dbB, 0, H * N * sizeof(T));
    memset(dbC, 0, H * N * sizeof(T));
}

/* q, k and cb with their angles from their inputs (m3qkt_fwd / m3qkt_bwd; layers.mamba3's RoPE reading
   of its rotation): per batch row b, head h, pair j,
       d_t = (pi tanh(phi_tj)) dt_th,   theta_t = the sum of d_u over u <= t in double, wrapped
       to [0, 2 pi) (as torch.remainder),   end = theta_T,
   each row's cos and sin formed where its q and k are (no (B, T, H, n) step, angle, cos or sin
   tensor; the angles kept for the backward). Backward, a batch row's steps from the last:
   the row's dtheta by m3qk_row_bwd, a_t = dend + the sum of dtheta_u over u >= t (double), then
       dphi_tj = pi (1 - tanh^2) sum_h a_thj dt_th,   ddt_th = sum_j a_thj pi tanh(phi_tj).
   Layouts: phi rows SP elements apart (a slice of in_proj's output), n contiguous; dt, ddt
   (batch, T, H); theta (batch, T, H, n); end, dend (batch, H, n); dphi (batch, T, n); fin
   (batch, T, H) each head's q and k summed (finite only if all of them are); the rest
   as the row functions' with rows = batch T. Batch rows [b0, b1). */

/* sin and cos of x in [0, 2 pi]: for float by the quadrant (x = k pi/2 + r, |r| <= pi/4, k
   from the rounding constant's bits as exp_f's) and cephes' sinf / cosf polynomials, which
   vectorise; for double libm's */
static inline void NAME(m3_sincos)(T x, T *restrict s, T *restrict c) {
    if (sizeof(T) == 8) {
        *s = sin((double)x), *c = cos((double)x);
        return;
    }
    const float xf = (float)x, t = xf * 0.636619772367581343f + 12582912.0f;
    const float k = t - 12582912.0f;
    const float r = ((xf - k * 1.5703125f) - k * 4.837512969970703125e-4f)
                    - k * 7.54978995489188216e-8f;
    const float z = r * r;
    const float sp = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r
                     + r;
    const float cp = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z
                      + 4.166664568298827e-2f) * z * z - 0.5f * z + 1.0f;
    union { float f; uint32_t i; } tb = {t};
    const uint32_t q = tb.i & 3u;
    const float s0 = (q & 1u) ? cp : sp, c0 = (q & 1u) ? sp : cp;
    *s = (T)((q & 2u) ? -s0 : s0);
    *c = (T)(((q + 1u) & 2u) ? -c0 : c0);
}

/* a later row's raw B, C (W channels) and phi (n) into the cache: in_proj's output rows, S
   and SP elements apart, read first from memory (~40% of m3qkt_fwd's samples were those
   first loads) */
#define M3_AHEAD 2
static inline void NAME(m3_ahead)(const T *Bx, const T *Cx, const T *phi, long S, long SP,
                                  long W, long n, long r) {
    const char *b = (const char *)(Bx + r * S), *c = (const char *)(Cx + r * S);
    for (long x = 0; x < (long)(W * sizeof(T)); x += 64)
        __builtin_prefetch(b + x, 0, 3), __builtin_prefetch(c + x, 0, 3);
    const char *p = (const char *)(phi + r * SP);
    for (long x = 0; x < (long)(n * sizeof(T)); x += 64) __builtin_prefetch(p + x, 0, 3);
}

void NAME(m3qkt_fwd)(const T *restrict Bx, const T *restrict Cx, long S, const T *restrict wB,
                     const T *restrict wC, const T *restrict bB, const T *restrict bC,
                     const T *restrict phi, long SP, const T *restrict dt, const T *restrict s,
                     T *restrict q, T *restrict k, T *restrict cb, T *restrict fin,
                     T *restrict theta, T *restrict end, T eps, long G, long H, long N, long n, long Tn, long b0,
                     long b1) {
    const double tau = 2 * 3.14159265358979323846;
    const T pi = (T)3.14159265358979323846;
    double *acc = malloc(H * n * sizeof(double));
    /* th: a row's angles, streamed out to theta (read by the backward only) */
    T *a = malloc((n + 3 * H * n + 4 * N) * sizeof(T)), *co = a + n, *si = co + H * n,
      *th = si + H * n, *bn = th + H * n;
    for (long b = b0; b < b1; b++) {
        for (long i = 0; i < H * n; i++) acc[i] = 0;
        for (long t = 0; t < Tn; t++) {
            const long r = b * Tn + t;
            if (t + M3_AHEAD < Tn) NAME(m3_ahead)(Bx, Cx, phi, S, SP, G * N, n, r + M3_AHEAD);
            const T *restrict ph = phi + r * SP, *restrict dtr = dt + r * H;
#pragma omp simd
            for (long j = 0; j < n; j++) a[j] = pi * TANH(ph[j]);
            for (long h = 0; h < H; h++) {
                const T dth = dtr[h];
                double *restrict ac = acc + h * n;
                T *restrict w = th + h * n;
#pragma omp simd
                for (long j = 0; j < n; j++) {
                    ac[j] += (double)(a[j] * dth);
                    w[j] = (T)(ac[j] - tau * floor(ac[j] / tau));
                }
            }
#pragma omp simd
            for (long i = 0; i < H * n; i++) NAME(m3_sincos)(th[i], si + i, co + i);
            NAME(m3_stream)(theta + r * H * n, th, H * n);
            NAME(m3qk_row_fwd)(Bx + r * S, Cx + r * S, wB, wC, bB, bC, co, si, s + r * H,
                               q + r * H * N, k + r * H * N, cb + r * H, fin + r * H, eps, G,
                               H, N, n, bn);
        }
        if (Tn > 0)  /* the last row's angles, still in th */
            memcpy(end + b * H * n, th, H * n * sizeof(T));
        else
            memset(end + b * H * n, 0, H * n * sizeof(T));
    }
#ifdef M3_STREAM
    _mm_sfence();  /* q's, k's and theta's streaming stores seen before the threads join */
#endif
    free(acc), free(a);
}

void NAME(m3qkt_bwd)(const T *restrict Bx, const T *restrict Cx, long S, const T *restrict wB,
                     const T *restrict wC, const T *restrict bB, const T *restrict bC,
                     const T *restrict phi, long SP, const T *restrict dt, const T *restrict s,
                     const T *restrict theta, const T *restrict dq, const T *restrict dk,
                     const T *restrict dcb, const T *restrict dend, T *restrict dBx,
                     T *restrict dCx, T *restrict dwB, T *restrict dwC, T *restrict dbB,
                     T *restrict dbC, T *restrict dphi, T *restrict ddt, T *restrict ds, T eps,
                     long G, long H, long N, long n, long Tn, long b0, long b1) {
    const T pi = (T)3.14159265358979323846;
    double *acc = malloc(H * n * sizeof(double));
    /* g: a batch row's angle gradients (T, H, n; in L2), its steps' qk backward run forwards
       (the rows' reads in address order), then summed from the last */
    T *a = malloc((2 * n + 2 * H * n + 6 * N + Tn * H * n) * sizeof(T)), *da = a + n,
      *co = da + n, *si = co + H * n, *w = si + H * n, *g = w + 6 * N;
    NAME(m3qk_zero)(dwB, dwC, dbB, dbC, H, N);
    for (long b = b0; b < b1; b++) {
        for (long t = 0; t < Tn; t++) {
            const long r = b * Tn + t;
            if (t + M3_AHEAD < Tn) NAME(m3_ahead)(Bx, Cx, phi, S, SP, G * N, n, r + M3_AHEAD);
            const T *restrict th = theta + r * H * n;
#pragma omp simd
            for (long i = 0; i < H * n; i++) NAME(m3_sincos)(th[i], si + i, co + i);
            NAME(m3qk_row_bwd)(Bx + r * S, Cx + r * S, wB, wC, bB, bC, co, si, s + r * H,
                               dq + r * H * N, dk + r * H * N, dcb + r * H, dBx + r * G * N,
                               dCx + r * G * N, dwB, dwC, dbB, dbC, g + t * H * n, ds + r * H,
                               eps, G, H, N, n, w);
        }
        for (long i = 0; i < H * n; i++) acc[i] = dend[b * H * n + i];
        for (long t = Tn - 1; t >= 0; t--) {
            const long r = b * Tn + t;
            const T *restrict ph = phi + r * SP, *restrict dtr = dt + r * H;
#pragma omp simd
            for (long j = 0; j < n; j++) a[j] = TANH(ph[j]), da[j] = 0;
            for (long h = 0; h < H; h++) {
                const T dth = dtr[h];
                double *restrict ac = acc + h * n;
                const T *restrict gh = g + (t * H + h) * n;
                T dd = 0;
#pragma omp simd reduction(+ : dd)
                for (long j = 0; j < n; j++) {
                    ac[j] += gh[j];
                    const T gj = (T)ac[j];
                    da[j] += gj * dth;
                    dd += gj * (pi * a[j]);
                }
                ddt[r * H + h] = dd;
            }
            T *restrict dp = dphi + r * n;
#pragma omp simd
            for (long j = 0; j < n; j++) dp[j] = da[j] * pi * (1 - a[j] * a[j]);
        }
    }
    free(acc), free(a);
}

#undef M3_AHEAD
#endif
