/* atlas_scan.c: a chunk of ATLAS's momenta and memories (ops/atlas.py, atlas_chunked) as
   their recurrences, one (batch x head) row at a time, the packed state (N floats: every
   weight's short-side-first matrix, side by side) in cache.

   mom_fwd: S_t = e_t S_{t-1} - w_t g_t, g_t = sum_{i=t}^{t+W1} u_i v_i^T per weight (the
   window's outer products, u (C+W1, s), v (C+W1, l): weight k's s x l block of the packed
   state), S_{-1} = S0; St (R, C, N) holds every S_t, Slast (R, N) the last again (its own
   output: no select's gradient over St). mom_bwd: from dSt and dSlast the gradients of S0,
   u, v, e, w (the recurrence run back; S_{t-1} read from St).

   read_fwd / read_bwd: the memories M_t = a_t M_{t-1} + c_t U_t (U (R, C, N), M_{-1} = M0)
   with the chunk's reads through them (Ms (R, C, N) kept for the backward, the last M_t
   returned; no (C, N) read gradients stored): z_t = x2 (W0_2 + M2_t), x2 = gelu(h),
   h = q_t (W0_1 + M1_t) (the MLP memory: two weights, I1 x O1 and I2 x O2), or
   z_t = q_t (W0_1 + M1_t) (one weight: I2 = 0). Weight k's block of M is its I x O matrix,
   stored transposed (O x I) where I > O (short side first); W0_k (H, I, O) per head (row r's head: r % H). read_bwd gives
   dW0_k per row (R, I, O): the caller sums the batch.

   grads_fwd / grads_bwd: the Omega rule's window gradients of a chunk (the momenta's pairs
   u, v) at the weights W0 + Pg, Pg packed, and their backward, the weights' gradient added
   into packed buffers (one row's P, P2^T and dP in cache; the products vectorised over their
   output rows).

   Rows [start, stop) of the R. Weight 2 is absent where s2 = 0. */
#ifndef T
#define KERNELS "atlas_scan.c"
#include "each_type.h"
#else

static T NAME(dot)(const T *restrict x, const T *restrict y, long n)
{
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (long i = 0; i < n; i++) acc += x[i] * y[i];
    return acc;
}

/* X += coef u_i v_i^T (one weight's s x l block) */
static void NAME(rank1)(T *X, const T *u, const T *v, long s, long l, long i, T coef)
{
    const T *ui = u + i * s, *vi = v + i * l;
    for (long a = 0; a < s; a++) {
        const T c = coef * ui[a];
        T *x = X + a * l;
#pragma omp simd
        for (long b = 0; b < l; b++) x[b] += c * vi[b];
    }
}

/* g += coef Z_i, Z_i = u_i v_i^T of every weight (packed) */
static void NAME(zadd)(T *g, const T *u1, const T *v1, const T *u2, const T *v2, long s1,
                       long l1, long s2, long l2, long i, T coef)
{
    NAME(rank1)(g, u1, v1, s1, l1, i, coef);
    if (s2)
        NAME(rank1)(g + s1 * l1, u2, v2, s2, l2, i, coef);
}

/* g = g_t = sum_{i=t}^{t+W1} Z_i from g_{t-1} (t > 0: running, one Z in and one out, where
   the window is over 2) or afresh */
static void NAME(window)(T *g, const T *u1, const T *v1, const T *u2, const T *v2, long s1,
                         long l1, long s2, long l2, long N, long t, long W1)
{
    if (t && W1 > 1) {
        NAME(zadd)(g, u1, v1, u2, v2, s1, l1, s2, l2, t + W1, 1);
        NAME(zadd)(g, u1, v1, u2, v2, s1, l1, s2, l2, t - 1, -1);
        return;
    }
    memset(g, 0, N * sizeof(T));
    for (long i = t; i <= t + W1; i++) NAME(zadd)(g, u1, v1, u2, v2, s1, l1, s2, l2, i, 1);
}

