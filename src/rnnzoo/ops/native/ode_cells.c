/* The steps of the ODE-derived cells for the C loop of rnnzoo.ops.native.cells (driver:
   cell_loop.h), forward and backward, as their manual_step / manual_back:

   ltc (cells/continuous_time.py), U = ode_unfolds fused solver steps of size delta:
       a_u = xp_t + x_u W^T,  f_u = sigma(a_u),  den_u = 1 + delta leak + delta f_u,
       x_{u+1} = (x_u + delta A f_u) / den_u
     matrices: W_hh once per unfold (U entries), vectors A, leak = 1 / tau;
     saved per unfold: f, den, x_{u+1}; ints [U], floats [delta].
     back: d num = dx / den, d den = -d num x_{u+1}, d a = sigma'(delta A d num + delta d den),
     dx_u = d num + d a W; dA += delta d num f, d leak += delta d den.
   cfc (cells/continuous_time.py), backbone width U = P (0 backbone: heads straight):
       pre = xp_t + x W_hh^T;  [back = tanh(0.666 pre), u = 1.7159 back, pre = b + u W_heads^T]
       gate = sigma(-dt f), g, h = tanh(.), x' = h + gate (g - h)
     saved: gate, tanh(g), tanh(h) [, back]; ints [backbone], floats [dt].
   lem (cells/oscillator.py):
       a = xp_t[:3H] + y W_hh^T,  s = sigma(a[:2H]), (dt_y, dt_z) = dt s,  t_z = tanh(a[2H:])
       z' = z + dt_z (t_z - z),  t_y = tanh(xp_t[3H:] + z' W_ch^T),  y' = y + dt_y (t_y - y)
     saved: y, z, s (2H), t_z, t_y; floats [dt]. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ode_cells.c"
#include "each_type.h"

#else
#include "cell_loop.h"

/* the leading dimension of a `kept` buffer of width w (one step without keep) */

/* ---- ltc ---------------------------------------------------------------------------- */
static void NAME(ltc_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, U = a->ints[0];
    const T delta = (T)a->floats[0];
    T *x = a->state[0];
    const T *restrict rev = a->vec[0], *restrict leak = a->vec[1];
    for (long u = 0; u < U; u++) {
        for (long b = b0; b < b1; b++)
            memcpy(NAME(kept)(a->rg[u], a, b, t, H), x + b * H, H * sizeof(T));
        NAME(mm)(pre, H, NAME(at)(a->xp, a, b0, t, P), T_ * P, x + b0 * H, H, a->WT[u], H,
                 nb, H, H);
        for (long b = b0; b < b1; b++) {
            T *restrict sv = NAME(kept)(a->saved, a, b, t, S) + 3 * u * H;
            T *restrict s_f = sv, *restrict s_den = sv + H, *restrict s_x = sv + 2 * H;
            const T *restrict ar = pre + (b - b0) * H;
            T *restrict xr = x + b * H;
            ELEMENTWISE for (long k = 0; k < H; k++) {
                const T f = NAME(sigm)(ar[k]);
                const T den = (1 + delta * leak[k]) + delta * f;
                const T xn = (xr[k] + f * (delta * rev[k])) / den;
                s_f[k] = f; s_den[k] = den; s_x[k] = xn;
                xr[k] = xn;
            }
        }
    }
}

static void NAME(ltc_back)(const NAME(args) *a, long t, long b0, long b1, T *dnum) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, U = a->ints[0];
    const T delta = (T)a->floats[0];
    T *dx = a->state[0];
    const T *restrict rev = a->vec[0];
    for (long u = U - 1; u >= 0; u--) {
        for (long b = b0; b < b1; b++) {
            const T *restrict sv = NAME(at)(a->saved, a, b, t, S) + 3 * u * H;
            const T *restrict f = sv, *restrict den = sv + H, *restrict xn = sv + 2 * H;
            const T *restrict dxr = dx + b * H;
            T *restrict dn = dnum + (b - b0) * H;
            T *restrict da = NAME(at)(a->rg[u], a, b, t, H);
            T *restrict dxp = NAME(at)(a->dxp, a, b, t, P);
            T *restrict dA = a->dvec[0] + b * H, *restrict dL = a->dvec[1] + b * H;
            const int first = u == U - 1;
            ELEMENTWISE for (long k = 0; k < H; k++) {
                const T d_num = dxr[k] / den[k];
                const T d_den = -d_num * xn[k];
                const T d_a = (d_num * (delta * rev[k]) + delta * d_den) * f[k] * (1 - f[k]);
                dn[k] = d_num;
                da[k] = d_a;
                dxp[k] = first ? d_a : dxp[k] + d_a;
                dA[k] += delta * (d_num * f[k]);
                dL[k] += delta * d_den;
            }
        }
        NAME(mm)(dx + b0 * H, H, dnum, H, NAME(at)(a->rg[u], a, b0, t, H), T_ * H, a->W[u], H,
                 nb, H, H);
    }
}

