/* Titans' linear weight-only memory in its chunk form (ops/memory.py,
   _titans_linear_chunks), the chunk loop and every read of a chunk, forward and backward,
   one (batch row, head) pair at a time with its (K, K) memory M and surprise S in cache.
   For chunk n with gradient point P (the state's M' for the first chunk, the chunk's
   starting M after it), its C steps q, k, R (R = k W_0 + b_0 - v) and gate coefficients:

       G   = k (P + W0) + R                            (C, K): every step's gradient
       o_t = q_t W0 + A_t q_t M + f_t q_t S - sum_{s<=t} att_ts G_s
       M  <- A_T M + f_T S - sum_s cl_s k_s G_s^T,     S <- E_T S - sum_s re_s k_s G_s^T

   (W0 the initial memory, R = b_0 - v; A_T = A_{C-1}, f_T = f_{C-1}; att = Cm o (q k^T), read on and below its diagonal only,
   datt zero above; cl = Cm's last row, re = RE theta; all made by the caller). Every chunk's starting (M, S) is written out
   (Ms, Ss: N + 1 of them, the last the final state); the backward reads them back and
   recomputes G. With gM, gS the gradients of the chunk's final (M, S):

       dA_T = <gM, M>, df_T = <gM, S>, dE_T = <gS, S>
       dG_s = -cl_s gM^T k_s - re_s gS^T k_s - sum_{t>=s} att_ts do_t,   dR = dG
       dk_s = -cl_s gM G_s - re_s gS G_s + (P + W0) dG_s,   dcl_s = -k_s^T gM G_s,  dre_s likewise
       dA_t = do_t . q_t M,  df_t = do_t . q_t S,  dq_t = A_t M do_t + f_t S do_t + W0 do_t
       datt_ts = -do_t . G_s (s <= t, else 0),  dP = sum_s k_s dG_s^T,
       dW0 = sum over chunks of dP + sum_t q_t do_t^T
       gM <- A_T gM + sum_t A_t q_t do_t^T (+ dP after the first chunk),
       gS <- f_T gM + E_T gS + sum_t f_t q_t do_t^T          (plus dMs, dSs of each chunk)

   Layouts (row-major, contiguous), pr = b H + h a pair: q, k, R, o and their gradients
   (pairs, N, C, K); att, datt (pairs, N, C, C); ga (A), gf (f), cl, re and gradients
   (pairs, N, C); gE (E_T), dgE (pairs, N); P0, M0, S0, W0, dP0, dM0, dS0, dW0 (pairs, K, K); Ms, Ss,
   dMs, dSs (pairs, N + 1 - lo, K, K): the gradients of the states from chunk lo on (those
   before are zero; dMs, dSs may be NULL: all zero). Each function does the
   pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "titans_scan.c"
#include "each_type.h"

#else
#include "mm.h"  /* mm: the chunk's (C, K) x (K, K) products in register tiles (and tile.h's
                    vectors, loads and stores, whose macros it undefines again) */
#include "transpose.h"  /* trs: the K x K and C x K transposes mm takes as right factors */

/* G = k P + R, (C, K) */
static inline __attribute__((always_inline)) void NAME(gradients)(const T *restrict k, const T *restrict P, const T *restrict R,
                            T *restrict G, long C, long K) {
    for (long s = 0; s < C; s++) {
        T *restrict Gs = G + s * K;
        const T *restrict ks = k + s * K;
        memcpy(Gs, R + s * K, K * sizeof(T));
        for (long i = 0; i < K; i++) {
            const T ki = ks[i];
            const T *restrict Pi = P + i * K;
#pragma omp simd
            for (long j = 0; j < K; j++) Gs[j] += ki * Pi[j];
        }
    }
}

/* the same on mm (the backward's: there it is faster than the rows above; the forward's
   own loop is not) */
static inline __attribute__((always_inline)) void NAME(gradients_mm)(
        const T *restrict k, const T *restrict P, const T *restrict R, T *restrict G, long C,
        long K) {
    memcpy(G, R, C * K * sizeof(T));
    NAME(mm)(k, P, G, C, K, K, K, 1, K, 1, K, 0, 0, 0, 1, 0, C);
}

