/* TTT-Linear's mini-batch loop (ops/memory.py: ttt_minibatch, kind "linear"), a (batch x head)
   row at a time over all its mini-batches, forward and backward: what was ~20 small torch ops
   a mini-batch forward (and ~45 through autograd) for the whole batch is one pass a row, and
   the rows split over the threads.

   Per row, with W (K, K), c (K) the weights at the loop's start, tau = tok[M-1], and each
   mini-batch j's inputs k, v (M, K), rates lr (M):
       P_j = W, pc_j = c                                (the mini-batch's start weights)
       Z = k W + c,   G = d/dZ 1/2 |LN(Z) w + b - (v - k)|^2   (ttt_norm.h; Z - (v - k) without
                                                             the norm)
       Gl = lr o G,   S_j = k^T Gl (+ A0 at j = 0),   s_j = sum_i Gl_i (+ a0 at j = 0)
       W <- W - tau S_j,   c <- c - tau s_j
   Outputs P, pc, Gl, S, s for every j (the reads and the state take them).
   Backward from dP, dpc, dGl, dS, ds (dS, ds NULL: zero), in reverse with gW, gc the gradient in W_{j+1}, c_{j+1}:
       dtau -= <gW, S_j> + <gc, s_j>,   gS = dS_j - tau gW,   gs = ds_j - tau gc  (dA0, da0 at 0)
       gW += dP_j,  gc += dpc_j
       dGl' = dGl_j + k gS + gs,   dk = lr o (G gS^T),   dlr_i = G_i . dGl'_i,   dG = lr o dGl'
       (dZ, dt, dw, db) = the norm's backward of dG (ttt_norm.h),   dv = dt,   dk -= dt
       dk += dZ W_j^T,   gW += k^T dZ,   gc += sum_i dZ_i
   and dW, dc = gW, gc at the end. Z and G are recomputed from P_j. dw, db (the norm's, per row
   (K)) and dtau (per row) are summed by the caller.
   Rows r in [r0, r1) of contiguous (R, NT, ...) blocks (the linear loop's k, v, lr and their
   gradients at strides: ttt_at); a row's head is r % H. Plain C;
   compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ttt_loop.c"
#include "each_type.h"

#else

#include "ttt_norm.h"
#include "transpose.h"
#include "mm.h"  /* mm: the MLP loop's products on register tiles */

/* C (m, n) = (acc ? C : 0) + A (m, p) B (p, n), all row-major, on mm.h's register tiles */
static inline __attribute__((always_inline)) void NAME(ttt_nn)(
        const T *restrict A, const T *restrict B, T *restrict C, long m, long p, long n,
        int acc) {
    NAME(mm)(A, B, C, m, n, p, p, 1, n, 1, n, 0, 0, 0, acc, 0, m);
}

/* C (p, n) += A (m, p)^T B (m, n) (A^T read through its strides) */
static inline __attribute__((always_inline)) void NAME(ttt_tn)(
        const T *restrict A, const T *restrict B, T *restrict C, long m, long p, long n) {
    NAME(mm)(A, B, C, p, n, m, 1, p, n, 1, n, 0, 0, 0, 1, 0, p);
}

/* out (c, r) = in (r, c)^T (transpose.h's 8 x 8 vector blocks) */
static inline void NAME(ttt_tr)(const T *restrict in, T *restrict out, long r, long c) {
    NAME(trs)(out, r, in, c, r, c);
}

/* Z (M, K) = k (M, K) W (K, K) + c;  t = v - k */
static inline void NAME(ttt_loop_z)(const T *restrict k, const T *restrict v,
                                    const T *restrict W, const T *restrict c, T *restrict Z,
                                    T *restrict t, long M, long K) {
    for (long i = 0; i < M; i++) {
        #pragma omp simd
        for (long o = 0; o < K; o++) {
            Z[i * K + o] = c[o];
            t[i * K + o] = v[i * K + o] - k[i * K + o];
        }
    }
    NAME(ttt_nn)(k, W, Z, M, K, K, 1);
}

/* G = the inner loss's gradient in Z, row by row; sc: scratch (2 K) */
static inline void NAME(ttt_loop_g)(const T *restrict Z, const T *restrict t,
                                    const T *restrict wh, const T *restrict bh, T *restrict G,
                                    T *restrict sc, long M, long K, long norm, T eps) {
    for (long i = 0; i < M; i++) {
        if (norm) {
            NAME(ttt_norm_fwd_row)(Z + i * K, t + i * K, wh, bh, G + i * K, sc, sc + K, K, eps);
        } else {
            #pragma omp simd
            for (long o = 0; o < K; o++) G[i * K + o] = Z[i * K + o] - t[i * K + o];
        }
    }
}

/* the linear loop's inputs k, v (B, H, NT, M, K), lr (B, H, NT, M) and their gradients at any
   strides (a layer's (B, T, H, K) tensors viewed as mini-batches: no copies): st holds each
   one's (B, H, NT, M) strides, in the order k, v, lr, dk, dv, dlr; a mini-batch's rows are
   gathered into (scattered from) contiguous scratch */
