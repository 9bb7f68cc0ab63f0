/* MesaNet's readout (rnnzoo.ops.mesa) as its recurrence, forward and backward, the step's
   conjugate-gradient solve on the step's own H_t (K x K) instead of the chunkwise form's
   products:

       H_t = a_t H_{t-1} + b_t k_t k_t^T,   G_t = a_t G_{t-1} + b_t k_t v_t^T,   a_t = exp(g_t)
       x_t = CG_n(A_t, q_t),   A_t p = H_t^T p + lamb * p,   o_t = G_t^T x_t

   CG_n is ops.mesa.conjugate_gradient's n steps from x = 0, line by line (d_i = |r_i|^2,
   den_i = p_i . A p_i + eps, alpha_i = d_i / den_i, beta_i = d_{i+1} / (d_i + eps); eps =
   1e-10 |q|^2 + tiny when `rel`, else the given eps; with tol > 0 a step's solve stops
   before iteration i once d_i <= tol^2 d_0, as conjugate_gradient's `tol`). Its backward is
   the reverse of those lines (reverse-mode through every iteration, so the gradient is the
   truncated solve's, as autograd's through the PyTorch loop); the iterates are recomputed
   per step in the backward, which also gives the step's adjoint of H_t, sum_i p_i dAp_i^T.
   With SH, SG the running adjoints of H_t, G_t (their own reads plus a_{t+1} times the next
   step's):

       dk_t = b_t (SH + SH^T) k_t + b_t SG v_t,   dv_t = b_t SG^T k_t,
       db_t = k_t^T SH k_t + k_t^T SG v_t,   dg_t = a_t (<SH, H_{t-1}> + <SG, G_{t-1}>)

   H_t, G_t are recomputed from the states stored every CK steps by the forward.

   Lanes: NV (batch row, head) pairs run at once, pair l of a group in lane l of every
   vector (VEC, tile.h): a state entry H[i][j] is one vector of the NV pairs' values, so
   every product, dot product and division of the recurrence and of the solve is one vector
   operation for NV pairs, without horizontal sums or dependent scalar chains. A lane whose
   solve has stopped (tol) is masked for the group's further iterations (its x, r kept, its
   reverse lines skipped); a group short of NV pairs repeats its last pair in the spare
   lanes (their results are not stored).

   Layouts (row-major, contiguous): q, k, dq, dk (batch, T, heads, K); v, o, dv, dout
   (batch, T, heads, V); g, beta, dg, dbeta (batch, T, heads); lamb (heads, K); dlamb
   (batch, heads, K) (the caller sums the batch); H0, HT, dHT, dH0 (batch, heads, K, K);
   G0, GT, dGT, dG0 (batch, heads, K, V); its (batch heads): the CG iterations each pair's
   forward ran, added to; ck (batch, heads, nck, K K + K V), nck = ceil(T / CK), the states
   entering steps 0, CK, 2 CK, ... Each function does the (batch row, head) pairs [p0, p1).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 8
#define KERNELS "mesa_scan.c"
#include "each_type.h"

#else

#include "tile.h"
#define INLINE static inline __attribute__((always_inline))
#if TILE_CAT(TILE_SIZE, NAME()) == 4  /* a comparison's lane mask */
typedef int NAME(ivec) __attribute__((vector_size(TILE_BYTES)));
#else
typedef long long NAME(ivec) __attribute__((vector_size(TILE_BYTES)));
#endif
#define IVEC NAME(ivec)
/* m ? a : b, lane by lane */
#define SEL(m, a, b) ((VEC)(((IVEC)(a) & (m)) | ((IVEC)(b) & ~(m))))

INLINE VEC NAME(ldot)(const VEC *restrict a, const VEC *restrict b, long n) {
    VEC s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    long j = 0;
    for (; j + 4 <= n; j += 4) {
        s0 += a[j] * b[j];
        s1 += a[j + 1] * b[j + 1];
        s2 += a[j + 2] * b[j + 2];
        s3 += a[j + 3] * b[j + 3];
    }
    for (; j < n; j++) s0 += a[j] * b[j];
    return (s0 + s1) + (s2 + s3);
}

/* y = M^T p + lamb * p (lamb NULL: M^T p) for a row-major (R, W) M: JB columns of y at a
   time in registers */
