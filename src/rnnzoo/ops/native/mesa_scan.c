/* MesaNet's readout (rnnzoo.ops.mesa) as its recurrence, forward and backward, one
   (batch row, head) pair at a time, the step's conjugate-gradient solve on the step's own
   H_t (in cache: K x K) instead of the chunkwise form's products:

       H_t = a_t H_{t-1} + b_t k_t k_t^T,   G_t = a_t G_{t-1} + b_t k_t v_t^T,   a_t = exp(g_t)
       x_t = CG_n(A_t, q_t),   A_t p = H_t^T p + lamb * p,   o_t = G_t^T x_t

   CG_n is ops.mesa.conjugate_gradient's n steps from x = 0, line by line (d_i = |r_i|^2,
   den_i = p_i . A p_i + eps, alpha_i = d_i / den_i, beta_i = d_{i+1} / (d_i + eps); eps =
   1e-10 |q|^2 + tiny when `rel`, else the given eps; with tol > 0 a step's solve stops
   before iteration i once d_i <= tol^2 d_0, as conjugate_gradient's `tol`). Its backward is the reverse of those
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
   G0, GT, dGT, dG0 (batch, heads, K, V); its (batch heads): the CG iterations each pair's
   forward ran, added to; ck (batch, heads, nck, K K + K V), nck =
   ceil(T / CK), the states entering steps 0, CK, 2 CK, ... Each function does the
   (batch row, head) pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "mesa_scan.c"
#include "each_type.h"

#else

#include "tile.h"
#define INLINE static inline __attribute__((always_inline))

/* a . b in vectors, their lanes summed as a tree (hsum): an `omp simd` reduction ends in a
   serial chain of one add per lane */
INLINE T NAME(dot)(const T *restrict a, const T *restrict b, long n) {
    VEC s0 = {0}, s1 = {0};
    long j = 0;
    for (; j + 2 * NV <= n; j += 2 * NV) {
        s0 += *(const UVEC *)(a + j) * *(const UVEC *)(b + j);
        s1 += *(const UVEC *)(a + j + NV) * *(const UVEC *)(b + j + NV);
    }
    if (j + NV <= n) {
        s0 += *(const UVEC *)(a + j) * *(const UVEC *)(b + j);
        j += NV;
    }
    T r = NAME(hsum)(s0 + s1);
    for (; j < n; j++) r += a[j] * b[j];
    return r;
}

/* y = M^T p + lamb * p for a row-major (K, K) M: a sum of M's rows, JB columns at a time
   in registers (four rows a pass into four sums: a quarter of the dependent adds), the rest
   column by column */
#define JB 32
INLINE void NAME(apply)(const T *restrict M, const T *restrict lamb, const T *restrict p,
                        T *restrict y, long K) {
    long jb = 0;
    for (; jb + JB <= K; jb += JB) {
        T a0[JB], a1[JB], a2[JB], a3[JB];
        for (long l = 0; l < JB; l++) {
            a0[l] = lamb[jb + l] * p[jb + l];
            a1[l] = a2[l] = a3[l] = 0;
        }
        long i = 0;
        for (; i + 4 <= K; i += 4) {
            const T p0 = p[i], p1 = p[i + 1], p2 = p[i + 2], p3 = p[i + 3];
            const T *restrict M0 = M + i * K + jb, *restrict M1 = M0 + K, *restrict M2 = M1 + K,
                    *restrict M3 = M2 + K;
            for (long l = 0; l < JB; l++) {
                a0[l] += p0 * M0[l];
                a1[l] += p1 * M1[l];
                a2[l] += p2 * M2[l];
                a3[l] += p3 * M3[l];
            }
        }
        for (; i < K; i++)
            for (long l = 0; l < JB; l++) a0[l] += p[i] * M[i * K + jb + l];
        for (long l = 0; l < JB; l++) y[jb + l] = (a0[l] + a1[l]) + (a2[l] + a3[l]);
    }
    if (jb == K) return;
    for (long j = jb; j < K; j++) y[j] = lamb[j] * p[j];
    for (long i = 0; i < K; i++) {
        const T pi = p[i];
        const T *restrict Mi = M + i * K;
        for (long j = jb; j < K; j++) y[j] += pi * Mi[j];
    }
}

