/* The gated delta rule (Yang et al. 2024, Gated DeltaNet) as its recurrence, forward and
   backward, one (batch row, head) pair at a time, the (K, V) state in cache:

       S'_t = a_t S_{t-1},  a_t = exp(g_t),   w_t = S'_t^T k_t,   u_t = beta_t (v_t - w_t)
       S_t  = S'_t + k_t u_t^T,               o_t = scale S_t^T q_t

   i.e. S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T. With n > 1 steps a token
   (DeltaProduct's n Householder steps) the gate acts at a token's first step (a = 1 at the
   others) and the query reads after its last; q, o, g have one row a token.

   Every column of S evolves on its own (w_t's and o_t's column j read S's column j only), so
   each pair runs in tiles of WT columns (four 256-bit vectors of T, wide.h: 32 floats, twice
   tile.h's tile, so twice the independent work between one step's end, w_{t+1}'s sum over
   all K rows, and the next step's start): the tile of S (K x WT) in L1, u_t, o_t, w_{t+1}
   of the tile in registers; a step's rows prefetched a few steps ahead (a pair's rows lie H
   rows apart). Forward: one pass over the
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
   nck, K VP) with nck = ceil(Tn / CK), VP = V rounded up to a multiple of 32 (tile by tile,
   each tile's K x WT block contiguous). Each function does the (batch row, head) pairs
   [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define TILE_256  /* tuned for 256-bit vectors, four a tile (wide.h) */
#define KERNELS "delta_scan.c"
#include "each_type.h"

#else

#include "tile.h"
#include "wide.h"
#if defined(__AVX__) && !defined(DS_NO_STREAM)
#include <immintrin.h>
#define DS_STREAM 1
#endif

/* dst[0 .. n) <- x[0 .. n / NV) for the rows written once and not read again soon (the
   forward's d and checkpoints, which the backward reads much later: 32 MB at DeltaProduct's
   B=16 T=512; the backward's dv, 16 MB), written past the caches (streaming stores: no read
   of the lines first) where dst is 32-byte aligned and n a whole number of vectors, else as
   wide_store / a copy */
TILE_INLINE void NAME(stream_rows)(T *restrict dst, const VEC *restrict x, long n, long wd) {
#ifdef DS_STREAM
    if (TILE_BYTES == 32 && wd == WT && ((unsigned long)dst & 31) == 0) {
        for (long j = 0; j < n / NV; j++) _mm256_stream_si256((__m256i *)(dst + j * NV), (__m256i)x[j]);
        return;
    }
#endif
    if (n == WT) NAME(wide_store)(dst, x, wd);
    else memcpy(dst, x, n * sizeof(T));
}

#ifndef DS_PF
#define DS_PF 4  /* steps ahead, the prefetches of a step's rows */
#endif

/* the forward's pass over a tile's rows at step t: S_t = S'_t + k_t u^T, its read-out o (read)
   and the next step's S'_{t+1} = an S_t with w_{t+1} = S'_{t+1}^T k_{t+1} (fuse); out holds
   o and w_{t+1}, WV vectors each; fuse 1: an = 1 (the next step is not a gate's: no decay,
   DeltaProduct's later Householder steps), 2: the decay. qs = scale q_t and kn = an k_{t+1}
   come scaled (a step's rows, vectorised once by the caller: the loop reads them broadcast
   from memory, no scalar product a row). Inlined with constant flags: six specialised loops. */
TILE_INLINE void NAME(fwd_rows)(VEC *restrict S, const T *restrict kt, const VEC *u,
                                const T *restrict qs, const T *restrict kn, T an,
                                VEC *restrict out, long K, const int read, const int fuse) {
    VEC o[WV] = {{0}}, nw[WV] = {{0}};
    for (long i = 0; i < K; i++) {
        const T ki = kt[i];
        VEC s[WV];
        for (int w = 0; w < WV; w++) s[w] = S[WV * i + w] + ki * u[w];
        if (read) {
            const T qi = qs[i];
            for (int w = 0; w < WV; w++) o[w] += qi * s[w];
        }
        if (fuse) {
            const T ni = kn[i];
            for (int w = 0; w < WV; w++) nw[w] += ni * s[w];
        }
        for (int w = 0; w < WV; w++) S[WV * i + w] = s[w];
        if (fuse == 2)
            for (int w = 0; w < WV; w++) S[WV * i + w] = an * s[w];
    }
    for (int w = 0; w < WV; w++) out[w] = o[w], out[WV + w] = nw[w];
}

