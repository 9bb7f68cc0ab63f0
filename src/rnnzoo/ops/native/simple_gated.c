/* The steps of CFN, RAN and the state-regularized RNN (GRU base) for the C loop of
   rnnzoo.ops.native.cells (driver: cell_loop.h), forward and backward, as their
   manual_step / manual_back:

   cfn (cells/minimal_gated.py): (theta, eta) = sigma(xp_t[:2H] + h U^T),
       h' = theta tanh(h) + eta xp_t[2H:]  (the candidate's tanh applied in project);
       saved tanh(h), theta, eta, candidate.
   ran (cells/ran.py), state (h, c), ints [g = tanh]: (i, f) = sigma(xp_t[H:] + h W^T),
       c' = i xp_t[:H] + f c,  h' = tanh(c') or c';  saved i, f, content, c, h'.
   srnn (cells/state_regularized.py, base GRU, ints [hard]): on xp_t = [a_rz | b_hn | a_n]
       (4H), [a_r, a_z | gh_n] = xp_t[:3H] + h W_hh^T,  (r, z) = sigma(a_r, a_z),
       n = tanh(a_n + r gh_n),  u = n + z (h - n),
       alpha = softmax(u (S / tau)^T) (hard: the one-hot of its argmax),  h' = alpha S;
       matrices W_hh (3H, H), S / tau (k, H), S^T (H, k); saved h, r, z, n, gh_n, alpha.
   All three run their products on packed matrices (cell_loop.h's drive_packed, mmp). */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "simple_gated.c"
#include "each_type.h"

#else
#include "cell_loop.h"


/* ---- cfn ---------------------------------------------------------------------------- */
static void NAME(cfn_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *h = a->state[0];
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mmp)(pre, 2 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H,
              a->WT[0], nb, H, 2 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 2 * H;
        const T *restrict cand = NAME(at)(a->xp, a, b, t, P) + 2 * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T th = NAME(tanh_)(hr[k]), theta = NAME(sigm)(pr[k]), eta = NAME(sigm)(pr[H + k]);
            sv[k] = th; sv[H + k] = theta; sv[2 * H + k] = eta; sv[3 * H + k] = cand[k];
            hr[k] = theta * th + eta * cand[k];
        }
    }
}

static void NAME(cfn_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0;
    T *dh = a->state[0];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict th = sv, *restrict theta = sv + H, *restrict eta = sv + 2 * H,
                *restrict cand = sv + 3 * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, 2 * H);
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = dhr[k];
            g[k] = d * th[k] * theta[k] * (1 - theta[k]);
            g[H + k] = d * cand[k] * eta[k] * (1 - eta[k]);
            dp[2 * H + k] = d * eta[k];
            dhr[k] = d * theta[k] * (1 - th[k] * th[k]);
        }
        memcpy(dp, g, 2 * H * sizeof(T));
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 2 * H), T_ * 2 * H,
              a->W[0], nb, 2 * H, H);
}

void NAME(cfn_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(cfn_step), 2 * d[2], 0);
}

void NAME(cfn_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(cfn_back), 1, 1);
}

/* ---- ran ---------------------------------------------------------------------------- */
static void NAME(ran_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, squash = a->ints[0];
    T *h = a->state[0], *c = a->state[1];
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mmp)(pre, 2 * H, NAME(at)(a->xp, a, b0, t, P) + H, T_ * P, h + b0 * H, H,
              a->WT[0], nb, H, 2 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 2 * H;
        const T *restrict content = NAME(at)(a->xp, a, b, t, P);
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict hr = h + b * H, *restrict cr = c + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T i = NAME(sigm)(pr[k]), f = NAME(sigm)(pr[H + k]), cp = cr[k];
            const T cn = f * cp + i * content[k];
            const T hn = squash ? NAME(tanh_)(cn) : cn;
            sv[k] = i; sv[H + k] = f; sv[2 * H + k] = content[k]; sv[3 * H + k] = cp;
            sv[4 * H + k] = hn;
            cr[k] = cn; hr[k] = hn;
        }
    }
}

static void NAME(ran_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, squash = a->ints[0];
    T *dh = a->state[0], *dc = a->state[1];
    (void)scratch;
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict i = sv, *restrict f = sv + H, *restrict content = sv + 2 * H,
                *restrict cp = sv + 3 * H, *restrict hn = sv + 4 * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, 2 * H);
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dhr = dh + b * H, *restrict dcr = dc + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T dct = dcr[k] + (squash ? dhr[k] * (1 - hn[k] * hn[k]) : dhr[k]);
            g[k] = dct * content[k] * i[k] * (1 - i[k]);
            g[H + k] = dct * cp[k] * f[k] * (1 - f[k]);
            dp[k] = dct * i[k];
            dcr[k] = dct * f[k];
        }
        memcpy(dp + H, g, 2 * H * sizeof(T));
    }
    NAME(mmp)(dh + b0 * H, H, 0, 0, NAME(at)(a->rg[0], a, b0, t, 2 * H), T_ * 2 * H,
              a->W[0], nb, 2 * H, H);
}

void NAME(ran_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(ran_step), 2 * d[2], 0);
}

void NAME(ran_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(ran_back), 1, 1);
}

