/* The layer-normalised LSTM of cells/normalized.py (LayerNormLSTMCell.manual_step /
   manual_back) for the C loop of rnnzoo.ops.native.cells (driver: cell_loop.h):

       a = xp_t + LN_hh(h W^T),  c' = sigma(f) c + sigma(i) tanh(g),
       h' = sigma(o) tanh(LN_c(c'))
   LN(x) = (x - mean) / sqrt(var + eps) * w + b over the row (biased var).

   State (h, c); matrix W_hh (4H, H); vectors w_hh, b_hh (4H), w_c, b_c (H); floats
   [eps_hh, eps_c]. Saved: c, i, f, g, o, t = tanh(LN_c(c')), xhat_h (4H), xhat_c (H),
   1/std_hh, 1/std_c; g = d (h W^T). The norms' backward: with u = dy w,
   dx = (u - mean(u) - xhat mean(u xhat)) / std, dw += dy xhat, db += dy.

   ln_gru (LayerNormGRUCell): a_h = LN_hh(h W^T) (3H),  r, z = sigma(xp[:2H] + a_h[:2H]),
       n = tanh(xp[2H:] + r a_h[2H:]),  h' = n + z (h - n).
   State h; matrix W_hh (3H, H); vectors w_hh, b_hh (3H); floats [eps]. Saved: h, r, z, n,
   a_h[2H:], xhat (3H), 1/std; g = d (h W^T). */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "normalized.c"
#include "each_type.h"

#else
#include "cell_loop.h"

/* xhat = (x - mean) / sqrt(var + eps) over n entries; returns 1 / sqrt(var + eps) */
static T NAME(normalise)(T *restrict xhat, const T *restrict x, long n, double eps) {
    const T mean = NAME(dot)(x, 0, n) / n;
    ELEMENTWISE for (long k = 0; k < n; k++) xhat[k] = x[k] - mean;
    const T r = (T)(1 / sqrt((double)(NAME(dot)(xhat, xhat, n) / n) + eps));
    ELEMENTWISE for (long k = 0; k < n; k++) xhat[k] *= r;
    return r;
}

/* dx (n) from dy: u = dy w (into dx first), dw += dy xhat, db += dy */
static void NAME(norm_back)(T *restrict dx, const T *restrict dy, const T *restrict xhat, T r,
                            const T *restrict w, T *restrict dw, T *restrict db, long n) {
    ELEMENTWISE for (long k = 0; k < n; k++) {
        dx[k] = dy[k] * w[k];
        dw[k] += dy[k] * xhat[k];
        db[k] += dy[k];
    }
    const T m1 = NAME(dot)(dx, 0, n) / n, m2 = NAME(dot)(dx, xhat, n) / n;
    ELEMENTWISE for (long k = 0; k < n; k++) dx[k] = r * (dx[k] - m1 - xhat[k] * m2);
}

static void NAME(ln_lstm_step)(const NAME(args) *a, long t, long b0, long b1, T *ah) {
    const long H = a->H, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0], *c = a->state[1];
    const T *restrict wh = a->vec[0], *restrict bh = a->vec[1], *restrict wc = a->vec[2],
            *restrict bc = a->vec[3];
    NAME(mm)(ah, 4 * H, 0, 0, h + b0 * H, H, a->WT[0], 4 * H, nb, H, 4 * H);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    for (long b = b0; b < b1; b++) {
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict xh = sv + 6 * H, *restrict xc = sv + 10 * H;
        const T *restrict xp = NAME(at)(a->xp, a, b, t, P);
        T *restrict cr = c + b * H, *restrict hr = h + b * H;
        sv[11 * H] = NAME(normalise)(xh, ah + (b - b0) * 4 * H, 4 * H, a->floats[0]);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T i = NAME(sigm)(xp[k] + xh[k] * wh[k] + bh[k]);
            const T f = NAME(sigm)(xp[H + k] + xh[H + k] * wh[H + k] + bh[H + k]);
            const T g = NAME(tanh_)(xp[2 * H + k] + xh[2 * H + k] * wh[2 * H + k] + bh[2 * H + k]);
            const T o = NAME(sigm)(xp[3 * H + k] + xh[3 * H + k] * wh[3 * H + k] + bh[3 * H + k]);
            sv[k] = cr[k]; sv[H + k] = i; sv[2 * H + k] = f; sv[3 * H + k] = g; sv[4 * H + k] = o;
            cr[k] = f * cr[k] + i * g;
        }
        sv[11 * H + 1] = NAME(normalise)(xc, cr, H, a->floats[1]);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T tt = NAME(tanh_)(xc[k] * wc[k] + bc[k]);
            sv[5 * H + k] = tt;
            hr[k] = sv[4 * H + k] * tt;
        }
    }
}

