/* Longhorn's diagonal scan (Liu et al. 2024, arXiv:2407.14207), fused, forward and backward.

   Per batch row b, inner channel i and state column j, with n_t = |k_t|^2, r_tj = n_t - k_tj^2:
       inv_ti = 1 / (1 + beta_ti n_t),   eps_ti = beta_ti inv_ti,   e_ti = eps_ti u_ti
       a_tij  = (1 + beta_ti r_tj) inv_ti           (= 1 - eps_ti k_tj^2, without its cancellation)
       S_tij  = a_tij S_{t-1,ij} + e_ti k_tj,       y_ti = sum_j q_tj S_tij
   Backward (lam_t = dL/dS_t, over the steps in reverse; G = lam_t S_{t-1} = dL/da_t):
       lam_t  = q_t dy_t + a_{t+1} lam_{t+1}        (lam_{T-1} also gets dL/dS_{T-1})
       E_i    = sum_j lam_ij k_j   (dL/de_i),       dq_j = sum_i S_tij dy_ti
       du_i   = eps_i E_i,   dbeta_i = inv_i sum_j G_ij (r_j - a_ij n) + u_i inv_i^2 E_i
       dr_j   = sum_i eps_i G_ij,   dn = -sum_i eps_i (sum_j G_ij a_ij + e_i E_i)
       dk_j   = sum_i lam_ij e_i - 2 k_j dr_j + 2 k_j (dn + sum_l dr_l),   dS0 = a_0 lam_0

   Same shape as selective_scan.c: the state of one batch row (d_inner x d_state, in blocks of
   DB channels, d_state x DB each) stays in a local array, time is the outer loop and the inner
   loops run along the DB channels of a block (vectorised); no (batch, T, d_inner, d_state)
   tensor is written. The forward stores the state entering every chunk of K steps (`ck`, in
   that block layout); the backward recomputes one chunk's states from it.

   Layouts (row-major, contiguous): u, beta, y, dy, du, dbeta (batch, T, d_inner); k, q, dk, dq
   (batch, T, d_state); S0, ST, dST, dS0 (batch, d_inner, d_state); ck (batch, ceil(T/K),
   ceil(d_inner/DB) d_state DB). Each function does the batch rows [b0, b1).
   Plain C, no Python or torch headers: compiled on first use by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define DB 16
#define KERNELS "longhorn_scan.c"
#include "each_type.h"

#else  /* the kernels, for one T */

#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* the block of channels [ds, ds + nd) of one row, zero-padded to DB */
static inline void NAME(block)(T *restrict out, const T *restrict row, long nd) {
    for (long j = 0; j < DB; j++) out[j] = j < nd ? row[j] : 0;
}

/* n = |k|^2 (returned) and r_j = n - k_j^2 */
static inline T NAME(norms)(const T *restrict k, T *restrict r, long N) {
    T n = 0;
    for (long j = 0; j < N; j++) n += k[j] * k[j];
    for (long j = 0; j < N; j++) r[j] = n - k[j] * k[j];
    return n;
}

/* a state (D, N) row-major <-> the block layout (nb, N, DB), zero-padded */
static void NAME(to_blocks)(T *restrict h, const T *restrict S, long D, long N) {
    const long nb = (D + DB - 1) / DB;
    for (long kb = 0; kb < nb; kb++)
        for (long n = 0; n < N; n++)
            for (long j = 0; j < DB; j++) {
                const long d = kb * DB + j;
                h[(kb * N + n) * DB + j] = (S && d < D) ? S[d * N + n] : 0;
            }
}

static void NAME(from_blocks)(T *restrict S, const T *restrict h, long D, long N) {
    const long nb = (D + DB - 1) / DB;
    for (long kb = 0; kb < nb; kb++)
        for (long n = 0; n < N; n++)
            for (long j = 0; j < DB && kb * DB + j < D; j++)
                S[(kb * DB + j) * N + n] = h[(kb * N + n) * DB + j];
}

/* one step of the recurrence on the whole row state: hp -> h (may be the same array);
   y (d_inner) written when not NULL */
static inline void NAME(step)(const T *restrict hp, T *h, T *y, const T *u, const T *beta,
                              const T *k, const T *q, const T *r, T n, long D, long N) {
    const long nb = (D + DB - 1) / DB, S = N * DB;
    for (long kb = 0; kb < nb; kb++) {
        const long ds = kb * DB, nd = MIN(DB, D - ds);
        const T *pk = hp + kb * S;
        T *hk = h + kb * S;
        T bt[DB], inv[DB], e[DB], acc[DB];
        NAME(block)(bt, beta + ds, nd);
        NAME(block)(e, u + ds, nd);
        for (long j = 0; j < DB; j++) {
            inv[j] = 1 / (1 + bt[j] * n);
            e[j] *= bt[j] * inv[j];
            acc[j] = 0;
        }
        for (long m = 0; m < N; m++) {
            const T rm = r[m], km = k[m], qm = q[m];
            #pragma omp simd
            for (long j = 0; j < DB; j++) {
                const T a = (1 + bt[j] * rm) * inv[j];
                const T hv = a * pk[m * DB + j] + e[j] * km;
                hk[m * DB + j] = hv;
                acc[j] += qm * hv;
            }
        }
        if (y) memcpy(y + ds, acc, nd * sizeof(T));
    }
}

