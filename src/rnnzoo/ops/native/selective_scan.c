/* Mamba's selective scan (Gu & Dao 2023, arXiv:2312.00752), fused, forward and backward.

   Per batch row b and inner channel d, over the d_state entries n:
       a_t = exp(delta_t A[d, n])           (or 2 exp(delta_t A) - 1 with allow_neg_eigval)
       h_t = a_t h_{t-1} + delta_t u_t B_t[n],        y_t = sum_n C_t[n] h_t[n] + Dv[d] u_t
   Backward (lambda_t = dL/dh_t, over the same steps in reverse):
       lambda_t = C_t dy_t + a_{t+1} lambda_{t+1}      (lambda_{T-1} also gets dL/dh_{T-1})
       dB_t[n] += sum_d lambda_t delta_t u_t,         dC_t[n] += sum_d h_t dy_t
       du_t = delta_t sum_n lambda_t B_t,             g_t = lambda_t h_{t-1} da_t/d(delta_t A)
       ddelta_t = u_t sum_n lambda_t B_t + sum_n g_t A, dA += g_t delta_t,  dh0 = a_0 lambda_0
       (and du_t += Dv dy_t, dDv += sum_t dy_t u_t for the skip; Dv NULL: no skip)

   The state of one batch row (d_inner x d_state, in blocks of DB channels, d_state x DB
   each) stays in a small local array; time is the outer loop, so each step reads one
   contiguous row of u and delta (a block-outer order reads one cache line per 1 KB
   stride and ran ~4x slower); the inner loops run along the DB channels of a block
   (vectorised), and no (batch, T, d_inner, d_state) tensor is ever written. The forward
   stores the state entering every chunk of K steps (`ck`); the backward takes a chunk one
   block of DB channels at a time (its K rows of u, delta, dy are 64-byte pieces, read K
   steps in a row: short enough not to cost what the whole-sequence block order did),
   recomputes that block's a_t, h_t into K x d_state x DB buffers (64 KB at K = 32: they
   stay in L2, where the whole row's K x d_inner x d_state ones (1 MB) did not) and runs
   the adjoint backwards over them; dB_t, dC_t's lane sums wait in K x d_state x DB
   buffers until the chunk's last block.

   Layouts (row-major, contiguous): u, delta, y, du, ddelta (batch, T, d_inner);
   At (d_state, d_inner) = A transposed; B, C, dB, dC (batch, T, d_state); h0, hT, dhT, dh0
   (batch, d_inner, d_state); ck (batch, ceil(T/K), d_state, d_inner); dAt (batch, d_state,
   d_inner) and dDv (batch, d_inner), one slice per batch row (the caller sums them). dB and dC are added to: the
   caller zeroes them, one copy per group of channels run at once.
   Each function does the batch rows [b0, b1) and the channels [d0, d1).

   The step sizes beside the scan (delta_fwd / delta_bwd), one pass each way over rows
   [r0, r1) in place of a product, torch's softplus and their backwards:
       delta = softplus(dt W^T + b)   (torch's: the identity above 20),  dt (rows, R),
       Wt (R, D) = W transposed, b (D); backward from g = dL/ddelta, with p = dt W^T + b
       recomputed: dp = g sigmoid(p) (g above 20), ddt = dp W, dWt += dt^T dp, db += dp
   (dWt and db: this range's own (R + 1, D) slice, zeroed here; the caller sums them).
   Plain C, no Python or torch headers: compiled on first use by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define DB 16
#define KERNELS "selective_scan.c"
#include "each_type.h"

#else  /* the kernels, for one T */

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#include "log1p.h"  /* NAME(log1p_unit) */

/* 2^x for the scan's a_t = exp(delta A) = 2^(delta A log2 e), A scaled by log2 e once
   (`blocks_of_A`): in float range reduction x = k + r, |r| <= 1/2 (exact), and Cephes'
   exp2f polynomial (relative error 1.7e-7, one product and two polynomial terms fewer than
   exp_f); in double exp_d (A unscaled there: SCALE = 1). Clamped to normal results, on the
   exponent: a result below 2^-126 takes 2^-126, one above 2^127 takes 2^127; NaN stays NaN
   (through r). The argument is first clamped to [-150, 128] as a float: beyond 2^23 the
   reduction is not exact (with the product dt A contracted into k's and r's FMAs, r took
   the product's rounding error, up to half an ulp of y: at y = -1e10, 2^x came out 1e-29,
   at -3e19 inf; an argument of -inf made r = NaN), and past 2^31 the int conversion
   wraps (+1e12 gave 2^-126). The clamp's ternaries keep NaN (on AVX-512 two compares and
   masked moves more per element: not measured). The polynomial's 1.7e-7 is on r; y's own
   rounding adds ~|y| 2^-24 relative (3.9e-6 at |delta A| = 87, an absolute error on a_t
   <= 1 of ~1e-7 at most). */
