/* atlas_scan.c: a chunk of ATLAS's momenta and memories (ops/atlas.py, atlas_chunked) as
   their recurrences, one (batch x head) row at a time, the packed state (N floats: every
   weight's short-side-first matrix, side by side) in cache.

   mom_fwd: S_t = e_t S_{t-1} - w_t g_t, g_t = sum_{i=t}^{t+W1} u_i v_i^T per weight (the
   window's outer products, u (C+W1, s), v (C+W1, l): weight k's s x l block of the packed
   state), S_{-1} = S0; St (R, C, N) holds every S_t. mom_bwd: from dSt the gradients of S0,
   u, v, e, w (the recurrence run back; S_{t-1} read from St).

   mem_fwd: M_t = a_t M_{t-1} + c_t U_t (U (R, C, N)), M_{-1} = M0; Ms (R, C, N).
   mem_bwd: the gradients of M0, U, a, c from dMs.

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

/* out = e prev - w sum_i u_i v_i^T over the window i = t .. t + W1 (one weight's block) */
static void NAME(mom_block)(const T *prev, T *out, const T *u, const T *v, long s, long l,
                            long t, long W1, T e, T w)
{
    for (long a = 0; a < s; a++) {
        T *o = out + a * l;
        const T *p = prev + a * l;
#pragma omp simd
        for (long b = 0; b < l; b++) o[b] = e * p[b];
        for (long i = t; i <= t + W1; i++) {
            const T coef = w * u[i * s + a], *vi = v + i * l;
#pragma omp simd
            for (long b = 0; b < l; b++) o[b] -= coef * vi[b];
        }
    }
}

void NAME(mom_fwd)(const T *S0, const T *u1, const T *v1, const T *u2, const T *v2,
                   const T *e, const T *w, T *St, long s1, long l1, long s2, long l2, long C,
                   long W1, long start, long stop)
{
    const long N = s1 * l1 + s2 * l2, W = C + W1;
    for (long r = start; r < stop; r++) {
        const T *uu1 = u1 + r * W * s1, *vv1 = v1 + r * W * l1;
        const T *uu2 = s2 ? u2 + r * W * s2 : 0, *vv2 = s2 ? v2 + r * W * l2 : 0;
        for (long t = 0; t < C; t++) {
            const T *prev = t ? St + (r * C + t - 1) * N : S0 + r * N;
            T *out = St + (r * C + t) * N;
            const T et = e[r * C + t], wt = w[r * C + t];
            NAME(mom_block)(prev, out, uu1, vv1, s1, l1, t, W1, et, wt);
            if (s2)
                NAME(mom_block)(prev + s1 * l1, out + s1 * l1, uu2, vv2, s2, l2, t, W1, et, wt);
        }
    }
}

/* One weight's block of step t backward: dS is dL/dS_t (this block); adds to du, dv;
   returns sum_i u_i^T dS v_i (= <dS, g_t>). */
static T NAME(mom_block_bwd)(const T *dS, const T *u, const T *v, T *du, T *dv, long s,
                             long l, long t, long W1, T w)
{
    T total = 0;
    for (long i = t; i <= t + W1; i++) {
        const T *ui = u + i * s, *vi = v + i * l;
        T *dui = du + i * s, *dvi = dv + i * l;
        for (long a = 0; a < s; a++) {
            const T *row = dS + a * l;
            const T y = NAME(dot)(row, vi, l), c = -w * ui[a];
            total += ui[a] * y;
            dui[a] -= w * y;
#pragma omp simd
            for (long b = 0; b < l; b++) dvi[b] += c * row[b];
        }
    }
    return total;
}

void NAME(mom_bwd)(const T *S0, const T *u1, const T *v1, const T *u2, const T *v2,
                   const T *e, const T *w, const T *St, const T *dSt, T *dS0, T *du1, T *dv1,
                   T *du2, T *dv2, T *de, T *dw, long s1, long l1, long s2, long l2, long C,
                   long W1, long start, long stop)
{
    const long N = s1 * l1 + s2 * l2, W = C + W1;
    for (long r = start; r < stop; r++) {
        const T *uu1 = u1 + r * W * s1, *vv1 = v1 + r * W * l1;
        const T *uu2 = s2 ? u2 + r * W * s2 : 0, *vv2 = s2 ? v2 + r * W * l2 : 0;
        T *duu1 = du1 + r * W * s1, *dvv1 = dv1 + r * W * l1;
        T *duu2 = s2 ? du2 + r * W * s2 : 0, *dvv2 = s2 ? dv2 + r * W * l2 : 0;
        memset(duu1, 0, W * s1 * sizeof(T));
        memset(dvv1, 0, W * l1 * sizeof(T));
        if (s2) {
            memset(duu2, 0, W * s2 * sizeof(T));
            memset(dvv2, 0, W * l2 * sizeof(T));
        }
        T *dS = dS0 + r * N;  /* dL/dS_t, carried back; ends as dL/dS0 */
        memset(dS, 0, N * sizeof(T));
        for (long t = C - 1; t >= 0; t--) {
            const T *g = dSt + (r * C + t) * N;
            const T *prev = t ? St + (r * C + t - 1) * N : S0 + r * N;
            const T et = e[r * C + t], wt = w[r * C + t];
            T dE = 0;
#pragma omp simd reduction(+ : dE)
            for (long i = 0; i < N; i++) {
                dS[i] += g[i];
                dE += dS[i] * prev[i];
            }
            T gw = NAME(mom_block_bwd)(dS, uu1, vv1, duu1, dvv1, s1, l1, t, W1, wt);
            if (s2)
                gw += NAME(mom_block_bwd)(dS + s1 * l1, uu2, vv2, duu2, dvv2, s2, l2, t, W1, wt);
            de[r * C + t] = dE;
            dw[r * C + t] = -gw;
#pragma omp simd
            for (long i = 0; i < N; i++) dS[i] *= et;
        }
    }
}

void NAME(mem_fwd)(const T *M0, const T *U, const T *a, const T *c, T *Ms, long N, long C,
                   long start, long stop)
{
    for (long r = start; r < stop; r++)
        for (long t = 0; t < C; t++) {
            const T *prev = t ? Ms + (r * C + t - 1) * N : M0 + r * N, *ut = U + (r * C + t) * N;
            T *out = Ms + (r * C + t) * N;
            const T at = a[r * C + t], ct = c[r * C + t];
#pragma omp simd
            for (long i = 0; i < N; i++) out[i] = at * prev[i] + ct * ut[i];
        }
}

void NAME(mem_bwd)(const T *M0, const T *U, const T *a, const T *c, const T *Ms, const T *dMs,
                   T *dM0, T *dU, T *da, T *dc, long N, long C, long start, long stop)
{
    for (long r = start; r < stop; r++) {
        T *dM = dM0 + r * N;
        memset(dM, 0, N * sizeof(T));
        for (long t = C - 1; t >= 0; t--) {
            const T *prev = t ? Ms + (r * C + t - 1) * N : M0 + r * N, *ut = U + (r * C + t) * N;
            const T *g = dMs + (r * C + t) * N;
            T *du = dU + (r * C + t) * N;
            const T at = a[r * C + t], ct = c[r * C + t];
            T sa = 0, sc = 0;
#pragma omp simd reduction(+ : sa, sc)
            for (long i = 0; i < N; i++) {
                const T d = dM[i] + g[i];
                du[i] = ct * d;
                sc += d * ut[i];
                sa += d * prev[i];
                dM[i] = at * d;
            }
            da[r * C + t] = sa;
            dc[r * C + t] = sc;
        }
    }
}
#endif
