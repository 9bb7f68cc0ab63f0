/* The generalised delta rule with a decay per key channel (RWKV-7's, Peng et al. 2025) as
   its recurrence, forward and backward, one (batch row, head) pair at a time, the (K, V)
   state in cache:

       z_t = S_{t-1}^T a_t,   S_t = diag(d_t) S_{t-1} + b_t z_t^T + k_t v_t^T,   d_t = exp(w_t)
       o_t = scale S_t^T r_t

   With b NULL the erase writes through the key, b = -k: S_t = diag(d_t) S_{t-1} + k_t u_t^T,
   u_t = v_t - z_t (KDA, GDN-2 and Comba's erase-key delta rule, ops.erase_delta, with
   a = p e^g after the decay, a = p before it). The forward also writes z_t (batch, T, H, V),
   so that the backward rebuilds S_t from the state stored every CK steps in one pass a step.
   Backward, dS the gradient of S_t (its own read plus the transposed later steps):
       dS += scale r_t do_t^T,   dr_t = scale S_t do_t,   dk_t = dS v_t,   dv_t = dS^T k_t
       db_t = dS z_t,   dz_t = dS^T b_t      (b NULL: dk_t = dS u_t, dv_t = dS^T k_t = -dz_t)
       da_t = S_{t-1} dz_t,   dw_t = d_t o rowsum(dS o S_{t-1}),   dS_{t-1} = diag(d_t) dS + a_t dz_t^T

   Every column of S evolves on its own, so each pair runs in tiles of VT columns (two 256-bit
   vectors of T, tile.h): the tile of S (K x VT) in L1, z, o and the next z of the tile in
   registers. One pass over the tile a step each way: the forward's update of step t also
   sums z_{t+1} = S_t^T a_{t+1}; the backward's dS_{t-1} of step t also adds step t-1's own
   read and sums its dr, dk, db, dz (both read S_{t-1} and dS). The backward's other pass
   rebuilds the states of a block. The sums over a row's columns (da, dw, dr, dk, db) add up
   over the tiles, NV rows at a time (one transposing tree of shuffles, `hsum_rows`); a last,
   narrower tile is padded with zero columns, which stay zero.

   With after = 1 the erase reads the decayed state, a_t = p_t o d_t (a holds p: KDA, GDN-2);
   w may hold one log-decay a head (Kw = 1, Comba) instead of one a key channel (Kw = K).

   Layouts (row-major, contiguous): r, k, a, b and their gradients (batch, T, H, K); w, dw
   (batch, T, H, Kw); v, o, z, dv (batch, T, H, V); S0, ST, dST, dS0 (batch, H, K, V);
   ck (batch, H, nck, K VP) with nck = ceil(T / CK), VP = V rounded up to a multiple of 16 (the state entering steps
   0, CK, 2 CK, ..., tile by tile, each tile's K x VT block contiguous). Each function does the
   (batch row, head) pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define TILE_256  /* tuned for tiles of two 256-bit vectors (tile.h) */
#define KERNELS "vector_delta.c"
#include "each_type.h"

#else

#include "tile.h"

/* d = exp(w), 0 below exp.h's clamp (where exp is under the smallest normal number): a
   channel erased by a huge negative log-decay is erased exactly, as in torch. */
static inline void NAME(decays)(T *restrict d, const T *restrict w, long K, long Kw) {
    const T lo = sizeof(T) == 4 ? (T)-87 : (T)-708;
    if (Kw == K) for (long i = 0; i < K; i++) d[i] = w[i] < lo ? 0 : EXP(w[i]);
    else for (long i = 0; i < K; i++) d[i] = w[0] < lo ? 0 : EXP(w[0]);  /* one a head */
}

/* the erase keys of a step: e = a (o d when after: a = p e^w) */
static inline void NAME(erase_keys)(T *restrict e, const T *restrict a, const T *restrict d,
                                    long after, long K) {
    for (long i = 0; i < K; i++) e[i] = after ? a[i] * d[i] : a[i];
}

