/* The steps of cells/lstm.py's LSTM variants for the C loop of rnnzoo.ops.native.cells
   (driver: cell_loop.h), forward and backward, each the C form of its cell's manual_step /
   manual_back (the equations are in those cells' docstrings).

   lstm (`_LSTM`: peephole_lstm, res_lstm, lstm with peepholes). State (h, c); matrices
   W_hh (4H, H) [, W_proj (H, H)]; vectors p_i, p_f, p_o (with peepholes); ints
   [peepholes, res]. Saved: c, i, f, g, o, c', tc [, u]; g_0 = d a (4H), g_1 = du.
       a = xp_t[:4H] + h W^T;  a_i += p_i c, a_f += p_f c;  c' = f c + i g
       a_o += p_o c',  h' = o tc,  or (res) h' = o u with u = xp_t[4H:] + tc W_proj^T
   wmclstm. State (h, c); matrices W_hh (4H, H), V_if (2H, H), V_o (H, H); vectors b_if,
   b_o (with bias); ints [bias]. Saved: c, i, f, g, o, tc, mem_if (2H), mem_o; g = d a,
   d mem_if (pre-tanh), d mem_o.
       a = xp_t + h W^T,  mem_if = tanh(c V_if^T + b_if),  c' = f c + i g  (i, f read mem_if)
       mem_o = tanh(c' V_o^T + b_o),  o = sigma(a_o + mem_o),  h' = o tanh(c')
   mlstm (multiplicative_lstm). State (h, c); matrices W_hh (H, H), W_mh (4H, H); vector
   b_hh (with bias); ints [bias]. Saved: m_x, hh, c, i, f, g, o, tc; g_0 = d hh, g_1 = d a.
       hh = h W_hh^T + b_hh,  m = xp_t[:H] hh,  a = xp_t[H:] + m W_mh^T,  c' = f c + i g
   mclstm. State (h, v, c); matrix W_hh (5H, H) on v; saved c, f, i, o, m, n, s; g = d a.
       a = xp_t + v W^T,  f, i, o, m = sigma(a[:4H]),  n = tanh(a[4H:]),  c' = f c + i n,
       s = tanh(c'),  h' = o s,  v' = m s
   lstm3 (cifg_lstm, original_lstm: `_ThreeGates`). State (h, c); matrix W_hh (3H, H); ints
   [coupled]. Saved: c, i, g, o, tc; g_0 = d a.
       a = xp_t + h W^T,  c' = c + i (g - c) (coupled) or c + i g,  h' = o tanh(c')
   janet. State c (the output); matrix W_hh (2H, H); floats [beta]. Saved: c, f, keep, tc.
       a = xp_t + c W^T,  f = sigma(a_s),  keep = sigma(beta - a_s),  c' = f c + keep tanh(a_c) */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "lstm_cells.c"
#include "each_type.h"

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

/* -- wmclstm ------------------------------------------------------------------------------ */
static void NAME(wmc_step)(const NAME(args) *a, long t, long b0, long b1, T *scr) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int bias = a->ints[0];
    const long lr = a->keep ? T_ * H : H;  /* rg's row stride */
    T *h = a->state[0], *c = a->state[1];
    T *gates = scr, *mif = scr + nb * 4 * H, *mo = mif + nb * 2 * H;
    NAME(mm)(gates, 4 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0],
             4 * H, nb, H, 4 * H);
    NAME(mm)(mif, 2 * H, bias ? a->vec[0] : 0, 0, c + b0 * H, H, a->WT[1], 2 * H, nb, H, 2 * H);
    for (long b = b0; b < b1; b++) {
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
        memcpy(NAME(kept)(a->rg[1], a, b, t, H), c + b * H, H * sizeof(T));
    }
    for (long b = b0; b < b1; b++) {
        const T *restrict gr = gates + (b - b0) * 4 * H, *restrict mr = mif + (b - b0) * 2 * H;
        T *restrict cr = c + b * H, *restrict cn_out = NAME(kept)(a->rg[2], a, b, t, H);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T mi = NAME(tanh_)(mr[k]), mf = NAME(tanh_)(mr[H + k]);
            const T i = NAME(sigm)(gr[k] + mi), f = NAME(sigm)(gr[H + k] + mf);
            const T g = NAME(tanh_)(gr[2 * H + k]), cp = cr[k];
            const T cn = f * cp + i * g;
            sv[k] = cp; sv[H + k] = i; sv[2 * H + k] = f; sv[3 * H + k] = g;
            sv[6 * H + k] = mi; sv[7 * H + k] = mf;
            cr[k] = cn; cn_out[k] = cn;
        }
    }
    NAME(mm)(mo, H, bias ? a->vec[1] : 0, 0, NAME(kept)(a->rg[2], a, b0, t, H), lr, a->WT[2], H,
             nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict gr = gates + (b - b0) * 4 * H, *restrict mr = mo + (b - b0) * H;
        const T *restrict cr = c + b * H;
        T *restrict hr = h + b * H, *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T m = NAME(tanh_)(mr[k]);
            const T o = NAME(sigm)(gr[3 * H + k] + m), tc = NAME(tanh_)(cr[k]);
            sv[4 * H + k] = o; sv[5 * H + k] = tc; sv[8 * H + k] = m;
            hr[k] = o * tc;
        }
    }
}

