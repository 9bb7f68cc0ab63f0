/* The LSTM step of cells/lstm.py's `_LSTM` (peephole_lstm, res_lstm, lstm with peepholes)
   for the C loop of rnnzoo.ops.native.cells (driver: cell_loop.h), forward and backward:

       a = xp_t[:4H] + h W^T;  a_i += p_i c, a_f += p_f c        (peepholes)
       i, f, g = sigma(a_i), sigma(a_f), tanh(a_g),  c' = f c + i g
       a_o += p_o c',  o = sigma(a_o),  tc = tanh(c')
       h' = o tc,  or (res) h' = o u with u = xp_t[4H:] + tc W_proj^T

   State (h, c); matrices W_hh (4H, H) [, W_proj (H, H)]; vectors p_i, p_f, p_o (with
   peepholes). ints: [peepholes, res]. Saved per row and step: c, i, f, g, o, c', tc [, u].
   Backward (as LSTM.manual_back): d a_o = dh (tc | u) sigma'(o), du = dh o,
   dc' = dc + tanh'(du | du W_proj) + p_o d a_o, then the cell update's gradients;
   g_0 = d a (B, T, 4H), g_1 = du; dh_prev = d a W_hh, dc_prev = f dc' + p_i d a_i + p_f d a_f. */

#ifndef T
#include <stdlib.h>
#include <string.h>
#include "exp.h"

#define T float
#define EXP exp_f
#define NAME(f) f##_f32
#include __FILE__
#undef T
#undef EXP
#undef NAME
#define T double
#define EXP exp_d
#define NAME(f) f##_f64
#include __FILE__

#else
#include "cell_loop.h"

static void NAME(lstm_step)(const NAME(args) *a, long t, long b0, long b1, T *gates) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int peep = a->ints[0], res = a->ints[1];
    const long ls = a->keep ? T_ * S : S;           /* saved's row stride */
    T *h = a->state[0], *c = a->state[1];
    NAME(mm)(gates, 4 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0],
             4 * H, nb, H, 4 * H);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    for (long b = b0; b < b1; b++) {
        T *restrict gr = gates + (b - b0) * 4 * H, *restrict cr = c + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict s_c = sv, *restrict s_i = sv + H, *restrict s_f = sv + 2 * H,
          *restrict s_g = sv + 3 * H, *restrict s_o = sv + 4 * H, *restrict s_cn = sv + 5 * H,
          *restrict s_tc = sv + 6 * H;
        const T *restrict pi = peep ? a->vec[0] : a->zeros,
                *restrict pf = peep ? a->vec[1] : a->zeros,
                *restrict po = peep ? a->vec[2] : a->zeros;
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T cp = cr[k];
            const T i = NAME(sigm)(gr[k] + pi[k] * cp), f = NAME(sigm)(gr[H + k] + pf[k] * cp);
            const T g = NAME(tanh_)(gr[2 * H + k]);
            const T cn = f * cp + i * g;
            const T o = NAME(sigm)(gr[3 * H + k] + po[k] * cn), tc = NAME(tanh_)(cn);
            s_c[k] = cp; s_i[k] = i; s_f[k] = f; s_g[k] = g; s_o[k] = o; s_cn[k] = cn;
            s_tc[k] = tc;
            cr[k] = cn;
            hr[k] = o * tc;  /* res: replaced below */
        }
    }
    if (res) {  /* u = xp_t[4H:] + tc W_proj^T, written into saved's 8th slot */
        T *sv0 = NAME(kept)(a->saved, a, b0, t, S);
        NAME(mm)(sv0 + 7 * H, ls, NAME(at)(a->xp, a, b0, t, P) + 4 * H, T_ * P, sv0 + 6 * H, ls,
                 a->WT[1], H, nb, H, H);
        for (long b = b0; b < b1; b++) {
            const T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
            memcpy(NAME(kept)(a->rg[1], a, b, t, H), sv + 6 * H, H * sizeof(T));
            for (long k = 0; k < H; k++) h[b * H + k] = sv[4 * H + k] * sv[7 * H + k];
        }
    }
}

static void NAME(lstm_back)(const NAME(args) *a, long t, long b0, long b1, T *dtc) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int peep = a->ints[0], res = a->ints[1];
    T *dh = a->state[0], *dc = a->state[1];
    T *dao = dtc + nb * H;  /* scratch: d tc (res), d a_o */
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict o = sv + 4 * H, *restrict tc = sv + 6 * H, *restrict u = res ? sv + 7 * H : tc;
        const T *restrict dhr = dh + b * H;
        T *restrict du = res ? NAME(at)(a->rg[1], a, b, t, H) : dtc + (b - b0) * H;
        T *restrict d_o = dao + (b - b0) * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            d_o[k] = dhr[k] * u[k] * o[k] * (1 - o[k]);
            du[k] = dhr[k] * o[k];
        }
        if (res) memcpy(NAME(at)(a->dxp, a, b, t, P) + 4 * H, du, H * sizeof(T));
    }
    if (res)
        NAME(mm)(dtc, H, 0, 0, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict cp = sv, *restrict i = sv + H, *restrict f = sv + 2 * H,
                *restrict g = sv + 3 * H, *restrict cn = sv + 5 * H, *restrict tc = sv + 6 * H;
        const T *restrict dt = dtc + (b - b0) * H, *restrict d_o = dao + (b - b0) * H;
        T *restrict dcr = dc + b * H;
        T *restrict da = NAME(at)(a->rg[0], a, b, t, 4 * H);
        const T *restrict pi = peep ? a->vec[0] : a->zeros,
                *restrict pf = peep ? a->vec[1] : a->zeros,
                *restrict po = peep ? a->vec[2] : a->zeros;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dcn = dcr[k] + dt[k] * (1 - tc[k] * tc[k]) + d_o[k] * po[k];
            const T dai = dcn * g[k] * i[k] * (1 - i[k]), daf = dcn * cp[k] * f[k] * (1 - f[k]);
            da[k] = dai; da[H + k] = daf; da[2 * H + k] = dcn * i[k] * (1 - g[k] * g[k]);
            da[3 * H + k] = d_o[k];
            dcr[k] = dcn * f[k] + dai * pi[k] + daf * pf[k];
        }
        if (peep) {
            T *restrict vi = a->dvec[0] + b * H, *restrict vf = a->dvec[1] + b * H,
              *restrict vo = a->dvec[2] + b * H;
            ELEMENTWISE for (long k = 0; k < H; k++) {
                vi[k] += da[k] * cp[k]; vf[k] += da[H + k] * cp[k]; vo[k] += d_o[k] * cn[k];
            }
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), da, 4 * H * sizeof(T));
    }
    NAME(mm)(dh + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, 4 * H), T_ * 4 * H, a->W[0], H,
             nb, 4 * H, H);
}

void NAME(lstm_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(lstm_step), 4 * d[2]);
}

void NAME(lstm_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(lstm_back), 2 * d[2]);
}

#endif