void NAME(vdelta_fwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict S0, T *restrict o, T *restrict z, T *restrict ST,
                      T *restrict ck, T scale, long after, long Kw, long Tn, long H, long K,
                      long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V), ntile = (V + VT - 1) / VT;
    VEC *Sall = aligned_alloc(32, ntile * 2 * K * sizeof(VEC));  /* S, tile by tile */
    VEC *zall = aligned_alloc(32, ntile * 2 * sizeof(VEC));      /* z_t, tile by tile */
    /* a block's decays d_t and erase keys e_t, one row more (the next block's first e) */
    T *D = malloc((CK + 1) * K * sizeof(T)), *E = malloc((CK + 1) * K * sizeof(T));
    T *R = malloc(CK * K * sizeof(T));  /* a block's scale r_t: no scalar product per row below */
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
        for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++)
                NAME(tile_load)(Sall + jn * 2 * K + 2 * i, S0 + (p * K + i) * V + j0, wd);
        }
        for (long c = 0; c < nck; c++) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t <= t1; t++) {
                const long row = (bb * Tn + t) * H + h;
                T *et = E + (t - t0) * K;
                if (t == Tn) { for (long i = 0; i < K; i++) et[i] = 0; continue; }
                T *dt = D + (t - t0) * K;
                if (t < t1) for (long i = 0; i < K; i++) R[(t - t0) * K + i] = scale * r[row * K + i];
                NAME(decays)(dt, w + row * Kw, K, Kw);
                NAME(erase_keys)(et, a + row * K, dt, after, K);
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
                const long wd = V - j0 < VT ? V - j0 : VT;
                VEC *restrict S = Sall + jn * 2 * K, *zc = zall + 2 * jn;
                if (t0 == 0) {  /* z_0 = S_0^T e_0 */
                    zc[0] = zc[1] = (VEC){0};
                    for (long i = 0; i < K; i++) zc[0] += E[i] * S[2 * i], zc[1] += E[i] * S[2 * i + 1];
                }
                if (ck) memcpy(ck + (p * nck + c) * K * VP + j0 * K, S, 2 * K * sizeof(VEC));
                for (long t = t0; t < t1; t++) {
                    const long row = (bb * Tn + t) * H + h;
                    const T *restrict rt = R + (t - t0) * K, *restrict kt = k + row * K;
                    const T *restrict d = D + (t - t0) * K, *restrict e = E + (t + 1 - t0) * K;
                    NAME(tile_store)(z + row * V + j0, zc, wd);
                    VEC vt[2];
                    NAME(tile_load)(vt, v + row * V + j0, wd);
                    VEC o0 = {0}, o1 = {0}, n0 = {0}, n1 = {0};
                    if (b) {
                        const T *restrict bt = b + row * K;
                        for (long i = 0; i < K; i++) {
                            const T di = d[i], ki = kt[i], bi = bt[i], ri = rt[i], ei = e[i];
                            const VEC x0 = di * S[2 * i] + bi * zc[0] + ki * vt[0];
                            const VEC x1 = di * S[2 * i + 1] + bi * zc[1] + ki * vt[1];
                            S[2 * i] = x0, S[2 * i + 1] = x1;
                            o0 += ri * x0, o1 += ri * x1, n0 += ei * x0, n1 += ei * x1;
                        }
                    } else {
                        const VEC u0 = vt[0] - zc[0], u1 = vt[1] - zc[1];
                        for (long i = 0; i < K; i++) {
                            const T di = d[i], ki = kt[i], ri = rt[i], ei = e[i];
                            const VEC x0 = di * S[2 * i] + ki * u0, x1 = di * S[2 * i + 1] + ki * u1;
                            S[2 * i] = x0, S[2 * i + 1] = x1;
                            o0 += ri * x0, o1 += ri * x1, n0 += ei * x0, n1 += ei * x1;
                        }
                    }
                    const VEC ot[2] = {o0, o1};
                    NAME(tile_store)(o + row * V + j0, ot, wd);
                    zc[0] = n0, zc[1] = n1;
                }
            }
        }
        for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            for (long i = 0; i < K; i++)
                NAME(tile_store)(ST + (p * K + i) * V + j0, Sall + jn * 2 * K + 2 * i, wd);
        }
    }
    free(Sall); free(zall); free(D); free(E); free(R);
}