#define SCALE (sizeof(T) == 4 ? (T)1.44269504088896341 : (T)1)
#define INV_SCALE (sizeof(T) == 4 ? (T)0.69314718055994530942 : (T)1)
static inline T NAME(pow2)(T x) {
    if (sizeof(T) != 4) return EXP(x);
    float y = x < -150.0f ? -150.0f : x;  /* NaN stays */
    y = y > 128.0f ? 128.0f : y;
    const float k = (y + 12582912.0f) - 12582912.0f;  /* 1.5 * 2^23: y rounded */
    const float r = y - k;   /* |r| <= 1/2 */
    int e = (int)k;          /* NaN: INT_MIN */
    e = e < -126 ? -126 : e; /* the clamp on the integer exponent: max / min instructions */
    e = e > 127 ? 127 : e;   /* (on the float y they became compares and blends) */
    const float p = 1.0f + r * (6.931472028550421e-1f + r * (2.402264791363012e-1f
                    + r * (5.550332471162809e-2f + r * (9.618437357674640e-3f
                    + r * (1.339887440266574e-3f + r * 1.535336188319500e-4f)))));
    union { float f; uint32_t i; } s = {.i = (uint32_t)(e + 127) << 23};
    return p * s.f;
}

/* out = b + x W^T for one row: x (R), Wt (R, D) */
static inline void NAME(pre_row)(T *restrict out, const T *restrict x, const T *restrict Wt,
                                 const T *restrict bias, long R, long D) {
    for (long d = 0; d < D; d++) out[d] = bias[d];
    for (long r = 0; r < R; r++) {
        const T xr = x[r];
        const T *restrict w = Wt + r * D;
        #pragma omp simd
        for (long d = 0; d < D; d++) out[d] += xr * w[d];
    }
}

void NAME(delta_fwd)(const T *dt, const T *Wt, const T *bias, T *delta, long R, long D,
                     long r0, long r1) {
    for (long row = r0; row < r1; row++) {
        T *restrict out = delta + row * D;
        NAME(pre_row)(out, dt + row * R, Wt, bias, R, D);
        #pragma omp simd
        for (long d = 0; d < D; d++) {
            const T p = out[d];
            out[d] = p > 20 ? p : (p > 0 ? p : 0) + NAME(log1p_unit)(EXP(p > 0 ? -p : p));
        }
    }
}

void NAME(delta_bwd)(const T *dt, const T *Wt, const T *bias, const T *g, T *ddt, T *dWt,
                     long R, long D, long r0, long r1) {
    T *restrict dp = malloc(D * sizeof(T)), *restrict db = dWt + R * D;
    memset(dWt, 0, (R + 1) * D * sizeof(T));
    for (long row = r0; row < r1; row++) {
        const T *restrict x = dt + row * R, *restrict gr = g + row * D;
        NAME(pre_row)(dp, x, Wt, bias, R, D);
        #pragma omp simd
        for (long d = 0; d < D; d++) {
            const T p = dp[d];
            dp[d] = p > 20 ? gr[d] : gr[d] / (1 + EXP(-p));
            db[d] += dp[d];
        }
        for (long r = 0; r < R; r++) {
            const T xr = x[r];
            const T *restrict w = Wt + r * D;
            T *restrict dw = dWt + r * D;
            T acc = 0;
            #pragma omp simd reduction(+ : acc)
            for (long d = 0; d < D; d++) {
                acc += dp[d] * w[d];
                dw[d] += xr * dp[d];
            }
            ddt[row * R + r] = acc;
        }
    }
    free(dp);
}

/* the block of channels [ds, ds + nd) of one row, zero-padded to DB */
static inline void NAME(block)(T *restrict out, const T *restrict row, long nd) {
    if (nd == DB) {
        for (long j = 0; j < DB; j++) out[j] = row[j];
        return;
    }
    for (long j = 0; j < DB; j++) out[j] = j < nd ? row[j] : 0;
}

/* a hint to fetch the channels [d0, d1) of row `row` (D wide) of each of a, b, c (c may be
   NULL): the step the loop reaches two steps on */