void NAME(ltc_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(ltc_step), d[2]);
}

void NAME(ltc_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(ltc_back), d[2]);
}

/* ---- cfc ---------------------------------------------------------------------------- */
static void NAME(cfc_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int backbone = a->ints[0];
    const T dt = (T)a->floats[0];
    T *x = a->state[0];
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), x + b * H, H * sizeof(T));
    NAME(mm)(pre, P, NAME(at)(a->xp, a, b0, t, P), T_ * P, x + b0 * H, H, a->WT[0], P, nb, H, P);
    T *heads = pre;
    if (backbone) {  /* back into saved's last P, u into rg[1] */
        heads = pre + nb * P;
        for (long b = b0; b < b1; b++) {
            const T *restrict pr = pre + (b - b0) * P;
            T *restrict bk = NAME(kept)(a->saved, a, b, t, S) + 3 * H;
            T *restrict ur = NAME(kept)(a->rg[1], a, b, t, P);
            ELEMENTWISE for (long k = 0; k < P; k++) {
                const T v = NAME(tanh_)((T)0.666 * pr[k]);
                bk[k] = v;
                ur[k] = (T)1.7159 * v;
            }
        }
        NAME(mm)(heads, 3 * H, a->vec[0], 0, NAME(kept)(a->rg[1], a, b0, t, P), NAME(kept_ld)(a, P),
                 a->WT[1], 3 * H, nb, P, 3 * H);
    }
    for (long b = b0; b < b1; b++) {
        const T *restrict hr = heads + (b - b0) * 3 * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict xr = x + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T gate = NAME(sigm)(hr[k] * -dt);
            const T g = NAME(tanh_)(hr[H + k]), h = NAME(tanh_)(hr[2 * H + k]);
            sv[k] = gate; sv[H + k] = g; sv[2 * H + k] = h;
            xr[k] = h + gate * (g - h);
        }
    }
}

static void NAME(cfc_back)(const NAME(args) *a, long t, long b0, long b1, T *dback) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const int backbone = a->ints[0];
    const T dt = (T)a->floats[0];
    T *dx = a->state[0];
    T *g0 = NAME(at)(a->rg[0], a, b0, t, P);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict gate = sv, *restrict g = sv + H, *restrict h = sv + 2 * H;
        const T *restrict dxr = dx + b * H;
        T *restrict dh = backbone ? NAME(at)(a->rg[1], a, b, t, 3 * H) : NAME(at)(a->dxp, a, b, t, P);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d_g = dxr[k] * gate[k];
            dh[k] = dxr[k] * (g[k] - h[k]) * gate[k] * (1 - gate[k]) * -dt;
            dh[H + k] = d_g * (1 - g[k] * g[k]);
            dh[2 * H + k] = (dxr[k] - d_g) * (1 - h[k] * h[k]);
        }
        if (backbone) {
            T *restrict dv = a->dvec[0] + b * 3 * H;
            ELEMENTWISE for (long k = 0; k < 3 * H; k++) dv[k] += dh[k];
        } else {
            memcpy(NAME(at)(a->rg[0], a, b, t, P), dh, 3 * H * sizeof(T));
        }
    }
    if (backbone) {
        NAME(mm)(dback, P, 0, 0, NAME(at)(a->rg[1], a, b0, t, 3 * H), T_ * 3 * H, a->W[1], P, nb,
                 3 * H, P);
        for (long b = b0; b < b1; b++) {
            const T *restrict bk = NAME(at)(a->saved, a, b, t, S) + 3 * H;
            const T *restrict db = dback + (b - b0) * P;
            T *restrict dp = NAME(at)(a->dxp, a, b, t, P), *restrict gr = NAME(at)(a->rg[0], a, b, t, P);
            ELEMENTWISE for (long k = 0; k < P; k++) {
                const T v = db[k] * (T)(1.7159 * 0.666) * (1 - bk[k] * bk[k]);
                dp[k] = v; gr[k] = v;
            }
        }
    }
    NAME(mm)(dx + b0 * H, H, 0, 0, g0, T_ * P, a->W[0], H, nb, P, H);
}

