/* The gated delta rule (Yang et al. 2024, Gated DeltaNet) as its recurrence, forward and
   backward, one (batch row, head) pair at a time, the (K, V) state in cache:

       S'_t = a_t S_{t-1},  a_t = exp(g_t),   w_t = S'_t^T k_t,   u_t = beta_t (v_t - w_t)
       S_t  = S'_t + k_t u_t^T,               o_t = scale S_t^T q_t

   i.e. S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T. With n > 1 steps a token
   (DeltaProduct's n Householder steps) the gate acts at a token's first step (a = 1 at the
   others) and the query reads after its last; q, o, g have one row a token.

   Every column of S evolves on its own (w_t's and o_t's column j read S's column j only), so
   each pair runs in tiles of VT columns (two 256-bit vectors of T, tile.h): the tile of S
   (K x VT) in L1, u_t, o_t, w_{t+1} of the tile in registers. Forward: one pass over the
   tile a step, S_t = S'_t + k_t u_t^T with the read-out and the next step's decay and
   w_{t+1} = S'_{t+1}^T k_{t+1} in the same pass (a separate decay pass only where a
   checkpoint is due: the state entering steps 0, CK, 2 CK, ... is stored undecayed). It also
   writes d_t = v_t - w_t, so that the backward rebuilds S_t from the checkpoints in one pass a
   step (S_t = a_t S_{t-1} + k_t u_t^T, u_t = beta_t d_t) reading one (V) row a step, not v_t
   and w_t (the backward reads no v). Backward, dS the gradient of S_t (its own read plus the
   transposed later steps):
       dS += scale q_t do_t^T,   dq_t = scale S_t do_t,   du = dS^T k_t,   dk_t = dS u_t
       dv_t = beta_t du,   dbeta_t = <du, d_t>,   dw = -beta_t du
       dS' = dS + k_t dw^T,   dk_t += S'_t dw,   dg_t = <dS', S'_t>,   dS_{t-1} = a_t dS'
   where the second line of step t and the first of step t - 1 share one pass (both read
   S_{t-1}), and dk_t's two sums (dS u_t and S'_t dw) one reduction. The sums over columns
   (dq, dk, dbeta, dg) add up over the tiles, block by block (a block's rows stay in cache),
   dk's and dq's NV rows at a time (one transposing tree of shuffles, tile.h's add_sums);
   a last, narrower tile is padded with zero columns, which stay zero.

   Layouts (row-major, contiguous), Tn steps, Tq = Tn / n tokens: k, dk (batch, Tn, H, K);
   v, d, dv (batch, Tn, H, V); beta, dbeta (batch, Tn, H); q, dq (batch, Tq, H, K); o, dout
   (batch, Tq, H, V); g, dg (batch, Tq, H); S0, ST, dST, dS0 (batch, H, K, V); ck (batch, H,
   nck, K VP) with nck = ceil(Tn / CK), VP = V rounded up to a multiple of 16 (tile by tile,
   each tile's K x VT block contiguous). Each function does the (batch row, head) pairs
   [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define TILE_256  /* tuned for tiles of two 256-bit vectors (tile.h) */
#define KERNELS "delta_scan.c"
#include "each_type.h"

#else

#include "tile.h"

/* the forward's pass over a tile's rows at step t: S_t = S'_t + k_t u^T, its read-out o (read)
   and the next step's S'_{t+1} = an S_t with w_{t+1} = S'_{t+1}^T k_{t+1} (fuse); out holds
   o and w_{t+1}, two vectors each; fuse 1: an = 1 (the next step is not a gate's: no decay,
   DeltaProduct's later Householder steps), 2: the decay. qs = scale q_t and kn = an k_{t+1}
   come scaled (a step's rows, vectorised once by the caller: the loop reads them broadcast
   from memory, no scalar product a row). Inlined with constant flags: six specialised loops. */