/* The backward's pass over a tile's rows at step t, with P = S_{t-1} and dS the gradient of
   S_t: step t's transpose (trans: da_t, dw_t sums and dS <- diag(d) dS + e dz_t^T) and step
   s = t - 1's read and sums (read: dS += scale r_s do_s^T; dr_s, dk_s, db_s and dz_s, dv_s).
   Without trans, d = 1 and dz_t = 0 (the block's last step, whose own read is all). The
   per-row sums run NV rows at a time (hsum_rows). dzv returns dz_s, dv_s (two vectors each). */
TILE_INLINE void NAME(bwd_rows)(
        VEC *restrict dS, const VEC *restrict P, const T *restrict d, const T *restrict e,
        const VEC *dz, T *restrict da, T *restrict dwr, const T *restrict rs, const T *restrict ks,
        const T *restrict bs, const VEC *dos, const VEC *us, const VEC *zs, T *restrict dr,
        T *restrict dk, T *restrict db, VEC *restrict dzv, T scale, long K, const int trans,
        const int read, const int hasb) {
    VEC dz0 = {0}, dz1 = {0}, dv0 = {0}, dv1 = {0};
    VEC sa[NV], sd[NV], sr[NV], sk[NV], sb[NV];
    for (long i0 = 0; i0 < K; i0 += NV) {
        const long m = K - i0 < NV ? K - i0 : NV;
        for (long l = 0; l < m; l++) {
            const long i = i0 + l;
            const VEC P0 = P[2 * i], P1 = P[2 * i + 1];
            VEC g0 = dS[2 * i], g1 = dS[2 * i + 1];
            if (trans) {
                sa[l] = P0 * dz[0] + P1 * dz[1];
                sd[l] = g0 * P0 + g1 * P1;
                g0 = d[i] * g0 + e[i] * dz[0];
                g1 = d[i] * g1 + e[i] * dz[1];
            }
            if (read) {
                const T ri = rs[i];  /* rs holds scale r_s */
                g0 += ri * dos[0];
                g1 += ri * dos[1];
                sr[l] = P0 * dos[0] + P1 * dos[1];
                sk[l] = g0 * us[0] + g1 * us[1];
                if (hasb) {
                    sb[l] = g0 * zs[0] + g1 * zs[1];
                    dz0 += bs[i] * g0, dz1 += bs[i] * g1;
                    dv0 += ks[i] * g0, dv1 += ks[i] * g1;
                } else {
                    dz0 += ks[i] * g0, dz1 += ks[i] * g1;  /* du of step s */
                }
            }
            dS[2 * i] = g0, dS[2 * i + 1] = g1;
        }
        if (trans) {
            NAME(add_sums)(da + i0, sa, m);
            NAME(add_sums)(dwr + i0, sd, m);
        }
        if (read) {
            for (long l = 0; l < m; l++) sr[l] *= scale;
            NAME(add_sums)(dr + i0, sr, m);
            NAME(add_sums)(dk + i0, sk, m);
            if (hasb) NAME(add_sums)(db + i0, sb, m);
        }
    }
    dzv[0] = dz0, dzv[1] = dz1, dzv[2] = dv0, dzv[3] = dv1;
}

