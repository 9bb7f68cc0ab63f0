/* MesaNet's readout (rnnzoo.ops.mesa) as its recurrence, forward and backward, one
   (batch row, head) pair at a time, the step's conjugate-gradient solve on the step's own
   H_t (in cache: K x K) instead of the chunkwise form's products:

       H_t = a_t H_{t-1} + b_t k_t k_t^T,   G_t = a_t G_{t-1} + b_t k_t v_t^T,   a_t = exp(g_t)
       x_t = CG_n(A_t, q_t),   A_t p = H_t^T p + lamb * p,   o_t = G_t^T x_t

   CG_n is ops.mesa.conjugate_gradient's n steps from x = 0, line by line (d_i = |r_i|^2,
   den_i = p_i . A p_i + eps, alpha_i = d_i / den_i, beta_i = d_{i+1} / (d_i + eps); eps =
   1e-10 |q|^2 + tiny when `rel`, else the given eps). Its backward is the reverse of those
   lines (reverse-mode through every iteration, so the gradient is the truncated solve's,
   as autograd's through the PyTorch loop); the iterates are recomputed per step in the
   backward, which also gives the step's adjoint of H_t, sum_i p_i dAp_i^T. With SH, SG the
   running adjoints of H_t, G_t (their own reads plus a_{t+1} times the next step's):

       dk_t = b_t (SH + SH^T) k_t + b_t SG v_t,   dv_t = b_t SG^T k_t,
       db_t = k_t^T SH k_t + k_t^T SG v_t,   dg_t = a_t (<SH, H_{t-1}> + <SG, G_{t-1}>)

   H_t, G_t are recomputed from the states stored every CK steps by the forward.

   Layouts (row-major, contiguous): q, k, dq, dk (batch, T, heads, K); v, o, dv, dout
   (batch, T, heads, V); g, beta, dg, dbeta (batch, T, heads); lamb (heads, K); dlamb
   (batch, heads, K) (the caller sums the batch); H0, HT, dHT, dH0 (batch, heads, K, K);
   G0, GT, dGT, dG0 (batch, heads, K, V); ck (batch, heads, nck, K K + K V), nck =
   ceil(T / CK), the states entering steps 0, CK, 2 CK, ... Each function does the
   (batch row, head) pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "mesa_scan.c"
#include "each_type.h"

#else

static inline T NAME(dot)(const T *restrict a, const T *restrict b, long n) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (long j = 0; j < n; j++) s += a[j] * b[j];
    return s;
}

/* Ap = H^T p + lamb * p */
static inline void NAME(apply)(const T *restrict H, const T *restrict lamb,
                               const T *restrict p, T *restrict Ap, long K) {
    for (long j = 0; j < K; j++) Ap[j] = lamb[j] * p[j];
    for (long i = 0; i < K; i++) {
        const T pi = p[i];
        const T *restrict Hi = H + i * K;
        for (long j = 0; j < K; j++) Ap[j] += pi * Hi[j];
    }
}

/* x = CG_n(A, b); w: 3 K scratch. With tr: per step i, tr[3 K i ..] = p_i, A p_i, r_{i+1}
   and sc[4 i ..] = alpha_i, beta_i, d_i, den_i. Returns eps. */
static T NAME(cg)(const T *restrict H, const T *restrict lamb, const T *restrict b,
                  T *restrict x, T *restrict w, long K, long n, T eps_abs, int rel, T tiny,
                  T *restrict tr, T *restrict sc) {
    T *restrict r = w, *restrict p = w + K, *restrict Ap = w + 2 * K;
    T d = NAME(dot)(b, b, K);
    const T eps = rel ? (T)1e-10 * d + tiny : eps_abs;
    for (long j = 0; j < K; j++) {
        x[j] = 0;
        r[j] = b[j];
        p[j] = b[j];
    }
    for (long i = 0; i < n; i++) {
        NAME(apply)(H, lamb, p, Ap, K);
        const T den = NAME(dot)(p, Ap, K) + eps, alpha = d / den;
        T nw = 0;
#pragma omp simd reduction(+ : nw)
        for (long j = 0; j < K; j++) {
            x[j] += alpha * p[j];
            r[j] -= alpha * Ap[j];
            nw += r[j] * r[j];
        }
        const T beta = nw / (d + eps);
        if (tr) {
            T *restrict ti = tr + 3 * K * i;
            memcpy(ti, p, K * sizeof(T));
            memcpy(ti + K, Ap, K * sizeof(T));
            memcpy(ti + 2 * K, r, K * sizeof(T));
            sc[4 * i] = alpha;
            sc[4 * i + 1] = beta;
            sc[4 * i + 2] = d;
            sc[4 * i + 3] = den;
        }
        for (long j = 0; j < K; j++) p[j] = r[j] + beta * p[j];
        d = nw;
    }
    return eps;
}