void NAME(delta_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict beta, const T *restrict g, const T *restrict S0,
                     T *restrict o, T *restrict d, T *restrict ST, T *restrict ck, T scale,
                     long Tn, long n, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, Tq = Tn / n, VP = TILE_PAD(V);
    VEC *S = aligned_alloc(32, WV * K * sizeof(VEC));
    T *qs = aligned_alloc(32, ((2 * K * sizeof(T) + 31) / 32) * 32), *ks = qs + K;  /* scaled rows */
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        for (long j0 = 0; j0 < V; j0 += WT) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            for (long i = 0; i < K; i++) NAME(wide_load)(S + WV * i, S0 + (p * K + i) * V + j0, wd);
            VEC wt[WV] = {{0}}, out[2 * WV];
            int decayed = 0;  /* S holds S'_t and wt is w_t */
            for (long t = 0; t < Tn; t++) {
                const long row = (b * Tn + t) * H + h, tok = (b * Tq + t / n) * H + h;
                const T *restrict kt = k + row * K;
                if (t + DS_PF < Tn) {
                    const long fr = row + DS_PF * H, ft = (b * Tq + (t + DS_PF) / n) * H + h;
                    NAME(pf_read)(k + fr * K, K);
                    NAME(pf_read)(v + fr * V + j0, wd);
#ifndef DS_STREAM
                    NAME(pf_write)(d + fr * V + j0, wd);
#endif
                    if ((t + DS_PF) % n == n - 1) {
                        NAME(pf_read)(q + ft * K, K);
                        NAME(pf_write)(o + ft * V + j0, wd);
                    }
                }
                if (!decayed) {
                    if (ck && t % CK == 0)
                        NAME(stream_rows)(ck + (p * nck + t / CK) * K * VP + j0 * K, S, K * WT, WT);
                    const T a = t % n == 0 ? EXP(g[tok]) : 1;
                    VEC w_[WV] = {{0}};
                    for (long i = 0; i < K; i++)
                        for (int w = 0; w < WV; w++) {
                            const VEC s = a * S[WV * i + w];
                            S[WV * i + w] = s;
                            w_[w] += kt[i] * s;
                        }
                    for (int w = 0; w < WV; w++) wt[w] = w_[w];
                }
                VEC u[WV];
                NAME(wide_load)(u, v + row * V + j0, wd);
                for (int w = 0; w < WV; w++) u[w] -= wt[w];
                NAME(stream_rows)(d + row * V + j0, u, WT, wd);
                const T bt = beta[row];
                for (int w = 0; w < WV; w++) u[w] *= bt;
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
                if (read) NAME(wide_store)(o + tok * V + j0, out, wd);
                for (int w = 0; w < WV; w++) wt[w] = out[WV + w];
                decayed = fuse;
            }
            for (long i = 0; i < K; i++) NAME(wide_store)(ST + (p * K + i) * V + j0, S + WV * i, wd);
        }
    }
#ifdef DS_STREAM
    _mm_sfence();  /* the streaming stores seen before the caller's threads join */
#endif
    free(S); free(qs);
}

/* dt = d = v - w and u = beta d of one step, a tile */
TILE_INLINE void NAME(pseudo_value)(VEC *restrict u, VEC *restrict dt, const T *d, T bt, long wd) {
    NAME(wide_load)(dt, d, wd);
    for (int w = 0; w < WV; w++) u[w] = bt * dt[w];
}

/* the backward's pass over a tile's rows at step t (module comment): finishes step t (dk's
   sums dS u_t + S'_t dw, dg's <dS', S'_t> where the gate acts (gate), dS_{t-1} = a dS') and
   starts step t - 1 (its read q do^T and dq's sums (read1), du_{t-1} = dS_{t-1}^T k_{t-1});
   Sp holds S_{t-1}, out gets gv and du_{t-1}. Inlined with constant flags: at a step without
   the gate (DeltaProduct's later Householder steps) no dg sum and no decay. qs1 = scale
   q_{t-1}, scaled by the caller (a vectorised loop once a step). Each row's sums over its WV
   vectors are formed first and added once to their accumulators. */
