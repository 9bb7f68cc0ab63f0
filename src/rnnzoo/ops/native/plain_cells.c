/* The steps of the small gated cells for the C loop of rnnzoo.ops.native.cells (driver:
   cell_loop.h), forward and backward, as their manual_step / manual_back. d = dh_t below.

   gate2 (ugrnn, ligru; cells/minimal_gated.py), ints [order, act]: a = xp_t + h W^T (2H),
       order 0 (ugrnn) a = [a_c | a_g], 1 (ligru) [a_g | a_c];  c = tanh(a_c) (act 0) or
       relu(a_c) (1),  g = sigma(a_g),  h' = c + g (h - c);  saved h, c, g.
   gasym (gated_antisymmetric_rnn, cells/antisymmetric.py), floats [epsilon]: q = h A^T (H),
       z = sigma(xp_t[:H] + q), u = tanh(xp_t[H:] + q),  h' = h + epsilon z u; the product's
       gradient is d a_z + d a_u (A once, where the reference multiplies by [A; A]);
       saved z, u.
   nbr (cells/bistable.py): xp_t = [2 a_x | c_x | u_x],  (s, c) = sigma(xp_t[:2H] + h M^T),
       M = [2 W_a; W_c] (2H, H),  n = tanh(u_x + 2 s h),  h' = n + c (h - n);
       saved h, s, c, n.
   br (cells/bistable.py), no matrix, vectors (2 w_a, w_c): s = sigma(xp_t[:H] + 2 w_a h),
       c = sigma(xp_t[H:2H] + w_c h), then as nbr.
   fastgrnn (cells/fastrnn.py), ints [gate act, update act] (0 sigma, 1 tanh, 2 relu), vectors
       (zeta, zeta + nu), each one value: q = h U^T, z = act_g(xp_t[:H] + q),
       n = act_u(xp_t[H:] + q),  h' = (zeta + nu) n + z (h - zeta n);  saved h, z, n.
   mgu (cells/minimal_gated.py), matrices U_f, U_h: f = sigma(xp_t[:H] + h U_f^T),
       c = tanh(xp_t[H:] + (f h) U_h^T),  h' = h + f (c - h);  saved h, f, c.
   mix (star, sgrn, lightru; cells/minimal_gated.py), ints [flip, squash]:
       xp_t = [candidate z | gate input],  k = sigma(+-(xp_t[H:] + h W^T)) (- with flip),
       m = h + k (z - h),  h' = tanh(m) (squash) or m;  saved h, k, z, h'.
   atr (cells/minimal_gated.py): xp_t = [p + b | p - b | p],  q = h U^T,
       i = sigma(xp_t[:H] + q),  f = sigma(xp_t[H:2H] - q),  h' = i p + f h;  the product's
       gradient d a_i - d a_f (U once, where the reference multiplies by [U; -U]);
       saved h, i, f, p.
   cornn (cells/oscillator.py), state (y, z), matrices W_hh, W_ch, floats [dt, A, B, C]:
       f = tanh(xp_t + y W_hh^T + z W_ch^T),  z' = A z + B y + C f,  y' = y + dt z'
       (implicit damping A = C / dt = 1 / (1 + dt epsilon), B = -A dt gamma; explicit
       A = 1 - dt epsilon, B = -dt gamma, C = dt);  saved f.
   The products run on the matrices packed once per call (cell_loop.h's drive_packed, mmp). */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "plain_cells.c"
#include "each_type.h"

#else
#include "cell_loop.h"

/* kind 0 sigma, 1 tanh, 2 relu; the derivative from the output */
static inline T NAME(act)(T x, long kind) {
    return kind == 0 ? NAME(sigm)(x) : kind == 1 ? NAME(tanh_)(x) : (x > 0 ? x : 0);
}
static inline T NAME(act_d)(T y, long kind) {
    return kind == 0 ? y * (1 - y) : kind == 1 ? 1 - y * y : (T)(y > 0);
}

/* rg[0] (kept) = state[0] at step t, rows [b0, b1) */
static void NAME(keep_h)(const NAME(args) *a, long t, long b0, long b1, long j, const T *h) {
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[j], a, b, t, a->H), h + b * a->H, a->H * sizeof(T));
}

