/* RWKV's token-shift mixes (Peng et al. 2025, arXiv:2503.14456), forward and backward in one
   pass each over the rows: for each of n learned mixes mu_m (D,),

       x_m = x + mu_m o step,     step = x_{t-1} - x_t

   Backward from the n gradients g_m: dx = sum_m g_m, dstep = sum_m mu_m o g_m and
   dmu_m = sum over rows of g_m o step (this call's rows; the caller sums the calls).
   Layouts (row-major, contiguous): x, step, dx, dstep (rows, D); out, g (n, rows, D) (out:
   one tensor; g: n pointers, any of which may be NULL for a zero gradient); mu, dmu (n, D).
   Each function does the rows [r0, r1). Plain C; compiled by rnnzoo.ops.native.

   RWKV-6's ddlerp mixes x_m = x + step o c_m with a per-row c_m (rows, D) (the low-rank
   mix plus mu_m, made by the caller's products): mixp_fwd writes the n mixes, mixp_bwd
   from their gradients g_m gives dx = sum_m g_m, dstep = sum_m g_m o c_m and the
   gradients of c_m, dc_m = g_m o step (written over g_m where dc_m == g_m), with
   dmu_m = sum over this call's rows of dc_m. p: n pointers to c (fwd); 3 n pointers
   g_0.., c_0.., dc_0.. (bwd), none NULL. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "token_mix.c"
#include "each_type.h"

#else

void NAME(tmix_fwd)(const T *restrict x, const T *restrict step, const T *restrict mu,
                    T *restrict out, long n, long rows, long D, long r0, long r1) {
    for (long m = 0; m < n; m++) {
        const T *restrict mm = mu + m * D;
        for (long r = r0; r < r1; r++) {
            const T *restrict xr = x + r * D, *restrict sr = step + r * D;
            T *restrict o = out + (m * rows + r) * D;
            for (long d = 0; d < D; d++) o[d] = xr[d] + mm[d] * sr[d];
        }
    }
}

void NAME(tmix_bwd)(const T *const *g, const T *restrict step, const T *restrict mu,
                    T *restrict dx, T *restrict dstep, T *restrict dmu, long n, long D,
                    long r0, long r1) {
    memset(dmu, 0, n * D * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const T *restrict sr = step + r * D;
        T *restrict dxr = dx + r * D, *restrict dsr = dstep + r * D;
        for (long d = 0; d < D; d++) { dxr[d] = 0; dsr[d] = 0; }
        for (long m = 0; m < n; m++) {
            if (!g[m]) continue;
            const T *restrict gr = g[m] + r * D, *restrict mm = mu + m * D;
            T *restrict dm = dmu + m * D;
            for (long d = 0; d < D; d++) {
                dxr[d] += gr[d];
                dsr[d] += mm[d] * gr[d];
                dm[d] += gr[d] * sr[d];
            }
        }
    }
}

void NAME(mixp_fwd)(const T *restrict x, const T *restrict step, const T *const *c,
                    T *restrict out, long n, long rows, long D, long r0, long r1) {
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * D, *restrict sr = step + r * D;
        for (long m = 0; m < n; m++) {
            const T *restrict cr = c[m] + r * D;
            T *restrict o = out + (m * rows + r) * D;
            for (long d = 0; d < D; d++) o[d] = xr[d] + sr[d] * cr[d];
        }
    }
}

void NAME(mixp_bwd)(T *const *p, const T *restrict step, T *restrict dx, T *restrict dstep,
                    T *restrict dmu, long n, long D, long r0, long r1) {
    memset(dmu, 0, n * D * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const T *restrict sr = step + r * D;
        T *restrict dxr = dx + r * D, *restrict dsr = dstep + r * D;
        {
            const T *restrict g0 = p[0] + r * D, *restrict c0 = p[n] + r * D;
            for (long d = 0; d < D; d++) { dxr[d] = g0[d]; dsr[d] = g0[d] * c0[d]; }
        }
        for (long m = 1; m < n; m++) {
            const T *restrict gr = p[m] + r * D, *restrict cr = p[n + m] + r * D;
            for (long d = 0; d < D; d++) { dxr[d] += gr[d]; dsr[d] += gr[d] * cr[d]; }
        }
        for (long m = 0; m < n; m++) {
            const T *gr = p[m] + r * D;
            T *dc = p[2 * n + m] + r * D, *restrict dm = dmu + m * D;
#pragma GCC ivdep
            for (long d = 0; d < D; d++) {
                T v = gr[d] * sr[d];
                dc[d] = v;
                dm[d] += v;
            }
        }
    }
}

#endif
