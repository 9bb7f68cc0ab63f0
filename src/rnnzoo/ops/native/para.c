/* ParaRNN's steps (cells/para.py, manual_step / manual_back) for the C loop of
   rnnzoo.ops.native.cells (driver: cell_loop.h): diagonal recurrence, no matrix product.

   paragru. State h; vector a = recurrent (3, H). Saved: h, z, r, n.
       z = sigma(x_z + a_z h),  r = sigma(x_r + a_r h),  n = tanh(x_n + a_n r h),
       h' = h + z (n - h)
   paralstm:
       f = sigma(x_f + a_f h + p_f c),  g = tanh(x_c + a_c h),  c' = g + f (c - g)
       o = sigma(x_o + a_o h + p_o c'),  h' = o tanh(c')

   State (h, c); vectors a = recurrent (3, H), p = peephole (2, H). Saved: h, c, f, g, o,
   c', tc. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "para.c"
#include "each_type.h"

#else
#include "cell_loop.h"

static void NAME(paragru_step)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, P = a->P, S = a->S;
    const T *restrict rec = a->vec[0];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict xp = NAME(at)(a->xp, a, b, t, P);
        T *restrict hr = a->state[0] + b * H, *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T h = hr[k];
            const T z = NAME(sigm)(xp[k] + rec[k] * h), r = NAME(sigm)(xp[H + k] + rec[H + k] * h);
            const T n = NAME(tanh_)(xp[2 * H + k] + rec[2 * H + k] * (r * h));
            sv[k] = h; sv[H + k] = z; sv[2 * H + k] = r; sv[3 * H + k] = n;
            hr[k] = h + z * (n - h);
        }
    }
}

static void NAME(paragru_back)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, P = a->P, S = a->S;
    const T *restrict rec = a->vec[0];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict z = sv + H, *restrict r = sv + 2 * H,
                *restrict n = sv + 3 * H;
        T *restrict dhr = a->state[0] + b * H, *restrict dx = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dr = a->dvec[0] + b * 3 * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dh = dhr[k];
            const T daz = dh * (n[k] - h[k]) * z[k] * (1 - z[k]);
            const T dan = dh * z[k] * (1 - n[k] * n[k]);
            const T dar = dan * rec[2 * H + k] * h[k] * r[k] * (1 - r[k]);
            dx[k] = daz; dx[H + k] = dar; dx[2 * H + k] = dan;
            dr[k] += daz * h[k]; dr[H + k] += dar * h[k]; dr[2 * H + k] += dan * (r[k] * h[k]);
            dhr[k] = dh * (1 - z[k]) + daz * rec[k] + dar * rec[H + k] + dan * rec[2 * H + k] * r[k];
        }
    }
}

void NAME(paragru_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(paragru_step), 0);
}

void NAME(paragru_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(paragru_back), 0);
}

static void NAME(paralstm_step)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, P = a->P, S = a->S;
    const T *restrict rec = a->vec[0], *restrict peep = a->vec[1];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict xp = NAME(at)(a->xp, a, b, t, P);
        T *restrict hr = a->state[0] + b * H, *restrict cr = a->state[1] + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T h = hr[k], c = cr[k];
            const T f = NAME(sigm)(xp[k] + rec[k] * h + peep[k] * c);
            const T g = NAME(tanh_)(xp[H + k] + rec[H + k] * h);
            const T cn = g + f * (c - g);
            const T o = NAME(sigm)(xp[2 * H + k] + rec[2 * H + k] * h + peep[H + k] * cn);
            const T tc = NAME(tanh_)(cn);
            sv[k] = h; sv[H + k] = c; sv[2 * H + k] = f; sv[3 * H + k] = g; sv[4 * H + k] = o;
            sv[5 * H + k] = cn; sv[6 * H + k] = tc;
            hr[k] = o * tc; cr[k] = cn;
        }
    }
}

static void NAME(paralstm_back)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, P = a->P, S = a->S;
    const T *restrict rec = a->vec[0], *restrict peep = a->vec[1];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict c = sv + H, *restrict f = sv + 2 * H,
                *restrict g = sv + 3 * H, *restrict o = sv + 4 * H, *restrict cn = sv + 5 * H,
                *restrict tc = sv + 6 * H;
        T *restrict dhr = a->state[0] + b * H, *restrict dcr = a->state[1] + b * H;
        T *restrict dx = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dr = a->dvec[0] + b * 3 * H, *restrict dp = a->dvec[1] + b * 2 * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dao = dhr[k] * tc[k] * o[k] * (1 - o[k]);
            const T dcn = dcr[k] + dhr[k] * o[k] * (1 - tc[k] * tc[k]) + dao * peep[H + k];
            const T daf = dcn * (c[k] - g[k]) * f[k] * (1 - f[k]);
            const T dag = dcn * (1 - f[k]) * (1 - g[k] * g[k]);
            dx[k] = daf; dx[H + k] = dag; dx[2 * H + k] = dao;
            dr[k] += daf * h[k]; dr[H + k] += dag * h[k]; dr[2 * H + k] += dao * h[k];
            dp[k] += daf * c[k]; dp[H + k] += dao * cn[k];
            dhr[k] = daf * rec[k] + dag * rec[H + k] + dao * rec[2 * H + k];
            dcr[k] = dcn * f[k] + daf * peep[k];
        }
    }
}

void NAME(paralstm_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(paralstm_step), 0);
}

void NAME(paralstm_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(paralstm_back), 0);
}

#endif