#define JB 16
INLINE void NAME(vecmat)(const VEC *restrict M, const VEC *restrict lamb,
                         const VEC *restrict p, VEC *restrict y, long R, long W) {
    long jb = 0;
    for (; jb + JB <= W; jb += JB) {
        VEC acc[JB];
        for (long l = 0; l < JB; l++) {
            acc[l] = (VEC){0};
            if (lamb) acc[l] = lamb[jb + l] * p[jb + l];
        }
        for (long i = 0; i < R; i++) {
            const VEC pi = p[i];
            const VEC *restrict Mi = M + i * W + jb;
            for (long l = 0; l < JB; l++) acc[l] += pi * Mi[l];
        }
        for (long l = 0; l < JB; l++) y[jb + l] = acc[l];
    }
    if (jb == W) return;
    for (long j = jb; j < W; j++) {
        y[j] = (VEC){0};
        if (lamb) y[j] = lamb[j] * p[j];
    }
    for (long i = 0; i < R; i++) {
        const VEC pi = p[i];
        const VEC *restrict Mi = M + i * W;
        for (long j = jb; j < W; j++) y[j] += pi * Mi[j];
    }
}

/* y = M a for a row-major (R, W) M: four rows at a time */
INLINE void NAME(matvec)(const VEC *restrict M, const VEC *restrict a, VEC *restrict y,
                         long R, long W) {
    long i = 0;
    for (; i + 4 <= R; i += 4) {
        VEC s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        const VEC *restrict M0 = M + i * W, *restrict M1 = M0 + W, *restrict M2 = M1 + W,
                  *restrict M3 = M2 + W;
        for (long j = 0; j < W; j++) {
            const VEC aj = a[j];
            s0 += M0[j] * aj;
            s1 += M1[j] * aj;
            s2 += M2[j] * aj;
            s3 += M3[j] * aj;
        }
        y[i] = s0;
        y[i + 1] = s1;
        y[i + 2] = s2;
        y[i + 3] = s3;
    }
    for (; i < R; i++) y[i] = NAME(ldot)(M + i * W, a, W);
}

/* x = CG_n(A, b) in every lane, a lane stopping before iteration i once d_i <= tol2 d_0
   (tol2 > 0), given Ap0 = A b (the update's); w: 3 K scratch; *cnt -= the lanes' masks (counts their iterations). With tr:
   per iteration i, tr[3 K i ..] = p_i, A p_i, r_{i+1} and sc[5 i ..] = alpha_i, beta_i, d_i,
   den_i, the lanes that ran it (mask bits). Returns the iterations run (the most of any
   lane), *epsv the lanes' eps. */
INLINE long NAME(cg)(const VEC *restrict H, const VEC *restrict lamb, const VEC *restrict b,
                     const VEC *restrict Ap0, VEC *restrict x, VEC *restrict w, long K, long n,
                     T eps_abs, int rel,
                     T tiny, T tol2, IVEC *restrict cnt, VEC *restrict epsv, VEC *restrict tr,
                     VEC *restrict sc) {
    VEC *restrict r = w, *restrict p = w + K, *restrict Ap = w + 2 * K;
    VEC d = NAME(ldot)(b, b, K);
    VEC eps = (VEC){0} + eps_abs;
    if (rel) eps = (T)1e-10 * d + tiny;
    const VEC limit = tol2 * d;
    *epsv = eps;
    for (long j = 0; j < K; j++) {
        x[j] = (VEC){0};
        r[j] = b[j];
        p[j] = b[j];
    }
    long i = 0;
    for (; i < n; i++) {
        IVEC act = (IVEC){0} - 1;
        if (tol2 > 0) {
            act = d > limit;
            long any = 0;
            for (long l = 0; l < NV; l++) any |= act[l];
            if (!any) break;
        }
        VEC *restrict Api = tr ? tr + 3 * K * i + K : Ap;
        if (i == 0) memcpy(Api, Ap0, K * sizeof(VEC));
        else NAME(vecmat)(H, lamb, p, Api, K, K);
        const VEC den = NAME(ldot)(p, Api, K) + eps;
        const VEC alpha = SEL(act, d / den, (VEC){0});
        for (long j = 0; j < K; j++) {
            x[j] += alpha * p[j];
            r[j] -= alpha * Api[j];
        }
        const VEC nw = SEL(act, NAME(ldot)(r, r, K), d);
        const VEC beta = nw / (d + eps);
        if (tr) {
            VEC *restrict ti = tr + 3 * K * i;
            for (long j = 0; j < K; j++) {
                ti[j] = p[j];
                ti[2 * K + j] = r[j];
            }
            VEC *restrict si = sc + 5 * i;
            si[0] = alpha;
            si[1] = beta;
            si[2] = d;
            si[3] = den;
            si[4] = (VEC)act;
        }
        for (long j = 0; j < K; j++) p[j] = r[j] + beta * p[j];
        d = nw;
        *cnt -= act;
    }
    return i;
}