static inline __attribute__((always_inline)) void NAME(fwd)(
        const T *restrict q, const T *restrict k, const T *restrict R, const T *restrict att,
        const T *restrict ga, const T *restrict gf, const T *restrict cl, const T *restrict re,
        const T *restrict gE, const T *restrict P0, const T *restrict M0, const T *restrict S0,
        const T *restrict W0, T *restrict o, T *restrict Ms, T *restrict Ss, long N, long C,
        long K, long p0, long p1) {
    const long KK = K * K, CK = C * K;
    T *G = malloc((CK + KK) * sizeof(T)), *Pe = G + CK;
    for (long pr = p0; pr < p1; pr++) {
        T *M = Ms + pr * (N + 1) * KK, *S = Ss + pr * (N + 1) * KK;
        const T *restrict W = W0 + pr * KK;
        memcpy(M, M0 + pr * KK, KK * sizeof(T));
        memcpy(S, S0 + pr * KK, KK * sizeof(T));
        for (long n = 0; n < N; n++) {
            const long c = pr * N + n;
            const T *restrict Mn = M + n * KK, *restrict Sn = S + n * KK;
            T *restrict Mx = M + (n + 1) * KK, *restrict Sx = S + (n + 1) * KK;
            const T *restrict qn = q + c * CK, *restrict kn = k + c * CK;
            const T *restrict an = att + c * C * C, *restrict A = ga + c * C;
            const T *restrict f = gf + c * C, *restrict cn = cl + c * C, *restrict rn = re + c * C;
            T *restrict on = o + c * CK;
            const T *restrict P = n ? Mn : P0 + pr * KK;
            for (long e = 0; e < KK; e++) Pe[e] = P[e] + W[e];
            NAME(gradients)(kn, Pe, R + c * CK, G, C, K);
            for (long t = 0; t < C; t++) {
                T *restrict ot = on + t * K;
                for (long j = 0; j < K; j++) ot[j] = 0;
                for (long i = 0; i < K; i++) {
                    const T qi = qn[t * K + i], a = A[t] * qi, b = f[t] * qi;
                    const T *restrict Mi = Mn + i * K, *restrict Si = Sn + i * K;
                    const T *restrict Wi = W + i * K;
#pragma omp simd
                    for (long j = 0; j < K; j++) ot[j] += a * Mi[j] + b * Si[j] + qi * Wi[j];
                }
                for (long s = 0; s <= t; s++) {
                    const T w = an[t * C + s];
                    const T *restrict Gs = G + s * K;
#pragma omp simd
                    for (long j = 0; j < K; j++) ot[j] -= w * Gs[j];
                }
            }
            const T AT = A[C - 1], fT = f[C - 1], ET = gE[c];
            for (long i = 0; i < K; i++) {
                T *restrict Mi = Mx + i * K, *restrict Si = Sx + i * K;
                const T *restrict mi = Mn + i * K, *restrict si = Sn + i * K;
#pragma omp simd
                for (long j = 0; j < K; j++) {
                    Mi[j] = AT * mi[j] + fT * si[j];
                    Si[j] = ET * si[j];
                }
                for (long s = 0; s < C; s++) {
                    const T ks = kn[s * K + i], a = cn[s] * ks, b = rn[s] * ks;
                    const T *restrict Gs = G + s * K;
#pragma omp simd
                    for (long j = 0; j < K; j++) {
                        Mi[j] -= a * Gs[j];
                        Si[j] -= b * Gs[j];
                    }
                }
            }
        }
    }
    free(G);
}

/* Xt = X^T, X (K, K): transpose.h's 8 x 8 blocks of shuffles (a scalar transpose stored
   one value at a time at a stride) */
static inline __attribute__((always_inline)) void NAME(transpose)(const T *restrict X,
                                                                  T *restrict Xt, long K) {
    NAME(trs)(Xt, K, X, K, K, K);
}

