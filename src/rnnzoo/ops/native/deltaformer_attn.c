/* DeltaFormer's attention (rnnzoo.layers.deltaformer) of a fresh sequence, row by row, one
   (batch row, head) pair at a time, without any (T, T) matrix: with s_j = scale q_t . k_j,
   the strictly causal softmax P_tj = exp(s_j - L_t) (j < t, L_t its log-normaliser) and
   the causal one written through it, A_tj = c_t P_tj (j < t), A_tt = a_t,
   a_t = sigmoid(s_t - L_t), c_t = 1 - a_t = sigmoid(L_t - s_t):

       w_t = sum_{j<t} P_tj u_j,   u_t = v_t - beta_t w_t,   o_t = c_t w_t + a_t u_t

   (row 0: w = 0, a = 1). Backward, rows in reverse, du_t = a_t do_t + du^ext_t + sum_{t'>t}
   P_t't dw_t' (complete when row t is reached; it is dv_t):
       dw_t = c_t do_t - beta_t du_t,   dbeta_t = -du_t . w_t,   dP_tj = dw_t . u_j,
       g = (do_t . u_t - do_t . w_t) a_t c_t,   ds_j = P_tj (dP_tj - sum_i P_ti dP_ti - g),
       ds_t = g,   dq_t = scale sum_{j<=t} ds_j k_j,   dk_j += scale ds_j q_t
   Scores are recomputed in the backward from L_t (stored), w and u are stored.

   Rows run in blocks of RB: a block's scores against every key it sees are one product
   (mm.h), as are what the rows before the block give it (w from their u) and, backward,
   what it gives them (du, dk) and its dP, dq; only the terms between rows of one block run
   row by row (forward substitution), in order forward and in reverse backward.

   Layouts (row-major, contiguous): q, k, v, u, w, o and their gradients (pairs, T, D);
   beta, L, dbeta (pairs, T); du_ext may be NULL. Each function does the pairs [p0, p1).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "deltaformer_attn.c"
#include "each_type.h"

#else

#include "mm.h"  /* mm: the block products */
#include "softmax_row.h"

#define RB 24  /* rows a block (a multiple of mm.h's 6 rows a register tile) */

/* C (m, n) (+)= A (m, k) B (k, n): one block of mm.h's product, A's entry (i, p) at
   A + i a_rs + p a_cs, B's and C's rows ldb and ldc apart */
static inline void NAME(df_mm)(const T *A, long a_rs, long a_cs, const T *B, long ldb, T *C,
                               long ldc, long m, long n, long k, long acc) {
    NAME(mm)(A, B, C, m, n, k, a_rs, a_cs, ldb, 1, ldc, 0, 0, 0, acc, 0, m);
}

static void NAME(df_transpose)(const T *restrict x, T *restrict xT, long Tn, long D) {
    for (long j = 0; j < Tn; j++)
        for (long d = 0; d < D; d++) xT[d * Tn + j] = x[j * D + d];
}

/* Row t's scores s[0 .. t] (scaled in place) -> P_tj = exp(s_j - L_t) for j < t in place,
   L_t, a_t, c_t (row 0: L = -inf, a = 1, c = 0). known (the backward): L_t is the given
   Lt, not computed. */
static inline T NAME(df_row)(T *restrict s, long t, T scale, T Lt, int known, T *a, T *c) {
    for (long j = 0; j <= t; j++) s[j] *= scale;
    if (t == 0) {
        *a = 1;
        *c = 0;
        return -INFINITY;
    }
    if (known) {
        for (long j = 0; j < t; j++) s[j] = EXP(s[j] - Lt);
    } else {
        T Z;
        const T m = NAME(softmax_row)(s, t, &Z);
        Lt = m + (T)log(Z);
    }
    *a = 1 / (1 + EXP(Lt - s[t]));
    *c = 1 / (1 + EXP(s[t] - Lt));
    return Lt;
}

void NAME(dfa_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict beta, T *restrict u, T *restrict w, T *restrict o,
                   T *restrict L, long Tn, long D, double scale, long p0, long p1) {
    T *kT = malloc((D * Tn + RB * Tn) * sizeof(T)), *S = kT + D * Tn;
    T a[RB], c[RB];
    for (long p = p0; p < p1; p++) {
        const long off = p * Tn * D;
        const T *restrict qp = q + off, *restrict vp = v + off;
        T *restrict up = u + off, *restrict wp = w + off, *restrict op = o + off;
        NAME(df_transpose)(k + off, kT, Tn, D);
        for (long t0 = 0; t0 < Tn; t0 += RB) {
            const long t1 = t0 + RB < Tn ? t0 + RB : Tn, nb = t1 - t0;
            NAME(df_mm)(qp + t0 * D, D, 1, kT, Tn, S, Tn, nb, t1, D, 0);   /* scores */
            for (long r = 0; r < nb; r++)
                L[p * Tn + t0 + r] = NAME(df_row)(S + r * Tn, t0 + r, (T)scale, 0, 0, a + r, c + r);
            NAME(df_mm)(S, Tn, 1, up, D, wp + t0 * D, D, nb, D, t0, 0);  /* w from rows < t0 */
            for (long r = 0; r < nb; r++) {
                const long t = t0 + r;
                const T *restrict P = S + r * Tn, *restrict vt = vp + t * D;
                T *restrict wt = wp + t * D, *restrict ut = up + t * D, *restrict ot = op + t * D;
                for (long j = t0; j < t; j++)
                    for (long d = 0; d < D; d++) wt[d] += P[j] * up[j * D + d];
                const T bt = beta[p * Tn + t];
                for (long d = 0; d < D; d++) {
                    ut[d] = vt[d] - bt * wt[d];
                    ot[d] = c[r] * wt[d] + a[r] * ut[d];
                }
            }
        }
    }
    free(kT);
}