/* ---- gate2: ugrnn, ligru ------------------------------------------------------------ */
static void NAME(gate2_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const long ci = a->ints[0] ? H : 0, gi = H - ci, act = a->ints[1] ? 2 : 1;
    T *h = a->state[0];
    NAME(keep_h)(a, t, b0, b1, 0, h);
    NAME(mmp)(pre, 2 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0],
              nb, H, 2 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 2 * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T c = NAME(act)(pr[ci + k], act), g = NAME(sigm)(pr[gi + k]);
            sv[k] = hr[k]; sv[H + k] = c; sv[2 * H + k] = g;
            hr[k] = c + g * (hr[k] - c);
        }
    }
}

static void NAME(gate2_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const long ci = a->ints[0] ? H : 0, gi = H - ci, act = a->ints[1] ? 2 : 1;
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict c = sv + H, *restrict g = sv + 2 * H;
        T *restrict da = NAME(at)(a->rg[0], a, b, t, 2 * H);
        T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = dhr[k];
            da[ci + k] = d * (1 - g[k]) * NAME(act_d)(c[k], act);
            da[gi + k] = d * (h[k] - c[k]) * g[k] * (1 - g[k]);
            dhr[k] = d * g[k];
        }
        if (a->rg[0] != a->dxp)  /* one buffer with g_is_dxp */
            memcpy(NAME(at)(a->dxp, a, b, t, P), da, 2 * H * sizeof(T));
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 2 * H), T_ * 2 * H,
              a->W[0], nb, 2 * H, H);
}

void NAME(gate2_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(gate2_step), 2 * d[2], 0);
}

void NAME(gate2_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(gate2_back), 1, 1);
}

/* ---- gasym: gated_antisymmetric_rnn -------------------------------------------------- */
static void NAME(gasym_step)(const NAME(args) *a, long t, long b0, long b1, T *q) {
    const long H = a->H, P = a->P, S = a->S, nb = b1 - b0;
    const T eps = (T)a->floats[0];
    T *h = a->state[0];
    NAME(keep_h)(a, t, b0, b1, 0, h);
    NAME(mmp)(q, H, 0, 0, h + b0 * H, H, a->WT[0], nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict qr = q + (b - b0) * H, *restrict x = NAME(at)(a->xp, a, b, t, P);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T z = NAME(sigm)(x[k] + qr[k]), u = NAME(tanh_)(x[H + k] + qr[k]);
            sv[k] = z; sv[H + k] = u;
            hr[k] += eps * z * u;
        }
    }
}

static void NAME(gasym_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T eps = (T)a->floats[0];
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict z = sv, *restrict u = sv + H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, H), *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        const T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T de = dhr[k] * eps;
            const T dz = de * u[k] * z[k] * (1 - z[k]), du = de * z[k] * (1 - u[k] * u[k]);
            dp[k] = dz; dp[H + k] = du; g[k] = dz + du;
        }
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H,
              a->W[0], nb, H, H);
}

void NAME(gasym_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(gasym_step), d[2], 0);
}

void NAME(gasym_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(gasym_back), 1, 1);
}

/* ---- nbr, br ------------------------------------------------------------------------ */
/* the bistable update from the gates' pre-activations pa, pc (row b) */
static inline void NAME(bistable_row)(const T *restrict pa, const T *restrict pc,
                                      const T *restrict u, T *restrict hr, T *restrict sv, long H) {
    ELEMENTWISE for (long k = 0; k < H; k++) {
        const T s = NAME(sigm)(pa[k]), c = NAME(sigm)(pc[k]);
        const T n = NAME(tanh_)(u[k] + 2 * s * hr[k]);
        sv[k] = hr[k]; sv[H + k] = s; sv[2 * H + k] = c; sv[3 * H + k] = n;
        hr[k] = n + c * (hr[k] - n);
    }
}

