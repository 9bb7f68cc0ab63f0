/* The steps of the GRU variants and small gated cells for the C loop of
   rnnzoo.ops.native.cells (driver: cell_loop.h), forward and backward, as their
   manual_step / manual_back:

   gru_v3 (cells/gru.py): (r, z) = sigma(xp_t[:2H] + h [U_r; U_z]^T),
       n = tanh(xp_t[2H:] + (r h) U_n^T),  h' = n + z (h - n);  saved h, r, z, n.
   gru (cells/gru.py, torch.nn.GRU's reset placement): gh = h W^T (3H),
       (r, z) = sigma(xp_t[:2H] + gh[:2H]), hn = gh[2H:] + b_hn, n = tanh(xp_t[2H:] + r hn),
       h' = n + z (h - n);  vectors [b_hn] (none without bias);  saved h, r, z, n, hn.
   taugru (cells/gru.py), state (h_n, h_{n-1}, .., h_{n-d}):
       a = xp_t[:3H] + h [W_1; W_3; W_4]^T,  u = tanh(a_u), g, a = sigma(a_g, a_a),
       z = tanh(xp_t[3H:] + h_{n-d} W_2^T),  v = u + a z,  h' = h + g (v - h);
       new state (h', h_n, .., h_{n-d+1});  saved h, u, g, a, z, v.
   sgu, dsgu (cells/minimal_gated.py): xgh = x_g h, tg = tanh(b_g + xgh U_g^T),
       gated = tg h, z_out = softplus(gated) | sigma(gated U_o^T),
       a_z = xp_t[H:] + h U_z^T, z = hard_sigmoid(a_z), h' = h + z (z_out - h);
       matrices U_g, U_z [, U_o], vectors [b_g]; saved h, x_g, tg, gated, z_out, a_z, z.
   scrn (cells/scrn.py, its nonlinear part): h' = sigma(xp_t + h R^T); saved h'.
   miru1 (cells/gru.py): r = sigma(xp_t[:H] + h U_r^T), n = tanh(xp_t[H:] + (r h) U_h^T),
       h' = (1 - lam) n + lam h;  matrices U_r, U_h;  floats [lam];  saved h, r, n. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "gated_cells.c"
#include "each_type.h"

#else
#include "cell_loop.h"


/* ---- gru_v3 ------------------------------------------------------------------------- */
static void NAME(gru3_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    const T *xp0 = NAME(at)(a->xp, a, b0, t, P);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mm)(pre, 3 * H, xp0, T_ * P, h + b0 * H, H, a->WT[0], 2 * H, nb, H, 2 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 3 * H, *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict rh = NAME(kept)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T r = NAME(sigm)(pr[k]), z = NAME(sigm)(pr[H + k]);
            sv[k] = hr[k]; sv[H + k] = r; sv[2 * H + k] = z;
            rh[k] = r * hr[k];
        }
    }
    NAME(mm)(pre + 2 * H, 3 * H, xp0 + 2 * H, T_ * P, NAME(kept)(a->rg[1], a, b0, t, H),
             NAME(kept_ld)(a, H), a->WT[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 3 * H + 2 * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T n = NAME(tanh_)(pr[k]);
            sv[3 * H + k] = n;
            hr[k] = n + sv[2 * H + k] * (hr[k] - n);
        }
    }
}

static void NAME(gru3_back)(const NAME(args) *a, long t, long b0, long b1, T *drh) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict z = sv + 2 * H, *restrict n = sv + 3 * H, *restrict dhr = dh + b * H;
        T *restrict dn = NAME(at)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++)
            dn[k] = (dhr[k] - dhr[k] * z[k]) * (1 - n[k] * n[k]);
        memcpy(NAME(at)(a->dxp, a, b, t, P) + 2 * H, dn, H * sizeof(T));
    }
    NAME(mm)(drh, H, 0, 0, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict r = sv + H, *restrict z = sv + 2 * H,
                *restrict n = sv + 3 * H, *restrict dr = drh + (b - b0) * H;
        T *restrict dhr = dh + b * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, 2 * H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            g[k] = dr[k] * h[k] * r[k] * (1 - r[k]);
            g[H + k] = dhr[k] * (h[k] - n[k]) * z[k] * (1 - z[k]);
            dhr[k] = dhr[k] * z[k] + dr[k] * r[k];
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), g, 2 * H * sizeof(T));
    }
    NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 2 * H), T_ * 2 * H,
             a->W[0], H, nb, 2 * H, H);
}

void NAME(gru3_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(gru3_step), 3 * d[2]);
}

void NAME(gru3_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(gru3_back), d[2]);
}