void NAME(cfc_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(cfc_step), d[3] + 3 * d[2]);
}

void NAME(cfc_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(cfc_back), d[3]);
}

/* ---- lem ---------------------------------------------------------------------------- */
static void NAME(lem_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T dt = (T)a->floats[0];
    T *y = a->state[0], *z = a->state[1];
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), y + b * H, H * sizeof(T));
    NAME(mm)(pre, 3 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, y + b0 * H, H, a->WT[0], 3 * H,
             nb, H, 3 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict ar = pre + (b - b0) * 3 * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict zr = z + b * H, *restrict yr = y + b * H;
        T *restrict zn = NAME(kept)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T sz = NAME(sigm)(ar[H + k]), tz = NAME(tanh_)(ar[2 * H + k]);
            const T znew = zr[k] + dt * sz * (tz - zr[k]);
            sv[k] = yr[k]; sv[H + k] = zr[k]; sv[2 * H + k] = NAME(sigm)(ar[k]);
            sv[3 * H + k] = sz; sv[4 * H + k] = tz;
            zr[k] = znew; zn[k] = znew;
        }
    }
    NAME(mm)(pre, H, NAME(at)(a->xp, a, b0, t, P) + 3 * H, T_ * P,
             NAME(kept)(a->rg[1], a, b0, t, H), NAME(kept_ld)(a, H), a->WT[1], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict ar = pre + (b - b0) * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict yr = y + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T ty = NAME(tanh_)(ar[k]);
            sv[5 * H + k] = ty;
            yr[k] = yr[k] + dt * sv[2 * H + k] * (ty - yr[k]);
        }
    }
}

static void NAME(lem_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    const T dt = (T)a->floats[0];
    T *dy = a->state[0], *dz = a->state[1];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict sy = sv + 2 * H, *restrict ty = sv + 5 * H;
        const T *restrict dyr = dy + b * H;
        T *restrict g1 = NAME(at)(a->rg[1], a, b, t, H);
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P) + 3 * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T v = dyr[k] * (dt * sy[k]) * (1 - ty[k] * ty[k]);
            g1[k] = v; dp[k] = v;
        }
    }
    /* dz' = dz + d a_y W_ch */
    NAME(mm)(dz + b0 * H, H, dz + b0 * H, H, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1], H,
             nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict y = sv, *restrict z = sv + H, *restrict sy = sv + 2 * H,
                *restrict sz = sv + 3 * H, *restrict tz = sv + 4 * H, *restrict ty = sv + 5 * H;
        T *restrict dyr = dy + b * H, *restrict dzr = dz + b * H;
        T *restrict g0 = NAME(at)(a->rg[0], a, b, t, 3 * H);
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dzn = dzr[k], dtz = dt * sz[k], dty = dt * sy[k];
            const T d0 = dyr[k] * (ty[k] - y[k]) * dt * sy[k] * (1 - sy[k]);
            const T d1 = dzn * (tz[k] - z[k]) * dt * sz[k] * (1 - sz[k]);
            const T d2 = dzn * dtz * (1 - tz[k] * tz[k]);
            g0[k] = d0; g0[H + k] = d1; g0[2 * H + k] = d2;
            dp[k] = d0; dp[H + k] = d1; dp[2 * H + k] = d2;
            dyr[k] = dyr[k] - dyr[k] * dty;
            dzr[k] = dzn - dzn * dtz;
        }
    }
    NAME(mm)(dy + b0 * H, H, dy + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 3 * H), T_ * 3 * H,
             a->W[0], H, nb, 3 * H, H);
}

void NAME(lem_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(lem_step), 3 * d[2]);
}

void NAME(lem_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(lem_back), 1);
}

#endif