TILE_INLINE void NAME(fwd_rows)(VEC *restrict S, const T *restrict kt, const VEC *u,
                                const T *restrict qs, const T *restrict kn, T an,
                                VEC *restrict out, long K, const int read, const int fuse) {
    VEC o0 = {0}, o1 = {0}, n0 = {0}, n1 = {0};
    for (long i = 0; i < K; i++) {
        const T ki = kt[i];
        const VEC s0 = S[2 * i] + ki * u[0], s1 = S[2 * i + 1] + ki * u[1];
        if (read) {
            const T qi = qs[i];
            o0 += qi * s0;
            o1 += qi * s1;
        }
        if (fuse == 2) {
            const T ni = kn[i];
            n0 += ni * s0;
            n1 += ni * s1;
            S[2 * i] = an * s0;
            S[2 * i + 1] = an * s1;
        } else if (fuse == 1) {
            const T ni = kn[i];
            n0 += ni * s0;
            n1 += ni * s1;
            S[2 * i] = s0;
            S[2 * i + 1] = s1;
        } else {
            S[2 * i] = s0;
            S[2 * i + 1] = s1;
        }
    }
    out[0] = o0, out[1] = o1, out[2] = n0, out[3] = n1;
}

void NAME(delta_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict beta, const T *restrict g, const T *restrict S0,
                     T *restrict o, T *restrict d, T *restrict ST, T *restrict ck, T scale,
                     long Tn, long n, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, Tq = Tn / n, VP = TILE_PAD(V);
    VEC *S = aligned_alloc(32, 2 * K * sizeof(VEC));
    T *qs = aligned_alloc(32, ((2 * K * sizeof(T) + 31) / 32) * 32), *ks = qs + K;  /* scaled rows */
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        for (long j0 = 0; j0 < V; j0 += VT) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++) NAME(tile_load)(S + 2 * i, S0 + (p * K + i) * V + j0, wd);
            VEC wt[2] = {{0}, {0}}, out[4];
            int decayed = 0;  /* S holds S'_t and wt is w_t */
            for (long t = 0; t < Tn; t++) {
                const long row = (b * Tn + t) * H + h, tok = (b * Tq + t / n) * H + h;
                const T *restrict kt = k + row * K;
                if (!decayed) {
                    if (ck && t % CK == 0)
                        memcpy(ck + (p * nck + t / CK) * K * VP + j0 * K, S, 2 * K * sizeof(VEC));
                    const T a = t % n == 0 ? EXP(g[tok]) : 1;
                    VEC w0 = {0}, w1 = {0};
                    for (long i = 0; i < K; i++) {
                        const VEC s0 = a * S[2 * i], s1 = a * S[2 * i + 1];
                        S[2 * i] = s0;
                        S[2 * i + 1] = s1;
                        w0 += kt[i] * s0;
                        w1 += kt[i] * s1;
                    }
                    wt[0] = w0, wt[1] = w1;
                }
                VEC u[2];
                NAME(tile_load)(u, v + row * V + j0, wd);
                u[0] -= wt[0], u[1] -= wt[1];
                NAME(tile_store)(d + row * V + j0, u, wd);
                const T bt = beta[row];
                u[0] *= bt, u[1] *= bt;
                const long t1 = t + 1;
                const int read = t % n == n - 1, fuse = t1 < Tn && !(ck && t1 % CK == 0);
                const T *qt = read ? q + tok * K : NULL, *kn = fuse ? kt + H * K : NULL;
                const int fz = fuse ? 1 + (t1 % n == 0) : 0;
                const T an = fz == 2 ? EXP(g[(b * Tq + t1 / n) * H + h]) : 1;
                if (read)
                    for (long i = 0; i < K; i++) qs[i] = scale * qt[i];
                if (fz == 2) {
                    for (long i = 0; i < K; i++) ks[i] = an * kn[i];
                    kn = ks;
                }
                if (read && fz == 2) NAME(fwd_rows)(S, kt, u, qs, kn, an, out, K, 1, 2);
                else if (read && fz) NAME(fwd_rows)(S, kt, u, qs, kn, an, out, K, 1, 1);
                else if (read) NAME(fwd_rows)(S, kt, u, qs, kn, an, out, K, 1, 0);
                else if (fz == 2) NAME(fwd_rows)(S, kt, u, qs, kn, an, out, K, 0, 2);
                else if (fz) NAME(fwd_rows)(S, kt, u, qs, kn, an, out, K, 0, 1);
                else NAME(fwd_rows)(S, kt, u, qs, kn, an, out, K, 0, 0);
                if (read) NAME(tile_store)(o + tok * V + j0, out, wd);
                wt[0] = out[2], wt[1] = out[3];
                decayed = fuse;
            }
            for (long i = 0; i < K; i++) NAME(tile_store)(ST + (p * K + i) * V + j0, S + 2 * i, wd);
        }
    }
    free(S); free(qs);
}

