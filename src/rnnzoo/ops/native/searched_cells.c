/* The steps of the searched cells (cells/searched.py) for the C loop of
   rnnzoo.ops.native.cells (driver: cell_loop.h), forward and backward, as their
   manual_step / manual_back:

   nas: g = xp_t + h W^T + b (8H; b the vector, absent without bias), a fixed tree of
     sigma/relu/tanh (module docstring of cells/searched.py); state (h, c); dvec the bias's
     gradient (the summed biases, added here and not in the projection: two passes over the
     (B, T, 8H) projections less); saved the eight activated gates and c_{t-1} (9H: the
     backward computes the tree's other seven tanh/sigma again, cheaper than storing and
     reading them back); W^T (forward) and W (backward) packed once per call (cell_loop.h's
     drive_packed).
   mut1..3 (ints [variant]): gates z, r, then
       h' = h + z (tanh(xp_t[2H:] + (r h) W_hh^T) - h)
     mut1: z = xp_t[:H] (sigmoid applied in project), r = sigma(xp_t[H:2H] + h W_hr^T);
           matrices W_hr, W_hh
     mut2: (z, r) = sigma(xp_t[:2H] + h [W_hz; W_hr]^T); matrices [W_hz; W_hr], W_hh
     mut3: z = sigma(xp_t[:H] + tanh(h) W_hz^T), r = sigma(xp_t[H:2H] + h W_hr^T);
           matrices W_hz, W_hr, W_hh
     saved: h, z, r, candidate. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "searched_cells.c"
#include "each_type.h"

#else
/* nas' packed products on 4 x 4 tiles of 16-float vectors: its 8H = 1024 (forward) and
   H = 128 (backward) columns are whole panels of 64 (measured, nas fwd+bwd per pair 0.968,
   0.969, 0.974 against 4 x 3 and 4 x 1 tiles over 21, 21, 11 pairs, 1 thread) */
#define PPW_ 4
#include "cell_loop.h"
#undef PPW_


/* ---- nas ---------------------------------------------------------------------------- */
/* nas' saved rows lie time-major, (T, B, S): a step's rows [b0, b1) are one contiguous block,
   which the backward, walking t down, reads (and prefetches a step ahead) as one stream; in
   (B, T, S) they were 16 streams 4.6 KB apart (measured: the backward's reads of the saved
   rows cost ~4 ms of its ~54, 1 thread, loaded). The buffer is the loop's own. */
static inline T *NAME(nas_saved)(const NAME(args) *a, long b, long t) {
    return a->saved + (t * a->B + b) * a->S;
}

static void NAME(nas_step)(const NAME(args) *a, long t, long b0, long b1, T *gates) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0], *c = a->state[1];
    if (a->x) {  /* the projection here: gates = x_t w_in^T, then += h W^T (the same sums) */
        NAME(mmp)(gates, 8 * H, 0, 0, NAME(at)(a->x, a, b0, t, a->I), T_ * a->I, a->w_in, nb,
                  a->I, 8 * H);
        NAME(mmp)(gates, 8 * H, gates, 8 * H, h + b0 * H, H, a->WT[0], nb, H, 8 * H);
    } else
        NAME(mmp)(gates, 8 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H, a->WT[0],
                  nb, H, 8 * H);
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    const T *restrict bias = a->nv ? a->vec[0] : a->zeros;
    T *tmp = gates + nb * 8 * H;  /* a row of saved, streamed out (kept: read only backward) */
    for (long b = b0; b < b1; b++) {
        const T *restrict g = gates + (b - b0) * 8 * H;
        T *restrict sv = a->keep ? tmp : NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H, *restrict cr = c + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T g1 = g[H + k] + bias[H + k], g3 = g[3 * H + k] + bias[3 * H + k];
            const T s0 = NAME(sigm)(g[k] + bias[k]), r1 = g1 > 0 ? g1 : 0;
            const T s2 = NAME(sigm)(g[2 * H + k] + bias[2 * H + k]), r3 = g3 > 0 ? g3 : 0;
            const T t4 = NAME(tanh_)(g[4 * H + k] + bias[4 * H + k]);
            const T s5 = NAME(sigm)(g[5 * H + k] + bias[5 * H + k]);
            const T t6 = NAME(tanh_)(g[6 * H + k] + bias[6 * H + k]);
            const T s7 = NAME(sigm)(g[7 * H + k] + bias[7 * H + k]);
            const T l0 = NAME(tanh_)(s0 * r1), tl2 = NAME(tanh_)(t4 * s5);
            const T sl3 = NAME(sigm)(t6 + s7);
            const T A = NAME(tanh_)(l0 + cr[k]), Bv = NAME(tanh_)(s2 + r3);
            const T cn = A * Bv, C = NAME(tanh_)(tl2 + sl3), hn = NAME(tanh_)(cn * C);
            sv[k] = s0; sv[H + k] = r1; sv[2 * H + k] = s2; sv[3 * H + k] = r3;
            sv[4 * H + k] = t4; sv[5 * H + k] = s5; sv[6 * H + k] = t6; sv[7 * H + k] = s7;
            sv[8 * H + k] = cr[k];
            hr[k] = hn; cr[k] = cn;
        }
        if (a->keep) NAME(stream_row)(NAME(nas_saved)(a, b, t), tmp, S);
    }
}