/* ---- state-regularized RNN, GRU base ------------------------------------------------ */
static void NAME(srnn_step)(const NAME(args) *a, long t, long b0, long b1, T *pre) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, K = a->G[1];
    const long hard = a->ints[0];
    T *h = a->state[0];
    T *logits = pre + nb * 3 * H;
    for (long b = b0; b < b1; b++)
        memcpy(NAME(kept)(a->rg[0], a, b, t, H), h + b * H, H * sizeof(T));
    NAME(mmp)(pre, 3 * H, NAME(at)(a->xp, a, b0, t, P), T_ * P, h + b0 * H, H,
              a->WT[0], nb, H, 3 * H);
    for (long b = b0; b < b1; b++) {
        const T *restrict pr = pre + (b - b0) * 3 * H;
        const T *restrict an = NAME(at)(a->xp, a, b, t, P) + 3 * H;
        const T *restrict hr = h + b * H;
        T *restrict sv = NAME(kept)(a->saved, a, b, t, S);
        T *restrict u = NAME(kept)(a->rg[1], a, b, t, H);
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T r = NAME(sigm)(pr[k]), z = NAME(sigm)(pr[H + k]), gh = pr[2 * H + k];
            const T n = NAME(tanh_)(an[k] + r * gh);
            sv[k] = hr[k]; sv[H + k] = r; sv[2 * H + k] = z; sv[3 * H + k] = n;
            sv[4 * H + k] = gh;
            u[k] = n + z * (hr[k] - n);
        }
    }
    NAME(mmp)(logits, K, 0, 0, NAME(kept)(a->rg[1], a, b0, t, H), NAME(kept_ld)(a, H),
              a->WT[1], nb, H, K);
    for (long b = b0; b < b1; b++) {
        const T *restrict l = logits + (b - b0) * K;
        T *restrict al = NAME(kept)(a->saved, a, b, t, S) + 5 * H;
        long best = 0;
        T top = l[0];
        for (long j = 1; j < K; j++)
            if (l[j] > top) { top = l[j]; best = j; }
        if (hard) {
            for (long j = 0; j < K; j++) al[j] = j == best;
        } else {
            T sum = 0;
            for (long j = 0; j < K; j++) { al[j] = EXP(l[j] - top); sum += al[j]; }
            for (long j = 0; j < K; j++) al[j] /= sum;
        }
        memcpy(NAME(kept)(a->rg[2], a, b, t, K), al, K * sizeof(T));
    }
    NAME(mmp)(h + b0 * H, H, 0, 0, NAME(kept)(a->rg[2], a, b0, t, K), NAME(kept_ld)(a, K),
              a->WT[2], nb, K, H);
}

static void NAME(srnn_back)(const NAME(args) *a, long t, long b0, long b1, T *scratch) {
    const long H = a->H, T_ = a->Tn, P = a->P, S = a->S, nb = b1 - b0, K = a->G[1];
    const long hard = a->ints[0];
    T *dh = a->state[0];
    T *du = scratch, *dalpha = scratch + nb * H;
    for (long b = b0; b < b1; b++)
        memcpy(NAME(at)(a->rg[2], a, b, t, H), dh + b * H, H * sizeof(T));
    T *dl0 = NAME(at)(a->rg[1], a, b0, t, K);
    if (hard) {
        for (long b = b0; b < b1; b++) memset(NAME(at)(a->rg[1], a, b, t, K), 0, K * sizeof(T));
        memset(du, 0, nb * H * sizeof(T));
    } else {
        NAME(mmp)(dalpha, K, 0, 0, dh + b0 * H, H, a->W[2], nb, H, K);
        for (long b = b0; b < b1; b++) {
            const T *restrict al = NAME(at)(a->saved, a, b, t, S) + 5 * H;
            const T *restrict da = dalpha + (b - b0) * K;
            T *restrict dl = NAME(at)(a->rg[1], a, b, t, K);
            T s = 0;
            for (long j = 0; j < K; j++) s += al[j] * da[j];
            for (long j = 0; j < K; j++) dl[j] = al[j] * (da[j] - s);
        }
        NAME(mmp)(du, H, 0, 0, dl0, T_ * K, a->W[1], nb, K, H);
    }
    for (long b = b0; b < b1; b++) {
        const T *restrict sv = NAME(at)(a->saved, a, b, t, S);
        const T *restrict h = sv, *restrict r = sv + H, *restrict z = sv + 2 * H,
                *restrict n = sv + 3 * H, *restrict gh = sv + 4 * H;
        const T *restrict dur = du + (b - b0) * H;
        T *restrict g = NAME(at)(a->rg[0], a, b, t, 3 * H);
        T *restrict dp = NAME(at)(a->dxp, a, b, t, P);
        T *restrict dhr = dh + b * H;
        ELEMENTWISE for (long k = 0; k < H; k++) {
            const T d = dur[k], dhz = d * z[k];
            const T dan = (d - dhz) * (1 - n[k] * n[k]);
            g[k] = dan * gh[k] * r[k] * (1 - r[k]);
            g[H + k] = d * (h[k] - n[k]) * z[k] * (1 - z[k]);
            g[2 * H + k] = dan * r[k];
            dp[3 * H + k] = dan;
            dhr[k] = dhz;
        }
        memcpy(dp, g, 3 * H * sizeof(T));
    }
    NAME(mmp)(dh + b0 * H, H, dh + b0 * H, H, NAME(at)(a->rg[0], a, b0, t, 3 * H), T_ * 3 * H,
              a->W[0], nb, 3 * H, H);
}

/* scratch per row: forward the 3H pre-activations and K logits, backward du (H) and
   d alpha (K); K = S - 5H (d[5] = S, d[2] = H) */
void NAME(srnn_fwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(srnn_step), d[5] - 2 * d[2], 0);
}

void NAME(srnn_bwd)(void **p, const long *d, long b0, long b1) {
    NAME(drive_packed)(p, d, b0, b1, NAME(srnn_back), d[5] - 4 * d[2], 1);
}

#endif