/* The reverse of cg's `ran` traced iterations from dx: db = the gradient of b, dl += that
   of lamb; dA p_i overwrites A p_i in the trace (zero in the lanes that did not run i), so
   H's gradient is sum_i p_i dAp_i^T (the caller adds it). ws: 3 K. */
INLINE void NAME(cg_back)(const VEC *restrict H, const VEC *restrict lh, const VEC *restrict b,
                          const VEC *restrict dx, VEC *restrict db, VEC *restrict dl, long K,
                          long ran, VEC eps, int rel, VEC *restrict tr,
                          const VEC *restrict sc, VEC *restrict ws) {
    VEC *restrict dr = ws, *restrict dp = ws + K, *restrict Hd = ws + 2 * K;
    VEC dd = {0}, deps = {0};
    for (long j = 0; j < K; j++) dr[j] = dp[j] = (VEC){0};
    for (long i = ran - 1; i >= 0; i--) {
        const VEC *restrict pi = tr + 3 * K * i, *restrict ri = pi + 2 * K;
        VEC *restrict Api = tr + 3 * K * i + K;
        const VEC *restrict si = sc + 5 * i;
        const VEC alpha = si[0], be = si[1], di = si[2], den = si[3];
        const IVEC m = (IVEC)si[4];
        /* p_{i+1} = r_{i+1} + beta_i p_i;  beta_i = d_{i+1} / (d_i + eps) */
        const VEC dbe = NAME(ldot)(dp, pi, K);
        const VEC ddn = dd + dbe / (di + eps);
        VEC ddi = -dbe * be / (di + eps);
        VEC dep = ddi;
        /* d_{i+1} = |r_{i+1}|^2;  r_{i+1} = r_i - alpha_i A p_i;  x_{i+1} = x_i + alpha_i p_i */
        for (long j = 0; j < K; j++) dr[j] = SEL(m, dr[j] + dp[j] + 2 * ddn * ri[j], dr[j]);
        const VEC dal = NAME(ldot)(dx, pi, K) - NAME(ldot)(dr, Api, K);
        /* alpha_i = d_i / den_i;  den_i = p_i . A p_i + eps */
        ddi += dal / den;
        const VEC dden = -dal * alpha / den;
        dep += dden;
        for (long j = 0; j < K; j++) {
            const VEC dA = SEL(m, dden * pi[j] - alpha * dr[j], (VEC){0});
            dp[j] = SEL(m, be * dp[j] + alpha * dx[j] + dden * Api[j], dp[j]);
            Api[j] = dA;
            dl[j] += dA * pi[j];
        }
        /* A p_i = H^T p_i + lamb p_i: dp_i += H dAp + lamb dAp (zero where not run) */
        NAME(matvec)(H, Api, Hd, K, K);
        for (long j = 0; j < K; j++) dp[j] += Hd[j] + lh[j] * Api[j];
        dd = SEL(m, ddi, dd);
        deps = SEL(m, deps + dep, deps);
    }
    /* r_0 = p_0 = b, d_0 = |b|^2, eps = 1e-10 d_0 + tiny */
    VEC dd0 = 2 * dd;
    if (rel) dd0 += (T)2e-10 * deps;
    for (long j = 0; j < K; j++) db[j] = dr[j] + dp[j] + dd0 * b[j];
}

/* dst[i] (lane l) = src[off[l] + i], i < n */
INLINE void NAME(gather)(VEC *restrict dst, const T *restrict src, const long *restrict off,
                         long n) {
    for (long l = 0; l < NV; l++) {
        const T *restrict s = src + off[l];
        for (long i = 0; i < n; i++) dst[i][l] = s[i];
    }
}

