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
   Backward from dP, dpc, dGl, dS, ds, in reverse with gW, gc the gradient in W_{j+1}, c_{j+1}:
       dtau -= <gW, S_j> + <gc, s_j>,   gS = dS_j - tau gW,   gs = ds_j - tau gc  (dA0, da0 at 0)
       gW += dP_j,  gc += dpc_j
       dGl' = dGl_j + k gS + gs,   dk = lr o (G gS^T),   dlr_i = G_i . dGl'_i,   dG = lr o dGl'
       (dZ, dt, dw, db) = the norm's backward of dG (ttt_norm.h),   dv = dt,   dk -= dt
       dk += dZ W_j^T,   gW += k^T dZ,   gc += sum_i dZ_i
   and dW, dc = gW, gc at the end. Z and G are recomputed from P_j. dw, db (the norm's, per row
   (K)) and dtau (per row) are summed by the caller.
   Rows r in [r0, r1) of contiguous (R, NT, ...) blocks; a row's head is r % H. Plain C;
   compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "ttt_loop.c"
#include "each_type.h"

#else

#include "ttt_norm.h"

/* Z (M, K) = k (M, K) W (K, K) + c;  t = v - k */
static inline void NAME(ttt_loop_z)(const T *restrict k, const T *restrict v,
                                    const T *restrict W, const T *restrict c, T *restrict Z,
                                    T *restrict t, long M, long K) {
    for (long i = 0; i < M; i++) {
        T *z = Z + i * K;
        const T *ki = k + i * K;
        #pragma omp simd
        for (long o = 0; o < K; o++) {
            z[o] = c[o];
            t[i * K + o] = v[i * K + o] - ki[o];
        }
        for (long p = 0; p < K; p++) {
            const T a = ki[p], *w = W + p * K;
            #pragma omp simd
            for (long o = 0; o < K; o++) z[o] += a * w[o];
        }
    }
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

static inline __attribute__((always_inline)) void NAME(ttt_loop_fwd_rows)(
        const T *restrict Wst, const T *restrict cst, const T *restrict A0,
        const T *restrict a0, const T *restrict k, const T *restrict v, const T *restrict lr,
        const T *restrict nw, const T *restrict nb, const T *restrict tok, T *restrict P,
        T *restrict pc, T *restrict Gl, T *restrict S, T *restrict s, long NT, long M, long K,
        long H, long norm, double eps, long r0, long r1) {
    const long KK = K * K, MK = M * K;
    const T tau = tok[M - 1];
    T *W = malloc((KK + K + 3 * MK + 2 * K) * sizeof(T));
    T *c = W + KK, *Z = c + K, *t = Z + MK, *G = t + MK, *sc = G + MK;
    for (long r = r0; r < r1; r++) {
        const T *wh = nw ? nw + (r % H) * K : NULL, *bh = nb ? nb + (r % H) * K : NULL;
        memcpy(W, Wst + r * KK, KK * sizeof(T));
        memcpy(c, cst + r * K, K * sizeof(T));
        for (long j = 0; j < NT; j++) {
            const long o2 = r * NT + j;
            const T *kj = k + o2 * MK, *vj = v + o2 * MK, *lj = lr + o2 * M;
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
                const T *g = Glj + i * K, *ki = kj + i * K;
                #pragma omp simd
                for (long o = 0; o < K; o++) sj[o] += g[o];
                for (long p = 0; p < K; p++) {
                    const T a = ki[p];
                    T *row = Sj + p * K;
                    #pragma omp simd
                    for (long o = 0; o < K; o++) row[o] += a * g[o];
                }
            }
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
        T *restrict dlr, T *restrict dnw, T *restrict dnb, T *restrict dtau, long NT, long M,
        long K, long H, long norm, double eps, long r0, long r1) {
    const long KK = K * K, MK = M * K;
    const T tau = tok[M - 1];
    T *gW = malloc((4 * KK + 2 * K + 5 * MK + 8 * K) * sizeof(T));
    T *gS = gW + KK, *gST = gS + KK, *WT = gST + KK, *gc = WT + KK, *gs = gc + K, *Z = gs + K, *t = Z + MK, *G = t + MK;
    T *dg = G + MK, *dZ = dg + MK, *sc = dZ + MK, *dwr = sc + 5 * K, *dbr = dwr + K;
    T *dtr = dbr + K;
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
            const T *kj = k + o2 * MK, *vj = v + o2 * MK, *lj = lr + o2 * M;
            const T *dPj = dP + o2 * KK, *dSj = dS + o2 * KK, *dGlj = dGl + o2 * MK;
            T *dkj = dk + o2 * MK, *dvj = dv + o2 * MK, *dlj = dlr + o2 * M;
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
                gs[o] = ds[o2 * K + o] - tau * gc[o];
                gc[o] += dpc[o2 * K + o];
            }
            dt_r -= acc;
            if (j == 0) {
                memcpy(dA0 + r * KK, gS, KK * sizeof(T));
                memcpy(da0 + r * K, gs, K * sizeof(T));
            }
            for (long p = 0; p < K; p++)
                for (long o = 0; o < K; o++) {
                    gST[o * K + p] = gS[p * K + o];
                    WT[o * K + p] = Wj[p * K + o];
                }
            NAME(ttt_loop_z)(kj, vj, Wj, cj, Z, t, M, K);
            NAME(ttt_loop_g)(Z, t, wh, bh, G, sc, M, K, norm, (T)eps);
            for (long i = 0; i < M; i++) {
                const T *ki = kj + i * K, *gi = G + i * K, l = lj[i];
                T *d = dg + i * K, *dki = dkj + i * K;
                /* dGl' = dGl + gs + k gS */
                #pragma omp simd
                for (long o = 0; o < K; o++) d[o] = dGlj[i * K + o] + gs[o];
                for (long p = 0; p < K; p++) {
                    const T a = ki[p], *row = gS + p * K;
                    #pragma omp simd
                    for (long o = 0; o < K; o++) d[o] += a * row[o];
                }
                /* dk = lr (G gS^T), dlr = G . dGl', dG = lr dGl' */
                #pragma omp simd
                for (long p = 0; p < K; p++) dki[p] = 0;
                for (long o = 0; o < K; o++) {
                    const T a = l * gi[o], *row = gST + o * K;
                    #pragma omp simd
                    for (long p = 0; p < K; p++) dki[p] += a * row[p];
                }
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
                /* dv = dt, dk -= dt, dk += dZ W^T, gc += dZ */
                #pragma omp simd
                for (long o = 0; o < K; o++) {
                    dvj[i * K + o] = dtr[o];
                    dki[o] -= dtr[o];
                    gc[o] += dzi[o];
                }
                for (long o = 0; o < K; o++) {
                    const T a = dzi[o], *row = WT + o * K;
                    #pragma omp simd
                    for (long p = 0; p < K; p++) dki[p] += a * row[p];
                }
                /* gW += k_i^T dZ_i */
                for (long p = 0; p < K; p++) {
                    const T a = ki[p];
                    T *row = gW + p * K;
                    #pragma omp simd
                    for (long o = 0; o < K; o++) row[o] += a * dzi[o];
                }
            }
        }
        memcpy(dW + r * KK, gW, KK * sizeof(T));
        memcpy(dc + r * K, gc, K * sizeof(T));
        dtau[r] = dt_r;
    }
    free(gW);
}