static void NAME(ln_lstm_back)(const NAME(args) *a, long t, long b0, long b1, T *scr) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0], *dc = a->state[1];
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict cp = sv, *restrict i = sv + H, *restrict f = sv + 2 * H,
                *restrict g = sv + 3 * H, *restrict o = sv + 4 * H, *restrict tt = sv + 5 * H;
        T *restrict dnc = scr + (b - b0) * 2 * H, *restrict d_c = dnc + H;
        T *restrict dhr = dh + b * H, *restrict dcr = dc + b * H;
        T *restrict da = NAME(at)(a->dxp, a, b, t, P);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            dnc[k] = dhr[k] * o[k] * (1 - tt[k] * tt[k]);
            da[3 * H + k] = dhr[k] * tt[k] * o[k] * (1 - o[k]);
        }
        NAME(norm_back)(d_c, dnc, sv + 10 * H, sv[11 * H + 1], a->vec[2], a->dvec[2] + b * H,
                        a->dvec[3] + b * H, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dcn = dcr[k] + d_c[k];
            da[k] = dcn * g[k] * i[k] * (1 - i[k]);
            da[H + k] = dcn * cp[k] * f[k] * (1 - f[k]);
            da[2 * H + k] = dcn * i[k] * (1 - g[k] * g[k]);
            dcr[k] = dcn * f[k];
        }
        NAME(norm_back)(NAME(at)(a->rg[0], a, b, t, 4 * H), da, sv + 6 * H, sv[11 * H], a->vec[0],
                        a->dvec[0] + b * 4 * H, a->dvec[1] + b * 4 * H, 4 * H);
    }
    NAME(mm)(dh + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, 4 * H), T_ * 4 * H, a->W[0], H,
             nb, 4 * H, H);
}

static void NAME(ln_gru_step)(const NAME(args) *a, long t, long b0, long b1, T *ah) {
    const long H = a->H, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    const T *restrict w = a->vec[0], *restrict bb = a->vec[1];
    NAME(mm)(ah, 3 * H, 0, 0, h + b0 * H, H, a->WT[0], 3 * H, nb, H, 3 * H);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    for (long b = b0; b < b1; b++) {
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S), *restrict xh = sv + 5 * H;
        const T *restrict xp = NAME(at)(a->xp, a, b, t, P);
        T *restrict hr = h + b * H;
        sv[8 * H] = NAME(normalise)(xh, ah + (b - b0) * 3 * H, 3 * H, a->floats[0]);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T r = NAME(sigm)(xp[k] + xh[k] * w[k] + bb[k]);
            const T z = NAME(sigm)(xp[H + k] + xh[H + k] * w[H + k] + bb[H + k]);
            const T an = xh[2 * H + k] * w[2 * H + k] + bb[2 * H + k];
            const T n = NAME(tanh_)(xp[2 * H + k] + r * an), hp = hr[k];
            sv[k] = hp; sv[H + k] = r; sv[2 * H + k] = z; sv[3 * H + k] = n; sv[4 * H + k] = an;
            hr[k] = n + z * (hp - n);
        }
    }
}

static void NAME(ln_gru_back)(const NAME(args) *a, long t, long b0, long b1, T *scr) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict hp = sv, *restrict r = sv + H, *restrict z = sv + 2 * H,
                *restrict n = sv + 3 * H, *restrict an = sv + 4 * H;
        T *restrict dhr = dh + b * H, *restrict dx = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dy = scr + (b - b0) * 3 * H;  /* the gradient at LN_hh's output */
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dn = dhr[k] * (1 - z[k]) * (1 - n[k] * n[k]);
            const T dr = dn * an[k] * r[k] * (1 - r[k]);
            const T dz = dhr[k] * (hp[k] - n[k]) * z[k] * (1 - z[k]);
            dx[k] = dr; dx[H + k] = dz; dx[2 * H + k] = dn;
            dy[k] = dr; dy[H + k] = dz; dy[2 * H + k] = dn * r[k];
            dhr[k] = dhr[k] * z[k];
        }
        NAME(norm_back)(NAME(at)(a->rg[0], a, b, t, 3 * H), dy, sv + 5 * H, sv[8 * H], a->vec[0], a->dvec[0] + b * 3 * H,
                        a->dvec[1] + b * 3 * H, 3 * H);
    }
    NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 3 * H), T_ * 3 * H,
             a->W[0], H, nb, 3 * H, H);
}

void NAME(ln_gru_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(ln_gru_step), 3 * d[2]);
}

void NAME(ln_gru_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(ln_gru_back), 3 * d[2]);
}

void NAME(ln_lstm_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(ln_lstm_step), 4 * d[2]);
}

void NAME(ln_lstm_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(ln_lstm_back), 2 * d[2]);
}

#endif