/* dst[off[l] + i] = src[i] (lane l), i < n, for the m stored lanes */
INLINE void NAME(scatter)(T *restrict dst, const VEC *restrict src, const long *restrict off,
                          long n, long m) {
    for (long l = 0; l < m; l++) {
        T *restrict d = dst + off[l];
        for (long i = 0; i < n; i++) d[i] = src[i][l];
    }
}

/* the group's pairs: pr[l] = pair of lane l (the last one repeated past m), base[l] its
   (batch row, head) offset in (batch, T, heads) rows */
INLINE void NAME(lanes)(long p0, long m, long Tn, long Hn, long *restrict pr,
                        long *restrict base) {
    for (long l = 0; l < NV; l++) {
        pr[l] = p0 + (l < m ? l : m - 1);
        base[l] = pr[l] / Hn * Tn * Hn + pr[l] % Hn;
    }
}

/* step t's a, b and the gathered rows of k (and v, q, dout where given) */
INLINE void NAME(step_in)(const T *restrict g, const T *restrict beta, const T *restrict k,
                          const T *restrict v, const T *restrict q, const T *restrict dout,
                          const long *restrict base, long t, long Hn, long K, long V,
                          VEC *restrict a, VEC *restrict bt, VEC *restrict kv,
                          VEC *restrict vv, VEC *restrict qv, VEC *restrict dov) {
    long rk[NV], rv[NV];
    for (long l = 0; l < NV; l++) {
        const long row = base[l] + t * Hn;
        (*a)[l] = EXP(g[row]);
        (*bt)[l] = beta[row];
        rk[l] = row * K;
        rv[l] = row * V;
    }
    NAME(gather)(kv, k, rk, K);
    NAME(gather)(vv, v, rv, V);
    if (q) NAME(gather)(qv, q, rk, K);
    if (dout) NAME(gather)(dov, dout, rv, V);
}

/* H = a Hp + b k k^T for the (K, K) state from Hp (in place when Hp = H), and with it
   y = H^T q + lamb q (the solve's first A p): JB columns at a time, y's in registers */
INLINE void NAME(update_h)(const VEC *Hp, VEC *H, VEC a, VEC bt, const VEC *restrict kv,
                           const VEC *restrict lam, const VEC *restrict qv, VEC *restrict y,
                           long K) {
    long jb = 0;
    for (; jb + JB <= K; jb += JB) {
        VEC acc[JB];
        for (long l = 0; l < JB; l++) acc[l] = lam[jb + l] * qv[jb + l];
        for (long i = 0; i < K; i++) {
            const VEC bk = bt * kv[i], qi = qv[i];
            for (long l = 0; l < JB; l++) {
                const VEC h = a * Hp[i * K + jb + l] + bk * kv[jb + l];
                H[i * K + jb + l] = h;
                acc[l] += qi * h;
            }
        }
        for (long l = 0; l < JB; l++) y[jb + l] = acc[l];
    }
    if (jb == K) return;
    for (long j = jb; j < K; j++) y[j] = lam[j] * qv[j];
    for (long i = 0; i < K; i++) {
        const VEC bk = bt * kv[i], qi = qv[i];
        for (long j = jb; j < K; j++) {
            const VEC h = a * Hp[i * K + j] + bk * kv[j];
            H[i * K + j] = h;
            y[j] += qi * h;
        }
    }
}

/* The forward's G = a G + b k v^T (K, V) in place, and o = G^T x from G before it (the
   previous step's readout) */
INLINE void NAME(update_g)(VEC *restrict G, VEC a, VEC bt, const VEC *restrict kv,
                           const VEC *restrict vv, const VEC *restrict x, VEC *restrict o,
                           long K, long V) {
    long jb = 0;
    for (; jb + JB <= V; jb += JB) {
        VEC acc[JB];
        for (long l = 0; l < JB; l++) acc[l] = (VEC){0};
        for (long i = 0; i < K; i++) {
            const VEC bk = bt * kv[i], xi = x[i];
            for (long l = 0; l < JB; l++) {
                const VEC gp = G[i * V + jb + l];
                acc[l] += xi * gp;
                G[i * V + jb + l] = a * gp + bk * vv[jb + l];
            }
        }
        for (long l = 0; l < JB; l++) o[jb + l] = acc[l];
    }
    if (jb == V) return;
    for (long j = jb; j < V; j++) o[j] = (VEC){0};
    for (long i = 0; i < K; i++) {
        const VEC bk = bt * kv[i], xi = x[i];
        for (long j = jb; j < V; j++) {
            const VEC gp = G[i * V + j];
            o[j] += xi * gp;
            G[i * V + j] = a * gp + bk * vv[j];
        }
    }
}

