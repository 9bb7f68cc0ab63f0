/* Row kernels of the attention family (rnnzoo.ops.native.attention): the stick-breaking
   weights and the packed quadratic features of Based / ReBased, forward and backward.

   Stick-breaking (Tan et al. 2024, arXiv:2410.17980), one row i of logits z_i. over the keys
   j, with the keys' visibility m_ij (keys in position order):

       A_ij = sigmoid(z_ij) prod_{l > j, m_il} sigmoid(-z_il)      (m_ij; else 0)

   one reverse product along the row (below 1e-30 it is flushed to 0: exp of the log form
   underflows there too, and denormal products are slow), sigmoid(z) and sigmoid(-z) from
   one exp. Backward, dL = dA A:

       dz_ij = dL_ij sigmoid(-z_ij) - sigmoid(z_ij) sum_{j' < j, m_ij'} dL_ij'   (m_ij; else 0)

   one forward sum along the row. Rows past the row's last visible key are zeros without
   being read. Layouts: z, A, dA, dz (N Tq, Tk) rows, N = B H; m (B, Tq, Tk) bytes, shared by
   the H heads of a batch row. Rows [r0, r1) of the N Tq.

   Packed features (ops.feature_maps.packed): x (rows, d) ->
       psi = [1, x, w_p x_a x_b over the pairs p = (a, b), a <= b]   (lin = 1: taylor)
       psi = [w_p x_a x_b]                                           (lin = 0: square)
   and dx from dpsi: dx_c = [dpsi_(1 + c)] + sum_p dpsi_p w_p (x_b [a = c] + x_a [b = c]).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "attention.c"
#include "each_type.h"

#else

static inline long NAME(last_visible)(const unsigned char *restrict m, long Tk) {
    long e = Tk;
    while (e > 0 && !m[e - 1]) e--;
    return e;  /* one past the last visible key, 0 when none */
}

/* beta = sigmoid(z) and om = sigmoid(-z) = e^-z beta from one exp, both to full precision
   (for z << 0 beta is 1 / (1 + e^-z) itself, for z >> 0 om is e^-z beta). */
static inline void NAME(sigmoids)(const T *restrict z, T *restrict beta, T *restrict om, long e) {
    for (long j = 0; j < e; j++) {
        const T t = EXP(-z[j]), b = 1 / (1 + t);
        beta[j] = b;
        om[j] = t * b;
    }
}

void NAME(sb_fwd)(const T *restrict z, const unsigned char *restrict mask, T *restrict A,
                  long H, long Tq, long Tk, long r0, long r1) {
    T *om = malloc(Tk * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const long n = r / Tq, i = r % Tq;
        const unsigned char *restrict m = mask + ((n / H) * Tq + i) * Tk;
        T *restrict a = A + r * Tk;
        const long e = NAME(last_visible)(m, Tk);
        NAME(sigmoids)(z + r * Tk, a, om, e);
        T acc = 1;
        for (long j = e - 1; j >= 0; j--) {
            const int v = m[j];
            a[j] = v ? a[j] * acc : 0;
            acc = v ? acc * om[j] : acc;
            acc = acc < (T)1e-30 ? 0 : acc;
        }
        for (long j = e; j < Tk; j++) a[j] = 0;
    }
    free(om);
}

void NAME(sb_bwd)(const T *restrict z, const unsigned char *restrict mask, const T *restrict A,
                  const T *restrict dA, T *restrict dz, long H, long Tq, long Tk, long r0,
                  long r1) {
    T *om = malloc(Tk * sizeof(T));
    for (long r = r0; r < r1; r++) {
        const long n = r / Tq, i = r % Tq;
        const unsigned char *restrict m = mask + ((n / H) * Tq + i) * Tk;
        const T *restrict ar = A + r * Tk, *restrict g = dA + r * Tk;
        T *restrict d = dz + r * Tk;
        const long e = NAME(last_visible)(m, Tk);
        NAME(sigmoids)(z + r * Tk, d, om, e);
        T before = 0;
        for (long j = 0; j < e; j++) {
            const int v = m[j];
            const T dl = v ? g[j] * ar[j] : 0;
            d[j] = v ? dl * om[j] - d[j] * before : 0;
            before += dl;
        }
        for (long j = e; j < Tk; j++) d[j] = 0;
    }
    free(om);
}

void NAME(pairs_fwd)(const T *restrict x, const T *restrict w, T *restrict out, long d, int lin,
                     long r0, long r1) {
    const long P = d * (d + 1) / 2, F = (lin ? 1 + d : 0) + P;
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * d;
        T *restrict o = out + r * F;
        if (lin) {
            *o++ = 1;
            for (long c = 0; c < d; c++) *o++ = xr[c];
        }
        const T *restrict wp = w;
        for (long a = 0; a < d; a++) {
            const T xa = xr[a];
            const long len = d - a;
            for (long c = 0; c < len; c++) o[c] = wp[c] * xa * xr[a + c];
            o += len;
            wp += len;
        }
    }
}

void NAME(pairs_bwd)(const T *restrict x, const T *restrict w, const T *restrict g, T *restrict dx,
                     long d, int lin, long r0, long r1) {
    const long P = d * (d + 1) / 2, F = (lin ? 1 + d : 0) + P;
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * d, *restrict gr = g + r * F + (lin ? 1 + d : 0);
        T *restrict dr = dx + r * d;
        for (long c = 0; c < d; c++) dr[c] = lin ? g[r * F + 1 + c] : 0;
        const T *restrict wp = w;
        for (long a = 0; a < d; a++) {
            const T xa = xr[a];
            const long len = d - a;
            T acc = 0;
            for (long c = 0; c < len; c++) {
                const T gw = gr[c] * wp[c];
                acc += gw * xr[a + c];          /* d/dx_a of w x_a x_b */
                dr[a + c] += gw * xa;           /* d/dx_b (the diagonal: both, 2 w x_a) */
            }
            dr[a] += acc;
            gr += len;
            wp += len;
        }
    }
}

#endif