static inline long NAME(ttt_at)(const long *s, long r, long j, long H) {
    return r / H * s[0] + r % H * s[1] + j * s[2];
}

static inline void NAME(ttt_gather)(const T *restrict src, long ls, T *restrict dst, long M,
                                    long K) {
    if (ls == K) {
        memcpy(dst, src, M * K * sizeof(T));
        return;
    }
    for (long i = 0; i < M; i++) memcpy(dst + i * K, src + i * ls, K * sizeof(T));
}

static inline void NAME(ttt_scatter)(const T *restrict src, T *restrict dst, long ls, long M,
                                     long K) {
    if (ls == K) {
        memcpy(dst, src, M * K * sizeof(T));
        return;
    }
    for (long i = 0; i < M; i++) memcpy(dst + i * ls, src + i * K, K * sizeof(T));
}

static inline __attribute__((always_inline)) void NAME(ttt_loop_fwd_rows)(
        const T *restrict Wst, const T *restrict cst, const T *restrict A0,
        const T *restrict a0, const T *restrict k, const T *restrict v, const T *restrict lr,
        const T *restrict nw, const T *restrict nb, const T *restrict tok, T *restrict P,
        T *restrict pc, T *restrict Gl, T *restrict S, T *restrict s, const long *restrict st,
        long NT, long M, long K, long H, long norm, double eps, long r0, long r1) {
    const long KK = K * K, MK = M * K;
    const T tau = tok[M - 1];
    T *W = malloc((KK + K + 5 * MK + 2 * K + M) * sizeof(T));
    T *c = W + KK, *Z = c + K, *t = Z + MK, *G = t + MK, *sc = G + MK;
    T *kj = sc + 2 * K, *vj = kj + MK, *lj = vj + MK;
    for (long r = r0; r < r1; r++) {
        const T *wh = nw ? nw + (r % H) * K : NULL, *bh = nb ? nb + (r % H) * K : NULL;
        memcpy(W, Wst + r * KK, KK * sizeof(T));
        memcpy(c, cst + r * K, K * sizeof(T));
        for (long j = 0; j < NT; j++) {
            const long o2 = r * NT + j;
            const T *lr_j = lr + NAME(ttt_at)(st + 8, r, j, H);
            NAME(ttt_gather)(k + NAME(ttt_at)(st, r, j, H), st[3], kj, M, K);
            NAME(ttt_gather)(v + NAME(ttt_at)(st + 4, r, j, H), st[7], vj, M, K);
            for (long i = 0; i < M; i++) lj[i] = lr_j[i * st[11]];
            T *Sj = S + o2 * KK, *sj = s + o2 * K, *Glj = Gl + o2 * MK;
            memcpy(P + o2 * KK, W, KK * sizeof(T));
            memcpy(pc + o2 * K, c, K * sizeof(T));
            NAME(ttt_loop_z)(kj, vj, W, c, Z, t, M, K);
            NAME(ttt_loop_g)(Z, t, wh, bh, G, sc, M, K, norm, (T)eps);
            for (long i = 0; i < M; i++) {
                #pragma omp simd
                for (long o = 0; o < K; o++) Glj[i * K + o] = lj[i] * G[i * K + o];
            }
            if (j == 0) {
                memcpy(Sj, A0 + r * KK, KK * sizeof(T));
                memcpy(sj, a0 + r * K, K * sizeof(T));
            } else {
                memset(Sj, 0, KK * sizeof(T));
                memset(sj, 0, K * sizeof(T));
            }
            for (long i = 0; i < M; i++) {
                #pragma omp simd
                for (long o = 0; o < K; o++) sj[o] += Glj[i * K + o];
            }
            NAME(ttt_tn)(kj, Glj, Sj, M, K, K);
            #pragma omp simd
            for (long i = 0; i < KK; i++) W[i] -= tau * Sj[i];
            #pragma omp simd
            for (long o = 0; o < K; o++) c[o] -= tau * sj[o];
        }
    }
    free(W);
}