/* The backward's G = a Gp + b k v^T (K, V) from Gp, and dx = G dout (row sums) */
INLINE void NAME(update_gd)(const VEC *restrict Gp, VEC *restrict G, VEC a, VEC bt,
                            const VEC *restrict kv, const VEC *restrict vv,
                            const VEC *restrict dov, VEC *restrict dx, long K, long V) {
    for (long i = 0; i < K; i++) {
        const VEC bk = bt * kv[i];
        VEC s0 = {0}, s1 = {0};
        long j = 0;
        for (; j + 2 <= V; j += 2) {
            const VEC g0 = a * Gp[i * V + j] + bk * vv[j];
            const VEC g1 = a * Gp[i * V + j + 1] + bk * vv[j + 1];
            G[i * V + j] = g0;
            G[i * V + j + 1] = g1;
            s0 += g0 * dov[j];
            s1 += g1 * dov[j + 1];
        }
        if (j < V) {
            const VEC g0 = a * Gp[i * V + j] + bk * vv[j];
            G[i * V + j] = g0;
            s0 += g0 * dov[j];
        }
        dx[i] = s0 + s1;
    }
}

/* ws (VEC): K K + K V + 8 K + 2 V */
INLINE void NAME(fwd_group)(const T *restrict q, const T *restrict k, const T *restrict v,
                            const T *restrict g, const T *restrict beta, const T *restrict lamb,
                            const T *restrict H0, const T *restrict G0, T *restrict o,
                            T *restrict HT, T *restrict GT, T *restrict ck, long Tn, long Hn,
                            long K, long V, long n, T eps_abs, int rel, T tiny, T tol2,
                            long p0, long m, VEC *restrict ws, long *restrict its) {
    const long nck = (Tn + CK - 1) / CK, KK = K * K, KV = K * V, L = KK + KV;
    VEC *restrict S = ws, *restrict lam = S + L, *restrict qv = lam + K, *restrict kv = qv + K,
        *restrict x = kv + K, *restrict w = x + K, *restrict vv = w + 3 * K,
        *restrict ov = vv + V, *restrict y0 = ov + V;
    VEC *restrict ckg = (VEC *)ck + p0 / NV * nck * L;
    long pr[NV], base[NV], off[NV];
    NAME(lanes)(p0, m, Tn, Hn, pr, base);
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KK;
    NAME(gather)(S, H0, off, KK);
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KV;
    NAME(gather)(S + KK, G0, off, KV);
    for (long l = 0; l < NV; l++) off[l] = pr[l] % Hn * K;
    NAME(gather)(lam, lamb, off, K);
    IVEC cnt = {0};
    VEC epsv;
    for (long j = 0; j < K; j++) x[j] = (VEC){0};
    for (long t = 0; t < Tn; t++) {
        if (t % CK == 0) memcpy(ckg + t / CK * L, S, L * sizeof(VEC));
        VEC a, bt;
        NAME(step_in)(g, beta, k, v, q, NULL, base, t, Hn, K, V, &a, &bt, kv, vv, qv, NULL);
        /* o_{t-1} = G_{t-1}^T x_{t-1} read on the way of G's update */
        NAME(update_g)(S + KK, a, bt, kv, vv, x, ov, K, V);
        if (t > 0) {
            for (long l = 0; l < NV; l++) off[l] = (base[l] + (t - 1) * Hn) * V;
            NAME(scatter)(o, ov, off, V, m);
        }
        NAME(update_h)(S, S, a, bt, kv, lam, qv, y0, K);
        NAME(cg)(S, lam, qv, y0, x, w, K, n, eps_abs, rel, tiny, tol2, &cnt, &epsv, NULL, NULL);
    }
    if (Tn > 0) {
        NAME(vecmat)(S + KK, NULL, x, ov, K, V);
        for (long l = 0; l < NV; l++) off[l] = (base[l] + (Tn - 1) * Hn) * V;
        NAME(scatter)(o, ov, off, V, m);
    }
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KK;
    NAME(scatter)(HT, S, off, KK, m);
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KV;
    NAME(scatter)(GT, S + KK, off, KV, m);
    for (long l = 0; l < m; l++) its[pr[l]] += cnt[l];
}