static void NAME(wmc_back)(const NAME(args) *a, long t, long b0, long b1, T *dcn) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int bias = a->ints[0];
    T *dh = a->state[0], *dc = a->state[1];
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict o = sv + 4 * H, *restrict tc = sv + 5 * H, *restrict mo = sv + 8 * H;
        const T *restrict dhr = dh + b * H, *restrict dcr = dc + b * H;
        T *restrict da = NAME(at)(a->rg[0], a, b, t, 4 * H), *restrict dmo = NAME(at)(a->rg[2], a, b, t, H);
        T *restrict base = dcn + (b - b0) * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dao = dhr[k] * tc[k] * o[k] * (1 - o[k]);
            da[3 * H + k] = dao;
            dmo[k] = dao * (1 - mo[k] * mo[k]);
            base[k] = dcr[k] + dhr[k] * o[k] * (1 - tc[k] * tc[k]);
        }
    }
    NAME(mm)(dcn, H, dcn, H, NAME(at)(a->rg[2], a, b0, t, H), T_ * H, a->W[2], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict cp = sv, *restrict i = sv + H, *restrict f = sv + 2 * H,
                *restrict g = sv + 3 * H, *restrict mif = sv + 6 * H;
        const T *restrict dn = dcn + (b - b0) * H;
        T *restrict da = NAME(at)(a->rg[0], a, b, t, 4 * H), *restrict dmif = NAME(at)(a->rg[1], a, b, t, 2 * H);
        T *restrict dcr = dc + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dai = dn[k] * g[k] * i[k] * (1 - i[k]), daf = dn[k] * cp[k] * f[k] * (1 - f[k]);
            da[k] = dai; da[H + k] = daf; da[2 * H + k] = dn[k] * i[k] * (1 - g[k] * g[k]);
            dmif[k] = dai * (1 - mif[k] * mif[k]);
            dmif[H + k] = daf * (1 - mif[H + k] * mif[H + k]);
            dcr[k] = dn[k] * f[k];
        }
        if (bias) {
            T *restrict v0 = a->dvec[0] + b * 2 * H, *restrict v1 = a->dvec[1] + b * H;
            const T *restrict dmo = NAME(at)(a->rg[2], a, b, t, H);
            ELEMENTWISE for (long k = 0; k < 2 * H; k++) v0[k] += dmif[k];
            ELEMENTWISE for (long k = 0; k < H; k++) v1[k] += dmo[k];
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), da, 4 * H * sizeof(T));
    }
    NAME(mm)(dh + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, 4 * H), T_ * 4 * H, a->W[0], H,
             nb, 4 * H, H);
    NAME(mm)(dc + b0 * H, H, dc + b0 * H, H, NAME(at)(a->rg[1], a, b0, t, 2 * H), T_ * 2 * H,
             a->W[1], H, nb, 2 * H, H);
}

void NAME(wmc_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(wmc_step), 7 * d[2]);
}

void NAME(wmc_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(wmc_back), d[2]);
}

/* -- multiplicative_lstm ------------------------------------------------------------------ */
static void NAME(mlstm_step)(const NAME(args) *a, long t, long b0, long b1, T *gates) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int bias = a->ints[0];
    const long ls = a->keep ? T_ * S : S, lr = a->keep ? T_ * H : H;
    T *h = a->state[0], *c = a->state[1];
    T *sv0 = NAME(kept)(a->saved, a, b0, t, S);
    for (long b = b0; b < b1; b++) {
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
        memcpy(NAME(kept)(a->saved, a, b, t, S), NAME(at)(a->xp, a, b, t, P), H * sizeof(T));
    }
    /* hh (saved's 2nd slot) = h W_hh^T + b_hh;  m = m_x hh (rg[1]) */
    NAME(mm)(sv0 + H, ls, bias ? a->vec[0] : 0, 0, h + b0 * H, H, a->WT[0], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict m = NAME(kept)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) m[k] = sv[k] * sv[H + k];
    }
    NAME(mm)(gates, 4 * H, NAME(at)(a->xp, a, b0, t, P) + H, T_ * P,
             NAME(kept)(a->rg[1], a, b0, t, H), lr, a->WT[1], 4 * H, nb, H, 4 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict gr = gates + (b - b0) * 4 * H;
        T *restrict cr = c + b * H, *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T i = NAME(sigm)(gr[k]), f = NAME(sigm)(gr[H + k]);
            const T g = NAME(tanh_)(gr[2 * H + k]), o = NAME(sigm)(gr[3 * H + k]), cp = cr[k];
            const T cn = f * cp + i * g, tc = NAME(tanh_)(cn);
            sv[2 * H + k] = cp; sv[3 * H + k] = i; sv[4 * H + k] = f; sv[5 * H + k] = g;
            sv[6 * H + k] = o; sv[7 * H + k] = tc;
            cr[k] = cn; hr[k] = o * tc;
        }
    }
}

