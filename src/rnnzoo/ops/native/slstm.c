/* The sLSTM step of cells/slstm.py (SLSTMCell.manual_step / manual_back) for the C loop of
   rnnzoo.ops.native.cells (driver: cell_loop.h), forward and backward:

       a = xp_t + h R^T  (R (4H, H) block-diagonal over heads: only its blocks are multiplied)
       log_f = log sigma(a_f) + m,  m' = max(log_f, a_i),  i = exp(a_i - m'),  f = exp(log_f - m')
       c' = f c + i tanh(a_z),  n' = f n + i,  h' = sigma(a_o) c' / n'

   State (h, c, n, m); matrix R; ints [num_heads]. Saved: a_i, log_f, i, f, tz, o, c, n, n',
   q = c'/n', sigma(-a_f); g = d a. Backward as manual_back: a tie in the max splits its
   gradient in half, as autograd's maximum. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "slstm.c"
#include "each_type.h"

#else

#undef LOG1P_TERMS  /* terms of the log1p series: enough for T's precision */
#define LOG1P_TERMS (sizeof(T) == sizeof(float) ? 9 : 18)
#include "cell_loop.h"

/* log sigma(x) = min(x, 0) - log(1 + e), e = exp(-|x|) in (0, 1]: log(1 + e) = 2 atanh(s)
   with s = e / (2 + e) <= 1/3, its odd series summed to the dtype's precision */
static inline T NAME(log_sigmoid)(T x) {
    const T ax = x < 0 ? -x : x, e = EXP(-ax), s = e / (2 + e), s2 = s * s;
    T p = (T)1 / (2 * LOG1P_TERMS - 1);
    for (int k = LOG1P_TERMS - 2; k >= 0; k--) p = p * s2 + (T)1 / (2 * k + 1);
    return (x < 0 ? x : 0) - 2 * s * p;
}

/* out (rows, 4H) = init + h R^T, R's blocks only: head k's rows of every gate read h's
   k-th slice */
static void NAME(block_mm)(T *out, long ldo, const T *init, long ldi, const T *h, long ldh,
                           const T *WT, long H, long heads, long rows) {
    const long dh = H / heads;
    for (long g = 0; g < 4; g++)
        for (long k = 0; k < heads; k++) {
            const long col = g * H + k * dh;
            NAME(mm)(out + col, ldo, init + col, ldi, h + k * dh, ldh, WT + k * dh * 4 * H + col,
                     4 * H, rows, dh, dh);
        }
}

static void NAME(slstm_step)(const NAME(args) *a, long t, long b0, long b1, T *gates) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0], *c = a->state[1], *n = a->state[2], *m = a->state[3];
    NAME(block_mm)(gates, 4 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0],
                   H, a->ints[0], nb);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    for (long b = b0; b < b1; b++) {
        const T *restrict gr = gates + (b - b0) * 4 * H;
        T *restrict hr = h + b * H, *restrict cr = c + b * H, *restrict nr = n + b * H,
          *restrict mr = m + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T ai = gr[k], af = gr[H + k];
            const T log_f = NAME(log_sigmoid)(af) + mr[k];
            const T mn = log_f > ai ? log_f : ai;
            const T i = EXP(ai - mn), f = EXP(log_f - mn);
            const T tz = NAME(tanh_)(gr[2 * H + k]), o = NAME(sigm)(gr[3 * H + k]);
            const T cn = f * cr[k] + i * tz, nn = f * nr[k] + i, q = cn / nn;
            sv[k] = ai; sv[H + k] = log_f; sv[2 * H + k] = i; sv[3 * H + k] = f;
            sv[4 * H + k] = tz; sv[5 * H + k] = o; sv[6 * H + k] = cr[k]; sv[7 * H + k] = nr[k];
            sv[8 * H + k] = nn; sv[9 * H + k] = q; sv[10 * H + k] = NAME(sigm)(-af);
            hr[k] = o * q; cr[k] = cn; nr[k] = nn; mr[k] = mn;
        }
    }
}

static void NAME(slstm_back)(const NAME(args) *a, long t, long b0, long b1, T *unused) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, heads = a->ints[0];
    const long dh_ = H / heads;
    T *dh = a->state[0], *dc = a->state[1], *dn = a->state[2], *dm = a->state[3];
    (void)unused;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict ai = sv, *restrict log_f = sv + H, *restrict i = sv + 2 * H,
                *restrict f = sv + 3 * H, *restrict tz = sv + 4 * H, *restrict o = sv + 5 * H,
                *restrict c = sv + 6 * H, *restrict n = sv + 7 * H, *restrict nn = sv + 8 * H,
                *restrict q = sv + 9 * H, *restrict sf = sv + 10 * H;
        T *restrict dhr = dh + b * H, *restrict dcr = dc + b * H, *restrict dnr = dn + b * H,
          *restrict dmr = dm + b * H;
        T *restrict da = NAME(at)(a->rg[0], a, b, t, 4 * H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dq = dhr[k] * o[k] / nn[k];
            const T dcn = dcr[k] + dq, dnn = dnr[k] - dq * q[k];
            const T d_i = i[k] * (dnn + dcn * tz[k]), d_f = f[k] * (dnn * n[k] + dcn * c[k]);
            const T d_m = dmr[k] - d_i - d_f;
            const T to_f = log_f[k] > ai[k] ? (T)1 : (log_f[k] == ai[k] ? (T)0.5 : (T)0);
            const T d_logf = d_f + d_m * to_f;
            da[k] = d_i + d_m * (1 - to_f);
            da[H + k] = d_logf * sf[k];
            da[2 * H + k] = dcn * i[k] * (1 - tz[k] * tz[k]);
            da[3 * H + k] = dhr[k] * q[k] * o[k] * (1 - o[k]);
            dcr[k] = dcn * f[k]; dnr[k] = dnn * f[k]; dmr[k] = d_logf;
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), da, 4 * H * sizeof(T));
    }
    /* dh_prev = d a R: head k's slice from its blocks of the four gates */
    const T *da0 = NAME(at)(a->rg[0], a, b0, t, 4 * H);
    for (long k = 0; k < heads; k++)
        for (long g = 0; g < 4; g++) {
            const long row = g * H + k * dh_;
            NAME(mm)(dh + b0 * H + k * dh_, H, g ? dh + b0 * H + k * dh_ : 0, H, da0 + row,
                     T_ * 4 * H, a->W[0] + row * H + k * dh_, H, nb, dh_, dh_);
        }
}

void NAME(slstm_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(slstm_step), 4 * d[2]);
}

void NAME(slstm_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(slstm_back), 0);
}

#endif