/* d (row b) -> d a_s, d a_c, d u_x (dp), and the direct part of dh_{t-1} (into dhr) */
static inline void NAME(bistable_back_row)(const T *restrict sv, T *restrict dp, T *restrict dhr,
                                           long H) {
    const T *restrict h = sv, *restrict s = sv + H, *restrict c = sv + 2 * H,
            *restrict n = sv + 3 * H;
    ELEMENTWISE for (long k = 0; k < H; k++) {
        const T d = dhr[k];
        const T du = d * (1 - c[k]) * (1 - n[k] * n[k]);
        dp[k] = du * 2 * h[k] * s[k] * (1 - s[k]);
        dp[H + k] = d * (h[k] - n[k]) * c[k] * (1 - c[k]);
        dp[2 * H + k] = du;
        dhr[k] = d * c[k] + du * 2 * s[k];
    }
}

static void NAME(nbr_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    NAME(keep_h)(a, t, b0, b1, 0, h);
    NAME(mmp)(pre, 2 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0],
              nb, H, 2 * H);
    for (long b = b0; b < b1; b++) {
        const T *pr = pre + (b - b0) * 2 * H;
        NAME(bistable_row)(pr, pr + H, NAME(at)(a->xp, a, b, t, P) + 2 * H, h + b * H,
                           NAME(kept)(a->saved, a, b, t, S), H);
    }
}

static void NAME(nbr_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        T *dp = NAME(at)(a->dxp, a, b, t, P);
        NAME(bistable_back_row)(NAME(at)(a->saved, a, b, t, S), dp, dh + b * H, H);
        memcpy(NAME(at)(a->rg[0], a, b, t, 2 * H), dp, 2 * H * sizeof(T));
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 2 * H), T_ * 2 * H,
              a->W[0], nb, 2 * H, H);
}

void NAME(nbr_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(nbr_step), 2 * d[2], 0);
}

void NAME(nbr_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(nbr_back), 1, 1);
}

static void NAME(br_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, P = a->P, S = a->S;
    const T *restrict wa = a->vec[0], *restrict wc = a->vec[1];
    T *h = a->state[0];
    for (long b = b0; b < b1; b++) {
        const T *restrict x = NAME(at)(a->xp, a, b, t, P), *restrict hr = h + b * H;
        T *restrict pr = pre;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            pr[k] = x[k] + wa[k] * hr[k];
            pr[H + k] = x[H + k] + wc[k] * hr[k];
        }
        NAME(bistable_row)(pre, pre + H, x + 2 * H, h + b * H, NAME(kept)(a->saved, a, b, t, S), H);
    }
}

static void NAME(br_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, P = a->P, S = a->S;
    const T *restrict wa = a->vec[0], *restrict wc = a->vec[1];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P), *restrict dhr = a->state[0] + b * H;
        T *restrict va = a->dvec[0] + b * H, *restrict vc = a->dvec[1] + b * H;
        NAME(bistable_back_row)(sv, dp, dhr, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            va[k] += dp[k] * sv[k]; vc[k] += dp[H + k] * sv[k];
            dhr[k] += dp[k] * wa[k] + dp[H + k] * wc[k];
        }
    }
}

void NAME(br_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(br_step), 2 * d[2]);
}

void NAME(br_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(br_back), 1);
}

/* ---- fastgrnn ----------------------------------------------------------------------- */
static void NAME(fastg_step)(const NAME(args) *a, long t, long b0, long b1, T *q) {
    const long H = a->H, P = a->P, S = a->S, nb = b1 - b0, ag = a->ints[0], au = a->ints[1];
    const T zeta = a->vec[0][0], zn = a->vec[1][0];
    T *h = a->state[0];
    NAME(keep_h)(a, t, b0, b1, 0, h);
    NAME(mmp)(q, H, 0, 0, h + b0 * H, H, a->WT[0], nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict qr = q + (b - b0) * H, *restrict x = NAME(at)(a->xp, a, b, t, P);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T z = NAME(act)(x[k] + qr[k], ag), n = NAME(act)(x[H + k] + qr[k], au);
            sv[k] = hr[k]; sv[H + k] = z; sv[2 * H + k] = n;
            hr[k] = zn * n + z * (hr[k] - zeta * n);
        }
    }
}