TILE_INLINE void NAME(bwd_rows)(const VEC *restrict Sp, VEC *restrict dS, const VEC *u,
                                const VEC *dw, T a, const T *restrict kt, const T *restrict kt1,
                                const T *restrict qs1, T scale, const VEC *dot,
                                T *restrict dkt, T *restrict dq1, VEC *restrict out, long K,
                                const int gate, const int read1) {
    VEC gv = {0}, du1[WV] = {{0}}, sk[NV], sq[NV], aw[WV], sd[WV];
    for (int w = 0; w < WV; w++) aw[w] = a * dw[w], sd[w] = scale * dot[w];  /* a = 1 without the gate */
    for (long i0 = 0; i0 < K; i0 += NV) {  /* dk's and dq's sums NV rows at once */
        const long m = K - i0 < NV ? K - i0 : NV;
        for (long l = 0; l < m; l++) {
            const long i = i0 + l;
            const T ki = kt[i];
            const VEC *restrict P = Sp + WV * i;
            VEC dA[WV], e[WV];
            for (int w = 0; w < WV; w++) dA[w] = dS[WV * i + w];
            VEC xk = dA[0] * u[0] + P[0] * aw[0];
            for (int w = 1; w < WV; w++) xk += dA[w] * u[w] + P[w] * aw[w];
            sk[l] = xk;
            for (int w = 0; w < WV; w++) e[w] = dA[w] + ki * dw[w];  /* dS' */
            if (gate) {
                VEC xg = e[0] * P[0];
                for (int w = 1; w < WV; w++) xg += e[w] * P[w];
                gv += xg;
                for (int w = 0; w < WV; w++) e[w] = a * e[w];  /* dS_{t-1} */
            }
            if (read1) {  /* (+ its read) */
                const T qi = qs1[i];
                VEC xq = P[0] * sd[0];
                for (int w = 1; w < WV; w++) xq += P[w] * sd[w];
                sq[l] = xq;
                for (int w = 0; w < WV; w++) e[w] += qi * dot[w];
            }
            const T k1 = kt1[i];
            for (int w = 0; w < WV; w++) {
                dS[WV * i + w] = e[w];
                du1[w] += k1 * e[w];
            }
        }
        NAME(add_sums)(dkt + i0, sk, m);
        if (read1) NAME(add_sums)(dq1 + i0, sq, m);
    }
    out[0] = gv;
    for (int w = 0; w < WV; w++) out[1 + w] = du1[w];
}

