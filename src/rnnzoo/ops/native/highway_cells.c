/* The steps of the highway cells (cells/highway.py) for the C loop of
   rnnzoo.ops.native.cells (driver: cell_loop.h), forward and backward, as their
   manual_step / manual_back:

   rhn, L = depth micro-steps (matrices R_1..R_L (G, H), vectors b_2..b_L; G = 2H coupled,
   3H not; ints [coupled]):
       pre = (xp_t | b_l) + s R_l^T,  hh = tanh(pre[:H]),  (t, c) = sigma(pre[H:])
       s = s + t (hh - s)  (coupled)   or   s = hh t + s c
     saved per micro-step: s, hh, the gates (G - H): G + H floats.
     back: d pre_l = [tanh'(ds t), sigma'(ds (hh - s) | [ds hh, ds s])] = g_l,
     ds = (ds - ds t | ds c) + d pre_l R_l; d b_l += d pre_l; d xp = g_1.
   intersection_rnn (state (y, h), y = state[0] of width I; ints [I]):
       a = xp_t[:2(I + H)] + h W^T,  rd = relu(a[:I]), tr = tanh(a[I:I+H]), sg = sigma(a[I+H:])
       y = rd + g_y (x - rd),  h' = tr + g_h (h - tr),  x = xp_t[2(I + H):]
     saved: h, rd, tr, sg, x (the backward has no xp). */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "highway_cells.c"
#include "each_type.h"

#else
#include "cell_loop.h"

/* ---- rhn ---------------------------------------------------------------------------- */
static void NAME(rhn_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, L = a->nm;
    const long G = a->G[0], W_ = G + H;
    const int coupled = a->ints[0];
    T *s = a->state[0];
    for (long l = 0; l < L; l++) {
        for (long b = b0; b < b1; b++)
            memcpy(NAME(kept)(a->rg[l], a, b, t, H), s + b * H, H * sizeof(T));
        if (l == 0)
            NAME(mm)(pre, G, NAME(at)(a->xp, a, b0, t, P), T_ * P, s + b0 * H, H, a->WT[0], G,
                     nb, H, G);
        else
            NAME(mm)(pre, G, a->vec[l - 1], 0, s + b0 * H, H, a->WT[l], G, nb, H, G);
        for (long b = b0; b < b1; b++) {
            const T *restrict pr = pre + (b - b0) * G;
            T *restrict sv = NAME(kept)(a->saved, a, b, t, S) + l * W_;
            T *restrict sr = s + b * H;
            if (coupled) {
                ELEMENTWISE for (long k = 0; k < H; k++) {
                    const T hh = NAME(tanh_)(pr[k]), tg = NAME(sigm)(pr[H + k]), sp = sr[k];
                    sv[k] = sp; sv[H + k] = hh; sv[2 * H + k] = tg;
                    sr[k] = sp + tg * (hh - sp);
                }
            } else {
                ELEMENTWISE for (long k = 0; k < H; k++) {
                    const T hh = NAME(tanh_)(pr[k]), tg = NAME(sigm)(pr[H + k]);
                    const T cg = NAME(sigm)(pr[2 * H + k]), sp = sr[k];
                    sv[k] = sp; sv[H + k] = hh; sv[2 * H + k] = tg; sv[3 * H + k] = cg;
                    sr[k] = hh * tg + sp * cg;
                }
            }
        }
    }
}