/* the exported kernels: the row loops with the common head widths as constants (the
   compiler then keeps a row of K in registers and unrolls its loops) */
#define TTT_LOOP_K(call) switch (K) { case 16: call(16); break; case 32: call(32); break; \
    case 64: call(64); break; default: call(K); }

void NAME(ttt_loop_fwd)(const T *restrict Wst, const T *restrict cst, const T *restrict A0,
                        const T *restrict a0, const T *restrict k, const T *restrict v,
                        const T *restrict lr, const T *restrict nw, const T *restrict nb,
                        const T *restrict tok, T *restrict P, T *restrict pc, T *restrict Gl,
                        T *restrict S, T *restrict s, long NT, long M, long K, long H, long norm,
                        double eps, long r0, long r1) {
#define CALL(k_) NAME(ttt_loop_fwd_rows)(Wst, cst, A0, a0, k, v, lr, nw, nb, tok, P, pc, Gl, \
                                         S, s, NT, M, k_, H, norm, eps, r0, r1)
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
                        T *restrict dnb, T *restrict dtau, long NT, long M, long K, long H,
                        long norm, double eps, long r0, long r1) {
#define CALL(k_) NAME(ttt_loop_bwd_rows)(P, pc, k, v, lr, nw, nb, tok, S, s, dP, dpc, dGl, dS, \
                                         ds, dW, dc, dA0, da0, dk, dv, dlr, dnw, dnb, dtau, NT, \
                                         M, k_, H, norm, eps, r0, r1)
    TTT_LOOP_K(CALL)
#undef CALL
}
#undef TTT_LOOP_K

#endif