void NAME(mom_fwd)(const T *S0, const T *u1, const T *v1, const T *u2, const T *v2,
                   const T *e, const T *w, T *St, T *Slast, long s1, long l1, long s2, long l2,
                   long C, long W1, long start, long stop)
{
    const long N = s1 * l1 + s2 * l2, W = C + W1;
    T *g = malloc(N * sizeof(T));
    for (long r = start; r < stop; r++) {
        const T *uu1 = u1 + r * W * s1, *vv1 = v1 + r * W * l1;
        const T *uu2 = s2 ? u2 + r * W * s2 : 0, *vv2 = s2 ? v2 + r * W * l2 : 0;
        for (long t = 0; t < C; t++) {
            const T *prev = t ? St + (r * C + t - 1) * N : S0 + r * N;
            T *out = St + (r * C + t) * N;
            const T et = e[r * C + t], wt = w[r * C + t];
            NAME(window)(g, uu1, vv1, uu2, vv2, s1, l1, s2, l2, N, t, W1);
#pragma omp simd
            for (long i = 0; i < N; i++) out[i] = et * prev[i] - wt * g[i];
        }
        memcpy(Slast + r * N, St + (r * C + C - 1) * N, N * sizeof(T));
    }
    free(g);
}

/* du_i = H v_i, dv_i = H^T u_i for one weight's block H (s x l) */
static void NAME(uv_bwd)(const T *Hb, const T *u, const T *v, T *du, T *dv, long s, long l,
                         long i)
{
    const T *ui = u + i * s, *vi = v + i * l;
    T *dui = du + i * s, *dvi = dv + i * l;
    memset(dvi, 0, l * sizeof(T));
    for (long a = 0; a < s; a++) {
        const T *row = Hb + a * l, c = ui[a];
        dui[a] = NAME(dot)(row, vi, l);
#pragma omp simd
        for (long b = 0; b < l; b++) dvi[b] += c * row[b];
    }
}

/* Backward: dS_t (dL/dS_t, carried back through e) kept for every t; then
   de_t = <dS_t, S_{t-1}>, dw_t = -<dS_t, g_t> (g_t rebuilt as in the forward) and, with
   H_i = -sum_{t: t <= i <= t + W1} w_t dS_t (a running sum over i), du_i = H_i v_i,
   dv_i = H_i^T u_i. */
void NAME(mom_bwd)(const T *S0, const T *u1, const T *v1, const T *u2, const T *v2,
                   const T *e, const T *w, const T *St, const T *dSt, const T *dSlast, T *dS0,
                   T *du1, T *dv1, T *du2, T *dv2, T *de, T *dw, long s1, long l1, long s2,
                   long l2, long C, long W1, long start, long stop)
{
    const long N = s1 * l1 + s2 * l2, W = C + W1;
    T *dSall = malloc((C + 2) * N * sizeof(T)), *g = dSall + C * N, *Hb = g + N;
    for (long r = start; r < stop; r++) {
        const T *uu1 = u1 + r * W * s1, *vv1 = v1 + r * W * l1;
        const T *uu2 = s2 ? u2 + r * W * s2 : 0, *vv2 = s2 ? v2 + r * W * l2 : 0;
        T *duu1 = du1 + r * W * s1, *dvv1 = dv1 + r * W * l1;
        T *duu2 = s2 ? du2 + r * W * s2 : 0, *dvv2 = s2 ? dv2 + r * W * l2 : 0;
        const T *ee = e + r * C, *ww = w + r * C;
        T *dS = dS0 + r * N;  /* dL/dS_t, carried back; ends as dL/dS0 */
        memcpy(dS, dSlast + r * N, N * sizeof(T));
        for (long t = C - 1; t >= 0; t--) {
            const T *gt = dSt + (r * C + t) * N;
            const T *prev = t ? St + (r * C + t - 1) * N : S0 + r * N;
            T *keep = dSall + t * N, dE = 0;
#pragma omp simd reduction(+ : dE)
            for (long i = 0; i < N; i++) {
                const T d = dS[i] + gt[i];
                keep[i] = d;
                dE += d * prev[i];
                dS[i] = ee[t] * d;
            }
            de[r * C + t] = dE;
        }
        for (long t = 0; t < C; t++) {
            NAME(window)(g, uu1, vv1, uu2, vv2, s1, l1, s2, l2, N, t, W1);
            dw[r * C + t] = -NAME(dot)(dSall + t * N, g, N);
        }
        for (long i = 0; i < W; i++) {
            /* H_i = -sum w_t dS_t over t in [i - W1, i] within [0, C) */
            if (i && W1 > 1) {
                const T *in = i < C ? dSall + i * N : 0;
                const T *out = i - W1 - 1 >= 0 ? dSall + (i - W1 - 1) * N : 0;
                const T wi = in ? ww[i] : 0, wo = out ? ww[i - W1 - 1] : 0;
                if (in) {
#pragma omp simd
                    for (long k = 0; k < N; k++) Hb[k] -= wi * in[k];
                }
                if (out) {
#pragma omp simd
                    for (long k = 0; k < N; k++) Hb[k] += wo * out[k];
                }
            } else {
                memset(Hb, 0, N * sizeof(T));
                for (long t = i - W1 < 0 ? 0 : i - W1; t <= i && t < C; t++) {
                    const T wt = ww[t], *d = dSall + t * N;
#pragma omp simd
                    for (long k = 0; k < N; k++) Hb[k] -= wt * d[k];
                }
            }
            NAME(uv_bwd)(Hb, uu1, vv1, duu1, dvv1, s1, l1, i);
            if (s2)
                NAME(uv_bwd)(Hb + s1 * l1, uu2, vv2, duu2, dvv2, s2, l2, i);
        }
    }
    free(dSall);
}