static void NAME(rhn_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, L = a->nm;
    const long G = a->G[0], W_ = G + H;
    const int coupled = a->ints[0];
    T *ds = a->state[0];
    (void)scratch;
    for (long l = L - 1; l >= 0; l--) {
        for (long b = b0; b < b1; b++) {
            const T *restrict sv = NAME(at)(a->saved, a, b, t, S) + l * W_;
            const T *restrict sp = sv, *restrict hh = sv + H, *restrict tg = sv + 2 * H,
                    *restrict cg = coupled ? sv + 2 * H : sv + 3 * H;
            T *restrict dsr = ds + b * H;
            T *restrict g = NAME(at)(a->rg[l], a, b, t, G);
            if (coupled) {
                ELEMENTWISE for (long k = 0; k < H; k++) {
                    const T d_hh = dsr[k] * tg[k];
                    g[k] = d_hh * (1 - hh[k] * hh[k]);
                    g[H + k] = dsr[k] * (hh[k] - sp[k]) * tg[k] * (1 - tg[k]);
                    dsr[k] = dsr[k] - d_hh;
                }
            } else {
                ELEMENTWISE for (long k = 0; k < H; k++) {
                    const T d_hh = dsr[k] * tg[k];
                    g[k] = d_hh * (1 - hh[k] * hh[k]);
                    g[H + k] = dsr[k] * hh[k] * tg[k] * (1 - tg[k]);
                    g[2 * H + k] = dsr[k] * sp[k] * cg[k] * (1 - cg[k]);
                    dsr[k] = dsr[k] * cg[k];
                }
            }
            if (l == 0) {
                memcpy(NAME(at)(a->dxp, a, b, t, P), g, G * sizeof(T));
            } else {
                T *restrict dv = a->dvec[l - 1] + b * G;
                ELEMENTWISE for (long k = 0; k < G; k++) dv[k] += g[k];
            }
        }
        NAME(mm)(ds + b0 * H, H, ds + b0 * H, H, NAME(at)(a->rg[l], a, b0, t, G), T_ * G, a->W[l],
                 H, nb, G, H);
    }
}

void NAME(rhn_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(rhn_step), 3 * d[2]);
}

void NAME(rhn_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(rhn_back), 1);
}

/* ---- intersection_rnn --------------------------------------------------------------- */
static void NAME(irnn_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, I = a->ints[0];
    const long R = 2 * (I + H);
    T *y = a->state[0], *h = a->state[1];
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mm)(pre, R, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0], R, nb, H, R);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * R;
        const T *restrict x = NAME(at)(a->xp, a, b, t, P) + R;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict s_h = sv, *restrict s_rd = sv + H, *restrict s_tr = sv + H + I,
          *restrict s_sg = sv + 2 * H + I, *restrict s_x = sv + 3 * H + 2 * I;
        T *restrict yr = y + b * I, *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < I; k++) {
            const T rd = pr[k] > 0 ? pr[k] : 0, gy = NAME(sigm)(pr[I + H + k]);
            s_rd[k] = rd; s_sg[k] = gy; s_x[k] = x[k];
            yr[k] = rd + gy * (x[k] - rd);
        }
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T tr = NAME(tanh_)(pr[I + k]), gh = NAME(sigm)(pr[2 * I + H + k]);
            s_h[k] = hr[k]; s_tr[k] = tr; s_sg[I + k] = gh;
            hr[k] = tr + gh * (hr[k] - tr);
        }
    }
}

static void NAME(irnn_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, I = a->ints[0];
    const long R = 2 * (I + H);
    T *dy = a->state[0], *dh = a->state[1];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict rd = sv + H, *restrict tr = sv + H + I,
                *restrict sg = sv + 2 * H + I;
        const T *restrict x = sv + 3 * H + 2 * I;
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict da = NAME(at)(a->rg[0], a, b, t, R);
        T *restrict dyr = dy + b * I, *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < I; k++) {
            const T gy = sg[k], dx = dyr[k] * gy;
            da[k] = rd[k] > 0 ? dyr[k] - dx : 0;
            da[I + H + k] = dyr[k] * (x[k] - rd[k]) * gy * (1 - gy);
            dp[R + k] = dx;
            dyr[k] = 0;
        }
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T gh = sg[I + k], dd = dhr[k] * gh;
            da[I + k] = (dhr[k] - dd) * (1 - tr[k] * tr[k]);
            da[2 * I + H + k] = dhr[k] * (h[k] - tr[k]) * gh * (1 - gh);
            dhr[k] = dd;
        }
        memcpy(dp, da, R * sizeof(T));
    }
    NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, R), T_ * R, a->W[0], H,
             nb, R, H);
}

void NAME(irnn_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(irnn_step), 2 * (d[12] + d[2]));
}

void NAME(irnn_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(irnn_back), 1);
}

#endif