static inline void NAME(fetch)(const T *a, const T *b, const T *c, long row, long D, long d0,
                               long d1) {
    for (long d = d0; d < d1; d += 64 / sizeof(T)) {
        __builtin_prefetch(a + row * D + d);
        __builtin_prefetch(b + row * D + d);
        if (c) __builtin_prefetch(c + row * D + d);
    }
}

/* A^T's channels [d0, d1) in blocks (nb, N, DB), zero-padded */
static T *NAME(blocks_of_A)(const T *At, long D, long N, long d0, long d1) {
    const long nb = (d1 - d0 + DB - 1) / DB;
    T *A = calloc(nb * N * DB, sizeof(T));
    for (long k = 0; k < nb; k++)
        for (long n = 0; n < N; n++)
            for (long j = 0; j < DB && d0 + k * DB + j < d1; j++)
                A[(k * N + n) * DB + j] = At[n * D + d0 + k * DB + j] * SCALE;
    return A;
}

/* the skip weights Dv's channels [d0, d1) in blocks of DB, zero-padded (all zero without Dv) */
static T *NAME(blocks_of_D)(const T *Dv, long d0, long d1) {
    T *Dk = calloc((d1 - d0 + DB - 1) / DB * DB, sizeof(T));
    for (long d = d0; Dv && d < d1; d++) Dk[d - d0] = Dv[d];
    return Dk;
}

/* scan_fwd and scan_bwd's bodies, inlined twice each: neg a constant there (a = 2^x, no
   product and sum with 1 and 0 per element when it is 0) */
static inline __attribute__((always_inline)) void NAME(scan_fwd_)(
        const T *u, const T *dl, const T *At, const T *Bm, const T *Cm, const T *Dv,
        const T *h0, T *y, T *hT, T *ck, long L, long D, long N, long K, const int neg,
        long b0, long b1, long d0, long d1) {
    const T m = neg ? 2 : 1, o = neg ? -1 : 0;
    const long nck = (L + K - 1) / K, nb = (d1 - d0 + DB - 1) / DB, S = N * DB;
    T *A = NAME(blocks_of_A)(At, D, N, d0, d1), *h = calloc(nb * S, sizeof(T));
    T *Dk = NAME(blocks_of_D)(Dv, d0, d1);
    for (long b = b0; b < b1; b++) {
        for (long k = 0; k < nb; k++)
            for (long n = 0; n < N; n++)
                for (long j = 0; j < DB; j++) {
                    const long d = d0 + k * DB + j;
                    h[k * S + n * DB + j] = (h0 && d < d1) ? h0[(b * D + d) * N + n] : 0;
                }
        for (long t = 0; t < L; t++) {
            const long row = b * L + t;
            const T *Bt = Bm + row * N, *Ct = Cm + row * N;
            if (t + 2 < L) NAME(fetch)(u, dl, NULL, row + 2, D, d0, d1);
            for (long k = 0; k < nb; k++) {
                const long ds = d0 + k * DB, nd = MIN(DB, d1 - ds);
                T *restrict hk = h + k * S;
                const T *restrict Ak = A + k * S;
                if (ck && t % K == 0)
                    for (long n = 0; n < N; n++)
                        memcpy(ck + ((b * nck + t / K) * N + n) * D + ds, hk + n * DB,
                               nd * sizeof(T));
                T dt[DB], du[DB], acc[DB];
                NAME(block)(dt, dl + row * D + ds, nd);
                NAME(block)(du, u + row * D + ds, nd);
                for (long j = 0; j < DB; j++) { acc[j] = Dk[k * DB + j] * du[j]; du[j] *= dt[j]; }
                for (long n = 0; n < N; n++) {
                    const T Bn = Bt[n], Cn = Ct[n];
                    for (long j = 0; j < DB; j++) {
                        T a = m * NAME(pow2)(dt[j] * Ak[n * DB + j]) + o;
                        T hv = a * hk[n * DB + j] + du[j] * Bn;
                        hk[n * DB + j] = hv;
                        acc[j] += Cn * hv;
                    }
                }
                memcpy(y + row * D + ds, acc, nd * sizeof(T));
            }
        }
        for (long k = 0; k < nb; k++)
            for (long n = 0; n < N; n++)
                for (long j = 0; j < DB && d0 + k * DB + j < d1; j++)
                    hT[(b * D + d0 + k * DB + j) * N + n] = h[k * S + n * DB + j];
    }
    free(h); free(A); free(Dk);
}