static inline __attribute__((always_inline)) void NAME(ttt_loop_bwd_rows)(
        const T *restrict P, const T *restrict pc, const T *restrict k, const T *restrict v,
        const T *restrict lr, const T *restrict nw, const T *restrict nb, const T *restrict tok,
        const T *restrict S, const T *restrict s, const T *restrict dP, const T *restrict dpc,
        const T *restrict dGl, const T *restrict dS, const T *restrict ds, T *restrict dW,
        T *restrict dc, T *restrict dA0, T *restrict da0, T *restrict dk, T *restrict dv,
        T *restrict dlr, T *restrict dnw, T *restrict dnb, T *restrict dtau,
        const long *restrict st, long NT, long M, long K, long H, long norm, double eps,
        long r0, long r1) {
    const long KK = K * K, MK = M * K;
    const T tau = tok[M - 1];
    T *gW = malloc((4 * KK + 2 * K + 9 * MK + 8 * K + 2 * M) * sizeof(T));
    T *gS = gW + KK, *gST = gS + KK, *WT = gST + KK, *gc = WT + KK, *gs = gc + K, *Z = gs + K, *t = Z + MK, *G = t + MK;
    T *dg = G + MK, *dZ = dg + MK, *sc = dZ + MK, *dwr = sc + 5 * K, *dbr = dwr + K;
    T *dtr = dbr + K, *kj = dtr + K, *vj = kj + MK, *dkj = vj + MK, *dvj = dkj + MK;
    T *lj = dvj + MK, *dlj = lj + M;
    /* dS, ds NULL: zero (the final sums' gradient not asked for): a zero block read instead */
    T *zS = calloc(KK + K, sizeof(T)), *zs = zS + KK;
    for (long r = r0; r < r1; r++) {
        const T *wh = nw ? nw + (r % H) * K : NULL, *bh = nb ? nb + (r % H) * K : NULL;
        T *dnwr = dnw + r * K, *dnbr = dnb + r * K;
        memset(gW, 0, KK * sizeof(T));
        memset(gc, 0, K * sizeof(T));
        memset(dnwr, 0, K * sizeof(T));
        memset(dnbr, 0, K * sizeof(T));
        T dt_r = 0;
        for (long j = NT - 1; j >= 0; j--) {
            const long o2 = r * NT + j;
            const T *Wj = P + o2 * KK, *cj = pc + o2 * K, *Sj = S + o2 * KK, *sj = s + o2 * K;
            const T *lr_j = lr + NAME(ttt_at)(st + 8, r, j, H);
            NAME(ttt_gather)(k + NAME(ttt_at)(st, r, j, H), st[3], kj, M, K);
            NAME(ttt_gather)(v + NAME(ttt_at)(st + 4, r, j, H), st[7], vj, M, K);
            for (long i = 0; i < M; i++) lj[i] = lr_j[i * st[11]];
            const T *dPj = dP + o2 * KK, *dSj = dS ? dS + o2 * KK : zS, *dGlj = dGl + o2 * MK;
            const T *dsj = ds ? ds + o2 * K : zs;
            T acc = 0;
            #pragma omp simd reduction(+:acc)
            for (long i = 0; i < KK; i++) {
                acc += gW[i] * Sj[i];
                gS[i] = dSj[i] - tau * gW[i];
                gW[i] += dPj[i];
            }
            #pragma omp simd reduction(+:acc)
            for (long o = 0; o < K; o++) {
                acc += gc[o] * sj[o];
                gs[o] = dsj[o] - tau * gc[o];
                gc[o] += dpc[o2 * K + o];
            }
            dt_r -= acc;
            if (j == 0) {
                memcpy(dA0 + r * KK, gS, KK * sizeof(T));
                memcpy(da0 + r * K, gs, K * sizeof(T));
            }
            NAME(ttt_tr)(gS, gST, K, K);
            NAME(ttt_tr)(Wj, WT, K, K);
            NAME(ttt_loop_z)(kj, vj, Wj, cj, Z, t, M, K);
            NAME(ttt_loop_g)(Z, t, wh, bh, G, sc, M, K, norm, (T)eps);
            /* dGl' = dGl + gs + k gS (in dg);  dk = lr (G gS^T) */
            for (long i = 0; i < M; i++) {
                #pragma omp simd
                for (long o = 0; o < K; o++) dg[i * K + o] = dGlj[i * K + o] + gs[o];
            }
            NAME(ttt_nn)(kj, gS, dg, M, K, K, 1);
            NAME(ttt_nn)(G, gST, dkj, M, K, K, 0);
            for (long i = 0; i < M; i++) {
                const T *gi = G + i * K, l = lj[i];
                T *d = dg + i * K, *dki = dkj + i * K;
                /* dlr = G . dGl', dG = lr dGl' */
                T x = 0;
                #pragma omp simd reduction(+:x)
                for (long o = 0; o < K; o++) {
                    x += gi[o] * d[o];
                    d[o] *= l;
                }
                dlj[i] = x;
                T *dzi = dZ + i * K;
                if (norm) {
                    NAME(ttt_norm_bwd_row)(Z + i * K, t + i * K, wh, bh, d, dzi, dtr, dwr, dbr,
                                           sc, K, (T)eps);
                    #pragma omp simd
                    for (long o = 0; o < K; o++) {
                        dnwr[o] += dwr[o];
                        dnbr[o] += dbr[o];
                    }
                } else {
                    #pragma omp simd
                    for (long o = 0; o < K; o++) {
                        dzi[o] = d[o];
                        dtr[o] = -d[o];
                    }
                }
                /* dv = dt, dk -= dt, gc += dZ */
                #pragma omp simd
                for (long o = 0; o < K; o++) {
                    dvj[i * K + o] = dtr[o];
                    dki[o] = l * dki[o] - dtr[o];
                    gc[o] += dzi[o];
                }
            }
            /* dk += dZ W^T,  gW += k^T dZ */
            NAME(ttt_nn)(dZ, WT, dkj, M, K, K, 1);
            NAME(ttt_tn)(kj, dZ, gW, M, K, K);
            NAME(ttt_scatter)(dkj, dk + NAME(ttt_at)(st + 12, r, j, H), st[15], M, K);
            NAME(ttt_scatter)(dvj, dv + NAME(ttt_at)(st + 16, r, j, H), st[19], M, K);
            T *dlr_j = dlr + NAME(ttt_at)(st + 20, r, j, H);
            for (long i = 0; i < M; i++) dlr_j[i * st[23]] = dlj[i];
        }
        memcpy(dW + r * KK, gW, KK * sizeof(T));
        memcpy(dc + r * K, gc, K * sizeof(T));
        dtau[r] = dt_r;
    }
    free(zS);
    free(gW);
}