static inline __attribute__((always_inline)) void NAME(bwd)(
        const T *restrict q, const T *restrict k, const T *restrict R, const T *restrict att,
        const T *restrict ga, const T *restrict gf, const T *restrict cl, const T *restrict re,
        const T *restrict gE, const T *restrict P0, const T *restrict Ms, const T *restrict Ss,
        const T *restrict W0, const T *restrict dout, const T *restrict dMs,
        const T *restrict dSs, T *restrict dq, T *restrict dk, T *restrict dR,
        T *restrict datt, T *restrict dga, T *restrict dgf, T *restrict dcl, T *restrict dre,
        T *restrict dgE, T *restrict dP0, T *restrict dM0, T *restrict dS0,
        T *restrict dW0, long N, long lo, long C, long K, long p0, long p1) {
    const long KK = K * K, CK = C * K;
    T *G = malloc(5 * CK * sizeof(T)), *Gt = G + CK;
    T *Y = Gt + CK, *Z = Y + CK, *V = Z + CK;
    T *gM = malloc(13 * KK * sizeof(T)), *gS = gM + KK, *nM = gS + KK, *nS = nM + KK;
    T *gMt = nS + KK, *gSt = gMt + KK, *Mt = gSt + KK, *St = Mt + KK, *Pt = St + KK;
    T *Pe = Pt + KK, *Wt = Pe + KK, *dP = Wt + KK;
    for (long pr = p0; pr < p1; pr++) {
        const long st = pr * (N + 1) * KK;
        const T *restrict W = W0 + pr * KK;
        T *restrict dW = dW0 + pr * KK;
        memset(dW, 0, KK * sizeof(T));
        NAME(transpose)(W, Wt, K);
        const long dt0 = (pr * (N + 1 - lo) - lo) * KK;   /* state n's gradient: + n KK */
        if (dMs) memcpy(gM, dMs + dt0 + N * KK, KK * sizeof(T));
        else memset(gM, 0, KK * sizeof(T));
        if (dSs) memcpy(gS, dSs + dt0 + N * KK, KK * sizeof(T));
        else memset(gS, 0, KK * sizeof(T));
        for (long n = N - 1; n >= 0; n--) {
            const long c = pr * N + n;
            const T *restrict Mn = Ms + st + n * KK, *restrict Sn = Ss + st + n * KK;
            const T *restrict P = n ? Mn : P0 + pr * KK;
            const T *restrict qn = q + c * CK, *restrict kn = k + c * CK;
            const T *restrict an = att + c * C * C, *restrict A = ga + c * C;
            const T *restrict f = gf + c * C, *restrict cn = cl + c * C, *restrict rn = re + c * C;
            const T *restrict don = dout + c * CK;
            T *restrict dqn = dq + c * CK, *restrict dkn = dk + c * CK;
            T *restrict dan = datt + c * C * C, *restrict dA = dga + c * C, *restrict df = dgf + c * C;
            T *restrict dcn = dcl + c * C, *restrict drn = dre + c * C;
            T *restrict dG = dR + c * CK;   /* dR = dG: made in place */
            const T AT = A[C - 1], fT = f[C - 1], ET = gE[c];
            for (long e = 0; e < KK; e++) Pe[e] = P[e] + W[e];
            NAME(gradients_mm)(kn, Pe, R + c * CK, G, C, K);
            NAME(trs)(Gt, C, G, K, C, K);
            NAME(transpose)(gM, gMt, K);
            NAME(transpose)(gS, gSt, K);
            NAME(transpose)(Mn, Mt, K);
            NAME(transpose)(Sn, St, K);
            NAME(transpose)(Pe, Pt, K);
            /* the update's scalars */
            T sAM = 0, sFM = 0, sES = 0;
#pragma omp simd reduction(+ : sAM, sFM, sES)
            for (long e = 0; e < KK; e++) {
                sAM += gM[e] * Mn[e];
                sFM += gM[e] * Sn[e];
                sES += gS[e] * Sn[e];
            }
            dgE[c] = sES;
            /* the update's dG, dk, dcl, dre: Y = k gM, Z = k gS, then Y = G gM^T, Z = G gS^T
               (C, K) products (mm: rows of the right factor, a block of rows in registers) */
            NAME(mm)(kn, gM, Y, C, K, K, K, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            NAME(mm)(kn, gS, Z, C, K, K, K, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            for (long s = 0; s < C; s++)
#pragma omp simd
                for (long j = 0; j < K; j++) dG[s * K + j] = -cn[s] * Y[s * K + j] - rn[s] * Z[s * K + j];
            NAME(mm)(G, gMt, Y, C, K, K, K, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            NAME(mm)(G, gSt, Z, C, K, K, K, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            for (long s = 0; s < C; s++) {
                const T *restrict ks = kn + s * K, *restrict ys = Y + s * K, *restrict zs = Z + s * K;
                T *restrict dks = dkn + s * K;
                T tc = 0, tr = 0;
#pragma omp simd reduction(+ : tc, tr)
                for (long i = 0; i < K; i++) {
                    dks[i] = -cn[s] * ys[i] - rn[s] * zs[i];
                    tc -= ks[i] * ys[i];
                    tr -= ks[i] * zs[i];
                }
                dcn[s] = tc;
                drn[s] = tr;
            }
            /* the reads: Y = do M^T, Z = do S^T, V = do W0^T; datt = -do G^T on and below the
               diagonal; dG -= att^T do */
            NAME(mm)(don, Mt, Y, C, K, K, K, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            NAME(mm)(don, St, Z, C, K, K, K, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            NAME(mm)(don, Wt, V, C, K, K, K, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            for (long t = 0; t < C; t++) {
                const T *restrict qt = qn + t * K, *restrict yt = Y + t * K;
                const T *restrict zt = Z + t * K, *restrict vt = V + t * K;
                T *restrict dqt = dqn + t * K;
                T sa = 0, sf = 0;
#pragma omp simd reduction(+ : sa, sf)
                for (long i = 0; i < K; i++) {
                    dqt[i] = A[t] * yt[i] + f[t] * zt[i] + vt[i];
                    sa += qt[i] * yt[i];
                    sf += qt[i] * zt[i];
                }
                dA[t] = sa;
                df[t] = sf;
            }
            NAME(mm)(don, Gt, dan, C, C, K, K, 1, C, 1, C, 0, 0, 0, 0, 0, C);
            for (long t = 0; t < C; t++) {
                T *restrict dat = dan + t * C;
                for (long s = 0; s <= t; s++) dat[s] = -dat[s];
                for (long s = t + 1; s < C; s++) dat[s] = 0;
            }
            NAME(mm)(an, don, Y, C, K, C, 1, C, K, 1, K, 0, 0, 0, 0, 0, C);
#pragma omp simd
            for (long e = 0; e < CK; e++) dG[e] -= Y[e];
            dA[C - 1] += sAM;
            df[C - 1] += sFM;
            /* the gradients of the chunk's starting M, S */
#pragma omp simd
            for (long e = 0; e < KK; e++) {
                nM[e] = AT * gM[e];
                nS[e] = fT * gM[e] + ET * gS[e];
            }
            /* nM += (A q)^T do, nS += (f q)^T do, dW0 += q^T do: (K, C) x (C, K) on mm, the
               left factors read as columns (Y, Z: the scaled rows) */
            for (long t = 0; t < C; t++)
#pragma omp simd
                for (long i = 0; i < K; i++) {
                    Y[t * K + i] = A[t] * qn[t * K + i];
                    Z[t * K + i] = f[t] * qn[t * K + i];
                }
            NAME(mm)(Y, don, nM, K, K, C, 1, K, K, 1, K, 0, 0, 0, 1, 0, K);
            NAME(mm)(Z, don, nS, K, K, C, 1, K, K, 1, K, 0, 0, 0, 1, 0, K);
            NAME(mm)(qn, don, dW, K, K, C, 1, K, K, 1, K, 0, 0, 0, 1, 0, K);
            /* G = k (P + W0) + R: dR = dG (written), dk += (P + W0) dG, dP = sum_s k_s dG_s^T (M's
               after chunk 0), dW0 += dP */
            NAME(mm)(dG, Pt, dkn, C, K, K, K, 1, K, 1, K, 0, 0, 0, 1, 0, C);
            NAME(mm)(kn, dG, dP, K, K, C, 1, K, K, 1, K, 0, 0, 0, 0, 0, K);
            T *restrict dPn = n ? nM : dP0 + pr * KK;
            if (!n) memset(dPn, 0, KK * sizeof(T));
            for (long e = 0; e < KK; e++) {
                dPn[e] += dP[e];
                dW[e] += dP[e];
            }
            if (dMs && n >= lo)
                for (long e = 0; e < KK; e++) nM[e] += dMs[dt0 + n * KK + e];
            if (dSs && n >= lo)
                for (long e = 0; e < KK; e++) nS[e] += dSs[dt0 + n * KK + e];
            memcpy(gM, nM, KK * sizeof(T));
            memcpy(gS, nS, KK * sizeof(T));
        }
        memcpy(dM0 + pr * KK, gM, KK * sizeof(T));
        memcpy(dS0 + pr * KK, gS, KK * sizeof(T));
    }
    free(G);
    free(gM);
}

/* The gate coefficients of one chunk (ops/memory.py, _coefficients) as one linear
   recurrence over t on W = C + 2 columns: column 0 carries A (U starts 1, V 0), column 1
   carries f and E (U 0, V 1), column 2 + s the step s (U = V = 1 from row s on):

       U_t = a_t U_{t-1} + m_t V_{t-1},   V_t = e_t V_{t-1}

   so A_t = U_t[0], f_t = U_t[1], E_T = V_{C-1}[1], Cm_ts = U_t[2+s] th_s (s <= t),
   RE_{C-1,s} th_s = V_{C-1}[2+s] th_s. U, V: (C + 1, W), row 0 the start, row t + 1
   after step t. */
static inline __attribute__((always_inline)) void NAME(coef)(
        const T *restrict a, const T *restrict e, const T *restrict m, T *restrict U,
        T *restrict V, long C) {
    const long W = C + 2;
    memset(U, 0, (C + 1) * W * sizeof(T));
    memset(V, 0, (C + 1) * W * sizeof(T));
    U[0] = 1;
    V[1] = 1;
    for (long t = 0; t < C; t++) {
        const T *restrict Up = U + t * W, *restrict Vp = V + t * W;
        T *restrict Ut = U + (t + 1) * W, *restrict Vt = V + (t + 1) * W;
        for (long c = 0; c < 2 + t; c++) {
            Ut[c] = a[t] * Up[c] + m[t] * Vp[c];
            Vt[c] = e[t] * Vp[c];
        }
        Ut[2 + t] = 1;
        Vt[2 + t] = 1;
    }
}

/* qk_ts = q_t . k_s, (C, C) in full: q (C, K) times kt = k^T (K, C) on mm (a block of
   rows in registers over the K terms; a pass per term through memory was a chain of stores
   and reloads) */
static inline __attribute__((always_inline)) void NAME(scores)(
        const T *restrict q, const T *restrict k, T *restrict kt, T *restrict qk, long C,
        long K) {
    for (long s = 0; s < C; s++)
        for (long j = 0; j < K; j++) kt[j * C + s] = k[s * K + j];
    NAME(mm)(q, kt, qk, C, C, K, K, 1, C, 1, C, 0, 0, 0, 0, 0, C);
}

/* a, e, m, th (pairs, N, C) -> att = Cm o (q k^T) (pairs, N, C, C; zero above the
   diagonal), ga = A, gf = f, cl = Cm's last row, re = RE th (pairs, N, C), gE = E_T
   (pairs, N) */
static inline __attribute__((always_inline)) void NAME(gates_fwd)(
        const T *restrict q, const T *restrict k, const T *restrict a, const T *restrict e,
        const T *restrict m, const T *restrict th, T *restrict att, T *restrict ga,
        T *restrict gf, T *restrict cl, T *restrict re, T *restrict gE, long N, long C,
        long K, long p0, long p1) {
    const long W = C + 2, CK = C * K;
    T *U = malloc((2 * (C + 1) * W + K * C + C * C) * sizeof(T));
    T *V = U + (C + 1) * W, *kt = V + (C + 1) * W, *qk = kt + K * C;
    for (long c = p0 * N; c < p1 * N; c++) {
        const T *restrict tc = th + c * C;
        NAME(coef)(a + c * C, e + c * C, m + c * C, U, V, C);
        NAME(scores)(q + c * CK, k + c * CK, kt, qk, C, K);
        T *restrict at = att + c * C * C;
        for (long t = 0; t < C; t++) {
            const T *restrict Ut = U + (t + 1) * W + 2;
            for (long s = 0; s <= t; s++) at[t * C + s] = Ut[s] * tc[s] * qk[t * C + s];
            for (long s = t + 1; s < C; s++) at[t * C + s] = 0;
            ga[c * C + t] = U[(t + 1) * W];
            gf[c * C + t] = U[(t + 1) * W + 1];
        }
        for (long s = 0; s < C; s++) {
            cl[c * C + s] = U[C * W + 2 + s] * tc[s];
            re[c * C + s] = V[C * W + 2 + s] * tc[s];
        }
        gE[c] = V[C * W + 1];
    }
    free(U);
}

/* gates_fwd's backward: datt (read on and below the diagonal), dga, dgf, dcl, dre, dgE ->
   dq, dk (through q k^T), da, de, dm, dth (through the recurrence, run back) */
static inline __attribute__((always_inline)) void NAME(gates_bwd)(
        const T *restrict q, const T *restrict k, const T *restrict a, const T *restrict e,
        const T *restrict m, const T *restrict th, const T *restrict datt,
        const T *restrict dga, const T *restrict dgf, const T *restrict dcl,
        const T *restrict dre, const T *restrict dgE, T *restrict dq, T *restrict dk,
        T *restrict da, T *restrict de, T *restrict dm, T *restrict dth, long N, long C,
        long K, long p0, long p1) {
    const long W = C + 2, CK = C * K;
    T *U = malloc((2 * (C + 1) * W + K * C + 2 * C * C + 2 * W) * sizeof(T));
    T *V = U + (C + 1) * W, *kt = V + (C + 1) * W, *qk = kt + K * C, *dqk = qk + C * C;
    T *cu = dqk + C * C, *cv = cu + W;
    for (long c = p0 * N; c < p1 * N; c++) {
        const T *restrict tc = th + c * C, *restrict dat = datt + c * C * C;
        const T *restrict ac = a + c * C, *restrict ec = e + c * C, *restrict mc = m + c * C;
        const T *restrict qc = q + c * CK, *restrict kc = k + c * CK;
        T *restrict dqc = dq + c * CK, *restrict dkc = dk + c * CK, *restrict dtc = dth + c * C;
        NAME(coef)(ac, ec, mc, U, V, C);
        NAME(scores)(qc, kc, kt, qk, C, K);
        for (long s = 0; s < C; s++) dtc[s] = dre[c * C + s] * V[C * W + 2 + s];
        for (long x = 0; x < W; x++) cu[x] = cv[x] = 0;
        for (long s = 0; s < C; s++) cv[2 + s] = dre[c * C + s] * tc[s];
        cv[1] = dgE[c];
        /* row t: its local gradients into (cu, cv), then back through step t */
        for (long t = C - 1; t >= 0; t--) {
            const T *restrict Ut = U + (t + 1) * W, *restrict Up = U + t * W;
            const T *restrict Vp = V + t * W;
            cu[0] += dga[c * C + t];
            cu[1] += dgf[c * C + t];
            for (long s = t + 1; s < C; s++) dqk[t * C + s] = 0;
            for (long s = 0; s <= t; s++) {
                const T w = dat[t * C + s];
                const T dC = w * qk[t * C + s] + (t == C - 1 ? dcl[c * C + s] : 0);
                dqk[t * C + s] = w * Ut[2 + s] * tc[s];
                dtc[s] += dC * Ut[2 + s];
                cu[2 + s] += dC * tc[s];
            }
            T sa = 0, sm = 0, se = 0;
            for (long x = 0; x < 2 + t; x++) {
                sa += cu[x] * Up[x];
                sm += cu[x] * Vp[x];
                se += cv[x] * Vp[x];
                cv[x] = mc[t] * cu[x] + ec[t] * cv[x];
                cu[x] = ac[t] * cu[x];
            }
            da[c * C + t] = sa;
            dm[c * C + t] = sm;
            de[c * C + t] = se;
        }
        /* dq = dqk k, dk = dqk^T q (dqk zero above its diagonal), (C, K) products on mm */
        NAME(mm)(dqk, kc, dqc, C, K, C, C, 1, K, 1, K, 0, 0, 0, 0, 0, C);
        NAME(mm)(dqk, qc, dkc, C, K, C, 1, C, K, 1, K, 0, 0, 0, 0, 0, C);
    }
    free(U);
}

/* the exported kernels: the bodies above compiled again for the width K = 32 (a constant
   lets the compiler unroll the rows), else for any K */
void NAME(titans_fwd)(const T *q, const T *k, const T *R, const T *att, const T *ga,
                      const T *gf, const T *cl, const T *re, const T *gE, const T *P0,
                      const T *M0, const T *S0, const T *W0, T *o, T *Ms, T *Ss, long N,
                      long C, long K, long p0, long p1) {
    if (K == 32)
        NAME(fwd)(q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0, o, Ms, Ss, N, C, 32, p0,
                  p1);
    else
        NAME(fwd)(q, k, R, att, ga, gf, cl, re, gE, P0, M0, S0, W0, o, Ms, Ss, N, C, K, p0,
                  p1);
}

/* titans_bwd takes its sizes (N, lo, C, K) in one long array sz: 29 pointers and three
   longs, within the 32 integer arguments ops.native.run's OpenMP team path (team.c) passes */
void NAME(titans_bwd)(const T *q, const T *k, const T *R, const T *att, const T *ga,
                      const T *gf, const T *cl, const T *re, const T *gE, const T *P0,
                      const T *Ms, const T *Ss, const T *W0, const T *dout, const T *dMs,
                      const T *dSs, T *dq, T *dk, T *dR, T *datt, T *dga, T *dgf, T *dcl,
                      T *dre, T *dgE, T *dP0, T *dM0, T *dS0, T *dW0, const long *sz, long p0,
                      long p1) {
    const long N = sz[0], lo = sz[1], C = sz[2], K = sz[3];
    if (K == 32)
        NAME(bwd)(q, k, R, att, ga, gf, cl, re, gE, P0, Ms, Ss, W0, dout, dMs, dSs, dq, dk, dR,
                  datt, dga, dgf, dcl, dre, dgE, dP0, dM0, dS0, dW0, N, lo, C, 32, p0,
                  p1);
    else
        NAME(bwd)(q, k, R, att, ga, gf, cl, re, gE, P0, Ms, Ss, W0, dout, dMs, dSs, dq, dk, dR,
                  datt, dga, dgf, dcl, dre, dgE, dP0, dM0, dS0, dW0, N, lo, C, K, p0,
                  p1);
}

void NAME(titans_gates_fwd)(const T *q, const T *k, const T *a, const T *e, const T *m,
                            const T *th, T *att, T *ga, T *gf, T *cl, T *re, T *gE, long N,
                            long C, long K, long p0, long p1) {
    if (K == 32)
        NAME(gates_fwd)(q, k, a, e, m, th, att, ga, gf, cl, re, gE, N, C, 32, p0, p1);
    else
        NAME(gates_fwd)(q, k, a, e, m, th, att, ga, gf, cl, re, gE, N, C, K, p0, p1);
}

void NAME(titans_gates_bwd)(const T *q, const T *k, const T *a, const T *e, const T *m,
                            const T *th, const T *datt, const T *dga, const T *dgf,
                            const T *dcl, const T *dre, const T *dgE, T *dq, T *dk, T *da,
                            T *de, T *dm, T *dth, long N, long C, long K, long p0, long p1) {
    if (K == 32)
        NAME(gates_bwd)(q, k, a, e, m, th, datt, dga, dgf, dcl, dre, dgE, dq, dk, da, de, dm,
                        dth, N, C, 32, p0, p1);
    else
        NAME(gates_bwd)(q, k, a, e, m, th, datt, dga, dgf, dcl, dre, dgE, dq, dk, da, de, dm,
                        dth, N, C, K, p0, p1);
}

/* Titans-MAC's segment (titans_scan.titans_segment): one chunk of n steps that every pair
   opens and ends inside, on the tokens' layout, gates_fwd then fwd for a pair in one call (and
   gates_bwd after bwd). q, k, v, z, dz, dq, dk, dv (B, n, H, K) contiguous; g, the gates'
   logits (B, n, 3 H) at batch stride gb and step stride gt (theta's H heads, alpha's, eta's:
   theta = lr sigmoid, 1 - alpha, eta = sigmoid of them), dg (B, n, 3 H) contiguous; W0
   (H, K, K) (dW0 per pair: (pairs, K, K), summed by the caller); P0, M0, S0, M, S and their
   gradients (pairs, K, K); work (pairs, n n + 4 n + 1): the forward's coefficients (att, A,
   f, cl, re, E_T), which the backward reads. dM, dS may be NULL (zero). */
static inline T NAME(seg_sigm)(T x) {
    return 1 / (1 + (sizeof(T) == sizeof(float) ? expf(-x) : exp(-x)));
}

/* the pair (b, h)'s rows of the (B, n, H, K) tensor x into X (n, K), times sgn */
static inline void NAME(seg_gather)(const T *restrict x, T *restrict X, T sgn, long b, long h,
                                    long H, long n, long K) {
    for (long t = 0; t < n; t++) {
        const T *restrict r = x + ((b * n + t) * H + h) * K;
        for (long i = 0; i < K; i++) X[t * K + i] = sgn * r[i];
    }
}

/* the pair's gates: th = lr sigmoid(g_theta), a = 1 - sigmoid(g_alpha), e = sigmoid(g_eta);
   s (3, n) the three sigmoids when not NULL */
static inline void NAME(seg_gates)(const T *restrict g, T *restrict th, T *restrict a,
                                   T *restrict e, T *restrict s, T lr, long gb, long gt,
                                   long b, long h, long H, long n) {
    for (long t = 0; t < n; t++) {
        const T *restrict r = g + b * gb + t * gt;
        const T s0 = NAME(seg_sigm)(r[h]), s1 = NAME(seg_sigm)(r[H + h]);
        const T s2 = NAME(seg_sigm)(r[2 * H + h]);
        th[t] = lr * s0;
        a[t] = 1 - s1;
        e[t] = s2;
        if (s) {
            s[t] = s0;
            s[n + t] = s1;
            s[2 * n + t] = s2;
        }
    }
}

void NAME(titans_seg_fwd)(
        const T *restrict q, const T *restrict k, const T *restrict v, const T *restrict g,
        const T *restrict W0, const T *restrict P0, const T *restrict M0,
        const T *restrict S0, T *restrict z, T *restrict Mo, T *restrict So,
        T *restrict work, double lr, long gb, long gt, long H, long n, long K, long p0, long p1) {
    const long KK = K * K, nK = n * K, nw = n * n + 4 * n + 1;
    T *buf = malloc((4 * nK + 4 * KK + 3 * n) * sizeof(T));
    T *qn = buf, *kn = qn + nK, *Rn = kn + nK, *on = Rn + nK, *Ml = on + nK, *Sl = Ml + 2 * KK;
    T *th = Sl + 2 * KK, *a = th + n, *e = a + n;
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        T *wk = work + pr * nw, *att = wk, *ga = att + n * n, *gf = ga + n, *cl = gf + n;
        T *re = cl + n, *gE = re + n;
        NAME(seg_gather)(q, qn, 1, b, h, H, n, K);
        NAME(seg_gather)(k, kn, 1, b, h, H, n, K);
        NAME(seg_gather)(v, Rn, -1, b, h, H, n, K);
        NAME(seg_gates)(g, th, a, e, NULL, (T)lr, gb, gt, b, h, H, n);
        NAME(titans_gates_fwd)(qn, kn, a, e, e, th, att, ga, gf, cl, re, gE, 1, n, K, 0, 1);
        NAME(titans_fwd)(qn, kn, Rn, att, ga, gf, cl, re, gE, P0 + pr * KK, M0 + pr * KK,
                  S0 + pr * KK, W0 + h * KK, on, Ml, Sl, 1, n, K, 0, 1);
        memcpy(Mo + pr * KK, Ml + KK, KK * sizeof(T));
        memcpy(So + pr * KK, Sl + KK, KK * sizeof(T));
        for (long t = 0; t < n; t++)
            memcpy(z + ((b * n + t) * H + h) * K, on + t * K, K * sizeof(T));
    }
    free(buf);
}

void NAME(titans_seg_bwd)(
        const T *restrict q, const T *restrict k, const T *restrict v, const T *restrict g,
        const T *restrict W0, const T *restrict P0, const T *restrict M0,
        const T *restrict S0, const T *restrict work, const T *restrict dz,
        const T *restrict dM, const T *restrict dS, T *restrict dq, T *restrict dk,
        T *restrict dv, T *restrict dg, T *restrict dW0, T *restrict dP0, T *restrict dM0,
        T *restrict dS0, double lr, long gb, long gt, long H, long n, long K, long p0, long p1) {
    const long KK = K * K, nK = n * K, nw = n * n + 4 * n + 1;
    T *buf = malloc((9 * nK + n * n + 14 * n + 1) * sizeof(T));
    T *qn = buf, *kn = qn + nK, *Rn = kn + nK, *don = Rn + nK, *dqn = don + nK;
    T *dkn = dqn + nK, *dRn = dkn + nK, *gq = dRn + nK, *gk = gq + nK, *datt = gk + nK;
    T *dga = datt + n * n, *dgf = dga + n, *dcl = dgf + n, *dre = dcl + n, *dgE = dre + n;
    T *th = dgE + 1, *a = th + n, *e = a + n, *s = e + n, *da = s + 3 * n, *de = da + n;
    T *dm = de + n, *dth = dm + n;
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        const T *wk = work + pr * nw, *att = wk, *ga = att + n * n, *gf = ga + n, *cl = gf + n;
        const T *re = cl + n, *gE = re + n;
        NAME(seg_gather)(q, qn, 1, b, h, H, n, K);
        NAME(seg_gather)(k, kn, 1, b, h, H, n, K);
        NAME(seg_gather)(v, Rn, -1, b, h, H, n, K);
        NAME(seg_gather)(dz, don, 1, b, h, H, n, K);
        NAME(seg_gates)(g, th, a, e, s, (T)lr, gb, gt, b, h, H, n);
        /* the state's gradients: only the final (M, S) is an output (N = 1, lo = 1); bwd
           reads the chunk's starting state alone, M0 and S0 */
        NAME(titans_bwd)(qn, kn, Rn, att, ga, gf, cl, re, gE, P0 + pr * KK, M0 + pr * KK,
                  S0 + pr * KK, W0 + h * KK, don, dM ? dM + pr * KK : NULL,
                  dS ? dS + pr * KK : NULL, dqn, dkn, dRn, datt, dga, dgf, dcl, dre, dgE,
                  dP0 + pr * KK, dM0 + pr * KK, dS0 + pr * KK, dW0 + pr * KK,
                  (const long[]){1, 1, n, K}, 0, 1);
        NAME(titans_gates_bwd)(qn, kn, a, e, e, th, datt, dga, dgf, dcl, dre, dgE, gq, gk, da, de,
                        dm, dth, 1, n, K, 0, 1);
        for (long t = 0; t < n; t++) {
            const long o = ((b * n + t) * H + h) * K;
            for (long i = 0; i < K; i++) {
                dq[o + i] = dqn[t * K + i] + gq[t * K + i];
                dk[o + i] = dkn[t * K + i] + gk[t * K + i];
                dv[o + i] = -dRn[t * K + i];
            }
            /* the logits: sigmoid' = s (1 - s); theta's times lr, alpha's through 1 - s */
            T *restrict r = dg + (b * n + t) * 3 * H;
            const T s0 = s[t], s1 = s[n + t], s2 = s[2 * n + t];
            r[h] = (T)lr * dth[t] * s0 * (1 - s0);
            r[H + h] = -da[t] * s1 * (1 - s1);
            r[2 * H + h] = (de[t] + dm[t]) * s2 * (1 - s2);
        }
    }
    free(buf);
}

/* Titans-MAC's retrieval read (titans_scan.mac_retrieve): u_t = q_t (W0 + P0) for each pair's
   n steps, on the tokens' layout. q (B, n, H, K) at batch stride qb and step stride qt (a
   segment's rows of the whole sequence's queries; a step's heads side by side), u, du, dq
   (B, n, H, K) contiguous; W0 (H, K, K); P0, dP (pairs, K, K): dP = q^T du, summed over the
   batch by the caller for W0's gradient. */
void NAME(mac_read_fwd)(const T *restrict q, const T *restrict W0, const T *restrict P0,
                        T *restrict u, long qb, long qt, long H, long n, long K, long p0,
                        long p1) {
    const long KK = K * K, HK = H * K;
    T *We = malloc(KK * sizeof(T));
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        const T *restrict W = W0 + h * KK, *restrict P = P0 + pr * KK;
        for (long e = 0; e < KK; e++) We[e] = W[e] + P[e];
        NAME(mm)(q + b * qb + h * K, We, u + b * n * HK + h * K, n, K, K, qt, 1, K, 1, HK, 0,
                 0, 0, 0, 0, n);
    }
    free(We);
}

void NAME(mac_read_bwd)(const T *restrict q, const T *restrict W0, const T *restrict P0,
                        const T *restrict du, T *restrict dq, T *restrict dP, long qb, long qt,
                        long H, long n, long K, long p0, long p1) {
    const long KK = K * K, HK = H * K;
    T *We = malloc(2 * KK * sizeof(T)), *Wt = We + KK;
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H, o = b * n * HK + h * K;
        const T *restrict W = W0 + h * KK, *restrict P = P0 + pr * KK;
        for (long e = 0; e < KK; e++) We[e] = W[e] + P[e];
        NAME(transpose)(We, Wt, K);
        /* dq = du We^T; dP = q^T du (q's rows read as columns) */
        NAME(mm)(du + o, Wt, dq + o, n, K, K, HK, 1, K, 1, HK, 0, 0, 0, 0, 0, n);
        NAME(mm)(q + b * qb + h * K, du + o, dP + pr * KK, K, K, n, 1, qt, HK, 1, K, 0, 0, 0,
                 0, 0, K);
    }
    free(We);
}

#endif