void NAME(delta_bwd)(const T *restrict q, const T *restrict k,
                     const T *restrict beta, const T *restrict g, const T *restrict d,
                     const T *restrict ck, const T *restrict dST, const T *restrict dout,
                     T *restrict dq, T *restrict dk, T *restrict dv, T *restrict dbeta,
                     T *restrict dg, T *restrict dS0, T scale, long Tn, long n, long H, long K,
                     long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, Tq = Tn / n, VP = TILE_PAD(V), ntile = (V + WT - 1) / WT;
    VEC *dSall = aligned_alloc(32, ntile * WV * K * sizeof(VEC));  /* dS, tile by tile */
    VEC *buf = aligned_alloc(32, CK * WV * K * sizeof(VEC));  /* one tile's S_t of a block */
    T *qs1 = aligned_alloc(32, ((K * sizeof(T) + 31) / 32) * 32);  /* scale q_{t-1} */
    T *ea = aligned_alloc(32, ((CK * sizeof(T) + 31) / 32) * 32);  /* the block's exp(g) */
    const VEC zero = {0};
    for (long p = p0; p < p1; p++) {
        const long b = p / H, h = p % H;
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            VEC *dS = dSall + jn * WV * K;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(wide_load)(dS + WV * i, dST + (p * K + i) * V + j0, wd);
                else for (int w = 0; w < WV; w++) dS[WV * i + w] = zero;
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
                ea[t - t0] = t % n == 0 ? EXP(g[tok]) : 1;
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
                const long wd = V - j0 < WT ? V - j0 : WT;
                VEC *restrict dS = dSall + jn * WV * K;
                const VEC *start = (const VEC *)(ck + (p * nck + c) * K * VP + j0 * K);
                const VEC *prev = start;
                for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                    const long row = (b * Tn + t) * H + h;
                    const T *restrict kt = k + row * K;
                    VEC *restrict St = buf + (t - t0) * WV * K, u[WV], dt[WV];
                    if (t + DS_PF < t1) {
                        const long fr = row + DS_PF * H;
                        NAME(pf_read)(k + fr * K, K);
                        NAME(pf_read)(d + fr * V + j0, wd);
                    }
                    NAME(pseudo_value)(u, dt, d + row * V + j0, beta[row], wd);
                    const T a = ea[t - t0];  /* 1 off the gate's steps */
                    for (long i = 0; i < K; i++)
                        for (int w = 0; w < WV; w++)
                            St[WV * i + w] = a * prev[WV * i + w] + kt[i] * u[w];
                    prev = St;
                }
                VEC u[WV], dd[WV], du[WV], dot[WV] = {{0}};  /* step t's u, d, du */
                {   /* the first half of the block's last step: dS += scale q do^T, dq, du */
                    const long t = t1 - 1, row = (b * Tn + t) * H + h;
                    const long tok = (b * Tq + t / n) * H + h;
                    const int read = t % n == n - 1;
                    const T *restrict kt = k + row * K, *restrict qt = q + tok * K;
                    const VEC *restrict St = buf + (t - t0) * WV * K;
                    NAME(pseudo_value)(u, dd, d + row * V + j0, beta[row], wd);
                    if (read) NAME(wide_load)(dot, dout + tok * V + j0, wd);
                    VEC sd[WV], du_[WV] = {{0}}, sq[NV];
                    for (int w = 0; w < WV; w++) sd[w] = scale * dot[w];
                    for (long i0 = 0; i0 < K; i0 += NV) {
                        const long m = K - i0 < NV ? K - i0 : NV;
                        for (long l = 0; l < m; l++) {
                            const long i = i0 + l;
                            VEC dA[WV];
                            for (int w = 0; w < WV; w++) dA[w] = dS[WV * i + w];
                            if (read) {
                                const T qi = scale * qt[i];
                                VEC xq = St[WV * i] * sd[0];
                                for (int w = 1; w < WV; w++) xq += St[WV * i + w] * sd[w];
                                sq[l] = xq;
                                for (int w = 0; w < WV; w++) {
                                    dA[w] += qi * dot[w];
                                    dS[WV * i + w] = dA[w];
                                }
                            }
                            for (int w = 0; w < WV; w++) du_[w] += kt[i] * dA[w];
                        }
                        if (read) NAME(add_sums)(dq + tok * K + i0, sq, m);
                    }
                    for (int w = 0; w < WV; w++) du[w] = du_[w];
                }
                for (long t = t1 - 1; t >= t0; t--) {
                    /* du, u hold step t's; the pass finishes step t (dk, dg, dS' and the
                       decay) and, when t > t0, does the first half of step t - 1 (its S_t is
                       this step's S_{t-1}) */
                    const long row = (b * Tn + t) * H + h;
                    const int gate = t % n == 0;
                    const long gtok = (b * Tq + t / n) * H + h;
                    const T a = ea[t - t0], bt = beta[row];
                    if (t - DS_PF >= t0) {
                        const long fr = row - DS_PF * H, s = t - DS_PF;
                        const long ft = (b * Tq + s / n) * H + h;
                        NAME(pf_read)(k + fr * K, K);
                        NAME(pf_read)(d + fr * V + j0, wd);
                        if (s % n == n - 1) {
                            NAME(pf_read)(q + ft * K, K);
                            NAME(pf_read)(dout + ft * V + j0, wd);
                        }
                    }
                    VEC dw[WV], xb;
                    for (int w = 0; w < WV; w++) dw[w] = bt * du[w];  /* dv */
                    NAME(stream_rows)(dv + row * V + j0, dw, WT, wd);
                    xb = du[0] * dd[0];
                    for (int w = 1; w < WV; w++) xb += du[w] * dd[w];
                    dbeta[row] += NAME(hsum)(xb);
                    for (int w = 0; w < WV; w++) dw[w] = -dw[w];
                    const VEC *restrict Sp = t > t0 ? buf + (t - 1 - t0) * WV * K
                                                    : start;  /* S_{t-1} */
                    const T *restrict kt = k + row * K;
                    T *restrict dkt = dk + row * K;
                    const int both = t > t0;
                    const long r1 = row - H, s1 = t - 1;
                    const int read1 = both && s1 % n == n - 1;
                    const long tok1 = both ? (b * Tq + s1 / n) * H + h : 0;
                    const T *restrict qt1 = read1 ? q + tok1 * K : NULL;
                    const T *restrict kt1 = both ? k + r1 * K : kt;
                    VEC u1[WV] = {{0}}, d1[WV] = {{0}};
                    if (both) NAME(pseudo_value)(u1, d1, d + r1 * V + j0, beta[r1], wd);
                    if (read1) {
                        NAME(wide_load)(dot, dout + tok1 * V + j0, wd);
                        for (long i = 0; i < K; i++) qs1[i] = scale * qt1[i];
                    } else {
                        for (int w = 0; w < WV; w++) dot[w] = zero;
                    }
                    VEC out[1 + WV];  /* gv, du_{t-1} */
                    T *restrict dq1 = read1 ? dq + tok1 * K : NULL;
                    if (gate && read1) NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 1, 1);
                    else if (gate) NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 1, 0);
                    else if (read1) NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 0, 1);
                    else NAME(bwd_rows)(Sp, dS, u, dw, a, kt, kt1, qs1, scale, dot, dkt, dq1, out, K, 0, 0);
                    if (gate) dg[gtok] += a * NAME(hsum)(out[0]);
                    for (int w = 0; w < WV; w++) u[w] = u1[w], dd[w] = d1[w], du[w] = out[1 + w];
                }
            }
        }
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            const VEC *dS = dSall + jn * WV * K;
            for (long i = 0; i < K; i++) NAME(wide_store)(dS0 + (p * K + i) * V + j0, dS + WV * i, wd);
        }
    }
#ifdef DS_STREAM
    _mm_sfence();  /* dv's streaming stores */
#endif
    free(dSall);
    free(buf);
    free(qs1);
    free(ea);
}

#include "wide.h"  /* its names undefined for the next type */
#include "tile.h"  /* its names undefined for the next type */
#endif