/* y += M a for a row-major (R, W) M: each row's products summed in a vector, NV rows' sums
   at once by hsum_rows (a dot product per row would end in a serial chain of adds) */
INLINE void NAME(matvec)(const T *restrict M, const T *restrict a, T *restrict y, long R,
                         long W) {
    const long Wv = W / NV * NV;
    for (long i0 = 0; i0 < R; i0 += NV) {
        const long m = R - i0 < NV ? R - i0 : NV;
        VEC acc[NV];
        for (long r = 0; r < m; r++) {
            const T *restrict Mi = M + (i0 + r) * W;
            VEC s = {0};
            for (long j = 0; j < Wv; j += NV) s += *(const UVEC *)(Mi + j) * *(const UVEC *)(a + j);
            for (long j = Wv; j < W; j++) s[0] += Mi[j] * a[j];
            acc[r] = s;
        }
        NAME(add_sums)(y + i0, acc, m);
    }
}

/* x = CG_n(A, b), stopping before iteration i once d_i <= tol2 d_0 (tol2 > 0); w: 3 K
   scratch. With tr: per step i, tr[3 K i ..] = p_i, A p_i, r_{i+1} and sc[4 i ..] = alpha_i,
   beta_i, d_i, den_i. Returns eps; *ran = the iterations run. */