static void NAME(mlstm_back)(const NAME(args) *a, long t, long b0, long b1, T *dm) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int bias = a->ints[0];
    T *dh = a->state[0], *dc = a->state[1];
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict cp = sv + 2 * H, *restrict i = sv + 3 * H, *restrict f = sv + 4 * H,
                *restrict g = sv + 5 * H, *restrict o = sv + 6 * H, *restrict tc = sv + 7 * H;
        const T *restrict dhr = dh + b * H;
        T *restrict dcr = dc + b * H, *restrict da = NAME(at)(a->rg[1], a, b, t, 4 * H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dn = dcr[k] + dhr[k] * o[k] * (1 - tc[k] * tc[k]);
            da[k] = dn * g[k] * i[k] * (1 - i[k]);
            da[H + k] = dn * cp[k] * f[k] * (1 - f[k]);
            da[2 * H + k] = dn * i[k] * (1 - g[k] * g[k]);
            da[3 * H + k] = dhr[k] * tc[k] * o[k] * (1 - o[k]);
            dcr[k] = dn * f[k];
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P) + H, da, 4 * H * sizeof(T));
    }
    NAME(mm)(dm, H, 0, 0, NAME(at)(a->rg[1], a, b0, t, 4 * H), T_ * 4 * H, a->W[1], H, nb,
             4 * H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S), *restrict dmr = dm + (b - b0) * H;
        T *restrict dhh = NAME(at)(a->rg[0], a, b, t, H), *restrict dx = NAME(at)(a->dxp, a, b, t, P);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            dhh[k] = dmr[k] * sv[k];
            dx[k] = dmr[k] * sv[H + k];
        }
        if (bias) {
            T *restrict v = a->dvec[0] + b * H;
            ELEMENTWISE for (long k = 0; k < H; k++) v[k] += dhh[k];
        }
    }
    NAME(mm)(dh + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, H), T_ * H, a->W[0], H, nb, H, H);
}

void NAME(mlstm_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(mlstm_step), 4 * d[2]);
}

void NAME(mlstm_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(mlstm_back), d[2]);
}

/* -- cifg_lstm, original_lstm ------------------------------------------------------------- */
static void NAME(lstm3_step)(const NAME(args) *a, long t, long b0, long b1, T *gates) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T cpl = a->ints[0] ? 1 : 0;
    T *h = a->state[0], *c = a->state[1];
    NAME(mm)(gates, 3 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0],
             3 * H, nb, H, 3 * H);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    for (long b = b0; b < b1; b++) {
        const T *restrict gr = gates + (b - b0) * 3 * H;
        T *restrict cr = c + b * H, *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T i = NAME(sigm)(gr[k]), g = NAME(tanh_)(gr[H + k]);
            const T o = NAME(sigm)(gr[2 * H + k]), cp = cr[k];
            const T cn = cp + i * (g - cpl * cp), tc = NAME(tanh_)(cn);
            sv[k] = cp; sv[H + k] = i; sv[2 * H + k] = g; sv[3 * H + k] = o; sv[4 * H + k] = tc;
            cr[k] = cn; hr[k] = o * tc;
        }
    }
}

static void NAME(lstm3_back)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T cpl = a->ints[0] ? 1 : 0;
    T *dh = a->state[0], *dc = a->state[1];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict cp = sv, *restrict i = sv + H, *restrict g = sv + 2 * H,
                *restrict o = sv + 3 * H, *restrict tc = sv + 4 * H;
        const T *restrict dhr = dh + b * H;
        T *restrict dcr = dc + b * H, *restrict da = NAME(at)(a->rg[0], a, b, t, 3 * H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dcn = dcr[k] + dhr[k] * o[k] * (1 - tc[k] * tc[k]);
            da[k] = dcn * (g[k] - cpl * cp[k]) * i[k] * (1 - i[k]);
            da[H + k] = dcn * i[k] * (1 - g[k] * g[k]);
            da[2 * H + k] = dhr[k] * tc[k] * o[k] * (1 - o[k]);
            dcr[k] = dcn * (1 - cpl * i[k]);
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), da, 3 * H * sizeof(T));
    }
    NAME(mm)(dh + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, 3 * H), T_ * 3 * H, a->W[0], H,
             nb, 3 * H, H);
}