/* the pairs a group runs at once: callers' ranges [p0, p1) start at multiples of it */
long NAME(mesa_lanes)(void) { return NV; }

#define FWD_WS(K, V) ((K) * (K) + (K) * (V) + 8 * (K) + 2 * (V))

void NAME(mesa_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                    const T *restrict g, const T *restrict beta, const T *restrict lamb,
                    const T *restrict H0, const T *restrict G0, T *restrict o,
                    T *restrict HT, T *restrict GT, T *restrict ck, long *restrict its, long Tn,
                    long Hn, long K, long V, long n, double eps_abs, long rel, double tiny,
                    double tol, long p0, long p1) {
    VEC *ws = aligned_alloc(sizeof(VEC), FWD_WS(K, V) * sizeof(VEC));
    for (long p = p0; p < p1; p += NV) {
        const long m = p1 - p < NV ? p1 - p : NV;
#define FWD(KC, VC) NAME(fwd_group)(q, k, v, g, beta, lamb, H0, G0, o, HT, GT, ck, Tn, Hn, KC, \
                                    VC, n, (T)eps_abs, (int)rel, (T)tiny, (T)(tol * tol), p, m, \
                                    ws, its)
        if (K == 32 && V == 32) FWD(32, 32);  /* compiled for the common head size */
        else FWD(K, V);
#undef FWD
    }
    free(ws);
}

/* The backward's pass over columns [jb, jb + cw) of SH (K, K): SH += sum_{l < ran} p_l
   dAp_l^T (the solve's, from the trace), then u += SH k (row sums), dk[j] = (SH^T k)[j],
   *da += <SH, H_{t-1}>, SH *= a; the columns' sums in registers. */
#define CW 8
INLINE void NAME(sh_cols)(VEC *restrict SH, const VEC *restrict Hp, const VEC *restrict tr,
                          long ran, const VEC *restrict kv, VEC a, VEC *restrict u,
                          VEC *restrict dk, VEC *restrict da, long K, long jb, long cw) {
    VEC dkr[CW], dar[CW];
    for (long j = 0; j < cw; j++) dkr[j] = dar[j] = (VEC){0};
    for (long i = 0; i < K; i++) {
        VEC *restrict SHi = SH + i * K + jb;
        const VEC *restrict Hpi = Hp + i * K + jb;
        VEC h[CW];
        for (long j = 0; j < cw; j++) h[j] = SHi[j];
        for (long l = 0; l < ran; l++) {
            const VEC pl = tr[3 * K * l + i];
            const VEC *restrict Dl = tr + 3 * K * l + K + jb;
            for (long j = 0; j < cw; j++) h[j] += pl * Dl[j];
        }
        VEC s = {0};
        const VEC ki = kv[i];
        for (long j = 0; j < cw; j++) {
            s += h[j] * kv[jb + j];
            dkr[j] += h[j] * ki;
            dar[j] += h[j] * Hpi[j];
            SHi[j] = h[j] * a;
        }
        u[i] += s;
    }
    for (long j = 0; j < cw; j++) {
        dk[jb + j] = dkr[j];
        *da += dar[j];
    }
}

/* The same for columns [jb, jb + cw) of SG (K, V): SG += x dout^T, u += SG v, dv[j] =
   (SG^T k)[j], *da += <SG, G_{t-1}>, SG *= a. */
INLINE void NAME(sg_cols)(VEC *restrict SG, const VEC *restrict Gp, const VEC *restrict x,
                          const VEC *restrict dov, const VEC *restrict kv,
                          const VEC *restrict vv, VEC a, VEC *restrict u, VEC *restrict dv,
                          VEC *restrict da, long K, long V, long jb, long cw) {
    VEC dvr[CW], dar[CW];
    for (long j = 0; j < cw; j++) dvr[j] = dar[j] = (VEC){0};
    for (long i = 0; i < K; i++) {
        VEC *restrict SGi = SG + i * V + jb;
        const VEC *restrict Gpi = Gp + i * V + jb;
        const VEC xi = x[i], ki = kv[i];
        VEC s = {0};
        for (long j = 0; j < cw; j++) {
            const VEC gv = SGi[j] + xi * dov[jb + j];
            s += gv * vv[jb + j];
            dvr[j] += gv * ki;
            dar[j] += gv * Gpi[j];
            SGi[j] = gv * a;
        }
        u[i] += s;
    }
    for (long j = 0; j < cw; j++) {
        dv[jb + j] = dvr[j];
        *da += dar[j];
    }
}