/* -- TTT-MLP: f_res(x) = gelu(x W1 + b1) W2 + b2, W1 (K, F), W2 (F, K) ------------------------
   Per mini-batch (the loop as above, with the MLP's gradients):
       Z1 = k W1 + b1,  X2 = gelu(Z1),  Z = X2 W2 + b2,  G = the norm's gradient (as above)
       H1 = G W2^T,  G1 = gelu'(Z1) o H1,  Gl1 = lr o G1,  Gl2 = lr o G
       S1 = k^T Gl1, s1 = sum Gl1, S2 = X2^T Gl2, s2 = sum Gl2 (+ the state's sums at j = 0)
       W <- W - tau S (each of W1, b1, W2, b2)
   Outputs the start weights P1, pb1, P2, pb2, X2, Gl1, Gl2 of every mini-batch and, per row,
   Fin = (W1, b1, W2, b2, S1, s1, S2, s2) of the row's last mini-batch (last[b], b = r / H).
   Backward (gX the gradient in the weights after mini-batch j; dP, dX2, dGl from the reads):
       dtau -= <gW, S> (all four),  gS = dFin_S [j = last] - tau gW,  gW += dP + dFin_W [j = last]
       dGl1' = dGl1 + gs1 + k gS1,   dGl2' = dGl2 + gs2 + X2 gS2
       dk = Gl1 gS1^T,   dX2' = dX2 + Gl2 gS2^T,   dlr = G1 . dGl1' + G . dGl2'
       dG1 = lr dGl1',   dG = lr dGl2',   dH1 = gelu'(Z1) dG1,   dZ1 = gelu''(Z1) H1 dG1
       dG += dH1 W2,   gW2 += dH1^T G,   (dZ, dt) = the norm's backward of dG,  dv = dt, dk -= dt
       dX2' += dZ W2^T,  gW2 += X2^T dZ,  gb2 += sum dZ,  dZ1 += gelu'(Z1) dX2'
       dk += dZ1 W1^T,   gW1 += k^T dZ1,  gb1 += sum dZ1
   S1, S2 are recomputed (k^T Gl1, X2^T Gl2) rather than kept. GELU as memory_gelu.c's. */

#define TTT_GS ((T)0.7978845608028654)
#define TTT_GC ((T)0.044715)

/* gelu(z), g'(z), g''(z) of a row of n (memory_gelu.c's formulas); any output may be NULL */
static inline void NAME(ttt_gelu_row)(const T *restrict z, T *restrict y, T *restrict d1,
                                      T *restrict d2, long n) {
    #pragma omp simd
    for (long j = 0; j < n; j++) {
        T x = z[j], u = TTT_GS * (x + TTT_GC * x * x * x), e = EXP(2 * u), r = 1 / (e + 1);
        T sech2 = 4 * r * (e * r), t = 1 - 2 * r, du = TTT_GS * (1 + 3 * TTT_GC * x * x);
        if (y) y[j] = (T)0.5 * x * (1 + t);
        if (d1) d1[j] = (T)0.5 * (1 + t) + (T)0.5 * x * sech2 * du;
        if (d2) d2[j] = sech2 * (du - x * t * du * du + 3 * TTT_GS * TTT_GC * x * x);
    }
}

/* row sums: s (n) = (acc ? s : 0) + sum_i A_i (m, n) */
static inline void NAME(ttt_colsum)(const T *restrict A, T *restrict s, long m, long n, int acc) {
    if (!acc) memset(s, 0, n * sizeof(T));
    for (long i = 0; i < m; i++) {
        #pragma omp simd
        for (long o = 0; o < n; o++) s[o] += A[i * n + o];
    }
}

static inline T NAME(ttt_dot)(const T *restrict a, const T *restrict b, long n) {
    T x = 0;
    #pragma omp simd reduction(+:x)
    for (long o = 0; o < n; o++) x += a[o] * b[o];
    return x;
}