#define GELU_S ((T)0.7978845608028654)
#define GELU_C ((T)0.044715)

/* ops.memory._gelu's tanh GELU (memory_gelu.c's form): g(z) and g'(z) */
static inline T NAME(gelu1)(T z, T *dg)
{
    T u = GELU_S * (z + GELU_C * z * z * z), e = EXP(2 * u), r = 1 / (e + 1);
    T sech2 = 4 * r * (e * r), t = 1 - 2 * r, du = GELU_S * (1 + 3 * GELU_C * z * z);
    *dg = (T)0.5 * (1 + t) + (T)0.5 * z * sech2 * du;
    return (T)0.5 * z * (1 + t);
}

/* y (+)= x W for W I x O, row-major (tr = 0) or stored as W^T (O x I, tr = 1) */
static void NAME(vecmat)(const T *x, const T *W, long I, long O, int tr, T *y, int acc)
{
    if (!acc)
        memset(y, 0, O * sizeof(T));
    if (tr) {
        for (long o = 0; o < O; o++) y[o] += NAME(dot)(W + o * I, x, I);
    } else {
        for (long i = 0; i < I; i++) {
            const T xi = x[i], *w = W + i * O;
#pragma omp simd
            for (long o = 0; o < O; o++) y[o] += xi * w[o];
        }
    }
}

/* dx (+)= W dy (W as in vecmat) */
static void NAME(matvec)(const T *W, const T *dy, long I, long O, int tr, T *dx, int acc)
{
    if (!acc)
        memset(dx, 0, I * sizeof(T));
    if (tr) {
        for (long o = 0; o < O; o++) {
            const T d = dy[o], *w = W + o * I;
#pragma omp simd
            for (long i = 0; i < I; i++) dx[i] += d * w[i];
        }
    } else {
        for (long i = 0; i < I; i++) dx[i] += NAME(dot)(W + i * O, dy, O);
    }
}

/* D (+)= x dy^T (I x O; stored transposed where tr) */
static void NAME(outer)(const T *x, const T *dy, long I, long O, int tr, T *D, int acc)
{
    if (tr) {
        for (long o = 0; o < O; o++) {
            const T d = dy[o];
            T *r = D + o * I;
            if (acc) {
#pragma omp simd
                for (long i = 0; i < I; i++) r[i] += d * x[i];
            } else {
#pragma omp simd
                for (long i = 0; i < I; i++) r[i] = d * x[i];
            }
        }
    } else {
        for (long i = 0; i < I; i++) {
            const T xi = x[i];
            T *r = D + i * O;
            if (acc) {
#pragma omp simd
                for (long o = 0; o < O; o++) r[o] += xi * dy[o];
            } else {
#pragma omp simd
                for (long o = 0; o < O; o++) r[o] = xi * dy[o];
            }
        }
    }
}

void NAME(read_fwd)(const T *M0, const T *U, const T *a, const T *c, const T *q, const T *W01,
                    const T *W02, T *Ms, T *Mlast, T *z, T *hs, long H, long I1, long O1,
                    long I2, long O2, long C, long start, long stop)
{
    const long N1 = I1 * O1, N = N1 + I2 * O2, Z = I2 ? O2 : O1;
    T *x2 = malloc((O1 + 1) * sizeof(T));
    for (long r = start; r < stop; r++) {
        const T *w1 = W01 + (r % H) * N1, *w2 = I2 ? W02 + (r % H) * I2 * O2 : 0;
        for (long t = 0; t < C; t++) {
            const T *prev = t ? Ms + (r * C + t - 1) * N : M0 + r * N, *ut = U + (r * C + t) * N;
            T *m = Ms + (r * C + t) * N;
            const T at = a[r * C + t], ct = c[r * C + t];
#pragma omp simd
            for (long i = 0; i < N; i++) m[i] = at * prev[i] + ct * ut[i];
            const T *qt = q + (r * C + t) * I1;
            T *h = I2 ? hs + (r * C + t) * O1 : z + (r * C + t) * Z;
            NAME(vecmat)(qt, w1, I1, O1, 0, h, 0);
            NAME(vecmat)(qt, m, I1, O1, I1 > O1, h, 1);
            if (I2) {
                T dg;
                for (long o = 0; o < O1; o++) x2[o] = NAME(gelu1)(h[o], &dg);
                T *zt = z + (r * C + t) * Z;
                NAME(vecmat)(x2, w2, I2, O2, 0, zt, 0);
                NAME(vecmat)(x2, m + N1, I2, O2, I2 > O2, zt, 1);
            }
        }
        memcpy(Mlast + r * N, Ms + (r * C + C - 1) * N, N * sizeof(T));
    }
    free(x2);
}