INLINE T NAME(cg)(const T *restrict H, const T *restrict lamb, const T *restrict b,
                  T *restrict x, T *restrict w, long K, long n, T eps_abs, int rel, T tiny,
                  T tol2, long *ran, T *restrict tr, T *restrict sc) {
    T *restrict r = w, *restrict p = w + K, *restrict Ap = w + 2 * K;
    T d = NAME(dot)(b, b, K);
    const T eps = rel ? (T)1e-10 * d + tiny : eps_abs, limit = tol2 * d;
    *ran = n;
    for (long j = 0; j < K; j++) {
        x[j] = 0;
        r[j] = b[j];
        p[j] = b[j];
    }
    for (long i = 0; i < n; i++) {
        if (tol2 > 0 && !(d > limit)) {
            *ran = i;
            break;
        }
        T *restrict Api = tr ? tr + 3 * K * i + K : Ap;
        NAME(apply)(H, lamb, p, Api, K);
        const T den = NAME(dot)(p, Api, K) + eps, alpha = d / den;
        for (long j = 0; j < K; j++) {
            x[j] += alpha * p[j];
            r[j] -= alpha * Api[j];
        }
        const T nw = NAME(dot)(r, r, K);
        const T beta = nw / (d + eps);
        if (tr) {
            T *restrict ti = tr + 3 * K * i;
            for (long j = 0; j < K; j++) {
                ti[j] = p[j];
                ti[2 * K + j] = r[j];
            }
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

/* The step's solve and its gradient: x = CG_n(A, b) into ws[3 K n + 4 n + 3 K ..] (its
   iterates kept in ws), then the CG lines in reverse from dx: db = the gradient of b,
   dl += that of lamb. Returns the iterations run, `ran`; H's gradient is sum_{i < ran}
   p_i dAp_i^T, p_i = ws[3 K i ..], dAp_i = ws[3 K i + K ..] (the caller adds it).
   ws: 3 K n + 4 n + 7 K. */
INLINE long NAME(cg_grad)(const T *restrict H, const T *restrict lh,
                          const T *restrict b, const T *restrict dx, T *restrict db,
                          T *restrict dl, long K, long n, T eps_abs, int rel,
                          T tiny, T tol2, T *restrict ws) {
    T *restrict tr = ws, *restrict sc = ws + 3 * K * n, *restrict w = sc + 4 * n,
      *restrict x = w + 3 * K, *restrict dr = x + K, *restrict dp = dr + K,
      *restrict Hd = dp + K;
    long ran;
    const T eps = NAME(cg)(H, lh, b, x, w, K, n, eps_abs, rel, tiny, tol2, &ran, tr, sc);
    /* dA p_i overwrites A p_i in the trace */
    T dd = 0, deps = 0;
    for (long j = 0; j < K; j++) dr[j] = dp[j] = 0;
    for (long i = ran - 1; i >= 0; i--) {
        const T *restrict pi = tr + 3 * K * i, *restrict ri = pi + 2 * K;
        T *restrict Api = tr + 3 * K * i + K;
        const T alpha = sc[4 * i], be = sc[4 * i + 1], di = sc[4 * i + 2], den = sc[4 * i + 3];
        /* p_{i+1} = r_{i+1} + beta_i p_i;  beta_i = d_{i+1} / (d_i + eps) */
        const T dbe = NAME(dot)(dp, pi, K);
        dd += dbe / (di + eps);
        T ddi = -dbe * be / (di + eps);
        deps += ddi;
        /* d_{i+1} = |r_{i+1}|^2;  r_{i+1} = r_i - alpha_i A p_i;  x_{i+1} = x_i + alpha_i p_i */
        for (long j = 0; j < K; j++) dr[j] += dp[j] + 2 * dd * ri[j];
        const T dal = NAME(dot)(dx, pi, K) - NAME(dot)(dr, Api, K);
        /* alpha_i = d_i / den_i;  den_i = p_i . A p_i + eps */
        ddi += dal / den;
        const T dden = -dal * alpha / den;
        deps += dden;
        for (long j = 0; j < K; j++) {
            const T dA = dden * pi[j] - alpha * dr[j];
            dp[j] = be * dp[j] + alpha * dx[j] + dden * Api[j];
            Api[j] = dA;
            dl[j] += dA * pi[j];
        }
        /* A p_i = H^T p_i + lamb p_i: dp_i += H dAp + lamb dAp */
        for (long j = 0; j < K; j++) Hd[j] = lh[j] * Api[j];
        NAME(matvec)(H, Api, Hd, K, K);
        for (long j = 0; j < K; j++) dp[j] += Hd[j];
        dd = ddi;
    }
    /* r_0 = p_0 = b, d_0 = |b|^2, eps = 1e-10 d_0 + tiny */
    const T dd0 = 2 * (dd + (rel ? (T)1e-10 * deps : 0));
    for (long j = 0; j < K; j++) db[j] = dr[j] + dp[j] + dd0 * b[j];
    return ran;
}

/* cg and cg_grad compiled for any K and for K = 32 (its loops unrolled, in registers) */
static long NAME(cg_any)(const T *restrict H, const T *restrict lamb, const T *restrict b,
                         T *restrict x, T *restrict w, long K, long n, T eps_abs, int rel,
                         T tiny, T tol2) {
    long ran;
    NAME(cg)(H, lamb, b, x, w, K, n, eps_abs, rel, tiny, tol2, &ran, NULL, NULL);
    return ran;
}
static long NAME(cg_32)(const T *restrict H, const T *restrict lamb, const T *restrict b,
                        T *restrict x, T *restrict w, long K, long n, T eps_abs, int rel,
                        T tiny, T tol2) {
    long ran;
    NAME(cg)(H, lamb, b, x, w, 32, n, eps_abs, rel, tiny, tol2, &ran, NULL, NULL);
    return ran;
}
static long NAME(cg_grad_any)(const T *restrict H, const T *restrict lh, const T *restrict b,
                              const T *restrict dx, T *restrict db, T *restrict dl, long K,
                              long n, T eps_abs, int rel, T tiny, T tol2, T *restrict ws) {
    return NAME(cg_grad)(H, lh, b, dx, db, dl, K, n, eps_abs, rel, tiny, tol2, ws);
}
static long NAME(cg_grad_32)(const T *restrict H, const T *restrict lh, const T *restrict b,
                             const T *restrict dx, T *restrict db, T *restrict dl, long K,
                             long n, T eps_abs, int rel, T tiny, T tol2, T *restrict ws) {
    return NAME(cg_grad)(H, lh, b, dx, db, dl, 32, n, eps_abs, rel, tiny, tol2, ws);
}

INLINE void NAME(fwd_pair)(const T *restrict q, const T *restrict k, const T *restrict v,
                           const T *restrict g, const T *restrict beta, const T *restrict lamb,
                           const T *restrict H0, const T *restrict G0, T *restrict o,
                           T *restrict Hm, T *restrict Gm, T *restrict ck, long Tn, long Hn,
                           long K, long V, long n, T eps_abs, int rel, T tiny, T tol2,
                           long p, T *restrict w, long *restrict its) {
    const long nck = (Tn + CK - 1) / CK, KK = K * K, KV = K * V, b = p / Hn, h = p % Hn;
    T *restrict x = w + 3 * K;
    memcpy(Hm, H0, KK * sizeof(T));
    memcpy(Gm, G0, KV * sizeof(T));
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
        its[p] += (K == 32 ? NAME(cg_32) : NAME(cg_any))(Hm, lamb + h * K, q + row * K, x, w,
                                                         K, n, eps_abs, rel, tiny, tol2);
        T *restrict ot = o + row * V;
        for (long j = 0; j < V; j++) ot[j] = 0;
        for (long i = 0; i < K; i++) {
            const T xi = x[i];
            const T *restrict Gi = Gm + i * V;
            for (long j = 0; j < V; j++) ot[j] += xi * Gi[j];
        }
    }
}

void NAME(mesa_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                    const T *restrict g, const T *restrict beta, const T *restrict lamb,
                    const T *restrict H0, const T *restrict G0, T *restrict o,
                    T *restrict HT, T *restrict GT, T *restrict ck, long *restrict its, long Tn,
                    long Hn, long K, long V, long n, double eps_abs, long rel, double tiny,
                    double tol, long p0, long p1) {
    T *w = malloc(4 * K * sizeof(T));
    for (long p = p0; p < p1; p++) {
#define FWD(KC, VC) NAME(fwd_pair)(q, k, v, g, beta, lamb, H0 + p * K * K, G0 + p * K * V, \
                                   o, HT + p * K * K, GT + p * K * V, ck, Tn, Hn, KC, VC, n,   \
                                   (T)eps_abs, (int)rel, (T)tiny, (T)(tol * tol), p, w, its)
        if (K == 32 && V == 32) FWD(32, 32);  /* compiled for the common head size */
        else FWD(K, V);
#undef FWD
    }
    free(w);
}

INLINE void NAME(bwd_pair)(const T *restrict q, const T *restrict k, const T *restrict v,
                           const T *restrict g, const T *restrict beta, const T *restrict lamb,
                           const T *restrict ck, const T *restrict dHT, const T *restrict dGT,
                           const T *restrict dout, T *restrict dq, T *restrict dk,
                           T *restrict dv, T *restrict dg, T *restrict dbeta, T *restrict dl,
                           T *restrict SH, T *restrict SG, long Tn, long Hn, long K, long V,
                           long n, T eps_abs, int rel, T tiny, T tol2, long p,
                           T *restrict buf, T *restrict tr) {
    /* buf: per step of a block H_t, G_t; SH, SG end as dH0, dG0 */
    const long nck = (Tn + CK - 1) / CK, KK = K * K, KV = K * V, L = KK + KV;
    const long b = p / Hn, h = p % Hn;
    T *restrict x = tr + 3 * K * n + 4 * n + 3 * K, *restrict dx = tr + 3 * K * n + 4 * n + 7 * K,
      *restrict bk = dx + K, *restrict u = bk + K;
    long (*grad)(const T *, const T *, const T *, const T *, T *, T *, long, long, T, int, T,
                 T, T *) = K == 32 ? NAME(cg_grad_32) : NAME(cg_grad_any);
    const T *restrict lh = lamb + h * K;
    if (dHT) memcpy(SH, dHT, KK * sizeof(T));
    else memset(SH, 0, KK * sizeof(T));
    if (dGT) memcpy(SG, dGT, KV * sizeof(T));
    else memset(SG, 0, KV * sizeof(T));
    memset(dl, 0, K * sizeof(T));
    for (long c = nck - 1; c >= 0; c--) {
        const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
        const T *restrict ckc = ck + (p * nck + c) * (KK + KV);
        for (long t = t0; t < t1; t++) {  /* recompute H_t, G_t, t in the block */
            const long row = (b * Tn + t) * Hn + h;
            const T a = EXP(g[row]), bt = beta[row];
            const T *restrict kt = k + row * K, *restrict vt = v + row * V;
            T *restrict St = buf + (t - t0) * L;
            const T *restrict Hp = t > t0 ? St - L : ckc, *restrict Gp = t > t0 ? St - L + KK
                                                                                 : ckc + KK;
            for (long j = 0; j < K; j++) bk[j] = bt * kt[j];
            for (long i = 0; i < K; i++) {
                for (long j = 0; j < K; j++) St[i * K + j] = a * Hp[i * K + j] + bk[i] * kt[j];
                for (long j = 0; j < V; j++)
                    St[KK + i * V + j] = a * Gp[i * V + j] + bk[i] * vt[j];
            }
        }
        for (long t = t1 - 1; t >= t0; t--) {
            const long row = (b * Tn + t) * Hn + h;
            const T a = EXP(g[row]), bt = beta[row];
            const T *restrict qt = q + row * K, *restrict kt = k + row * K,
                    *restrict vt = v + row * V, *restrict dot = dout + row * V;
            const T *restrict Ht = buf + (t - t0) * L, *restrict Gt = Ht + KK;
            const T *restrict Hp = t > t0 ? Ht - L : ckc, *restrict Gp = t > t0 ? Ht - L + KK
                                                                                : ckc + KK;
            /* o_t = G_t^T x: dx = G_t dout; then x and dq_t, dlamb, SH through the solve */
            memset(dx, 0, K * sizeof(T));
            NAME(matvec)(Gt, dot, dx, K, V);
            const long ran = grad(Ht, lh, qt, dx, dq + row * K, dl, K, n, eps_abs, rel, tiny,
                                  tol2, tr);
            /* one pass over the rows of SH, SG: SH += sum_i p_i dAp_i^T (the solve's), SG +=
               x dout^T; then with H_t = a H_{t-1} + b k k^T, G_t = a G_{t-1} + b k v^T:
               u = SH k + SG v (row sums), dk = b (SH^T k + u), dv = b SG^T k, db = k . u,
               da = <SH, H_{t-1}> + <SG, G_{t-1}>; SH, SG carry to step t-1 times a */
            T *restrict dkt = dk + row * K, *restrict dvt = dv + row * V;
            for (long j = 0; j < K; j++) dkt[j] = 0;
            for (long j = 0; j < V; j++) dvt[j] = 0;
            for (long j = 0; j < K; j++) u[j] = 0;
            VEC dav = {0}, acc[NV];
            T das = 0;
            const long Kv = K / NV * NV, Vv = V / NV * NV;
            for (long i0 = 0; i0 < K; i0 += NV) {
                const long m = K - i0 < NV ? K - i0 : NV;
                for (long r = 0; r < m; r++) {
                    const long i = i0 + r;
                    T *restrict SHi = SH + i * K, *restrict SGi = SG + i * V;
                    const T *restrict Hpi = Hp + i * K, *restrict Gpi = Gp + i * V;
                    for (long l = 0; l < ran; l++) {
                        const T pl = tr[3 * K * l + i];
                        const T *restrict Dl = tr + 3 * K * l + K;
                        for (long j = 0; j < K; j++) SHi[j] += pl * Dl[j];
                    }
                    const T xi = x[i], ki = kt[i];
                    VEC su = {0};
                    for (long j = 0; j < Kv; j += NV) {
                        const VEC h = *(UVEC *)(SHi + j);
                        su += h * *(const UVEC *)(kt + j);
                        dav += h * *(const UVEC *)(Hpi + j);
                        *(UVEC *)(dkt + j) += h * ki;
                        *(UVEC *)(SHi + j) = h * a;
                    }
                    for (long j = Kv; j < K; j++) {
                        const T h = SHi[j];
                        su[0] += h * kt[j];
                        das += h * Hpi[j];
                        dkt[j] += h * ki;
                        SHi[j] = h * a;
                    }
                    for (long j = 0; j < Vv; j += NV) {
                        const VEC gv = *(UVEC *)(SGi + j) + xi * *(const UVEC *)(dot + j);
                        su += gv * *(const UVEC *)(vt + j);
                        dav += gv * *(const UVEC *)(Gpi + j);
                        *(UVEC *)(dvt + j) += gv * ki;
                        *(UVEC *)(SGi + j) = gv * a;
                    }
                    for (long j = Vv; j < V; j++) {
                        const T gv = SGi[j] + xi * dot[j];
                        su[0] += gv * vt[j];
                        das += gv * Gpi[j];
                        dvt[j] += gv * ki;
                        SGi[j] = gv * a;
                    }
                    acc[r] = su;
                }
                NAME(add_sums)(u + i0, acc, m);
            }
            for (long j = 0; j < K; j++) dkt[j] = bt * (dkt[j] + u[j]);
            for (long j = 0; j < V; j++) dvt[j] *= bt;
            const T db = NAME(dot)(kt, u, K), da = NAME(hsum)(dav) + das;
            dbeta[row] = db;
            dg[row] = da * a;
        }
    }
}

void NAME(mesa_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                    const T *restrict g, const T *restrict beta, const T *restrict lamb,
                    const T *restrict ck, const T *restrict dHT, const T *restrict dGT,
                    const T *restrict dout, T *restrict dq, T *restrict dk, T *restrict dv,
                    T *restrict dg, T *restrict dbeta, T *restrict dlamb, T *restrict dH0,
                    T *restrict dG0, long Tn, long Hn, long K, long V, long n, double eps_abs,
                    long rel, double tiny, double tol, long p0, long p1) {
    T *buf = malloc(CK * (K * K + K * V) * sizeof(T));
    T *tr = malloc((3 * K * n + 4 * n + 10 * K) * sizeof(T));  /* cg_grad's, dx, k b, u */
    for (long p = p0; p < p1; p++) {
#define BWD(KC, VC) NAME(bwd_pair)(q, k, v, g, beta, lamb, ck, dHT ? dHT + p * K * K : NULL, \
                                   dGT ? dGT + p * K * V : NULL, dout, dq, dk, dv, dg, dbeta,   \
                                   dlamb + p * K, dH0 + p * K * K, dG0 + p * K * V, Tn, Hn, KC, \
                                   VC, n, (T)eps_abs, (int)rel, (T)tiny, (T)(tol * tol), p, buf, \
                                   tr)
        if (K == 32 && V == 32) BWD(32, 32);
        else BWD(K, V);
#undef BWD
    }
    free(buf);
    free(tr);
}

#include "tile.h"  /* its names undefined for the next type */
#undef INLINE
#undef JB

#endif