void NAME(longhorn_fwd)(const T *u, const T *beta, const T *k, const T *q, const T *S0, T *y,
                        T *ST, T *ck, long L, long D, long N, long K, long b0, long b1) {
    const long nck = (L + K - 1) / K, P = (D + DB - 1) / DB * N * DB;
    T *h = malloc(P * sizeof(T)), *r = malloc(N * sizeof(T));
    for (long b = b0; b < b1; b++) {
        NAME(to_blocks)(h, S0 ? S0 + b * D * N : NULL, D, N);
        for (long t = 0; t < L; t++) {
            const long row = b * L + t;
            if (ck && t % K == 0) memcpy(ck + (b * nck + t / K) * P, h, P * sizeof(T));
            const T n = NAME(norms)(k + row * N, r, N);
            NAME(step)(h, h, y + row * D, u + row * D, beta + row * D, k + row * N,
                       q + row * N, r, n, D, N);
        }
        NAME(from_blocks)(ST + b * D * N, h, D, N);
    }
    free(h); free(r);
}

void NAME(longhorn_bwd)(const T *u, const T *beta, const T *k, const T *q, const T *dy,
                        const T *dST, const T *ck, T *du, T *dbeta, T *dk, T *dq, T *dS0,
                        long L, long D, long N, long K, long b0, long b1) {
    const long nck = (L + K - 1) / K, nb = (D + DB - 1) / DB, S = N * DB, P = nb * S;
    T *lam = malloc(P * sizeof(T)), *hb = malloc(K * P * sizeof(T));
    T *r = malloc(N * sizeof(T)), *dr = malloc(N * sizeof(T));
    /* the sums over channels of dr, dk and dq kept as DB-wide vectors across the blocks and
       reduced once a step (a reduction per block and column was ~3/4 of the backward) */
    T *sdr = malloc(S * sizeof(T)), *sdk = malloc(S * sizeof(T)), *sdq = malloc(S * sizeof(T));
    for (long b = b0; b < b1; b++) {
        NAME(to_blocks)(lam, dST ? dST + b * D * N : NULL, D, N);
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * K, nt = MIN(K, L - t0);
            const T *h0 = ck + (b * nck + c) * P;
            for (long i = 0; i < nt; i++) {          /* recompute the chunk's states */
                const long row = b * L + t0 + i;
                const T n = NAME(norms)(k + row * N, r, N);
                NAME(step)(i ? hb + (i - 1) * P : h0, hb + i * P, NULL, u + row * D,
                           beta + row * D, k + row * N, q + row * N, r, n, D, N);
            }
            for (long i = nt - 1; i >= 0; i--) {     /* the adjoint, backwards */
                const long row = b * L + t0 + i;
                const T *kt = k + row * N, *qt = q + row * N;
                const T n = NAME(norms)(kt, r, N);
                const T *hi = hb + i * P, *hp = i ? hb + (i - 1) * P : h0;
                T dn = 0;
                memset(sdr, 0, S * sizeof(T));
                memset(sdk, 0, S * sizeof(T));
                memset(sdq, 0, S * sizeof(T));
                for (long kb = 0; kb < nb; kb++) {
                    const long ds = kb * DB, nd = MIN(DB, D - ds);
                    const T *restrict hk = hi + kb * S, *restrict pk = hp + kb * S;
                    T *restrict lk = lam + kb * S;
                    T bt[DB], ut[DB], g[DB], inv[DB], eps[DB], e[DB];
                    T sGr[DB], sGa[DB], E[DB];
                    NAME(block)(bt, beta + row * D + ds, nd);
                    NAME(block)(ut, u + row * D + ds, nd);
                    NAME(block)(g, dy + row * D + ds, nd);
                    for (long j = 0; j < DB; j++) {
                        inv[j] = 1 / (1 + bt[j] * n);
                        eps[j] = bt[j] * inv[j];
                        e[j] = eps[j] * ut[j];
                        sGr[j] = 0; sGa[j] = 0; E[j] = 0;
                    }
                    for (long m = 0; m < N; m++) {
                        const T rm = r[m], km = kt[m], qm = qt[m];
                        #pragma omp simd
                        for (long j = 0; j < DB; j++) {
                            const long x = m * DB + j;
                            const T a = (1 + bt[j] * rm) * inv[j];
                            const T l = lk[x] + qm * g[j];
                            const T G = l * pk[x];
                            sGr[j] += G * rm;
                            sGa[j] += G * a;
                            E[j] += l * km;
                            sdr[x] += G * eps[j];
                            sdk[x] += l * e[j];
                            sdq[x] += hk[x] * g[j];
                            lk[x] = l * a;
                        }
                    }
                    for (long j = 0; j < nd; j++) {
                        du[row * D + ds + j] = eps[j] * E[j];
                        dbeta[row * D + ds + j] = inv[j] * (sGr[j] - n * sGa[j])
                                                  + ut[j] * inv[j] * inv[j] * E[j];
                        dn -= eps[j] * (sGa[j] + e[j] * E[j]);
                    }
                }
                for (long m = 0; m < N; m++) {
                    T a = 0;
                    for (long j = 0; j < DB; j++) a += sdr[m * DB + j];
                    dr[m] = a;
                    dn += a;
                }
                for (long m = 0; m < N; m++) {
                    T ke = 0, qs = 0;
                    for (long j = 0; j < DB; j++) {
                        ke += sdk[m * DB + j];
                        qs += sdq[m * DB + j];
                    }
                    dk[row * N + m] = ke + 2 * kt[m] * (dn - dr[m]);
                    dq[row * N + m] = qs;
                }
            }
        }
        NAME(from_blocks)(dS0 + b * D * N, lam, D, N);
    }
    free(lam); free(hb); free(r); free(dr); free(sdr); free(sdk); free(sdq);
}

#undef MIN

#endif
