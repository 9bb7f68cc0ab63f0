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

   Every column of S evolves on its own, so each pair runs in tiles of WT columns (four 256-bit
   vectors of T, wide.h: 32 floats, twice tile.h's tile, so twice the independent work between
   one step's end, z_{t+1}'s sum over all K rows, and the next step's start): the tile of S
   (K x WT) in L1, z, o and the next z of the tile in registers; a step's rows prefetched a
   few steps ahead (behind, backward: a pair's rows lie H rows apart), and the rows of r, w, a
   of the next block (backward: the block before, with dr, dk, da, db for writing) while a
   block's decays are formed. One pass over the tile a step each way: the forward's update of step t also
   sums z_{t+1} = S_t^T a_{t+1}; the backward's dS_{t-1} of step t also adds step t-1's own
   read and sums its dr, dk, db, dz (both read S_{t-1} and dS). The backward's other pass
   rebuilds the states of a block. The sums over a row's columns (da, dw, dr, dk, db) add up
   over the tiles, NV rows at a time (one transposing tree of shuffles, `hsum_rows`); a last,
   narrower tile is padded with zero columns, which stay zero.

   With after = 1 the erase reads the decayed state, a_t = p_t o d_t (a holds p: KDA, GDN-2);
   w may hold one log-decay a head (Kw = 1, Comba) instead of one a key channel (Kw = K).

   Layouts (row-major, contiguous): r, k, a, b and their gradients (batch, T, H, K); w, dw
   (batch, T, H, Kw); v, o, z, dv (batch, T, H, V); S0, ST, dST, dS0 (batch, H, K, V);
   ck (batch, H, nck, K VP) with nck = ceil(T / CK), VP = V rounded up to a multiple of 32 (the state entering steps
   0, CK, 2 CK, ..., tile by tile, each tile's K x WT block contiguous). Each function does the
   (batch row, head) pairs [p0, p1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define TILE_256  /* tuned for 256-bit vectors, four a tile (wide.h) */
#define KERNELS "vector_delta.c"
#include "each_type.h"

#else

#include "tile.h"
#include "wide.h"
#ifndef VD_PF
#define VD_PF 4  /* steps ahead (behind, backward), the prefetches of a step's rows */
#endif

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

/* the forward's pass over a tile's rows at step t: S <- diag(d) S + b z^T + k v^T (hasb; else
   diag(d) S + k (v - z)^T), with o = S^T rs (rs = scale r_t) and the next z = S^T e
   (e = e_{t+1}) summed in the same pass; out gets o and the next z, WV vectors each */
TILE_INLINE void NAME(fwd_rows)(VEC *restrict S, const T *restrict d, const T *restrict kt,
                                const T *restrict bt, const T *restrict rs, const T *restrict e,
                                const VEC *zc, const VEC *vt, VEC *restrict out, long K,
                                const int hasb) {
    VEC o[WV] = {{0}}, n[WV] = {{0}}, u[WV];
    for (int w = 0; w < WV; w++) {
        u[w] = vt[w];
        if (!hasb) u[w] -= zc[w];
    }
    for (long i = 0; i < K; i++) {
        const T di = d[i], ki = kt[i], ri = rs[i], ei = e[i];
        VEC x[WV];
        if (hasb) {
            const T bi = bt[i];
            for (int w = 0; w < WV; w++) x[w] = di * S[WV * i + w] + bi * zc[w] + ki * u[w];
        } else {
            for (int w = 0; w < WV; w++) x[w] = di * S[WV * i + w] + ki * u[w];
        }
        for (int w = 0; w < WV; w++) {
            S[WV * i + w] = x[w];
            o[w] += ri * x[w];
            n[w] += ei * x[w];
        }
    }
    for (int w = 0; w < WV; w++) out[w] = o[w], out[WV + w] = n[w];
}

void NAME(vdelta_fwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict S0, T *restrict o, T *restrict z, T *restrict ST,
                      T *restrict ck, T scale, long after, long Kw, long Tn, long H, long K,
                      long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V), ntile = (V + WT - 1) / WT;
    VEC *Sall = aligned_alloc(32, ntile * WV * K * sizeof(VEC));  /* S, tile by tile */
    VEC *zall = aligned_alloc(32, ntile * WV * sizeof(VEC));      /* z_t, tile by tile */
    /* a block's decays d_t and erase keys e_t, one row more (the next block's first e) */
    T *D = malloc((CK + 1) * K * sizeof(T)), *E = malloc((CK + 1) * K * sizeof(T));
    T *R = malloc(CK * K * sizeof(T));  /* a block's scale r_t: no scalar product per row below */
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            for (long i = 0; i < K; i++)
                NAME(wide_load)(Sall + jn * WV * K + WV * i, S0 + (p * K + i) * V + j0, wd);
        }
        for (long c = 0; c < nck; c++) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t <= t1; t++) {
                const long row = (bb * Tn + t) * H + h;
                T *et = E + (t - t0) * K;
                if (t == Tn) { for (long i = 0; i < K; i++) et[i] = 0; continue; }
                T *dt = D + (t - t0) * K;
                if (t < t1 && t + CK < Tn) {  /* the next block's rows of r, w, a, fetched ahead */
                    const long fr = row + CK * H;
                    NAME(pf_read)(r + fr * K, K);
                    NAME(pf_read)(w + fr * Kw, Kw);
                    NAME(pf_read)(a + fr * K, K);
                }
                if (t < t1) for (long i = 0; i < K; i++) R[(t - t0) * K + i] = scale * r[row * K + i];
                NAME(decays)(dt, w + row * Kw, K, Kw);
                NAME(erase_keys)(et, a + row * K, dt, after, K);
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
                const long wd = V - j0 < WT ? V - j0 : WT;
                VEC *restrict S = Sall + jn * WV * K, *zc = zall + WV * jn;
                if (t0 == 0) {  /* z_0 = S_0^T e_0 */
                    for (int x = 0; x < WV; x++) zc[x] = (VEC){0};
                    for (long i = 0; i < K; i++)
                        for (int x = 0; x < WV; x++) zc[x] += E[i] * S[WV * i + x];
                }
                if (ck) memcpy(ck + (p * nck + c) * K * VP + j0 * K, S, WV * K * sizeof(VEC));
                for (long t = t0; t < t1; t++) {
                    const long row = (bb * Tn + t) * H + h;
                    if (t + VD_PF < Tn) {
                        const long fr = row + VD_PF * H;
                        NAME(pf_read)(k + fr * K, K);
                        if (b) NAME(pf_read)(b + fr * K, K);
                        NAME(pf_read)(v + fr * V + j0, wd);
                        NAME(pf_write)(z + fr * V + j0, wd);
                        NAME(pf_write)(o + fr * V + j0, wd);
                    }
                    const T *rt = R + (t - t0) * K, *kt = k + row * K, *bt = b ? b + row * K : NULL;
                    const T *d = D + (t - t0) * K, *e = E + (t + 1 - t0) * K;
                    NAME(wide_store)(z + row * V + j0, zc, wd);
                    VEC vt[WV], out[2 * WV];
                    NAME(wide_load)(vt, v + row * V + j0, wd);
                    if (b) NAME(fwd_rows)(S, d, kt, bt, rt, e, zc, vt, out, K, 1);
                    else NAME(fwd_rows)(S, d, kt, bt, rt, e, zc, vt, out, K, 0);
                    NAME(wide_store)(o + row * V + j0, out, wd);
                    for (int x = 0; x < WV; x++) zc[x] = out[WV + x];
                }
            }
        }
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            for (long i = 0; i < K; i++)
                NAME(wide_store)(ST + (p * K + i) * V + j0, Sall + jn * WV * K + WV * i, wd);
        }
    }
    free(Sall); free(zall); free(D); free(E); free(R);
}