/* ---- miru1 --------------------------------------------------------------------------- */
static void NAME(miru1_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T lam = (T)a->floats[0];
    T *h = a->state[0];
    const T *xp0 = NAME(at)(a->xp, a, b0, t, P);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mm)(pre, 2 * H, xp0, T_ * P, h + b0 * H, H, a->WT[0], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 2 * H, *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict rh = NAME(kept)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T r = NAME(sigm)(pr[k]);
            sv[k] = hr[k]; sv[H + k] = r;
            rh[k] = r * hr[k];
        }
    }
    NAME(mm)(pre + H, 2 * H, xp0 + H, T_ * P, NAME(kept)(a->rg[1], a, b0, t, H),
             NAME(kept_ld)(a, H), a->WT[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 2 * H + H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T n = NAME(tanh_)(pr[k]);
            sv[2 * H + k] = n;
            hr[k] = n * (1 - lam) + lam * hr[k];
        }
    }
}

static void NAME(miru1_back)(const NAME(args) *a, long t, long b0, long b1, T *drh) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T lam = (T)a->floats[0];
    T *dh = a->state[0];
    for (long b = b0; b < b1; b++) {
        const T *restrict n = NAME(at)(a->saved, a, b, t, S) + 2 * H, *restrict dhr = dh + b * H;
        T *restrict dn = NAME(at)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++)
            dn[k] = dhr[k] * (1 - lam) * (1 - n[k] * n[k]);
        memcpy(NAME(at)(a->dxp, a, b, t, P) + H, dn, H * sizeof(T));
    }
    NAME(mm)(drh, H, 0, 0, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict r = sv + H, *restrict dr = drh + (b - b0) * H;
        T *restrict dhr = dh + b * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            g[k] = dr[k] * h[k] * r[k] * (1 - r[k]);
            dhr[k] = dhr[k] * lam + dr[k] * r[k];
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P), g, H * sizeof(T));
    }
    NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H,
             a->W[0], H, nb, H, H);
}

void NAME(miru1_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(miru1_step), 2 * d[2]);
}

void NAME(miru1_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(miru1_back), d[2]);
}

/* ---- gru (torch.nn.GRU's cell) -------------------------------------------------------- */
static void NAME(gru1_step)(const NAME(args) *a, long t, long b0, long b1, T *gh) {
    const long H = a->H, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    const T *restrict bhn = a->nv ? a->vec[0] : a->zeros;
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mm)(gh, 3 * H, 0, 0, h + b0 * H, H, a->WT[0], 3 * H, nb, H, 3 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict g = gh + (b - b0) * 3 * H, *restrict x = NAME(at)(a->xp, a, b, t, a->P);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S), *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T r = NAME(sigm)(x[k] + g[k]), z = NAME(sigm)(x[H + k] + g[H + k]);
            const T hn = g[2 * H + k] + bhn[k], n = NAME(tanh_)(x[2 * H + k] + r * hn);
            sv[k] = hr[k]; sv[H + k] = r; sv[2 * H + k] = z; sv[3 * H + k] = n;
            sv[4 * H + k] = hn;
            hr[k] = n + z * (hr[k] - n);
        }
    }
}

static void NAME(gru1_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict r = sv + H, *restrict z = sv + 2 * H,
                *restrict n = sv + 3 * H, *restrict hn = sv + 4 * H;
        T *restrict dhr = dh + b * H, *restrict g = NAME(at)(a->rg[0], a, b, t, 3 * H);
        T *restrict dx = NAME(at)(a->dxp, a, b, t, a->P);
        T *restrict dv = a->nv ? a->dvec[0] + b * H : scratch;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dn = (dhr[k] - dhr[k] * z[k]) * (1 - n[k] * n[k]);
            const T dr = dn * hn[k] * r[k] * (1 - r[k]);
            const T dz = dhr[k] * (h[k] - n[k]) * z[k] * (1 - z[k]);
            g[k] = dr; g[H + k] = dz; g[2 * H + k] = dn * r[k];
            dx[k] = dr; dx[H + k] = dz; dx[2 * H + k] = dn;
            dv[k] += dn * r[k];
            dhr[k] = dhr[k] * z[k];
        }
    }
    NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 3 * H), T_ * 3 * H,
             a->W[0], H, nb, 3 * H, H);
}

void NAME(gru1_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(gru1_step), 3 * d[2]);
}

void NAME(gru1_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(gru1_back), d[2]);
}