/* Z1, X2 (gelu), D1 (gelu'), Z, t, G, H1 of one mini-batch at W1, b1, W2, b2; W2T scratch */
static inline __attribute__((always_inline)) void NAME(ttt_mlp_grads)(
        const T *restrict k, const T *restrict v, const T *restrict W1, const T *restrict b1,
        const T *restrict W2, const T *restrict b2, const T *restrict wh, const T *restrict bh,
        T *restrict Z1, T *restrict X2, T *restrict D1, T *restrict D2, T *restrict Z,
        T *restrict t, T *restrict G, T *restrict H1, T *restrict W2T, T *restrict sc, long M,
        long K, long F, long norm, T eps) {
    for (long i = 0; i < M; i++) memcpy(Z1 + i * F, b1, F * sizeof(T));
    NAME(ttt_nn)(k, W1, Z1, M, K, F, 1);
    for (long i = 0; i < M; i++)
        NAME(ttt_gelu_row)(Z1 + i * F, X2 + i * F, D1 + i * F, D2 ? D2 + i * F : NULL, F);
    for (long i = 0; i < M; i++) {
        memcpy(Z + i * K, b2, K * sizeof(T));
        #pragma omp simd
        for (long o = 0; o < K; o++) t[i * K + o] = v[i * K + o] - k[i * K + o];
    }
    NAME(ttt_nn)(X2, W2, Z, M, F, K, 1);
    NAME(ttt_loop_g)(Z, t, wh, bh, G, sc, M, K, norm, eps);
    NAME(ttt_tr)(W2, W2T, F, K);
    NAME(ttt_nn)(G, W2T, H1, M, K, F, 0);
}

static inline __attribute__((always_inline)) void NAME(ttt_mlp_fwd_rows)(
        const T *restrict Ws, const T *restrict A, const T *restrict k, const T *restrict v, const T *restrict lr,
        const T *restrict nw, const T *restrict nb, const T *restrict tok,
        const long *restrict last, T *restrict P1, T *restrict pb1, T *restrict P2,
        T *restrict pb2, T *restrict X2o, T *restrict Gl1o, T *restrict Gl2o, T *restrict Fin,
        long NT, long M, long K, long F, long H, long norm, double eps, long r0, long r1) {
    const long KF = K * F, MK = M * K, MF = M * F, L = 2 * (2 * KF + F + K);
    const T tau = tok[M - 1];
    T *W1 = malloc((2 * KF + F + K + 2 * KF + F + K + 4 * MF + 3 * MK + KF + 2 * K) * sizeof(T));
    T *b1 = W1 + KF, *W2 = b1 + F, *b2 = W2 + KF, *S1 = b2 + K, *s1 = S1 + KF, *S2 = s1 + F;
    T *s2 = S2 + KF, *Z1 = s2 + K, *D1 = Z1 + MF, *H1 = D1 + MF, *G1 = H1 + MF, *Z = G1 + MF;
    T *t = Z + MK, *G = t + MK, *W2T = G + MK, *sc = W2T + KF;
    for (long r = r0; r < r1; r++) {
        const T *wh = nw ? nw + (r % H) * K : NULL, *bh = nb ? nb + (r % H) * K : NULL;
        const long jl = last[r / H];
        memcpy(W1, Ws + r * (L / 2), L / 2 * sizeof(T));   /* W1, b1, W2, b2 */
        for (long j = 0; j < NT; j++) {
            const long o2 = r * NT + j;
            const T *kj = k + o2 * MK, *vj = v + o2 * MK, *lj = lr + o2 * M;
            T *X2 = X2o + o2 * MF, *Gl1 = Gl1o + o2 * MF, *Gl2 = Gl2o + o2 * MK;
            memcpy(P1 + o2 * KF, W1, KF * sizeof(T));
            memcpy(pb1 + o2 * F, b1, F * sizeof(T));
            memcpy(P2 + o2 * KF, W2, KF * sizeof(T));
            memcpy(pb2 + o2 * K, b2, K * sizeof(T));
            NAME(ttt_mlp_grads)(kj, vj, W1, b1, W2, b2, wh, bh, Z1, X2, D1, NULL, Z, t, G, H1,
                                W2T, sc, M, K, F, norm, (T)eps);
            for (long i = 0; i < M; i++) {
                #pragma omp simd
                for (long f = 0; f < F; f++) Gl1[i * F + f] = lj[i] * D1[i * F + f] * H1[i * F + f];
                #pragma omp simd
                for (long o = 0; o < K; o++) Gl2[i * K + o] = lj[i] * G[i * K + o];
            }
            if (j == 0)   /* S1, s1, S2, s2 */
                memcpy(S1, A + r * (L / 2), L / 2 * sizeof(T));
            else
                memset(S1, 0, L / 2 * sizeof(T));
            NAME(ttt_tn)(kj, Gl1, S1, M, K, F);
            NAME(ttt_colsum)(Gl1, s1, M, F, 1);
            NAME(ttt_tn)(X2, Gl2, S2, M, F, K);
            NAME(ttt_colsum)(Gl2, s2, M, K, 1);
            if (j == jl) {
                memcpy(Fin + r * L, W1, L / 2 * sizeof(T));     /* W1, b1, W2, b2 */
                memcpy(Fin + r * L + L / 2, S1, L / 2 * sizeof(T));
            }
            #pragma omp simd
            for (long i = 0; i < 2 * KF + F + K; i++) W1[i] -= tau * S1[i];
        }
    }
    free(W1);
}