static void NAME(fastg_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, ag = a->ints[0],
               au = a->ints[1];
    const T zeta = a->vec[0][0], zn = a->vec[1][0];
    T *dh = a->state[0];
    T *restrict e0 = scratch, *restrict e1 = scratch + H;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict z = sv + H, *restrict n = sv + 2 * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, H), *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = dhr[k];
            const T dz = d * (h[k] - zeta * n[k]) * NAME(act_d)(z[k], ag);
            const T dn = d * (zn - zeta * z[k]) * NAME(act_d)(n[k], au);
            e0[k] = -d * z[k] * n[k]; e1[k] = d * n[k];
            dp[k] = dz; dp[H + k] = dn; g[k] = dz + dn;
            dhr[k] = d * z[k];
        }
        a->dvec[0][b] += NAME(dot)(e0, 0, H);
        a->dvec[1][b] += NAME(dot)(e1, 0, H);
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H,
              a->W[0], nb, H, H);
}

void NAME(fastg_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(fastg_step), d[2], 0);
}

void NAME(fastg_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(fastg_back), 2 * d[2], 1);
}

/* ---- mgu ---------------------------------------------------------------------------- */
static void NAME(mgu_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    const T *xp0 = NAME(at)(a->xp, a, b0, t, P);
    NAME(keep_h)(a, t, b0, b1, 0, h);
    NAME(mmp)(pre, H, xp0, T_ * P, h + b0 * H, H, a->WT[0], nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * H, *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict fh = NAME(kept)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T f = NAME(sigm)(pr[k]);
            sv[k] = hr[k]; sv[H + k] = f; fh[k] = f * hr[k];
        }
    }
    NAME(mmp)(pre, H, xp0 + H, T_ * P, NAME(kept)(a->rg[1], a, b0, t, H), NAME(kept_ld)(a, H),
              a->WT[1], nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T c = NAME(tanh_)(pr[k]);
            sv[2 * H + k] = c;
            hr[k] += sv[H + k] * (c - hr[k]);
        }
    }
}

static void NAME(mgu_back)(const NAME(args) *a, long t, long b0, long b1, T *dfh) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict f = sv + H, *restrict c = sv + 2 * H;
        const T *restrict dhr = dh + b * H;
        T *restrict g1 = NAME(at)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) g1[k] = dhr[k] * f[k] * (1 - c[k] * c[k]);
    }
    NAME(mmp)(dfh, H, 0, 0, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1], nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict f = sv + H, *restrict c = sv + 2 * H;
        const T *restrict dq = dfh + (b - b0) * H, *restrict g1 = NAME(at)(a->rg[1], a, b, t, H);
        T *restrict g0 = NAME(at)(a->rg[0], a, b, t, H), *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = dhr[k];
            const T df = d * (c[k] - h[k]) + dq[k] * h[k];
            const T da = df * f[k] * (1 - f[k]);
            g0[k] = da; dp[k] = da; dp[H + k] = g1[k];
            dhr[k] = d * (1 - f[k]) + dq[k] * f[k];
        }
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H,
              a->W[0], nb, H, H);
}

void NAME(mgu_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(mgu_step), d[2], 0);
}

void NAME(mgu_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(mgu_back), d[2], 1);
}

/* ---- mix: star, sgrn, lightru ------------------------------------------------------ */
static void NAME(mix_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, squash = a->ints[1];
    const T sign = a->ints[0] ? -1 : 1;
    T *h = a->state[0];
    NAME(keep_h)(a, t, b0, b1, 0, h);
    NAME(mmp)(pre, H, NAME(at)(a->xp, a, b0, t, P) + H, T_ * P, h + b0 * H, H, a->WT[0],
              nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * H, *restrict z = NAME(at)(a->xp, a, b, t, P);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T kg = NAME(sigm)(sign * pr[k]), m = hr[k] + kg * (z[k] - hr[k]);
            const T hn = squash ? NAME(tanh_)(m) : m;
            sv[k] = hr[k]; sv[H + k] = kg; sv[2 * H + k] = z[k]; sv[3 * H + k] = hn;
            hr[k] = hn;
        }
    }
}