void NAME(read_bwd)(const T *M0, const T *U, const T *a, const T *c, const T *q, const T *W01,
                    const T *W02, const T *Ms, const T *hs, const T *dz, const T *dMlast,
                    T *dM0, T *dU, T *da, T *dc, T *dq, T *dW1, T *dW2, long H, long I1,
                    long O1, long I2, long O2, long C, long start, long stop)
{
    const long N1 = I1 * O1, N = N1 + I2 * O2, Z = I2 ? O2 : O1;
    T *dL = malloc((N + 3 * O1 + 1) * sizeof(T)), *x2 = dL + N, *g2 = x2 + O1, *dh = g2 + O1;
    for (long r = start; r < stop; r++) {
        const T *w1 = W01 + (r % H) * N1, *w2 = I2 ? W02 + (r % H) * I2 * O2 : 0;
        T *dW1r = dW1 + r * N1, *dW2r = I2 ? dW2 + r * I2 * O2 : 0;
        memset(dW1r, 0, N1 * sizeof(T));
        if (I2)
            memset(dW2r, 0, I2 * O2 * sizeof(T));
        T *dM = dM0 + r * N;  /* dL/dM_t carried back; ends as dL/dM0 */
        memcpy(dM, dMlast + r * N, N * sizeof(T));
        for (long t = C - 1; t >= 0; t--) {
            const T *prev = t ? Ms + (r * C + t - 1) * N : M0 + r * N, *ut = U + (r * C + t) * N;
            const T *m = Ms + (r * C + t) * N, *qt = q + (r * C + t) * I1;
            const T *dzt = dz + (r * C + t) * Z;
            T *dqt = dq + (r * C + t) * I1;
            const T *dy1 = dzt;
            if (I2) {
                const T *h = hs + (r * C + t) * O1;
                for (long o = 0; o < O1; o++) x2[o] = NAME(gelu1)(h[o], g2 + o);
                /* layer 2: dx2 = W2 dz, dM2 = x2 dz^T */
                NAME(matvec)(w2, dzt, I2, O2, 0, dh, 0);
                NAME(matvec)(m + N1, dzt, I2, O2, I2 > O2, dh, 1);
                NAME(outer)(x2, dzt, I2, O2, I2 > O2, dL + N1, 0);
                NAME(outer)(x2, dzt, I2, O2, 0, dW2r, 1);
                for (long o = 0; o < O1; o++) dh[o] *= g2[o];
                dy1 = dh;
            }
            NAME(matvec)(w1, dy1, I1, O1, 0, dqt, 0);
            NAME(matvec)(m, dy1, I1, O1, I1 > O1, dqt, 1);
            NAME(outer)(qt, dy1, I1, O1, I1 > O1, dL, 0);
            NAME(outer)(qt, dy1, I1, O1, 0, dW1r, 1);
            T *du = dU + (r * C + t) * N;
            const T at = a[r * C + t], ct = c[r * C + t];
            T sa = 0, sc = 0;
#pragma omp simd reduction(+ : sa, sc)
            for (long i = 0; i < N; i++) {
                const T d = dM[i] + dL[i];
                du[i] = ct * d;
                sc += d * ut[i];
                sa += d * prev[i];
                dM[i] = at * d;
            }
            da[r * C + t] = sa;
            dc[r * C + t] = sc;
        }
    }
    free(dL);
}