void NAME(vdelta_bwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict z, const T *restrict ck, const T *restrict dST,
                      const T *restrict dout, T *restrict dr, T *restrict dw, T *restrict dk,
                      T *restrict dv, T *restrict da, T *restrict db, T *restrict dS0, T scale,
                      long after, long Kw, long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V), ntile = (V + VT - 1) / VT;
    VEC *dSall = aligned_alloc(32, ntile * 2 * K * sizeof(VEC));  /* dS, tile by tile */
    VEC *buf = aligned_alloc(32, CK * 2 * K * sizeof(VEC));  /* one tile's S_t of a block */
    T *D = malloc(CK * K * sizeof(T)), *E = malloc(CK * K * sizeof(T));  /* a block's d, e */
    T *sd = malloc(CK * K * sizeof(T));  /* a block's rowsum(dS o S_{t-1}), for dw */
    T *R = malloc(CK * K * sizeof(T));   /* a block's scale r_t */
    const VEC zero = {0};
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
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
            for (long t = t0; t < t1; t++) {  /* the block's decays, erase keys, zeroed sums */
                const long row = (bb * Tn + t) * H + h;
                NAME(decays)(D + (t - t0) * K, w + row * Kw, K, Kw);
                NAME(erase_keys)(E + (t - t0) * K, a + row * K, D + (t - t0) * K, after, K);
                memset(dr + row * K, 0, K * sizeof(T));
                memset(dk + row * K, 0, K * sizeof(T));
                memset(da + row * K, 0, K * sizeof(T));
                memset(sd + (t - t0) * K, 0, K * sizeof(T));
                for (long i = 0; i < K; i++) R[(t - t0) * K + i] = scale * r[row * K + i];
                if (b) memset(db + row * K, 0, K * sizeof(T));
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
                const long wd = V - j0 < VT ? V - j0 : VT;
                VEC *restrict dS = dSall + jn * 2 * K;
                const VEC *start = (const VEC *)(ck + (p * nck + c) * K * VP + j0 * K);
                const VEC *prev = start;
                for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                    const long row = (bb * Tn + t) * H + h;
                    const T *restrict kt = k + row * K, *restrict dt = D + (t - t0) * K;
                    VEC *restrict St = buf + (t - t0) * 2 * K, vt[2], zt[2];
                    NAME(tile_load)(vt, v + row * V + j0, wd);
                    NAME(tile_load)(zt, z + row * V + j0, wd);
                    if (b) {
                        const T *restrict bt = b + row * K;
                        for (long i = 0; i < K; i++) {
                            St[2 * i] = dt[i] * prev[2 * i] + bt[i] * zt[0] + kt[i] * vt[0];
                            St[2 * i + 1] = dt[i] * prev[2 * i + 1] + bt[i] * zt[1] + kt[i] * vt[1];
                        }
                    } else {
                        const VEC u0 = vt[0] - zt[0], u1 = vt[1] - zt[1];
                        for (long i = 0; i < K; i++) {
                            St[2 * i] = dt[i] * prev[2 * i] + kt[i] * u0;
                            St[2 * i + 1] = dt[i] * prev[2 * i + 1] + kt[i] * u1;
                        }
                    }
                    prev = St;
                }
                /* step t's transpose fused with step t - 1's read, t = t1 .. t0 (t1: the
                   block's last step's read alone) */
                VEC dz[2] = {zero, zero}, dzv[4];
                for (long t = t1; t >= t0; t--) {
                    const int trans = t < t1, read = t > t0;
                    const long row = (bb * Tn + t) * H + h, s = t - 1, rs = row - H;
                    const VEC *restrict P = s >= t0 ? buf + (s - t0) * 2 * K : start;
                    const T *dt = trans ? D + (t - t0) * K : NULL, *et = trans ? E + (t - t0) * K : NULL;
                    T *dat = trans ? da + row * K : NULL, *sdt = trans ? sd + (t - t0) * K : NULL;
                    VEC dos[2] = {zero, zero}, us[2] = {zero, zero}, zs[2] = {zero, zero};
                    if (read) {
                        NAME(tile_load)(dos, dout + rs * V + j0, wd);
                        NAME(tile_load)(us, v + rs * V + j0, wd);
                        NAME(tile_load)(zs, z + rs * V + j0, wd);
                        if (!b) us[0] -= zs[0], us[1] -= zs[1];
                    }
                    const T *rr = R + (read ? s - t0 : 0) * K, *kr = k + rs * K, *br = b ? b + rs * K : NULL;
                    T *drr = dr + rs * K, *dkr = dk + rs * K, *dbr = b ? db + rs * K : NULL;
#define VD_ROWS(tr, rd, hb) NAME(bwd_rows)(dS, P, dt, et, dz, dat, sdt, rr, kr, br, dos, us, zs, \
                                           drr, dkr, dbr, dzv, scale, K, tr, rd, hb)
                    if (trans && read) { if (b) VD_ROWS(1, 1, 1); else VD_ROWS(1, 1, 0); }
                    else if (read) { if (b) VD_ROWS(0, 1, 1); else VD_ROWS(0, 1, 0); }
                    else VD_ROWS(1, 0, 0);