static void NAME(mix_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, squash = a->ints[1];
    const T sign = a->ints[0] ? -1 : 1;
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict kg = sv + H, *restrict z = sv + 2 * H,
                *restrict hn = sv + 3 * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, H), *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = squash ? dhr[k] * (1 - hn[k] * hn[k]) : dhr[k];
            const T da = sign * d * (z[k] - h[k]) * kg[k] * (1 - kg[k]);
            dp[k] = d * kg[k]; dp[H + k] = da; g[k] = da;
            dhr[k] = d * (1 - kg[k]);
        }
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H,
              a->W[0], nb, H, H);
}

void NAME(mix_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(mix_step), d[2], 0);
}

void NAME(mix_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(mix_back), 1, 1);
}

/* ---- atr ---------------------------------------------------------------------------- */
static void NAME(atr_step)(const NAME(args) *a, long t, long b0, long b1, T *q) {
    const long H = a->H, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    NAME(keep_h)(a, t, b0, b1, 0, h);
    NAME(mmp)(q, H, 0, 0, h + b0 * H, H, a->WT[0], nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict qr = q + (b - b0) * H, *restrict x = NAME(at)(a->xp, a, b, t, P);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T i = NAME(sigm)(x[k] + qr[k]), f = NAME(sigm)(x[H + k] - qr[k]);
            sv[k] = hr[k]; sv[H + k] = i; sv[2 * H + k] = f; sv[3 * H + k] = x[2 * H + k];
            hr[k] = i * x[2 * H + k] + f * hr[k];
        }
    }
}

static void NAME(atr_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict i = sv + H, *restrict f = sv + 2 * H,
                *restrict pv = sv + 3 * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, H), *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = dhr[k];
            const T di = d * pv[k] * i[k] * (1 - i[k]), df = d * h[k] * f[k] * (1 - f[k]);
            dp[k] = di; dp[H + k] = df; dp[2 * H + k] = d * i[k]; g[k] = di - df;
            dhr[k] = d * f[k];
        }
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H,
              a->W[0], nb, H, H);
}

void NAME(atr_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(atr_step), d[2], 0);
}

void NAME(atr_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(atr_back), 1, 1);
}

/* ---- cornn -------------------------------------------------------------------------- */
static void NAME(cornn_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T dt = (T)a->floats[0], A = (T)a->floats[1], Bc = (T)a->floats[2], C = (T)a->floats[3];
    T *y = a->state[0], *z = a->state[1];
    NAME(keep_h)(a, t, b0, b1, 0, y);
    NAME(keep_h)(a, t, b0, b1, 1, z);
    NAME(mmp)(pre, H, NAME(at)(a->xp, a, b0, t, P), T_ * P, y + b0 * H, H, a->WT[0], nb, H, H);
    NAME(mmp)(pre, H, pre, H, z + b0 * H, H, a->WT[1], nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict yr = y + b * H, *restrict zr = z + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T f = NAME(tanh_)(pr[k]), zn = A * zr[k] + Bc * yr[k] + C * f;
            sv[k] = f;
            zr[k] = zn; yr[k] += dt * zn;
        }
    }
}

static void NAME(cornn_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T dt = (T)a->floats[0], A = (T)a->floats[1], Bc = (T)a->floats[2], C = (T)a->floats[3];
    T *dy = a->state[0], *dz = a->state[1];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict f = NAME(at)(a->saved, a, b, t, S);
        T *restrict g0 = NAME(at)(a->rg[0], a, b, t, H), *restrict g1 = NAME(at)(a->rg[1], a, b, t, H);
        T *restrict dyr = dy + b * H, *restrict dzr = dz + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dzt = dzr[k] + dt * dyr[k], da = C * dzt * (1 - f[k] * f[k]);
            g0[k] = da; g1[k] = da;
            dyr[k] += Bc * dzt; dzr[k] = A * dzt;
        }
        if (a->rg[0] != a->dxp)
            memcpy(NAME(at)(a->dxp, a, b, t, P), g0, H * sizeof(T));
    }
    NAME(mmp)(dy + b0 * H, H, dy + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H,
              a->W[0], nb, H, H);
    NAME(mmp)(dz + b0 * H, H, dz + b0 * H, H, NAME(at)(a->rg[1], a, b0, t, H), T_ * H,
              a->W[1], nb, H, H);
}

void NAME(cornn_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(cornn_step), d[2], 0);
}

void NAME(cornn_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(cornn_back), 1, 1);
}
#endif