static void NAME(nas_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, nb = b1 - b0;
    T *dh = a->state[0], *dc = a->state[1];
    if (t > 0)  /* the next step's saved rows, one block */
        for (const char *q = (const char *)NAME(nas_saved)(a, b0, t - 1),
                        *e = (const char *)NAME(nas_saved)(a, b1, t - 1); q < e; q += 64)
            __builtin_prefetch(q, 0, 2);
    for (long b = b0; b < b1; b++) {
        T *restrict dv = a->nv ? a->dvec[0] + b * 8 * H : scratch;  /* the bias's gradient
                                                                        (or none: a dump) */
        const T *restrict sv = NAME(nas_saved)(a, b, t);
        const T *restrict s0 = sv, *restrict r1 = sv + H, *restrict s2 = sv + 2 * H,
                *restrict r3 = sv + 3 * H, *restrict t4 = sv + 4 * H, *restrict s5 = sv + 5 * H,
                *restrict t6 = sv + 6 * H, *restrict s7 = sv + 7 * H, *restrict cp = sv + 8 * H;
        T *restrict da = scratch + nb * 8 * H + (b - b0) * 8 * H;
        T *restrict dhr = dh + b * H, *restrict dcr = dc + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            /* the tree again from the saved gates (7 of the forward's 13 exps) */
            const T l0 = NAME(tanh_)(s0[k] * r1[k]), tl2 = NAME(tanh_)(t4[k] * s5[k]);
            const T sl3 = NAME(sigm)(t6[k] + s7[k]);
            const T A = NAME(tanh_)(l0 + cp[k]), Bv = NAME(tanh_)(s2[k] + r3[k]);
            const T cn = A * Bv, C = NAME(tanh_)(tl2 + sl3), hn = NAME(tanh_)(cn * C);
            const T d_in = dhr[k] * (1 - hn * hn);
            const T dcn = dcr[k] + d_in * C;
            const T d_cin = d_in * cn * (1 - C * C);
            const T d_l2 = d_cin * (1 - tl2 * tl2), d_l3 = d_cin * sl3 * (1 - sl3);
            const T d_l1 = dcn * A * (1 - Bv * Bv);
            const T dcp = dcn * Bv * (1 - A * A);
            const T d_l0 = dcp * (1 - l0 * l0);
            da[k] = d_l0 * r1[k] * s0[k] * (1 - s0[k]);
            da[H + k] = r1[k] > 0 ? d_l0 * s0[k] : 0;
            da[2 * H + k] = d_l1 * s2[k] * (1 - s2[k]);
            da[3 * H + k] = r3[k] > 0 ? d_l1 : 0;
            da[4 * H + k] = d_l2 * s5[k] * (1 - t4[k] * t4[k]);
            da[5 * H + k] = d_l2 * t4[k] * s5[k] * (1 - s5[k]);
            da[6 * H + k] = d_l3 * (1 - t6[k] * t6[k]);
            da[7 * H + k] = d_l3 * s7[k] * (1 - s7[k]);
            dcr[k] = dcp;
            for (long j = 0; j < 8; j++) dv[j * H + k] += da[j * H + k];
        }
        /* d a to the products' gradient (and d xp: one buffer with g_is_dxp), streamed:
           read only after the loop */
        NAME(stream_row)(NAME(at)(a->rg[0], a, b, t, 8 * H), da, 8 * H);
        if (a->rg[0] != a->dxp) NAME(stream_row)(NAME(at)(a->dxp, a, b, t, P), da, 8 * H);
    }
    NAME(mmp)(dh + b0 * H, H, 0, 0, scratch + nb * 8 * H, 8 * H, a->W[0], nb, 8 * H, H);
    if (a->dx)  /* d x_t = d xp_t w_in */
        NAME(mmp)(NAME(at)(a->dx, a, b0, t, a->I), T_ * a->I, 0, 0, scratch + nb * 8 * H, 8 * H,
                  a->w_in, nb, 8 * H, a->I);
}

/* W (8H, H) is 512 KB at H = 128: its products run on packed copies (drive_packed, mmp) */
void NAME(nas_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(nas_step), 17 * d[2], 0);
}

void NAME(nas_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(nas_back), 16 * d[2], 1);
}