/* ws (VEC): (CK + 1) (K K + K V) + 9 K + V + 3 K n + 5 n + CK (2 + 4 K + 2 V) */
INLINE void NAME(bwd_group)(const T *restrict q, const T *restrict k, const T *restrict v,
                            const T *restrict g, const T *restrict beta, const T *restrict lamb,
                            const T *restrict ck, const T *restrict dHT, const T *restrict dGT,
                            const T *restrict dout, T *restrict dq, T *restrict dk,
                            T *restrict dv, T *restrict dg, T *restrict dbeta, T *restrict dlamb,
                            T *restrict dH0, T *restrict dG0, long Tn, long Hn, long K, long V,
                            long n, T eps_abs, int rel, T tiny, T tol2, long p0, long m,
                            VEC *restrict ws) {
    const long nck = (Tn + CK - 1) / CK, KK = K * K, KV = K * V, L = KK + KV;
    /* buf: slot 0 the state entering the block, slot s + 1 that after its step s */
    /* in: per step of the block a, b, k, q, A q, dx (K each), v, dout (V each) */
    const long IN = 2 + 4 * K + 2 * V;
    VEC *restrict buf = ws, *restrict SH = buf + CK * L, *restrict SG = SH + KK,
        *restrict lam = SG + KV, *restrict x = lam + K, *restrict u = x + K,
        *restrict dkv = u + K, *restrict dl = dkv + K, *restrict dqv = dl + K,
        *restrict w = dqv + K, *restrict dvv = w + 3 * K, *restrict tr = dvv + V,
        *restrict sc = tr + 3 * K * n, *restrict in = sc + 5 * n;
    long pr[NV], base[NV], off[NV];
    NAME(lanes)(p0, m, Tn, Hn, pr, base);
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KK;
    if (dHT) NAME(gather)(SH, dHT, off, KK);
    else for (long i = 0; i < KK; i++) SH[i] = (VEC){0};
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KV;
    if (dGT) NAME(gather)(SG, dGT, off, KV);
    else for (long i = 0; i < KV; i++) SG[i] = (VEC){0};
    for (long l = 0; l < NV; l++) off[l] = pr[l] % Hn * K;
    NAME(gather)(lam, lamb, off, K);
    for (long j = 0; j < K; j++) dl[j] = (VEC){0};
    IVEC cnt = {0};
    for (long c = nck - 1; c >= 0; c--) {
        const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
        const VEC *ckc = (const VEC *)ck + (p0 / NV * nck + c) * L;
        /* recompute H_t, G_t, t in the block, with the step's inputs, the solve's first
           A q_t and dx = G_t dout (o_t = G_t^T x), kept per step */
        for (long t = t0; t < t1; t++) {
            VEC *restrict st = in + (t - t0) * IN, *restrict S = buf + (t - t0) * L;
            const VEC *Sp = t > t0 ? S - L : ckc;
            NAME(step_in)(g, beta, k, v, q, dout, base, t, Hn, K, V, st, st + 1, st + 2,
                          st + 2 + 4 * K, st + 2 + K, st + 2 + 4 * K + V);
            NAME(update_h)(Sp, S, st[0], st[1], st + 2, lam, st + 2 + K, st + 2 + 2 * K, K);
            NAME(update_gd)(Sp + KK, S + KK, st[0], st[1], st + 2, st + 2 + 4 * K,
                            st + 2 + 4 * K + V, st + 2 + 3 * K, K, V);
        }
        for (long t = t1 - 1; t >= t0; t--) {
            const VEC *restrict st = in + (t - t0) * IN;
            const VEC a = st[0], bt = st[1], *restrict kv = st + 2, *restrict qv = kv + K,
                      *restrict y0 = qv + K, *restrict dx = y0 + K, *restrict vv = dx + K,
                      *restrict dov = vv + V;
            VEC eps;
            const VEC *restrict Ht = buf + (t - t0) * L, *restrict Hp = t > t0 ? Ht - L : ckc,
                      *restrict Gp = Hp + KK;
            /* x and dq_t, dlamb, SH through the solve */
            const long ran = NAME(cg)(Ht, lam, qv, y0, x, w, K, n, eps_abs, rel, tiny, tol2,
                                      &cnt, &eps, tr, sc);
            NAME(cg_back)(Ht, lam, qv, dx, dqv, dl, K, ran, eps, rel, tr, sc, w);
            /* one pass over the rows of SH, SG: SH += sum_i p_i dAp_i^T (the solve's), SG +=
               x dout^T; then with H_t = a H_{t-1} + b k k^T, G_t = a G_{t-1} + b k v^T:
               u = SH k + SG v (row sums), dk = b (SH^T k + u), dv = b SG^T k, db = k . u,
               da = <SH, H_{t-1}> + <SG, G_{t-1}>; SH, SG carry to step t-1 times a */
            for (long i = 0; i < K; i++) u[i] = (VEC){0};
            VEC da = {0};
            long jb = 0;
            for (; jb + CW <= K; jb += CW)
                NAME(sh_cols)(SH, Hp, tr, ran, kv, a, u, dkv, &da, K, jb, CW);
            for (; jb < K; jb++) NAME(sh_cols)(SH, Hp, tr, ran, kv, a, u, dkv, &da, K, jb, 1);
            for (jb = 0; jb + CW <= V; jb += CW)
                NAME(sg_cols)(SG, Gp, x, dov, kv, vv, a, u, dvv, &da, K, V, jb, CW);
            for (; jb < V; jb++) NAME(sg_cols)(SG, Gp, x, dov, kv, vv, a, u, dvv, &da, K, V, jb, 1);
            for (long j = 0; j < K; j++) dkv[j] = bt * (dkv[j] + u[j]);
            for (long j = 0; j < V; j++) dvv[j] *= bt;
            const VEC db = NAME(ldot)(kv, u, K), dgv = da * a;
            long rk[NV], rv[NV];
            for (long l = 0; l < m; l++) {
                const long row = base[l] + t * Hn;
                dbeta[row] = db[l];
                dg[row] = dgv[l];
                rk[l] = row * K;
                rv[l] = row * V;
            }
            NAME(scatter)(dq, dqv, rk, K, m);
            NAME(scatter)(dk, dkv, rk, K, m);
            NAME(scatter)(dv, dvv, rv, V, m);
        }
    }
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KK;
    NAME(scatter)(dH0, SH, off, KK, m);
    for (long l = 0; l < NV; l++) off[l] = pr[l] * KV;
    NAME(scatter)(dG0, SG, off, KV, m);
    for (long l = 0; l < NV; l++) off[l] = pr[l] * K;
    NAME(scatter)(dlamb, dl, off, K, m);
}