/* ---- taugru ------------------------------------------------------------------------- */
static void NAME(taugru_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, d = a->ns - 1;
    T *h = a->state[0], *delayed = a->state[d];
    const T *xp0 = NAME(at)(a->xp, a, b0, t, P);
    for (long b = b0; b < b1; b++) {
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
        memcpy(NAME(kept)(a->rg[1], a, b, t, H), delayed + b * H, H * sizeof(T));
    }
    NAME(mm)(pre, 4 * H, xp0, T_ * P, h + b0 * H, H, a->WT[0], 3 * H, nb, H, 3 * H);
    NAME(mm)(pre + 3 * H, 4 * H, xp0 + 3 * H, T_ * P, delayed + b0 * H, H, a->WT[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        T *restrict pr = pre + (b - b0) * 4 * H;
        const T *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T u = NAME(tanh_)(pr[k]), g = NAME(sigm)(pr[H + k]), ga = NAME(sigm)(pr[2 * H + k]);
            const T z = NAME(tanh_)(pr[3 * H + k]), v = u + ga * z;
            sv[k] = hr[k]; sv[H + k] = u; sv[2 * H + k] = g; sv[3 * H + k] = ga;
            sv[4 * H + k] = z; sv[5 * H + k] = v;
            pr[k] = hr[k] + g * (v - hr[k]);  /* the new h, written back after the shift */
        }
    }
    for (long i = d; i >= 1; i--)
        memcpy(a->state[i] + b0 * H, a->state[i - 1] + b0 * H, nb * H * sizeof(T));
    for (long b = b0; b < b1; b++)
        memcpy(h + b * H, pre + (b - b0) * 4 * H, H * sizeof(T));
}

static void NAME(taugru_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, d = a->ns - 1;
    T *dn = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict u = sv + H, *restrict g = sv + 2 * H,
                *restrict ga = sv + 3 * H, *restrict z = sv + 4 * H, *restrict v = sv + 5 * H;
        T *restrict dnr = dn + b * H;
        T *restrict g0 = NAME(at)(a->rg[0], a, b, t, 3 * H), *restrict g1 = NAME(at)(a->rg[1], a, b, t, H);
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dv = dnr[k] * g[k];
            const T du = dv * (1 - u[k] * u[k]);
            const T dg = dnr[k] * (v[k] - h[k]) * g[k] * (1 - g[k]);
            const T da = dv * z[k] * ga[k] * (1 - ga[k]);
            const T dz = dv * ga[k] * (1 - z[k] * z[k]);
            g0[k] = du; g0[H + k] = dg; g0[2 * H + k] = da; g1[k] = dz;
            dp[k] = du; dp[H + k] = dg; dp[2 * H + k] = da; dp[3 * H + k] = dz;
            dnr[k] = dnr[k] - dv;
        }
    }
    NAME(mm)(dn + b0 * H, H, dn + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 3 * H), T_ * 3 * H,
             a->W[0], H, nb, 3 * H, H);
    {
        T *restrict d0 = dn + b0 * H;
        const T *restrict d1 = a->state[1] + b0 * H;
        ELEMENTWISE for (long k = 0; k < nb * H; k++) d0[k] += d1[k];
    }
    for (long i = 1; i < d; i++)
        memcpy(a->state[i] + b0 * H, a->state[i + 1] + b0 * H, nb * H * sizeof(T));
    NAME(mm)(a->state[d] + b0 * H, H, 0, 0, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1], H,
             nb, H, H);
}

void NAME(taugru_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(taugru_step), 4 * d[2]);
}

void NAME(taugru_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(taugru_back), 1);
}

/* ---- sgu, dsgu ---------------------------------------------------------------------- */
static void NAME(sgu_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int deep = a->nm == 3;
    T *h = a->state[0];
    T *az = pre + nb * H, *po = pre + 2 * nb * H;
    for (long b = b0; b < b1; b++) {
        const T *restrict xg = NAME(at)(a->xp, a, b, t, P), *restrict hr = h + b * H;
        T *restrict r0 = NAME(kept)(a->rg[0], a, b, t, H);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            r0[k] = xg[k] * hr[k];
            sv[k] = hr[k]; sv[H + k] = xg[k];
        }
        memcpy(NAME(kept)(a->rg[1], a, b, t, H), hr, H * sizeof(T));
    }
    NAME(mm)(pre, H, a->nv ? a->vec[0] : 0, 0, NAME(kept)(a->rg[0], a, b0, t, H),
             NAME(kept_ld)(a, H),
             a->WT[0], H, nb, H, H);
    NAME(mm)(az, H, NAME(at)(a->xp, a, b0, t, P) + H, T_ * P, h + b0 * H, H, a->WT[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * H, *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict gd = deep ? NAME(kept)(a->rg[2], a, b, t, H) : sv + 3 * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T tg = NAME(tanh_)(pr[k]);
            sv[2 * H + k] = tg;
            gd[k] = tg * hr[k];
        }
        if (deep) memcpy(sv + 3 * H, gd, H * sizeof(T));
        else
            for (long k = 0; k < H; k++) {
                const T x = gd[k];
                sv[4 * H + k] = x > 20 ? x : LOG1P(EXP(x));
            }
    }
    if (deep)
        NAME(mm)(po, H, 0, 0, NAME(kept)(a->rg[2], a, b0, t, H), NAME(kept_ld)(a, H), a->WT[2],
                 H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict ar = az + (b - b0) * H, *restrict por = po + (b - b0) * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        if (deep) {
            ELEMENTWISE for (long k = 0; k < H; k++) sv[4 * H + k] = NAME(sigm)(por[k]);
        }
        ELEMENTWISE for (long k = 0; k < H; k++) {
            T z = ar[k] + 3;
            z = z < 0 ? 0 : z;
            z = (z > 6 ? 6 : z) / 6;
            sv[5 * H + k] = ar[k]; sv[6 * H + k] = z;
            hr[k] = hr[k] + z * (sv[4 * H + k] - hr[k]);
        }
    }
}