void NAME(lstm3_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(lstm3_step), 3 * d[2]);
}

void NAME(lstm3_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(lstm3_back), 0);
}

/* -- janet ------------------------------------------------------------------------------- */
static void NAME(janet_step)(const NAME(args) *a, long t, long b0, long b1, T *gates) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T beta = (T)a->floats[0];
    T *c = a->state[0];
    NAME(mm)(gates, 2 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, c + b0 * H, H, a->WT[0],
             2 * H, nb, H, 2 * H);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), c + b * H, H * sizeof(T));
    for (long b = b0; b < b1; b++) {
        const T *restrict gr = gates + (b - b0) * 2 * H;
        T *restrict cr = c + b * H, *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T f = NAME(sigm)(gr[k]), keep = NAME(sigm)(beta - gr[k]);
            const T tc = NAME(tanh_)(gr[H + k]), cp = cr[k];
            sv[k] = cp; sv[H + k] = f; sv[2 * H + k] = keep; sv[3 * H + k] = tc;
            cr[k] = f * cp + keep * tc;
        }
    }
}

static void NAME(janet_back)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dc = a->state[0];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict cp = sv, *restrict f = sv + H, *restrict keep = sv + 2 * H,
                *restrict tc = sv + 3 * H;
        T *restrict dcr = dc + b * H, *restrict da = NAME(at)(a->rg[0], a, b, t, 2 * H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = dcr[k];
            da[k] = d * cp[k] * f[k] * (1 - f[k]) - d * tc[k] * keep[k] * (1 - keep[k]);
            da[H + k] = d * keep[k] * (1 - tc[k] * tc[k]);
            dcr[k] = d * f[k];
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), da, 2 * H * sizeof(T));
    }
    NAME(mm)(dc + b0 * H, H, dc + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 2 * H), T_ * 2 * H,
             a->W[0], H, nb, 2 * H, H);
}

void NAME(janet_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(janet_step), 2 * d[2]);
}

void NAME(janet_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(janet_back), 0);
}

/* -- mclstm -------------------------------------------------------------------------------- */
static void NAME(mc_step)(const NAME(args) *a, long t, long b0, long b1, T *gates) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0], *v = a->state[1], *c = a->state[2];
    NAME(mm)(gates, 5 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, v + b0 * H, H, a->WT[0],
             5 * H, nb, H, 5 * H);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), v + b * H, H * sizeof(T));
    for (long b = b0; b < b1; b++) {
        const T *restrict gr = gates + (b - b0) * 5 * H;
        T *restrict cr = c + b * H, *restrict hr = h + b * H, *restrict vr = v + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T f = NAME(sigm)(gr[k]), i = NAME(sigm)(gr[H + k]), o = NAME(sigm)(gr[2 * H + k]);
            const T m = NAME(sigm)(gr[3 * H + k]), n = NAME(tanh_)(gr[4 * H + k]), cp = cr[k];
            const T cn = f * cp + i * n, s = NAME(tanh_)(cn);
            sv[k] = cp; sv[H + k] = f; sv[2 * H + k] = i; sv[3 * H + k] = o; sv[4 * H + k] = m;
            sv[5 * H + k] = n; sv[6 * H + k] = s;
            cr[k] = cn; hr[k] = o * s; vr[k] = m * s;
        }
    }
}

static void NAME(mc_back)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0], *dv = a->state[1], *dc = a->state[2];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict cp = sv, *restrict f = sv + H, *restrict i = sv + 2 * H,
                *restrict o = sv + 3 * H, *restrict m = sv + 4 * H, *restrict n = sv + 5 * H,
                *restrict s = sv + 6 * H;
        T *restrict dhr = dh + b * H, *restrict dvr = dv + b * H, *restrict dcr = dc + b * H;
        T *restrict da = NAME(at)(a->rg[0], a, b, t, 5 * H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dcn = dcr[k] + (dhr[k] * o[k] + dvr[k] * m[k]) * (1 - s[k] * s[k]);
            da[k] = dcn * cp[k] * f[k] * (1 - f[k]);
            da[H + k] = dcn * n[k] * i[k] * (1 - i[k]);
            da[2 * H + k] = dhr[k] * s[k] * o[k] * (1 - o[k]);
            da[3 * H + k] = dvr[k] * s[k] * m[k] * (1 - m[k]);
            da[4 * H + k] = dcn * i[k] * (1 - n[k] * n[k]);
            dcr[k] = dcn * f[k];
            dhr[k] = 0;
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), da, 5 * H * sizeof(T));
    }
    NAME(mm)(dv + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, 5 * H), T_ * 5 * H, a->W[0], H,
             nb, 5 * H, H);
}

void NAME(mc_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(mc_step), 5 * d[2]);
}

void NAME(mc_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(mc_back), 0);
}

#endif