/* Blocks last first: a block's scores recomputed from L, its du and dw row by row in reverse
   (du_t complete once the rows after t have given theirs), then dP = dW U^T, dS, and the
   products dq = dS K, dk += dS^T Q, du_{<t0} += P^T dW. */
void NAME(dfa_bwd)(const T *restrict q, const T *restrict k, const T *restrict beta,
                   const T *restrict u, const T *restrict w, const T *restrict L,
                   const T *restrict dout, const T *restrict du_ext, T *restrict dq,
                   T *restrict dk, T *restrict dv, T *restrict dbeta, long Tn, long D,
                   double scale, long p0, long p1) {
    T *kT = malloc((2 * D * Tn + 2 * RB * Tn + RB * D) * sizeof(T)), *uT = kT + D * Tn,
      *Pb = uT + D * Tn, *DSb = Pb + RB * Tn, *dWb = DSb + RB * Tn;
    T a[RB], c[RB], g[RB];
    const T sc = (T)scale;
    for (long p = p0; p < p1; p++) {
        const long off = p * Tn * D;
        const T *restrict qp = q + off, *restrict kp = k + off, *restrict up = u + off,
                *restrict wp = w + off, *restrict dop = dout + off;
        T *restrict dqp = dq + off, *restrict dkp = dk + off, *restrict dvp = dv + off;
        NAME(df_transpose)(kp, kT, Tn, D);
        NAME(df_transpose)(up, uT, Tn, D);
        if (du_ext) memcpy(dvp, du_ext + off, Tn * D * sizeof(T));
        else memset(dvp, 0, Tn * D * sizeof(T));
        memset(dkp, 0, Tn * D * sizeof(T));
        for (long t0 = (Tn - 1) / RB * RB; t0 >= 0; t0 -= RB) {
            const long t1 = t0 + RB < Tn ? t0 + RB : Tn, nb = t1 - t0;
            NAME(df_mm)(qp + t0 * D, D, 1, kT, Tn, Pb, Tn, nb, t1, D, 0);  /* scores */
            for (long r = 0; r < nb; r++)
                NAME(df_row)(Pb + r * Tn, t0 + r, sc, L[p * Tn + t0 + r], 1, a + r, c + r);
            for (long r = nb - 1; r >= 0; r--) {
                const long t = t0 + r;
                const T *restrict P = Pb + r * Tn, *restrict ut = up + t * D,
                        *restrict wt = wp + t * D, *restrict dot = dop + t * D;
                T *restrict dut = dvp + t * D, *restrict dw = dWb + r * D;
                const T bt = beta[p * Tn + t];
                T db = 0, dc = 0, da = 0;
                for (long d = 0; d < D; d++) {
                    dut[d] += a[r] * dot[d];
                    dw[d] = c[r] * dot[d] - bt * dut[d];
                    db -= dut[d] * wt[d];
                    dc += dot[d] * wt[d];
                    da += dot[d] * ut[d];
                }
                dbeta[p * Tn + t] = db;
                g[r] = (da - dc) * a[r] * c[r];
                for (long j = t0; j < t; j++) {  /* this block's earlier rows: now */
                    T *restrict duj = dvp + j * D;
                    for (long d = 0; d < D; d++) duj[d] += P[j] * dw[d];
                }
            }
            NAME(df_mm)(dWb, D, 1, uT, Tn, DSb, Tn, nb, t1, D, 0);         /* dP */
            for (long r = 0; r < nb; r++) {
                const long t = t0 + r;
                const T *restrict P = Pb + r * Tn;
                T *restrict ds = DSb + r * Tn, rho = 0;
#pragma omp simd reduction(+ : rho)
                for (long j = 0; j < t; j++) rho += P[j] * ds[j];
                for (long j = 0; j < t; j++) ds[j] = sc * P[j] * (ds[j] - rho - g[r]);
                ds[t] = sc * g[r];
                for (long j = t + 1; j < t1; j++) ds[j] = 0;
            }
            NAME(df_mm)(DSb, Tn, 1, kp, D, dqp + t0 * D, D, nb, D, t1, 0);  /* dq = dS K */
            NAME(df_mm)(DSb, 1, Tn, qp + t0 * D, D, dkp, D, t1, D, nb, 1);  /* dk += dS^T Q */
            NAME(df_mm)(Pb, 1, Tn, dWb, D, dvp, D, t0, D, nb, 1);           /* du += P^T dW */
        }
    }
    free(kT);
}
#undef RB

#endif