/* dt = d = v - w and u = beta d of one step, a tile */
TILE_INLINE void NAME(pseudo_value)(VEC *restrict u, VEC *restrict dt, const T *d, T bt, long wd) {
    NAME(tile_load)(dt, d, wd);
    u[0] = bt * dt[0], u[1] = bt * dt[1];
}

/* the backward's pass over a tile's rows at step t (module comment): finishes step t (dk's
   sums dS u_t + S'_t dw, dg's <dS', S'_t> where the gate acts (gate), dS_{t-1} = a dS') and
   starts step t - 1 (its read q do^T and dq's sums (read1), du_{t-1} = dS_{t-1}^T k_{t-1});
   Sp holds S_{t-1}, out gets gv and du_{t-1}. Inlined with constant flags: at a step without
   the gate (DeltaProduct's later Householder steps) no dg sum and no decay. qs1 = scale
   q_{t-1}, scaled by the caller (a vectorised loop once a step). */
TILE_INLINE void NAME(bwd_rows)(const VEC *restrict Sp, VEC *restrict dS, const VEC *u,
                                const VEC *dw, T a, const T *restrict kt, const T *restrict kt1,
                                const T *restrict qs1, T scale, const VEC *dot,
                                T *restrict dkt, T *restrict dq1, VEC *restrict out, long K,
                                const int gate, const int read1) {
    VEC gv = {0}, du10 = {0}, du11 = {0}, sk[NV], sq[NV];
    const VEC dw0 = dw[0], dw1 = dw[1];
    const VEC aw0 = a * dw0, aw1 = a * dw1;  /* a = 1 without the gate */
    const VEC sd0 = scale * dot[0], sd1 = scale * dot[1];
    for (long i0 = 0; i0 < K; i0 += NV) {  /* dk's and dq's sums NV rows at once */
        const long m = K - i0 < NV ? K - i0 : NV;
        for (long l = 0; l < m; l++) {
            const long i = i0 + l;
            const VEC P0 = Sp[2 * i], P1 = Sp[2 * i + 1];
            const VEC dA0 = dS[2 * i], dA1 = dS[2 * i + 1];
            sk[l] = dA0 * u[0] + dA1 * u[1] + P0 * aw0 + P1 * aw1;
            const T ki = kt[i];
            const VEC d0 = dA0 + ki * dw0, d1 = dA1 + ki * dw1;
            VEC e0 = d0, e1 = d1;  /* dS_{t-1} (+ its read) */
            if (gate) {
                gv += d0 * P0 + d1 * P1;
                e0 = a * d0, e1 = a * d1;
            }
            if (read1) {
                const T qi = qs1[i];
                e0 += qi * dot[0];
                e1 += qi * dot[1];
                sq[l] = P0 * sd0 + P1 * sd1;
            }
            dS[2 * i] = e0;
            dS[2 * i + 1] = e1;
            du10 += kt1[i] * e0;
            du11 += kt1[i] * e1;
        }
        NAME(add_sums)(dkt + i0, sk, m);
        if (read1) NAME(add_sums)(dq1 + i0, sq, m);
    }
    out[0] = gv, out[1] = du10, out[2] = du11;
}