static inline __attribute__((always_inline)) void NAME(ttt_mlp_bwd_rows)(
        const T *restrict P1, const T *restrict pb1, const T *restrict P2,
        const T *restrict pb2, const T *restrict A, const T *restrict k, const T *restrict v, const T *restrict lr, const T *restrict nw,
        const T *restrict nb, const T *restrict tok, const long *restrict last,
        const T *restrict dP1, const T *restrict dpb1, const T *restrict dP2,
        const T *restrict dpb2, const T *restrict dX2o, const T *restrict dGl1o,
        const T *restrict dGl2o, const T *restrict dFin, T *restrict dWs, T *restrict dA,
        T *restrict dk, T *restrict dv, T *restrict dlr, T *restrict dn, T *restrict dtau,
        long NT, long M, long K, long F, long H, long norm, double eps, long r0, long r1) {
    const long KF = K * F, MK = M * K, MF = M * F, L = 2 * (2 * KF + F + K), L2 = L / 2;
    const T tau = tok[M - 1];
    /* g: gW1, gb1, gW2, gb2 (L2); gS: likewise; S: S1, s1, S2, s2 (L2) */
    T *g = malloc((3 * L2 + 8 * MF + 4 * MK + 2 * KF + 8 * K) * sizeof(T));
    T *gS = g + L2, *S = gS + L2, *Z1 = S + L2, *X2 = Z1 + MF, *D1 = X2 + MF, *D2 = D1 + MF;
    T *H1 = D2 + MF, *Gl1 = H1 + MF, *dGl1 = Gl1 + MF, *dX2 = dGl1 + MF, *Z = dX2 + MF;
    T *t = Z + MK, *G = t + MK, *dGl2 = G + MK, *W2T = dGl2 + MK, *Tr = W2T + KF;
    T *sc = Tr + KF, *dwr = sc + 5 * K, *dbr = dwr + K, *dtr = dbr + K;
    T *gW1 = g, *gb1 = g + KF, *gW2 = gb1 + F, *gb2 = gW2 + KF;
    T *gS1 = gS, *gs1 = gS + KF, *gS2 = gs1 + F, *gs2 = gS2 + KF;
    T *S1 = S, *s1 = S + KF, *S2 = s1 + F, *s2 = S2 + KF;
    for (long r = r0; r < r1; r++) {
        const T *wh = nw ? nw + (r % H) * K : NULL, *bh = nb ? nb + (r % H) * K : NULL;
        const long jl = last[r / H];
        T *dnw = dn + r * 2 * K, *dnb = dnw + K;
        memset(g, 0, L2 * sizeof(T));
        memset(dnw, 0, 2 * K * sizeof(T));
        T dt_r = 0;
        for (long j = NT - 1; j >= 0; j--) {
            const long o2 = r * NT + j;
            const T *W1 = P1 + o2 * KF, *b1 = pb1 + o2 * F, *W2 = P2 + o2 * KF, *b2 = pb2 + o2 * K;
            const T *kj = k + o2 * MK, *vj = v + o2 * MK, *lj = lr + o2 * M;
            T *dkj = dk + o2 * MK, *dvj = dv + o2 * MK, *dlj = dlr + o2 * M;
            NAME(ttt_mlp_grads)(kj, vj, W1, b1, W2, b2, wh, bh, Z1, X2, D1, D2, Z, t, G, H1,
                                W2T, sc, M, K, F, norm, (T)eps);
            for (long i = 0; i < M; i++) {
                #pragma omp simd
                for (long f = 0; f < F; f++) Gl1[i * F + f] = lj[i] * D1[i * F + f] * H1[i * F + f];
            }
            /* S (recomputed; Gl2 into Tr) and dtau */
            memset(S, 0, L2 * sizeof(T));
            NAME(ttt_tn)(kj, Gl1, S1, M, K, F);
            NAME(ttt_colsum)(Gl1, s1, M, F, 1);
            for (long i = 0; i < M; i++) {
                #pragma omp simd
                for (long o = 0; o < K; o++) Tr[i * K + o] = lj[i] * G[i * K + o];  /* Gl2 */
            }
            NAME(ttt_tn)(X2, Tr, S2, M, F, K);
            NAME(ttt_colsum)(Tr, s2, M, K, 1);
            T acc = NAME(ttt_dot)(g, S, L2);
            if (j == 0) acc += NAME(ttt_dot)(g, A + r * L2, L2);
            dt_r -= acc;
            /* gS, gW */
            const T *dF = dFin + r * L;
            #pragma omp simd
            for (long i = 0; i < L2; i++) {
                gS[i] = (j == jl ? dF[L2 + i] : 0) - tau * g[i];
                g[i] += j == jl ? dF[i] : 0;
            }
            if (j == 0) memcpy(dA + r * L2, gS, L2 * sizeof(T));
            for (long i = 0; i < KF; i++) {
                gW1[i] += dP1[o2 * KF + i];
                gW2[i] += dP2[o2 * KF + i];
            }
            for (long i = 0; i < F; i++) gb1[i] += dpb1[o2 * F + i];
            for (long i = 0; i < K; i++) gb2[i] += dpb2[o2 * K + i];
            /* dGl1' = dGl1 + gs1 + k gS1;  dGl2' = dGl2 + gs2 + X2 gS2 */
            for (long i = 0; i < M; i++) {
                #pragma omp simd
                for (long f = 0; f < F; f++) dGl1[i * F + f] = dGl1o[o2 * MF + i * F + f] + gs1[f];
                #pragma omp simd
                for (long o = 0; o < K; o++) dGl2[i * K + o] = dGl2o[o2 * MK + i * K + o] + gs2[o];
            }
            NAME(ttt_nn)(kj, gS1, dGl1, M, K, F, 1);
            NAME(ttt_nn)(X2, gS2, dGl2, M, F, K, 1);
            /* dk = Gl1 gS1^T;  dX2' = dX2 + Gl2 gS2^T (Gl2 in Tr); W2T: the transposes' scratch */
            NAME(ttt_tr)(gS1, W2T, K, F);                 /* W2T <- gS1^T (F, K) */
            NAME(ttt_nn)(Gl1, W2T, dkj, M, F, K, 0);
            for (long i = 0; i < M; i++)
                memcpy(dX2 + i * F, dX2o + o2 * MF + i * F, F * sizeof(T));
            NAME(ttt_tr)(gS2, W2T, F, K);                 /* W2T <- gS2^T (K, F) */
            NAME(ttt_nn)(Tr, W2T, dX2, M, K, F, 1);
            /* dlr, dG1 = lr dGl1' (in dGl1), dG = lr dGl2' (in dGl2) */
            for (long i = 0; i < M; i++) {
                T x = NAME(ttt_dot)(G + i * K, dGl2 + i * K, K);
                #pragma omp simd reduction(+:x)
                for (long f = 0; f < F; f++) x += D1[i * F + f] * H1[i * F + f] * dGl1[i * F + f];
                dlj[i] = x;
            }
            for (long i = 0; i < M; i++) {
                const T l = lj[i];
                #pragma omp simd
                for (long f = 0; f < F; f++) {
                    const T d = l * dGl1[i * F + f];
                    dGl1[i * F + f] = D1[i * F + f] * d;              /* dH1 */
                    Gl1[i * F + f] = D2[i * F + f] * H1[i * F + f] * d; /* dZ1 */
                }
                #pragma omp simd
                for (long o = 0; o < K; o++) dGl2[i * K + o] *= l;  /* dG */
            }
            /* dG += dH1 W2;  gW2 += dH1^T G */
            NAME(ttt_nn)(dGl1, W2, dGl2, M, F, K, 1);
            NAME(ttt_tn)(dGl1, G, gW2, M, F, K);
            /* the norm's backward: dZ (in Z's place after use), dt */
            for (long i = 0; i < M; i++) {
                T *dzi = H1 + i * K;  /* H1 is free now: (M, K) fits */
                if (norm) {
                    NAME(ttt_norm_bwd_row)(Z + i * K, t + i * K, wh, bh, dGl2 + i * K, dzi, dtr,
                                           dwr, dbr, sc, K, (T)eps);
                    #pragma omp simd
                    for (long o = 0; o < K; o++) {
                        dnw[o] += dwr[o];
                        dnb[o] += dbr[o];
                    }
                } else {
                    #pragma omp simd
                    for (long o = 0; o < K; o++) {
                        dzi[o] = dGl2[i * K + o];
                        dtr[o] = -dGl2[i * K + o];
                    }
                }
                #pragma omp simd
                for (long o = 0; o < K; o++) {
                    dvj[i * K + o] = dtr[o];
                    dkj[i * K + o] -= dtr[o];
                }
            }
            T *dZ = H1;
            /* dX2' += dZ W2^T;  gW2 += X2^T dZ;  gb2 += sum dZ;  dZ1 += gelu'(Z1) dX2' */
            NAME(ttt_tr)(W2, W2T, F, K);
            NAME(ttt_nn)(dZ, W2T, dX2, M, K, F, 1);
            NAME(ttt_tn)(X2, dZ, gW2, M, F, K);
            NAME(ttt_colsum)(dZ, gb2, M, K, 1);
            for (long i = 0; i < MF; i++) Gl1[i] += D1[i] * dX2[i];
            /* dk += dZ1 W1^T;  gW1 += k^T dZ1;  gb1 += sum dZ1 */
            NAME(ttt_tr)(W1, W2T, K, F);                  /* W2T <- W1^T (F, K) */
            NAME(ttt_nn)(Gl1, W2T, dkj, M, F, K, 1);
            NAME(ttt_tn)(kj, Gl1, gW1, M, K, F);
            NAME(ttt_colsum)(Gl1, gb1, M, F, 1);
        }
        memcpy(dWs + r * L2, g, L2 * sizeof(T));
        dtau[r] = dt_r;
    }
    free(g);
}