#undef VD_ROWS
                    if (read) {  /* dz_s and dv_s */
                        if (b) {
                            NAME(tile_store)(dv + rs * V + j0, dzv + 2, wd);
                            dz[0] = dzv[0], dz[1] = dzv[1];
                        } else {
                            NAME(tile_store)(dv + rs * V + j0, dzv, wd);
                            dz[0] = -dzv[0], dz[1] = -dzv[1];
                        }
                    }
                }
            }
            for (long t = t0; t < t1; t++) {  /* dw (and a's share of it after the decay) */
                const long row = (bb * Tn + t) * H + h;
                const T *dt = D + (t - t0) * K, *et = E + (t - t0) * K, *sdt = sd + (t - t0) * K;
                T *dat = da + row * K, gw_head = 0;
                for (long i = 0; i < K; i++) {
                    const T sa = dat[i], gw = dt[i] * sdt[i] + (after ? sa * et[i] : 0);
                    if (after) dat[i] = sa * dt[i];
                    if (Kw == K) dw[row * K + i] = gw;
                    else gw_head += gw;
                }
                if (Kw != K) dw[row] = gw_head;
            }
        }
        for (long j0 = 0, jn = 0; j0 < V; j0 += VT, jn++) {
            const long wd = V - j0 < VT ? V - j0 : VT;
            const VEC *dS = dSall + jn * 2 * K;
            for (long i = 0; i < K; i++) NAME(tile_store)(dS0 + (p * K + i) * V + j0, dS + 2 * i, wd);
        }
    }
    free(dSall); free(buf); free(D); free(E); free(sd); free(R);
}

/* GDN-2's gated inputs from the pre-sigmoids of its two gates, per token (rows N): the
   erase key p = bs sigmoid(z_b) o k and the value u = sigmoid(z_w) o v, z (N, A + C) holding
   z_b (A) then z_w (C) per row; k, p, dk, dp (N, A); v, u, dv, du (N, C); dz (N, A + C).
   Backward: dk = dp o b, dv = du o w, dz_b = dp o k bs s_b (1 - s_b), dz_w = du o v s_w (1 - s_w).
   Each function does the rows [r0, r1). */
static inline T NAME(sigm)(T x) { return 1 / (1 + EXP(-x)); }

void NAME(gates_fwd)(const T *restrict z, const T *restrict k, const T *restrict v,
                     T *restrict p, T *restrict u, T bs, long A, long C, long r0, long r1) {
    for (long n = r0; n < r1; n++) {
        const T *restrict zn = z + n * (A + C);
#pragma omp simd
        for (long i = 0; i < A; i++) p[n * A + i] = bs * NAME(sigm)(zn[i]) * k[n * A + i];
#pragma omp simd
        for (long j = 0; j < C; j++) u[n * C + j] = NAME(sigm)(zn[A + j]) * v[n * C + j];
    }
}

void NAME(gates_bwd)(const T *restrict dp, const T *restrict du, const T *restrict z,
                     const T *restrict k, const T *restrict v, T *restrict dz, T *restrict dk,
                     T *restrict dv, T bs, long A, long C, long r0, long r1) {
    for (long n = r0; n < r1; n++) {
        const T *restrict zn = z + n * (A + C);
        T *restrict dzn = dz + n * (A + C);
#pragma omp simd
        for (long i = 0; i < A; i++) {
            const T s = NAME(sigm)(zn[i]), g = dp[n * A + i];
            dk[n * A + i] = g * bs * s;
            dzn[i] = g * k[n * A + i] * bs * s * (1 - s);
        }
#pragma omp simd
        for (long j = 0; j < C; j++) {
            const T s = NAME(sigm)(zn[A + j]), g = du[n * C + j];
            dv[n * C + j] = g * s;
            dzn[A + j] = g * v[n * C + j] * s * (1 - s);
        }
    }
}

#include "tile.h"  /* its names undefined for the next type */
#endif