/* ---- mut1, mut2, mut3 --------------------------------------------------------------- */
static void NAME(mut_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, v = a->ints[0];
    const long last = a->nm - 1;
    T *h = a->state[0];
    const T *xp0 = NAME(at)(a->xp, a, b0, t, P);
    /* pre (nb, 3H): the gates' pre-activations [z; r], then the candidate's */
    if (v == 1) {
        for (long b = b0; b < b1; b++)
            memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
        NAME(mm)(pre + H, 3 * H, xp0 + H, T_ * P, h + b0 * H, H, a->WT[0], H, nb, H, H);
    } else if (v == 2) {
        for (long b = b0; b < b1; b++)
            memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
        NAME(mm)(pre, 3 * H, xp0, T_ * P, h + b0 * H, H, a->WT[0], 2 * H, nb, H, 2 * H);
    } else {
        for (long b = b0; b < b1; b++) {
            const T *restrict hr = h + b * H;
            T *restrict th = NAME(kept)(a->rg[0], a, b, t, H);
            ELEMENTWISE for (long k = 0; k < H; k++) th[k] = NAME(tanh_)(hr[k]);
            memcpy(NAME(kept)(a->rg[1], a, b, t, H), hr, H * sizeof(T));
        }
        NAME(mm)(pre, 3 * H, xp0, T_ * P, NAME(kept)(a->rg[0], a, b0, t, H), NAME(kept_ld)(a, H),
                 a->WT[0], H, nb, H, H);
        NAME(mm)(pre + H, 3 * H, xp0 + H, T_ * P, h + b0 * H, H, a->WT[1], H, nb, H, H);
    }
    for (long b = b0; b < b1; b++) {
        const T *restrict xr = NAME(at)(a->xp, a, b, t, P);
        T *restrict pr = pre + (b - b0) * 3 * H;
        const T *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict rh = NAME(kept)(a->rg[last], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T z = v == 1 ? xr[k] : NAME(sigm)(pr[k]), r = NAME(sigm)(pr[H + k]);
            sv[k] = hr[k]; sv[H + k] = z; sv[2 * H + k] = r;
            rh[k] = r * hr[k];
        }
    }
    NAME(mm)(pre + 2 * H, 3 * H, xp0 + 2 * H, T_ * P, NAME(kept)(a->rg[last], a, b0, t, H),
             NAME(kept_ld)(a, H), a->WT[last], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 3 * H + 2 * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T cand = NAME(tanh_)(pr[k]);
            sv[3 * H + k] = cand;
            hr[k] = hr[k] + sv[H + k] * (cand - hr[k]);
        }
    }
}

static void NAME(mut_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, v = a->ints[0];
    const long last = a->nm - 1;
    T *dh = a->state[0];
    T *drh = scratch, *tmp = scratch + nb * H;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict z = sv + H, *restrict cand = sv + 3 * H;
        const T *restrict dhr = dh + b * H;
        T *restrict dc = NAME(at)(a->rg[last], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) dc[k] = dhr[k] * z[k] * (1 - cand[k] * cand[k]);
        memcpy(NAME(at)(a->dxp, a, b, t, P) + 2 * H, dc, H * sizeof(T));
    }
    NAME(mm)(drh, H, 0, 0, NAME(at)(a->rg[last], a, b0, t, H), T_ * H, a->W[last], H, nb, H, H);
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict z = sv + H, *restrict r = sv + 2 * H,
                *restrict cand = sv + 3 * H;
        const T *restrict dr = drh + (b - b0) * H;
        T *restrict dhr = dh + b * H;
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        /* the gates' gradients: mut1 rg[0] = d a_r; mut2 rg[0] = [d a_z; d a_r];
           mut3 rg[0] = d a_z, rg[1] = d a_r */
        T *restrict gz = v == 2 ? NAME(at)(a->rg[0], a, b, t, 2 * H) : NAME(at)(a->rg[0], a, b, t, H);
        T *restrict gr = v == 1 ? gz : v == 2 ? gz + H : NAME(at)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d_z = dhr[k] * (cand[k] - h[k]);
            const T d_ar = dr[k] * h[k] * r[k] * (1 - r[k]);
            const T d_az = v == 1 ? d_z : d_z * z[k] * (1 - z[k]);
            dp[k] = d_az; dp[H + k] = d_ar;
            gr[k] = d_ar;
            dhr[k] = (dhr[k] - dhr[k] * z[k]) + dr[k] * r[k];
        }
        if (v != 1) memcpy(gz, dp, H * sizeof(T));
    }
    if (v == 1) {
        NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, H), T_ * H, a->W[0],
                 H, nb, H, H);
    } else if (v == 2) {
        NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 2 * H), T_ * 2 * H,
                 a->W[0], H, nb, 2 * H, H);
    } else {
        NAME(mm)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[1], a, b0, t, H), T_ * H, a->W[1],
                 H, nb, H, H);
        NAME(mm)(tmp, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, H), T_ * H, a->W[0], H, nb, H, H);
        for (long b = b0; b < b1; b++) {
            const T *restrict h = NAME(at)(a->saved, a, b, t, S);
            const T *restrict tp = tmp + (b - b0) * H;
            T *restrict dhr = dh + b * H;
            ELEMENTWISE for (long k = 0; k < H; k++) {
                const T th = NAME(tanh_)(h[k]);
                dhr[k] = tp[k] * (1 - th * th) + dhr[k];
            }
        }
    }
}

void NAME(mut_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_fwd)(p, d, b0, b1, NAME(mut_step), 3 * d[2]);
}

void NAME(mut_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_bwd)(p, d, b0, b1, NAME(mut_back), 2 * d[2]);
}

#endif