/* the exported kernels: the row loops with the common head widths as constants (the
   compiler then keeps a row of K in registers and unrolls its loops) */
#define TTT_LOOP_K(call) switch (K) { case 16: call(16); break; case 32: call(32); break; \
    case 64: call(64); break; default: call(K); }

void NAME(ttt_loop_fwd)(const T *restrict Wst, const T *restrict cst, const T *restrict A0,
                        const T *restrict a0, const T *restrict k, const T *restrict v,
                        const T *restrict lr, const T *restrict nw, const T *restrict nb,
                        const T *restrict tok, T *restrict P, T *restrict pc, T *restrict Gl,
                        T *restrict S, T *restrict s, const long *restrict st, double eps,
                        long r0, long r1) {
    /* st: k, v, lr's (B, H, NT, M) strides, then (NT, M, K, H, norm) (one array: at most 32
       integer-class arguments, so ops.native.run hands the ranges to torch's OpenMP team) */
    const long NT = st[12], M = st[13], K = st[14], H = st[15], norm = st[16];
#define CALL(k_) NAME(ttt_loop_fwd_rows)(Wst, cst, A0, a0, k, v, lr, nw, nb, tok, P, pc, Gl, \
                                         S, s, st, NT, M, k_, H, norm, eps, r0, r1)
    TTT_LOOP_K(CALL)