/* g'(z) and g''(z) of the tanh GELU (memory_gelu.c's formulas) */
static inline void NAME(gelu2)(T z, T *d1, T *d2)
{
    T u = GELU_S * (z + GELU_C * z * z * z), e = EXP(2 * u), r = 1 / (e + 1);
    T sech2 = 4 * r * (e * r), t = 1 - 2 * r, du = GELU_S * (1 + 3 * GELU_C * z * z);
    *d1 = (T)0.5 * (1 + t) + (T)0.5 * z * sech2 * du;
    *d2 = sech2 * (du - z * t * du * du + 3 * GELU_S * GELU_C * z * z);
}

/* P (I x O, row-major) = w0 + the weight's block m of a packed state (O x I where I > O) */
static void NAME(weights)(T *P, const T *w0, const T *m, long I, long O)
{
    for (long i = 0; i < I; i++)
        for (long o = 0; o < O; o++)
            P[i * O + o] = w0[i * O + o] + (I > O ? m[o * I + i] : m[i * O + o]);
}

/* the weight's block D of a packed tensor += dP (I x O) */
static void NAME(add_block)(T *D, const T *dP, long I, long O)
{
    for (long i = 0; i < I; i++)
        for (long o = 0; o < O; o++)
            D[I > O ? o * I + i : i * O + o] += dP[i * O + o];
}

/* y += c x (n) */
static inline void NAME(axpy)(T c, const T *restrict x, T *restrict y, long n)
{
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] += c * x[i];
}

/* The Omega rule's window gradients of a chunk at the weights P = W0 + Pg (Pg packed (R,
   N), W0_k (H, I, O)), for the W = C + W1 tokens k (R, W, I1), v (R, W, O2 or O1), gamma
   g (R, W), the memory weight-only and its target v: for the MLP (I2 > 0)
       Z1 = k P1, X2 = gelu(Z1), G = X2 P2 - v, Y = G P2^T, G1 = Y o gelu'(Z1),
   giving Z1, X2, Y, G1, G (R, W, .) and the scaled G1s = g G1, Gs = g G; for the linear
   memory G = k P1 - v and Gs (Z1 .. G1s unused, may be NULL). */
void NAME(grads_fwd)(const T *Pg, const T *W01, const T *W02, const T *k, const T *v,
                     const T *g, T *Z1, T *X2, T *Y, T *G1, T *G, T *G1s, T *Gs, long H, long I1,
                     long O1, long I2, long O2, long W, long start, long stop)
{
    const long N1 = I1 * O1, N = N1 + I2 * O2, Z = I2 ? O2 : O1;
    T *P1 = malloc((N1 + 2 * I2 * O2 + O1 + 1) * sizeof(T)), *P2 = P1 + N1, *P2T = P2 + I2 * O2;
    T *gp = P2T + I2 * O2;
    for (long r = start; r < stop; r++) {
        NAME(weights)(P1, W01 + (r % H) * N1, Pg + r * N, I1, O1);
        if (I2) {
            NAME(weights)(P2, W02 + (r % H) * I2 * O2, Pg + r * N + N1, I2, O2);
            for (long h = 0; h < I2; h++)
                for (long o = 0; o < O2; o++) P2T[o * I2 + h] = P2[h * O2 + o];
        }
        for (long t = 0; t < W; t++) {
            const long rt = r * W + t;
            const T *kt = k + rt * I1, *vt = v + rt * Z, gt = g[rt];
            T *gz = G + rt * Z, *z1 = I2 ? Z1 + rt * O1 : gz;
            memset(z1, 0, O1 * sizeof(T));
            for (long i = 0; i < I1; i++) NAME(axpy)(kt[i], P1 + i * O1, z1, O1);
            if (I2) {
                T *x2 = X2 + rt * O1, *y = Y + rt * O1, *g1 = G1 + rt * O1, *g1s = G1s + rt * O1;
                for (long o = 0; o < O1; o++) x2[o] = NAME(gelu1)(z1[o], gp + o);
                memset(gz, 0, O2 * sizeof(T));
                for (long h = 0; h < I2; h++) NAME(axpy)(x2[h], P2 + h * O2, gz, O2);
                memset(y, 0, O1 * sizeof(T));
                for (long o = 0; o < O2; o++) {
                    gz[o] -= vt[o];
                    NAME(axpy)(gz[o], P2T + o * I2, y, I2);
                }
#pragma omp simd
                for (long o = 0; o < O1; o++) {
                    g1[o] = y[o] * gp[o];
                    g1s[o] = gt * g1[o];
                }
            } else {
                for (long o = 0; o < O1; o++) gz[o] -= vt[o];
            }
            T *gs = Gs + rt * Z;
            for (long o = 0; o < Z; o++) gs[o] = gt * gz[o];
        }
    }
    free(P1);
}