void NAME(mesa_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                    const T *restrict g, const T *restrict beta, const T *restrict lamb,
                    const T *restrict H0, const T *restrict G0, T *restrict o,
                    T *restrict HT, T *restrict GT, T *restrict ck, long Tn, long Hn, long K,
                    long V, long n, double eps_abs, long rel, double tiny, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, KK = K * K, KV = K * V;
    T *w = malloc(4 * K * sizeof(T)), *x = w + 3 * K;
    for (long p = p0; p < p1; p++) {
        const long b = p / Hn, h = p % Hn;
        T *restrict Hm = HT + p * KK, *restrict Gm = GT + p * KV;
        memcpy(Hm, H0 + p * KK, KK * sizeof(T));
        memcpy(Gm, G0 + p * KV, KV * sizeof(T));
        for (long t = 0; t < Tn; t++) {
            if (t % CK == 0) {
                T *c = ck + (p * nck + t / CK) * (KK + KV);
                memcpy(c, Hm, KK * sizeof(T));
                memcpy(c + KK, Gm, KV * sizeof(T));
            }
            const long row = (b * Tn + t) * Hn + h;
            const T a = EXP(g[row]), bt = beta[row];
            const T *restrict kt = k + row * K, *restrict vt = v + row * V;
            for (long i = 0; i < K; i++) {
                const T bk = bt * kt[i];
                T *restrict Hi = Hm + i * K, *restrict Gi = Gm + i * V;
                for (long j = 0; j < K; j++) Hi[j] = a * Hi[j] + bk * kt[j];
                for (long j = 0; j < V; j++) Gi[j] = a * Gi[j] + bk * vt[j];
            }
            NAME(cg)(Hm, lamb + h * K, q + row * K, x, w, K, n, (T)eps_abs, (int)rel, (T)tiny,
                     NULL, NULL);
            T *restrict ot = o + row * V;
            for (long j = 0; j < V; j++) ot[j] = 0;
            for (long i = 0; i < K; i++) {
                const T xi = x[i];
                const T *restrict Gi = Gm + i * V;
                for (long j = 0; j < V; j++) ot[j] += xi * Gi[j];
            }
        }
    }
    free(w);
}

