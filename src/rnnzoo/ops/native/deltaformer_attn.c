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

#define JB 32  /* columns kept in registers by the two helpers below */

/* y[j] = sum_d x[d] XT[d][j] for j < n, XT (D, ld) row-major */
static void NAME(df_cols)(const T *restrict x, const T *restrict XT, T *restrict y, long n,
                          long ld, long D) {
    long jb = 0;
    for (; jb + JB <= n; jb += JB) {
        T acc[JB] = {0};
        for (long d = 0; d < D; d++) {
            const T xd = x[d];
            const T *restrict Xd = XT + d * ld + jb;
            for (long l = 0; l < JB; l++) acc[l] += xd * Xd[l];
        }
        for (long l = 0; l < JB; l++) y[jb + l] = acc[l];
    }
    for (long j = jb; j < n; j++) y[j] = 0;
    for (long d = 0; d < D; d++)
        for (long j = jb; j < n; j++) y[j] += x[d] * XT[d * ld + j];
}

/* y[d] = sum_{j<n} c[j] X[j][d], X (n, D) row-major: two rows a pass, JB columns in registers */
static void NAME(df_rows)(const T *restrict c, const T *restrict X, T *restrict y, long n,
                          long D) {
    long db = 0;
    for (; db + JB <= D; db += JB) {
        T acc[JB] = {0};
        long j = 0;
        for (; j + 2 <= n; j += 2) {
            const T c0 = c[j], c1 = c[j + 1];
            const T *restrict X0 = X + j * D + db, *restrict X1 = X0 + D;
            for (long l = 0; l < JB; l++) acc[l] += c0 * X0[l] + c1 * X1[l];
        }
        if (j < n)
            for (long l = 0; l < JB; l++) acc[l] += c[j] * X[j * D + db + l];
        for (long l = 0; l < JB; l++) y[db + l] = acc[l];
    }
    for (long d = db; d < D; d++) y[d] = 0;
    for (long j = 0; j < n; j++)
        for (long d = db; d < D; d++) y[d] += c[j] * X[j * D + d];
}

/* s[j] = scale q . k_j for j <= t, from kT (D, Tn) */
static void NAME(df_scores)(const T *restrict qt, const T *restrict kT, T *restrict s, long t,
                            long Tn, long D, T scale) {
    NAME(df_cols)(qt, kT, s, t + 1, Tn, D);
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
            if (t == 0) {
                for (long d = 0; d < D; d++) wt[d] = 0;
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
            for (long j = 0; j < t; j++) s[j] *= inv;  /* P_tj */
            NAME(df_rows)(s, up, wt, t, D);
            const T a = 1 / (1 + EXP(Lt - s[t])), c = 1 / (1 + EXP(s[t] - Lt));
            for (long d = 0; d < D; d++) {
                ut[d] = vt[d] - bt * wt[d];
                ot[d] = c * wt[d] + a * ut[d];
            }
        }
    }
    free(kT);
}

/* Y[j] += sum_{r<R} C[r][j] W[r] for j < n: C (R, ld), W (R, D), Y (n, D) row-major */
static void NAME(df_acc)(T *restrict Y, const T *restrict C, long ld, const T *restrict W,
                         long R, long n, long D) {
    for (long j = 0; j < n; j++) {
        T *restrict Yj = Y + j * D;
        long db = 0;
        for (; db + JB <= D; db += JB) {
            T acc[JB];
            for (long l = 0; l < JB; l++) acc[l] = Yj[db + l];
            for (long r = 0; r < R; r++) {
                const T cr = C[r * ld + j];
                const T *restrict Wr = W + r * D + db;
                for (long l = 0; l < JB; l++) acc[l] += cr * Wr[l];
            }
            for (long l = 0; l < JB; l++) Yj[db + l] = acc[l];
        }
        for (long r = 0; r < R; r++)
            for (long d = db; d < D; d++) Yj[d] += C[r * ld + j] * W[r * D + d];
    }
}

/* Rows in blocks of RB, last block first, each block's rows in reverse: what a row adds to
   the rows before its block (P_tj dw_t into du_j, ds_tj q_t into dk_j) is kept (Pb, dWb,
   DSb) and added once a block (df_acc), the rest at once. */
#define RB 16
void NAME(dfa_bwd)(const T *restrict q, const T *restrict k, const T *restrict beta,
                   const T *restrict u, const T *restrict w, const T *restrict L,
                   const T *restrict dout, const T *restrict du_ext, T *restrict dq,
                   T *restrict dk, T *restrict dv, T *restrict dbeta, long Tn, long D,
                   double scale, long p0, long p1) {
    T *kT = malloc((2 * D * Tn + Tn + 2 * RB * Tn + RB * D) * sizeof(T)), *uT = kT + D * Tn,
      *dP = uT + D * Tn, *Pb = dP + Tn, *DSb = Pb + RB * Tn, *dWb = DSb + RB * Tn;
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
            const long t1 = t0 + RB < Tn ? t0 + RB : Tn;
            for (long t = t1 - 1; t >= t0; t--) {
                const T *restrict qt = qp + t * D, *restrict ut = up + t * D,
                        *restrict wt = wp + t * D, *restrict dot = dop + t * D;
                T *restrict dut = dvp + t * D, *restrict dw = dWb + (t - t0) * D;
                T *restrict P = Pb + (t - t0) * Tn, *restrict ds = DSb + (t - t0) * Tn;
                const T bt = beta[p * Tn + t];
                NAME(df_scores)(qt, kT, ds, t, Tn, D, sc);
                T a = 1, c = 0;
                const T Lt = L[p * Tn + t];
                if (t > 0) {
                    a = 1 / (1 + EXP(Lt - ds[t]));
                    c = 1 / (1 + EXP(ds[t] - Lt));
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
                for (long j = 0; j < t; j++) P[j] = EXP(ds[j] - Lt);  /* P_tj */
                NAME(df_cols)(dw, uT, dP, t, Tn, D);
                T rho = 0;
#pragma omp simd reduction(+ : rho)
                for (long j = 0; j < t; j++) rho += P[j] * dP[j];
                for (long j = 0; j < t; j++) ds[j] = sc * P[j] * (dP[j] - rho - g);
                ds[t] = sc * g;
                for (long j = t0; j < t; j++) {  /* this block's earlier rows: now */
                    T *restrict duj = dvp + j * D;
                    for (long d = 0; d < D; d++) duj[d] += P[j] * dw[d];
                }
                for (long j = t0; j <= t; j++) {
                    T *restrict dkj = dkp + j * D;
                    for (long d = 0; d < D; d++) dkj[d] += ds[j] * qt[d];
                }
                NAME(df_rows)(ds, kp, dqp + t * D, t + 1, D);
            }
            /* the rows before the block, once */
            NAME(df_acc)(dvp, Pb, Tn, dWb, t1 - t0, t0, D);
            NAME(df_acc)(dkp, DSb, Tn, qp + t0 * D, t1 - t0, t0, D);
        }
    }
    free(kT);
}
#undef RB

#undef JB

#endif