static void NAME(sgu_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int deep = a->nm == 3;
    T *dh = a->state[0];
    T *dout = scratch, *dgated = scratch + nb * H, *dxgh = scratch + 2 * nb * H;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict gated = sv + 3 * H, *restrict zo = sv + 4 * H,
                *restrict az = sv + 5 * H, *restrict z = sv + 6 * H;
        const T *restrict dhr = dh + b * H;
        T *restrict dor = dout + (b - b0) * H, *restrict dgr = dgated + (b - b0) * H;
        T *restrict g1 = NAME(at)(a->rg[1], a, b, t, H);
        T *restrict g2 = deep ? NAME(at)(a->rg[2], a, b, t, H) : dgr;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d_out = dhr[k] * z[k], dz = dhr[k] * (zo[k] - h[k]);
            dor[k] = d_out;
            /* torch's hardsigmoid_backward scales by the float 1/6, also in float64 */
            g1[k] = (az[k] > -3 && az[k] < 3) ? dz * (T)(1.0f / 6.0f) : 0;
            if (deep) {
                g2[k] = d_out * zo[k] * (1 - zo[k]);
            } else {
                const T e = EXP(gated[k]);
                g2[k] = gated[k] > 20 ? d_out : d_out * e / (e + 1);
            }
        }
        memcpy(NAME(at)(a->dxp, a, b, t, P) + H, g1, H * sizeof(T));
    }
    if (deep)
        NAME(mm)(dgated, H, 0, 0, NAME(at)(a->rg[2], a, b0, t, H), T_ * H, a->W[2], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict tg = sv + 2 * H;
        const T *restrict dgr = dgated + (b - b0) * H;
        T *restrict g0 = NAME(at)(a->rg[0], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) g0[k] = dgr[k] * h[k] * (1 - tg[k] * tg[k]);
        if (a->nv) {
            T *restrict dv = a->dvec[0] + b * H;
            ELEMENTWISE for (long k = 0; k < H; k++) dv[k] += g0[k];
        }
    }
    NAME(mm)(dxgh, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, H), T_ * H, a->W[0], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict xg = sv + H, *restrict tg = sv + 2 * H;
        const T *restrict dor = dout + (b - b0) * H, *restrict dgr = dgated + (b - b0) * H,
                *restrict dx = dxgh + (b - b0) * H;
        T *restrict dhr = dh + b * H, *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            dp[k] = dx[k] * h[k];
            dhr[k] = ((dhr[k] - dor[k]) + dgr[k] * tg[k]) + dx[k] * xg[k];
        }
    }
    NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1], H,
             nb, H, H);
}

void NAME(sgu_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(sgu_step), 3 * d[2]);
}

void NAME(sgu_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(sgu_back), 3 * d[2]);
}

/* ---- scrn --------------------------------------------------------------------------- */
static void NAME(scrn_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mm)(pre, H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S), *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T v = NAME(sigm)(pr[k]);
            sv[k] = v; hr[k] = v;
        }
    }
}

static void NAME(scrn_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict hn = NAME(at)(a->saved, a, b, t, S), *restrict dhr = dh + b * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) g[k] = dhr[k] * hn[k] * (1 - hn[k]);
        memcpy(NAME(at)(a->dxp, a, b, t, P), g, H * sizeof(T));
    }
    NAME(mm)(dh + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, H), T_ * H, a->W[0], H, nb, H, H);
}

void NAME(scrn_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(scrn_step), d[2]);
}

void NAME(scrn_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(scrn_back), 1);
}

#endif