/* The backward's pass over a tile's rows at step t, with P = S_{t-1} and dS the gradient of
   S_t: step t's transpose (trans: da_t, dw_t sums and dS <- diag(d) dS + e dz_t^T) and step
   s = t - 1's read and sums (read: dS += scale r_s do_s^T; dr_s, dk_s, db_s and dz_s, dv_s).
   Without trans, d = 1 and dz_t = 0 (the block's last step, whose own read is all). The
   per-row sums run NV rows at a time (hsum_rows), each row's sum over its WV vectors formed
   first. dzv returns dz_s, dv_s (WV vectors each). */
TILE_INLINE void NAME(bwd_rows)(
        VEC *restrict dS, const VEC *restrict P, const T *restrict d, const T *restrict e,
        const VEC *dz, T *restrict da, T *restrict dwr, const T *restrict rs, const T *restrict ks,
        const T *restrict bs, const VEC *dos, const VEC *us, const VEC *zs, T *restrict dr,
        T *restrict dk, T *restrict db, VEC *restrict dzv, T scale, long K, const int trans,
        const int read, const int hasb) {
    VEC dzs[WV] = {{0}}, dvs[WV] = {{0}};
    VEC sa[NV], sd[NV], sr[NV], sk[NV], sb[NV];
    for (long i0 = 0; i0 < K; i0 += NV) {
        const long m = K - i0 < NV ? K - i0 : NV;
        for (long l = 0; l < m; l++) {
            const long i = i0 + l;
            const VEC *restrict Pi = P + WV * i;
            VEC g[WV];
            for (int x = 0; x < WV; x++) g[x] = dS[WV * i + x];
            if (trans) {
                VEC xa = Pi[0] * dz[0], xd = g[0] * Pi[0];
                for (int x = 1; x < WV; x++) xa += Pi[x] * dz[x], xd += g[x] * Pi[x];
                sa[l] = xa, sd[l] = xd;
                const T di = d[i], ei = e[i];
                for (int x = 0; x < WV; x++) g[x] = di * g[x] + ei * dz[x];
            }
            if (read) {
                const T ri = rs[i];  /* rs holds scale r_s */
                for (int x = 0; x < WV; x++) g[x] += ri * dos[x];
                VEC xr = Pi[0] * dos[0], xk = g[0] * us[0];
                for (int x = 1; x < WV; x++) xr += Pi[x] * dos[x], xk += g[x] * us[x];
                sr[l] = xr, sk[l] = xk;
                if (hasb) {
                    VEC xb = g[0] * zs[0];
                    for (int x = 1; x < WV; x++) xb += g[x] * zs[x];
                    sb[l] = xb;
                    const T bi = bs[i], ki = ks[i];
                    for (int x = 0; x < WV; x++) dzs[x] += bi * g[x], dvs[x] += ki * g[x];
                } else {
                    const T ki = ks[i];
                    for (int x = 0; x < WV; x++) dzs[x] += ki * g[x];  /* du of step s */
                }
            }
            for (int x = 0; x < WV; x++) dS[WV * i + x] = g[x];
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
    for (int x = 0; x < WV; x++) dzv[x] = dzs[x], dzv[WV + x] = dvs[x];
}

void NAME(vdelta_bwd)(const T *restrict r, const T *restrict w, const T *restrict k,
                      const T *restrict v, const T *restrict a, const T *restrict b,
                      const T *restrict z, const T *restrict ck, const T *restrict dST,
                      const T *restrict dout, T *restrict dr, T *restrict dw, T *restrict dk,
                      T *restrict dv, T *restrict da, T *restrict db, T *restrict dS0, T scale,
                      long after, long Kw, long Tn, long H, long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, VP = TILE_PAD(V), ntile = (V + WT - 1) / WT;
    VEC *dSall = aligned_alloc(32, ntile * WV * K * sizeof(VEC));  /* dS, tile by tile */
    VEC *buf = aligned_alloc(32, CK * WV * K * sizeof(VEC));  /* one tile's S_t of a block */
    T *D = malloc(CK * K * sizeof(T)), *E = malloc(CK * K * sizeof(T));  /* a block's d, e */
    T *sd = malloc(CK * K * sizeof(T));  /* a block's rowsum(dS o S_{t-1}), for dw */
    T *R = malloc(CK * K * sizeof(T));   /* a block's scale r_t */
    const VEC zero = {0};
    for (long p = p0; p < p1; p++) {
        const long bb = p / H, h = p % H;
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            VEC *dS = dSall + jn * WV * K;
            for (long i = 0; i < K; i++) {
                if (dST) NAME(wide_load)(dS + WV * i, dST + (p * K + i) * V + j0, wd);
                else for (int x = 0; x < WV; x++) dS[WV * i + x] = zero;
            }
        }
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            for (long t = t0; t < t1; t++) {  /* the block's decays, erase keys, zeroed sums */
                const long row = (bb * Tn + t) * H + h;
                if (c > 0) {  /* the rows of the block before, fetched ahead */
                    const long fr = row - CK * H;
                    NAME(pf_read)(r + fr * K, K);
                    NAME(pf_read)(w + fr * Kw, Kw);
                    NAME(pf_read)(a + fr * K, K);
                    NAME(pf_write)(dr + fr * K, K);
                    NAME(pf_write)(dk + fr * K, K);
                    NAME(pf_write)(da + fr * K, K);
                    if (b) NAME(pf_write)(db + fr * K, K);
                }
                NAME(decays)(D + (t - t0) * K, w + row * Kw, K, Kw);
                NAME(erase_keys)(E + (t - t0) * K, a + row * K, D + (t - t0) * K, after, K);
                memset(dr + row * K, 0, K * sizeof(T));
                memset(dk + row * K, 0, K * sizeof(T));
                memset(da + row * K, 0, K * sizeof(T));
                memset(sd + (t - t0) * K, 0, K * sizeof(T));
                for (long i = 0; i < K; i++) R[(t - t0) * K + i] = scale * r[row * K + i];
                if (b) memset(db + row * K, 0, K * sizeof(T));
            }
            for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
                const long wd = V - j0 < WT ? V - j0 : WT;
                VEC *restrict dS = dSall + jn * WV * K;
                const VEC *start = (const VEC *)(ck + (p * nck + c) * K * VP + j0 * K);
                const VEC *prev = start;
                for (long t = t0; t < t1; t++) {  /* recompute S_t, t in the block */
                    const long row = (bb * Tn + t) * H + h;
                    if (t + VD_PF < t1) {
                        const long fr = row + VD_PF * H;
                        NAME(pf_read)(k + fr * K, K);
                        if (b) NAME(pf_read)(b + fr * K, K);
                        NAME(pf_read)(v + fr * V + j0, wd);
                        NAME(pf_read)(z + fr * V + j0, wd);
                    }
                    const T *restrict kt = k + row * K, *restrict dt = D + (t - t0) * K;
                    VEC *restrict St = buf + (t - t0) * WV * K, vt[WV], zt[WV];
                    NAME(wide_load)(vt, v + row * V + j0, wd);
                    NAME(wide_load)(zt, z + row * V + j0, wd);
                    if (b) {
                        const T *restrict bt = b + row * K;
                        for (long i = 0; i < K; i++)
                            for (int x = 0; x < WV; x++)
                                St[WV * i + x] = dt[i] * prev[WV * i + x] + bt[i] * zt[x] + kt[i] * vt[x];
                    } else {
                        VEC u[WV];
                        for (int x = 0; x < WV; x++) u[x] = vt[x] - zt[x];
                        for (long i = 0; i < K; i++)
                            for (int x = 0; x < WV; x++)
                                St[WV * i + x] = dt[i] * prev[WV * i + x] + kt[i] * u[x];
                    }
                    prev = St;
                }
                /* step t's transpose fused with step t - 1's read, t = t1 .. t0 (t1: the
                   block's last step's read alone) */
                VEC dz[WV], dzv[2 * WV];
                for (int x = 0; x < WV; x++) dz[x] = zero;
                for (long t = t1; t >= t0; t--) {
                    const int trans = t < t1, read = t > t0;
                    const long row = (bb * Tn + t) * H + h, s = t - 1, rs = row - H;
                    if (s - VD_PF >= t0) {
                        const long fr = rs - VD_PF * H;
                        NAME(pf_read)(k + fr * K, K);
                        if (b) NAME(pf_read)(b + fr * K, K);
                        NAME(pf_read)(dout + fr * V + j0, wd);
                        NAME(pf_read)(v + fr * V + j0, wd);
                        NAME(pf_read)(z + fr * V + j0, wd);
                        NAME(pf_write)(dv + fr * V + j0, wd);
                    }
                    const VEC *restrict P = s >= t0 ? buf + (s - t0) * WV * K : start;
                    const T *dt = trans ? D + (t - t0) * K : NULL, *et = trans ? E + (t - t0) * K : NULL;
                    T *dat = trans ? da + row * K : NULL, *sdt = trans ? sd + (t - t0) * K : NULL;
                    VEC dos[WV] = {{0}}, us[WV] = {{0}}, zs[WV] = {{0}};
                    if (read) {
                        NAME(wide_load)(dos, dout + rs * V + j0, wd);
                        NAME(wide_load)(us, v + rs * V + j0, wd);
                        NAME(wide_load)(zs, z + rs * V + j0, wd);
                        if (!b) for (int x = 0; x < WV; x++) us[x] -= zs[x];
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
                            NAME(wide_store)(dv + rs * V + j0, dzv + WV, wd);
                            for (int x = 0; x < WV; x++) dz[x] = dzv[x];
                        } else {
                            NAME(wide_store)(dv + rs * V + j0, dzv, wd);
                            for (int x = 0; x < WV; x++) dz[x] = -dzv[x];
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
        for (long j0 = 0, jn = 0; j0 < V; j0 += WT, jn++) {
            const long wd = V - j0 < WT ? V - j0 : WT;
            const VEC *dS = dSall + jn * WV * K;
            for (long i = 0; i < K; i++) NAME(wide_store)(dS0 + (p * K + i) * V + j0, dS + WV * i, wd);
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

#include "wide.h"  /* its names and tile.h's undefined for the next type */
#include "tile.h"
#endif