/* grads_fwd's backward from the gradients dX0 (of k as X_0), dX1 (of X2), dG1s, dGs (of the
   outputs; dX1, dG1s NULL for the linear memory): dk, dv, dg (R, W, .), and the weights'
   gradient dP added into the packed dPa and dPb (R, N; dPb may be NULL). */
void NAME(grads_bwd)(const T *Pg, const T *W01, const T *W02, const T *k, const T *g,
                     const T *Z1, const T *X2, const T *Y, const T *G1, const T *G,
                     const T *dX0, const T *dX1, const T *dG1s, const T *dGs, T *dk, T *dv,
                     T *dg, T *dPa, T *dPb, long H, long I1, long O1, long I2, long O2, long W,
                     long start, long stop)
{
    const long N1 = I1 * O1, N2 = I2 * O2, N = N1 + N2, Z = I2 ? O2 : O1;
    T *P1 = malloc((2 * N1 + 3 * N2 + 4 * O1 + Z + 1) * sizeof(T)), *P2 = P1 + N1;
    T *P2T = P2 + N2, *dP1 = P2T + N2, *dP2 = dP1 + N1, *d1 = dP2 + N2, *dY = d1 + O1;
    T *dZ1 = dY + O1, *dX2 = dZ1 + O1, *dG = dX2 + O1;
    for (long r = start; r < stop; r++) {
        NAME(weights)(P1, W01 + (r % H) * N1, Pg + r * N, I1, O1);
        memset(dP1, 0, (N1 + N2) * sizeof(T));
        if (I2) {
            NAME(weights)(P2, W02 + (r % H) * N2, Pg + r * N + N1, I2, O2);
            for (long h = 0; h < I2; h++)
                for (long o = 0; o < O2; o++) P2T[o * I2 + h] = P2[h * O2 + o];
        }
        for (long t = 0; t < W; t++) {
            const long rt = r * W + t;
            const T *kt = k + rt * I1, *gz = G + rt * Z, *dgs = dGs + rt * Z, gt = g[rt];
            T *dvt = dv + rt * Z, *dkt = dk + rt * I1, dgt = NAME(dot)(dgs, gz, Z);
            for (long o = 0; o < Z; o++) dG[o] = gt * dgs[o];
            const T *dy1 = dG;  /* the gradient of k P1 */
            if (I2) {
                const T *z1 = Z1 + rt * O1, *y = Y + rt * O1, *x2 = X2 + rt * O1;
                const T *dg1s = dG1s + rt * O1, *dx1 = dX1 + rt * O1;
                dgt += NAME(dot)(dg1s, G1 + rt * O1, O1);
                for (long o = 0; o < O1; o++) {
                    T d2, dG1 = gt * dg1s[o];
                    NAME(gelu2)(z1[o], d1 + o, &d2);
                    dY[o] = dG1 * d1[o];
                    dZ1[o] = dG1 * y[o] * d2;
                }
                for (long h = 0; h < I2; h++) NAME(axpy)(dY[h], P2 + h * O2, dG, O2);
                memcpy(dX2, dx1, O1 * sizeof(T));
                for (long o = 0; o < O2; o++) NAME(axpy)(dG[o], P2T + o * I2, dX2, I2);
#pragma omp simd
                for (long o = 0; o < O1; o++) dZ1[o] += dX2[o] * d1[o];
                for (long h = 0; h < I2; h++) {
                    NAME(axpy)(dY[h], gz, dP2 + h * O2, O2);
                    NAME(axpy)(x2[h], dG, dP2 + h * O2, O2);
                }
                dy1 = dZ1;
            }
            for (long o = 0; o < Z; o++) dvt[o] = -dG[o];
            dg[rt] = dgt;
            const T *dx0 = dX0 + rt * I1;
            for (long i = 0; i < I1; i++) {
                dkt[i] = dx0[i] + NAME(dot)(dy1, P1 + i * O1, O1);
                NAME(axpy)(kt[i], dy1, dP1 + i * O1, O1);
            }
        }
        NAME(add_block)(dPa + r * N, dP1, I1, O1);
        if (I2)
            NAME(add_block)(dPa + r * N + N1, dP2, I2, O2);
        if (dPb) {
            NAME(add_block)(dPb + r * N, dP1, I1, O1);
            if (I2)
                NAME(add_block)(dPb + r * N + N1, dP2, I2, O2);
        }
    }
    free(P1);
}

#undef GELU_S
#undef GELU_C
#endif