void NAME(scan_fwd)(const T *u, const T *dl, const T *At, const T *Bm, const T *Cm,
                    const T *Dv, const T *h0, T *y, T *hT, T *ck, long L, long D, long N,
                    long K, int neg, long b0, long b1, long d0, long d1) {
    if (neg) NAME(scan_fwd_)(u, dl, At, Bm, Cm, Dv, h0, y, hT, ck, L, D, N, K, 1, b0, b1, d0, d1);
    else NAME(scan_fwd_)(u, dl, At, Bm, Cm, Dv, h0, y, hT, ck, L, D, N, K, 0, b0, b1, d0, d1);
}

static inline __attribute__((always_inline)) void NAME(scan_bwd_)(
        const T *u, const T *dl, const T *At, const T *Bm, const T *Cm, const T *Dv,
        const T *dy, const T *dhT, const T *ck, T *gu, T *gdl, T *gAt, T *gDv, T *gB, T *gC,
        T *gh0, long L, long D, long N, long K, const int neg, long b0, long b1, long d0,
        long d1) {
    const T m = neg ? 2 : 1, o = neg ? -1 : 0;
    const long nck = (L + K - 1) / K, nb = (d1 - d0 + DB - 1) / DB, S = N * DB, P = nb * S;
    T *A = NAME(blocks_of_A)(At, D, N, d0, d1), *Dk = NAME(blocks_of_D)(Dv, d0, d1);
    T *gDk = malloc(nb * DB * sizeof(T));
    T *lam = calloc(P, sizeof(T)), *gA = calloc(P, sizeof(T)), *hs0 = calloc(S, sizeof(T));
    /* one block's a_t, h_t over a chunk (K x d_state x DB each: L1/L2-sized) */
    T *ab = calloc(K * S, sizeof(T)), *hb = calloc(K * S, sizeof(T));
    /* dC_t, dB_t's terms per (t, n, lane) over the chunk, summed over the blocks, then over
       the lanes once a step (a sum over the lanes per block and n took two horizontal sums
       each) */
    T *sCa = malloc(K * S * sizeof(T)), *sBa = malloc(K * S * sizeof(T));
    for (long b = b0; b < b1; b++) {
        for (long k = 0; k < nb; k++)
            for (long n = 0; n < N; n++)
                for (long j = 0; j < DB; j++) {
                    const long d = d0 + k * DB + j;
                    lam[k * S + n * DB + j] = (dhT && d < d1) ? dhT[(b * D + d) * N + n] : 0;
                    gA[k * S + n * DB + j] = 0;
                }
        memset(gDk, 0, nb * DB * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * K, nt = MIN(K, L - t0);
            memset(sCa, 0, nt * S * sizeof(T));
            memset(sBa, 0, nt * S * sizeof(T));
            for (long k = 0; k < nb; k++) {  /* one block of channels over the whole chunk */
                const long ds = d0 + k * DB, nd = MIN(DB, d1 - ds);
                const T *restrict Ak = A + k * S;
                T *restrict lk = lam + k * S, *restrict gAk = gA + k * S;
                for (long n = 0; n < N; n++) {
                    NAME(block)(hs0 + n * DB, ck + ((b * nck + c) * N + n) * D + ds, nd);
                    if (k + 1 < nb) __builtin_prefetch(ck + ((b * nck + c) * N + n) * D + ds + DB);
                }
                for (long i = 0; i < nt; i++) {      /* recompute the block's a_t and h_t */
                    const long row = b * L + t0 + i;
                    const T *Bt = Bm + row * N;
                    const T *restrict hp = i ? hb + (i - 1) * S : hs0;
                    T *restrict ai = ab + i * S, *restrict hi = hb + i * S;
                    T dt[DB], du[DB];
                    NAME(block)(dt, dl + row * D + ds, nd);
                    NAME(block)(du, u + row * D + ds, nd);
                    for (long j = 0; j < DB; j++) du[j] *= dt[j];
                    for (long n = 0; n < N; n++) {
                        const T Bn = Bt[n];
                        for (long j = 0; j < DB; j++) {
                            T a = m * NAME(pow2)(dt[j] * Ak[n * DB + j]) + o;
                            ai[n * DB + j] = a;
                            hi[n * DB + j] = a * hp[n * DB + j] + du[j] * Bn;
                        }
                    }
                }
                for (long i = nt - 1; i >= 0; i--) { /* the adjoint, backwards */
                    const long row = b * L + t0 + i;
                    const T *Bt = Bm + row * N, *Ct = Cm + row * N;
                    const T *restrict hi = hb + i * S, *restrict ai = ab + i * S;
                    const T *restrict hp = i ? hb + (i - 1) * S : hs0;
                    T *restrict sCi = sCa + i * S, *restrict sBi = sBa + i * S;
                    T dt[DB], uu[DB], du[DB], g[DB], lB[DB], gs[DB];
                    NAME(block)(dt, dl + row * D + ds, nd);
                    NAME(block)(uu, u + row * D + ds, nd);
                    NAME(block)(g, dy + row * D + ds, nd);
                    for (long j = 0; j < DB; j++) { du[j] = dt[j] * uu[j]; lB[j] = 0; gs[j] = 0; }
                    for (long n = 0; n < N; n++) {
                        const T Bn = Bt[n], Cn = Ct[n];
                        #pragma omp simd
                        for (long j = 0; j < DB; j++) {
                            const long q = n * DB + j;
                            T l = lk[q] + Cn * g[j];
                            sCi[q] += hi[q] * g[j];
                            sBi[q] += l * du[j];
                            lB[j] += l * Bn;
                            const T la = l * ai[q];  /* lambda a: a's term of lambda_{t-1} */
                            /* da/d(delta A) = a (lambda a h_{t-1}: one product), a + 1 with neg */
                            const T gd = (neg ? la + l : la) * hp[q];
                            gAk[q] += gd * dt[j];
                            gs[j] += gd * Ak[q];
                            lk[q] = la;
                        }
                    }
                    for (long j = 0; j < DB; j++) gDk[k * DB + j] += g[j] * uu[j];
                    T *restrict guk = gu + row * D + ds, *restrict gdk = gdl + row * D + ds;
                    if (nd == DB)
                        for (long j = 0; j < DB; j++) {
                            guk[j] = lB[j] * dt[j] + Dk[k * DB + j] * g[j];
                            gdk[j] = lB[j] * uu[j] + gs[j] * INV_SCALE;
                        }
                    else
                        for (long j = 0; j < nd; j++) {
                            guk[j] = lB[j] * dt[j] + Dk[k * DB + j] * g[j];
                            gdk[j] = lB[j] * uu[j] + gs[j] * INV_SCALE;
                        }
                }
            }
            for (long i = 0; i < nt; i++) {          /* dB_t, dC_t: the lanes summed */
                const long row = b * L + t0 + i;
                for (long n = 0; n < N; n++) {
                    T sC = 0, sB = 0;
                    for (long j = 0; j < DB; j++) {
                        sC += sCa[i * S + n * DB + j];
                        sB += sBa[i * S + n * DB + j];
                    }
                    gC[row * N + n] += sC;
                    gB[row * N + n] += sB;
                }
            }
        }
        for (long k = 0; k < nb; k++)
            for (long n = 0; n < N; n++)
                for (long j = 0; j < DB && d0 + k * DB + j < d1; j++) {
                    const long d = d0 + k * DB + j;
                    gh0[(b * D + d) * N + n] = lam[k * S + n * DB + j];
                    gAt[(b * N + n) * D + d] = gA[k * S + n * DB + j];
                }
        for (long d = d0; gDv && d < d1; d++) gDv[b * D + d] = gDk[d - d0];
    }
    free(A); free(Dk); free(gDk); free(lam); free(gA); free(hs0); free(ab); free(hb); free(sCa); free(sBa);
}

void NAME(scan_bwd)(const T *u, const T *dl, const T *At, const T *Bm, const T *Cm,
                    const T *Dv, const T *dy, const T *dhT, const T *ck, T *gu, T *gdl, T *gAt,
                    T *gDv, T *gB, T *gC, T *gh0, long L, long D, long N, long K, int neg,
                    long b0, long b1, long d0, long d1) {
    if (neg) NAME(scan_bwd_)(u, dl, At, Bm, Cm, Dv, dy, dhT, ck, gu, gdl, gAt, gDv, gB, gC, gh0,
                             L, D, N, K, 1, b0, b1, d0, d1);
    else NAME(scan_bwd_)(u, dl, At, Bm, Cm, Dv, dy, dhT, ck, gu, gdl, gAt, gDv, gB, gC, gh0,
                         L, D, N, K, 0, b0, b1, d0, d1);
}

#undef MIN
#undef SCALE
#undef INV_SCALE

#endif