#define BWD_WS(K, V, n) ((CK + 1) * ((K) * (K) + (K) * (V)) + 9 * (K) + (V) \
                         + 3 * (K) * (n) + 5 * (n) + CK * (2 + 4 * (K) + 2 * (V)))

void NAME(mesa_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                    const T *restrict g, const T *restrict beta, const T *restrict lamb,
                    const T *restrict ck, const T *restrict dHT, const T *restrict dGT,
                    const T *restrict dout, T *restrict dq, T *restrict dk, T *restrict dv,
                    T *restrict dg, T *restrict dbeta, T *restrict dlamb, T *restrict dH0,
                    T *restrict dG0, long Tn, long Hn, long K, long V, long n, double eps_abs,
                    long rel, double tiny, double tol, long p0, long p1) {
    VEC *ws = aligned_alloc(sizeof(VEC), BWD_WS(K, V, n) * sizeof(VEC));
    for (long p = p0; p < p1; p += NV) {
        const long m = p1 - p < NV ? p1 - p : NV;
#define BWD(KC, VC) NAME(bwd_group)(q, k, v, g, beta, lamb, ck, dHT, dGT, dout, dq, dk, dv, dg, \
                                    dbeta, dlamb, dH0, dG0, Tn, Hn, KC, VC, n, (T)eps_abs,     \
                                    (int)rel, (T)tiny, (T)(tol * tol), p, m, ws)
        if (K == 32 && V == 32) BWD(32, 32);
        else BWD(K, V);
#undef BWD
    }
    free(ws);
}

#include "tile.h"  /* its names undefined for the next type */
#undef INLINE
#undef JB
#undef CW
#undef IVEC
#undef SEL
#undef FWD_WS
#undef BWD_WS

#endif
