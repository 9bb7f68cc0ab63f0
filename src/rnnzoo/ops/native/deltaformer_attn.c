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

   Layouts (row-major, contiguous): q, k, v, u, w, o and their gradients (pairs, T, D);
   beta, L, dbeta (pairs, T); du_ext may be NULL. Each function does the pairs [p0, p1).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "deltaformer_attn.c"
#include "each_type.h"

#else

/* s[j] = scale q . k_j for j <= t, from kT (D, Tn) */
static void NAME(df_scores)(const T *restrict qt, const T *restrict kT, T *restrict s, long t,
                            long Tn, long D, T scale) {
    for (long j = 0; j <= t; j++) s[j] = 0;
    for (long d = 0; d < D; d++) {
        const T qd = qt[d];
        const T *restrict kd = kT + d * Tn;
        for (long j = 0; j <= t; j++) s[j] += qd * kd[j];
    }
    for (long j = 0; j <= t; j++) s[j] *= scale;
}

static void NAME(df_transpose)(const T *restrict x, T *restrict xT, long Tn, long D) {
    for (long j = 0; j < Tn; j++)
        for (long d = 0; d < D; d++) xT[d * Tn + j] = x[j * D + d];
}

void NAME(dfa_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                   const T *restrict beta, T *restrict u, T *restrict w, T *restrict o,
                   T *restrict L, long Tn, long D, double scale, long p0, long p1) {
    T *kT = malloc((D * Tn + Tn) * sizeof(T)), *s = kT + D * Tn;
    for (long p = p0; p < p1; p++) {
        const long off = p * Tn * D;
        const T *restrict qp = q + off, *restrict vp = v + off;
        T *restrict up = u + off, *restrict wp = w + off, *restrict op = o + off;
        NAME(df_transpose)(k + off, kT, Tn, D);
        for (long t = 0; t < Tn; t++) {
            NAME(df_scores)(qp + t * D, kT, s, t, Tn, D, (T)scale);
            T *restrict wt = wp + t * D, *restrict ut = up + t * D, *restrict ot = op + t * D;
            const T *restrict vt = vp + t * D;
            const T bt = beta[p * Tn + t];
            for (long d = 0; d < D; d++) wt[d] = 0;
            if (t == 0) {
                L[p * Tn] = -INFINITY;
                for (long d = 0; d < D; d++) ot[d] = ut[d] = vt[d];
                continue;
            }
            T m = s[0];
            for (long j = 1; j < t; j++) m = s[j] > m ? s[j] : m;
            T Z = 0;
#pragma omp simd reduction(+ : Z)
            for (long j = 0; j < t; j++) {
                s[j] = EXP(s[j] - m);
                Z += s[j];
            }
            const T Lt = m + (T)log(Z), inv = 1 / Z;
            L[p * Tn + t] = Lt;
            for (long j = 0; j < t; j++) {
                const T P = s[j] * inv;
                const T *restrict uj = up + j * D;
                for (long d = 0; d < D; d++) wt[d] += P * uj[d];
            }
            const T a = 1 / (1 + EXP(Lt - s[t])), c = 1 / (1 + EXP(s[t] - Lt));
            for (long d = 0; d < D; d++) {
                ut[d] = vt[d] - bt * wt[d];
                ot[d] = c * wt[d] + a * ut[d];
            }
        }
    }
    free(kT);
}

void NAME(dfa_bwd)(const T *restrict q, const T *restrict k, const T *restrict beta,
                   const T *restrict u, const T *restrict w, const T *restrict L,
                   const T *restrict dout, const T *restrict du_ext, T *restrict dq,
                   T *restrict dk, T *restrict dv, T *restrict dbeta, long Tn, long D,
                   double scale, long p0, long p1) {
    T *kT = malloc((2 * D * Tn + 2 * Tn + D) * sizeof(T)), *uT = kT + D * Tn,
      *s = uT + D * Tn, *dP = s + Tn, *dw = dP + Tn;
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
        for (long t = Tn - 1; t >= 0; t--) {
            const T *restrict qt = qp + t * D, *restrict ut = up + t * D,
                    *restrict wt = wp + t * D, *restrict dot = dop + t * D;
            T *restrict dut = dvp + t * D;
            const T bt = beta[p * Tn + t];
            NAME(df_scores)(qt, kT, s, t, Tn, D, sc);
            T a = 1, c = 0;
            const T Lt = L[p * Tn + t];
            if (t > 0) {
                a = 1 / (1 + EXP(Lt - s[t]));
                c = 1 / (1 + EXP(s[t] - Lt));
            }
            T db = 0, dc = 0, da = 0;
            for (long d = 0; d < D; d++) {
                dut[d] += a * dot[d];
                dw[d] = c * dot[d] - bt * dut[d];
                db -= dut[d] * wt[d];
                dc += dot[d] * wt[d];
                da += dot[d] * ut[d];
            }
            dbeta[p * Tn + t] = db;
            const T g = (da - dc) * a * c;
            if (t > 0) {
                for (long j = 0; j < t; j++) {
                    s[j] = EXP(s[j] - Lt);  /* P_tj */
                    dP[j] = 0;
                }
                for (long d = 0; d < D; d++) {
                    const T dwd = dw[d];
                    const T *restrict ud = uT + d * Tn;
                    for (long j = 0; j < t; j++) dP[j] += dwd * ud[j];
                }
                T rho = 0;
#pragma omp simd reduction(+ : rho)
                for (long j = 0; j < t; j++) rho += s[j] * dP[j];
                for (long j = 0; j < t; j++) {
                    const T P = s[j];
                    T *restrict duj = dvp + j * D;
                    for (long d = 0; d < D; d++) duj[d] += P * dw[d];
                    s[j] = P * (dP[j] - rho - g);  /* ds_j */
                }
            }
            s[t] = g;
            T *restrict dqt = dqp + t * D;
            for (long d = 0; d < D; d++) dqt[d] = 0;
            for (long j = 0; j <= t; j++) {
                const T dsj = sc * s[j];
                const T *restrict kj = kp + j * D;
                T *restrict dkj = dkp + j * D;
                for (long d = 0; d < D; d++) {
                    dqt[d] += dsj * kj[d];
                    dkj[d] += dsj * qt[d];
                }
            }
        }
    }
    free(kT);
}

#endif