void NAME(delta_bwd)(const T *restrict q, const T *restrict k,
                     const T *restrict beta, const T *restrict g, const T *restrict d,
                     const T *restrict ck, const T *restrict dST, const T *restrict dout,
                     T *restrict dq, T *restrict dk, T *restrict dv, T *restrict dbeta,
                     T *restrict dg, T *restrict dS0, T scale, long Tn, long n, long H, long K,
                     long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, Tq = Tn / n, VP = TILE_PAD(V), ntile = (V + VT - 1) / VT;
    VEC *dSall = aligned_alloc(32, ntile * 2 * K * sizeof(VEC));  /* dS, tile by tile */
    VEC *buf = aligned_alloc(32, CK * 2 * K * sizeof(VEC));  /* one tile's S_t of a block */
    T *qs1 = aligned_alloc(32, ((K * sizeof(T) + 31) / 32) * 32);  /* scale q_{t-1} */
    const VEC zero = {0};
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            VEC *dS = dSall + jn * 2 * K;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(tile_load)(dS + 2 * i, dST + (p * K + i) * V + j0, wd);
                else dS[2 * i] = dS[2 * i + 1] = zero;
            }
        }
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t < t1; t++) {  /* the block's rows of the summed gradients */
                const long row = (b * Tn + t) * H + h, tok = (b * Tq + t / n) * H + h;
                memset(dk + row * K, 0, K * sizeof(T));
                dbeta[row] = 0;
                if (t % n == n - 1) memset(dq + tok * K, 0, K * sizeof(T));
                if (t % n == 0) dg[tok] = 0;
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
                const long wd = V - j0 < VT ? V - j0 : VT;
                VEC *restrict dS = dSall + jn * 2 * K;
                const UVEC *start = (const UVEC *)(ck + (p * nck + c) * K * VP + j0 * K);
                const UVEC *prev = start;
                for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                    const long row = (b * Tn + t) * H + h;
                    const T *restrict kt = k + row * K;
                    VEC *restrict St = buf + (t - t0) * 2 * K, u[2], dt[2];
                    NAME(pseudo_value)(u, dt, d + row * V + j0, beta[row], wd);
                    if (t % n == 0) {  /* the gate's step */
                        const T a = EXP(g[(b * Tq + t / n) * H + h]);
                        for (long i = 0; i < K; i++) {
                            St[2 * i] = a * prev[2 * i] + kt[i] * u[0];
                            St[2 * i + 1] = a * prev[2 * i + 1] + kt[i] * u[1];
                        }
                    } else {
                        for (long i = 0; i < K; i++) {
                            St[2 * i] = prev[2 * i] + kt[i] * u[0];
                            St[2 * i + 1] = prev[2 * i + 1] + kt[i] * u[1];
                        }
                    }
                    prev = (const UVEC *)St;
                }
                VEC u[2], dd[2], du[2], dot[2];  /* step t's u, d, du */
                {   /* the first half of the block's last step: dS += scale q do^T, dq, du */
                    const long t = t1 - 1, row = (b * Tn + t) * H + h;
                    const long tok = (b * Tq + t / n) * H + h;
                    const int read = t % n == n - 1;
                    const T *restrict kt = k + row * K, *restrict qt = q + tok * K;
                    const VEC *restrict St = buf + (t - t0) * 2 * K;
                    NAME(pseudo_value)(u, dd, d + row * V + j0, beta[row], wd);
                    if (read) NAME(tile_load)(dot, dout + tok * V + j0, wd);
                    const VEC sd0 = scale * dot[0], sd1 = scale * dot[1];
                    VEC du0 = {0}, du1 = {0}, sq[NV];
                    for (long i0 = 0; i0 < K; i0 += NV) {
                        const long m = K - i0 < NV ? K - i0 : NV;
                        for (long l = 0; l < m; l++) {
                            const long i = i0 + l;
                            VEC d0 = dS[2 * i], d1 = dS[2 * i + 1];
                            if (read) {
                                const T qi = scale * qt[i];
                                d0 += qi * dot[0];
                                d1 += qi * dot[1];
                                dS[2 * i] = d0;
                                dS[2 * i + 1] = d1;
                                sq[l] = St[2 * i] * sd0 + St[2 * i + 1] * sd1;
                            }
                            du0 += kt[i] * d0;
                            du1 += kt[i] * d1;
                        }
                        if (read) NAME(add_sums)(dq + tok * K + i0, sq, m);
                    }
                    du[0] = du0, du[1] = du1;
                }
                for (long t = t1 - 1; t >= t0; t--) {
                    /* du, u hold step t's; the pass finishes step t (dk, dg, dS' and the
                       decay) and, when t > t0, does the first half of step t - 1 (its S_t is
                       this step's S_{t-1}) */
                    const long row = (b * Tn + t) * H + h;
                    const int gate = t % n == 0;
                    const long gtok = (b * Tq + t / n) * H + h;
                    const T a = gate ? EXP(g[gtok]) : 1, bt = beta[row];
                    const VEC dvt[2] = {bt * du[0], bt * du[1]};
                    NAME(tile_store)(dv + row * V + j0, dvt, wd);
                    dbeta[row] += NAME(hsum)(du[0] * dd[0] + du[1] * dd[1]);
                    const VEC dw0 = -dvt[0], dw1 = -dvt[1];
                    const VEC *restrict Sp = t > t0 ? buf + (t - 1 - t0) * 2 * K
                                                    : (const VEC *)start;  /* S_{t-1} */
                    const T *restrict kt = k + row * K;
                    T *restrict dkt = dk + row * K;
                    const int both = t > t0;
                    const long r1 = row - H, s1 = t - 1;
                    const int read1 = both && s1 % n == n - 1;
                    const long tok1 = both ? (b * Tq + s1 / n) * H + h : 0;
                    const T *restrict qt1 = read1 ? q + tok1 * K : NULL;
                    const T *restrict kt1 = both ? k + r1 * K : kt;
                    VEC u1[2] = {{0}, {0}}, d1[2] = {{0}, {0}};
                    if (both) NAME(pseudo_value)(u1, d1, d + r1 * V + j0, beta[r1], wd);
                    if (read1) {
                        NAME(tile_load)(dot, dout + tok1 * V + j0, wd);
                        for (long i = 0; i < K; i++) qs1[i] = scale * qt1[i];
                    } else {
                        dot[0] = dot[1] = zero;
                    }
                    VEC out[3];  /* gv, du_{t-1} */
                    const VEC dw[2] = {dw0, dw1};
                    T *restrict dq1 = read1 ? dq + tok1 * K : NULL;
                    if (gate && read1) NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 1, 1);
                    else if (gate) NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 1, 0);
                    else if (read1) NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 0, 1);
                    else NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 0, 0);
                    if (gate) dg[gtok] += a * NAME(hsum)(out[0]);
                    const VEC du10 = out[1], du11 = out[2];
                    u[0] = u1[0], u[1] = u1[1], dd[0] = d1[0], dd[1] = d1[1];
                    du[0] = du10, du[1] = du11;
                }
            }
        }
        for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            const VEC *dS = dSall + jn * 2 * K;
            for (long i = 0; i < K; i++) NAME(tile_store)(dS0 + (p * K + i) * V + j0, dS + 2 * i, wd);
        }
    }
    free(dSall);
    free(buf);
    free(qs1);
}

#include "tile.h"  /* its names undefined for the next type */
#endif