#undef CALL
}

void NAME(ttt_loop_bwd)(const T *restrict P, const T *restrict pc, const T *restrict k,
                        const T *restrict v, const T *restrict lr, const T *restrict nw,
                        const T *restrict nb, const T *restrict tok, const T *restrict S,
                        const T *restrict s, const T *restrict dP, const T *restrict dpc,
                        const T *restrict dGl, const T *restrict dS, const T *restrict ds,
                        T *restrict dW, T *restrict dc, T *restrict dA0, T *restrict da0,
                        T *restrict dk, T *restrict dv, T *restrict dlr, T *restrict dnw,
                        T *restrict dnb, T *restrict dtau, const long *restrict st, double eps,
                        long r0, long r1) {
    /* st: k, v, lr, dk, dv, dlr's (B, H, NT, M) strides, then (NT, M, K, H, norm) */
    const long NT = st[24], M = st[25], K = st[26], H = st[27], norm = st[28];
#define CALL(k_) NAME(ttt_loop_bwd_rows)(P, pc, k, v, lr, nw, nb, tok, S, s, dP, dpc, dGl, dS, \
                                         ds, dW, dc, dA0, da0, dk, dv, dlr, dnw, dnb, dtau, st, \
                                         NT, M, k_, H, norm, eps, r0, r1)
    TTT_LOOP_K(CALL)
#undef CALL
}

void NAME(ttt_mlp_fwd)(const T *restrict Ws, const T *restrict A, const T *restrict k,
                       const T *restrict v, const T *restrict lr, const T *restrict nw,
                       const T *restrict nb, const T *restrict tok, const long *restrict last,
                       T *restrict P1, T *restrict pb1, T *restrict P2, T *restrict pb2,
                       T *restrict X2, T *restrict Gl1, T *restrict Gl2, T *restrict Fin,
                       const long *restrict dims, double eps, long r0, long r1) {
    const long NT = dims[0], M = dims[1], K = dims[2], F = dims[3], H = dims[4], norm = dims[5];
#define CALL(k_) NAME(ttt_mlp_fwd_rows)(Ws, A, k, v, lr, nw, nb, tok, last, P1, pb1, P2, pb2, \
                                        X2, Gl1, Gl2, Fin, NT, M, k_, F, H, norm, eps, r0, r1)
    TTT_LOOP_K(CALL)
#undef CALL
}

void NAME(ttt_mlp_bwd)(const T *restrict P1, const T *restrict pb1, const T *restrict P2,
                       const T *restrict pb2, const T *restrict A, const T *restrict k,
                       const T *restrict v, const T *restrict lr, const T *restrict nw,
                       const T *restrict nb, const T *restrict tok, const long *restrict last,
                       const T *restrict dP1, const T *restrict dpb1, const T *restrict dP2,
                       const T *restrict dpb2, const T *restrict dX2, const T *restrict dGl1,
                       const T *restrict dGl2, const T *restrict dFin, T *restrict dWs,
                       T *restrict dA, T *restrict dk, T *restrict dv, T *restrict dlr,
                       T *restrict dn, T *restrict dtau, const long *restrict dims, double eps,
                       long r0, long r1) {
    const long NT = dims[0], M = dims[1], K = dims[2], F = dims[3], H = dims[4], norm = dims[5];
#define CALL(k_) NAME(ttt_mlp_bwd_rows)(P1, pb1, P2, pb2, A, k, v, lr, nw, nb, tok, last, dP1, \
                                        dpb1, dP2, dpb2, dX2, dGl1, dGl2, dFin, dWs, dA, dk, dv, \
                                        dlr, dn, dtau, NT, M, k_, F, H, norm, eps, r0, r1)
    TTT_LOOP_K(CALL)
#undef CALL
}
#undef TTT_GS
#undef TTT_GC
#undef TTT_LOOP_K

#endif