void NAME(mesa_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                    const T *restrict g, const T *restrict beta, const T *restrict lamb,
                    const T *restrict ck, const T *restrict dHT, const T *restrict dGT,
                    const T *restrict dout, T *restrict dq, T *restrict dk, T *restrict dv,
                    T *restrict dg, T *restrict dbeta, T *restrict dlamb, T *restrict dH0,
                    T *restrict dG0, long Tn, long Hn, long K, long V, long n, double eps_abs,
                    long rel, double tiny, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, KK = K * K, KV = K * V;
    T *buf = malloc(CK * (KK + KV) * sizeof(T));      /* H_t, G_t for the steps of a block */
    T *tr = malloc((3 * K * n + 4 * n + 9 * K) * sizeof(T));
    T *sc = tr + 3 * K * n, *w = sc + 4 * n, *x = w + 3 * K, *dx = x + K, *dr = dx + K,
      *dp = dr + K, *dpn = dp + K, *dAp = dpn + K;
    for (long p = p0; p < p1; p++) {
        const long b = p / Hn, h = p % Hn;
        const T *restrict lh = lamb + h * K;
        T *restrict SH = dH0 + p * KK, *restrict SG = dG0 + p * KV;  /* end as dH0, dG0 */
        T *restrict dl = dlamb + p * K;
        if (dHT) memcpy(SH, dHT + p * KK, KK * sizeof(T));
        else memset(SH, 0, KK * sizeof(T));
        if (dGT) memcpy(SG, dGT + p * KV, KV * sizeof(T));
        else memset(SG, 0, KV * sizeof(T));
        memset(dl, 0, K * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *prev = ck + (p * nck + c) * (KK + KV);
            for (long t = t0; t < t1; t++) {  /* recompute H_t, G_t, t in the block */
                const long row = (b * Tn + t) * Hn + h;
                const T a = EXP(g[row]), bt = beta[row];
                const T *restrict kt = k + row * K, *restrict vt = v + row * V;
                T *restrict St = buf + (t - t0) * (KK + KV);
                for (long i = 0; i < K; i++) {
                    const T bk = bt * kt[i];
                    for (long j = 0; j < K; j++) St[i * K + j] = a * prev[i * K + j] + bk * kt[j];
                    for (long j = 0; j < V; j++)
                        St[KK + i * V + j] = a * prev[KK + i * V + j] + bk * vt[j];
                }
                prev = St;
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (b * Tn + t) * Hn + h;
                const T a = EXP(g[row]), bt = beta[row];
                const T *restrict qt = q + row * K, *restrict kt = k + row * K,
                        *restrict vt = v + row * V, *restrict dot = dout + row * V;
                const T *restrict Ht = buf + (t - t0) * (KK + KV), *restrict Gt = Ht + KK;
                const T *restrict Hp = t > t0 ? Ht - (KK + KV) : ck + (p * nck + c) * (KK + KV);
                const T *restrict Gp = Hp + KK;
                /* o_t = G_t^T x: dx = G_t dout, SG += x dout^T */
                const T eps = NAME(cg)(Ht, lh, qt, x, w, K, n, (T)eps_abs, (int)rel, (T)tiny,
                                       tr, sc);
                for (long i = 0; i < K; i++) {
                    T *restrict SGi = SG + i * V;
                    const T *restrict Gi = Gt + i * V;
                    const T xi = x[i];
                    T s = 0;
#pragma omp simd reduction(+ : s)
                    for (long j = 0; j < V; j++) {
                        s += Gi[j] * dot[j];
                        SGi[j] += xi * dot[j];
                    }
                    dx[i] = s;
                }
                /* the CG lines in reverse */
                T dd = 0, deps = 0;
                for (long j = 0; j < K; j++) dr[j] = dp[j] = 0;
                for (long i = n - 1; i >= 0; i--) {
                    const T *restrict pi = tr + 3 * K * i, *restrict Api = pi + K,
                            *restrict ri = pi + 2 * K;
                    const T alpha = sc[4 * i], be = sc[4 * i + 1], di = sc[4 * i + 2],
                            den = sc[4 * i + 3];
                    /* p_{i+1} = r_{i+1} + beta_i p_i;  beta_i = d_{i+1} / (d_i + eps) */
                    const T dbe = NAME(dot)(dp, pi, K);
                    dd += dbe / (di + eps);
                    T ddi = -dbe * be / (di + eps);
                    deps += ddi;
                    /* d_{i+1} = |r_{i+1}|^2;  r_{i+1} = r_i - alpha_i A p_i;
                       x_{i+1} = x_i + alpha_i p_i */
                    T dal = 0;
#pragma omp simd reduction(+ : dal)
                    for (long j = 0; j < K; j++) {
                        dr[j] += dp[j] + 2 * dd * ri[j];
                        dal += dx[j] * pi[j] - dr[j] * Api[j];
                    }
                    /* alpha_i = d_i / den_i;  den_i = p_i . A p_i + eps */
                    ddi += dal / den;
                    const T dden = -dal * alpha / den;
                    deps += dden;
                    for (long j = 0; j < K; j++) {
                        dAp[j] = dden * pi[j] - alpha * dr[j];
                        dpn[j] = be * dp[j] + alpha * dx[j] + dden * Api[j] + lh[j] * dAp[j];
                        dl[j] += dAp[j] * pi[j];
                    }
                    /* A p_i = H^T p_i + lamb p_i: dp_i += H dAp, SH += p_i dAp^T */
                    for (long r = 0; r < K; r++) {
                        T *restrict SHr = SH + r * K;
                        const T *restrict Hr = Ht + r * K;
                        const T pr = pi[r];
                        T s = 0;
#pragma omp simd reduction(+ : s)
                        for (long j = 0; j < K; j++) {
                            s += Hr[j] * dAp[j];
                            SHr[j] += pr * dAp[j];
                        }
                        dp[r] = dpn[r] + s;
                    }
                    dd = ddi;
                }
                /* r_0 = p_0 = q, d_0 = |q|^2, eps = 1e-10 d_0 + tiny */
                const T dd0 = 2 * (dd + (rel ? (T)1e-10 * deps : 0));
                T *restrict dqt = dq + row * K;
                for (long j = 0; j < K; j++) dqt[j] = dr[j] + dp[j] + dd0 * qt[j];
                /* H_t = a H_{t-1} + b k k^T, G_t = a G_{t-1} + b k v^T */
                T *restrict dkt = dk + row * K, *restrict dvt = dv + row * V;
                for (long j = 0; j < K; j++) dkt[j] = 0;
                for (long j = 0; j < V; j++) dvt[j] = 0;
                T db = 0, da = 0;
                for (long i = 0; i < K; i++) {
                    T *restrict SHi = SH + i * K, *restrict SGi = SG + i * V;
                    const T *restrict Hpi = Hp + i * K, *restrict Gpi = Gp + i * V;
                    const T ki = kt[i];
                    T sh = 0, sg = 0, dai = 0;
#pragma omp simd reduction(+ : sh, dai)
                    for (long j = 0; j < K; j++) {
                        sh += SHi[j] * kt[j];
                        dkt[j] += SHi[j] * ki;
                        dai += SHi[j] * Hpi[j];
                        SHi[j] *= a;
                    }
#pragma omp simd reduction(+ : sg, dai)
                    for (long j = 0; j < V; j++) {
                        sg += SGi[j] * vt[j];
                        dvt[j] += SGi[j] * ki;
                        dai += SGi[j] * Gpi[j];
                        SGi[j] *= a;
                    }
                    dkt[i] += sh + sg;
                    db += ki * (sh + sg);
                    da += dai;
                }
                for (long j = 0; j < K; j++) dkt[j] *= bt;
                for (long j = 0; j < V; j++) dvt[j] *= bt;
                dbeta[row] = db;
                dg[row] = da * a;
            }
        }
    }
    free(buf);
    free(tr);
}

#endif
