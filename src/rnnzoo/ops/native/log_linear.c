/* Log-linear attention's intra-chunk block (rnnzoo.ops.log_linear, Guo et al. 2025), forward
   and backward, one chunk of C steps at a time:

       y = (S o M) v,   S = q k^T,   M[t, s] = lam[t, lev(t, s)] e^(G_t - G_s)   (s <= t; else 0)

   with lev(t, s) = min(bit length of t XOR s, L - 1) the Fenwick level of offset s seen from
   offset t (0 on the diagonal). For s < t the level l runs are contiguous: bit l - 1 of t set,
   s in [t >> l << l, (t >> l << l) + 2^(l - 1)). Backward, with dA = dy v^T:

       dv = (S o M)^T dy,   dS = dA o M,   dq = dS k,   dk = dS^T q,
       dM = dA o S,   E = dM o M,   dG_t = sum_s E[t, s] - sum_s E[s, t],
       dlam[t, l] = sum_{s: lev(t, s) = l} dM[t, s] e^(G_t - G_s).

   Causal tiles of `tile` rows [i0, i1) over columns [0, i1) (mm.h's products), so the zeros
   above the diagonal are neither multiplied nor stored. Layouts, time-major as the layer makes
   them (no heads-first copies): blocks n = (b, h, chunk j) of NB = B H N, step t of block n
   at row b Tp + j C + t (Tp = N C) of
     q, k:  entry (b, row, h, c) at b qb + row qt + (h / hg) qg + c (head h reads group
            h / hg: a group's q and k shared by hg heads without a copy; q and k share strides),
     v, y, dy, dv (B, Tp, H, V), lam, dlam (B, Tp, H, L), dq, dk (B, Tp, H / gd, K), all
            contiguous: gd = 1, each head its own gradient (the caller sums a group's heads),
            or gd = hg, a group's heads summed here in head order (then a call's blocks must
            hold whole batches: the first head of a group writes, the others add);
   G (NB, C) and S (NB, C, C), heads first: S the forward's scores, tile rows [i0, i1) of it
   filled over columns [0, i1) (the rest unwritten), read back by the backward. Each call does
   blocks [n0, n1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "log_linear.c"
#include "each_type.h"

#else

#include "mm.h"
#include "transpose.h"

/* Sums over a row as LL_LANES partial sums (one vector of floats: the adds of the row run
   lane-parallel), then the lanes as a tree: an `omp simd reduction` ended each sum with its
   lanes added one after the other through memory (16 dependent scalar adds a dot: ~1/3 of
   ll_bwd's row pass, and of the dots of ll_inter_bwd and the finite check's sums) */
#ifndef LL_LANES
#define LL_LANES 16
#endif
static inline T NAME(ll_tree)(T *restrict p) {
    for (int w = LL_LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) p[l] += p[l + w];
    return p[0];
}

/* p[l] += the entries i = l (mod LL_LANES) of x[0 .. n) */
static inline void NAME(ll_sum_into)(T *restrict p, const T *restrict x, long n) {
    long i = 0;
    for (; i + LL_LANES <= n; i += LL_LANES)
        for (int l = 0; l < LL_LANES; l++) p[l] += x[i + l];
    for (; i < n; i++) p[0] += x[i];
}

/* dst (d, n) = src^T, src (n, d) with rows ld apart: transpose.h's 8 x 8 blocks of vector
   shuffles (the scalar copy was ~40% of ll_intra_bwd's and ~30% of ll_inter_bwd's own time) */
static inline void NAME(ll_transpose)(T *restrict dst, const T *restrict src, long n, long d,
                                      long ld) {
    NAME(trs)(dst, n, src, ld, n, d);
}

/* offset of block (b, j, h)'s first row in a contiguous (B, Tp, H, D) tensor */
static inline long NAME(ll_tm)(long b, long j, long h, long C, long H, long N, long D) {
    return ((b * N + j) * C * H + h) * D;
}

/* offset of block (b, j, h)'s first row of v: entry (b, row, h, c) at b vb + row vt + h V + c */
static inline long NAME(ll_vo)(long b, long j, long h, long C, long V, long vb, long vt) {
    return b * vb + j * C * vt + h * V;
}

/* block (b, j, h)'s C per-step scales of v into uc (u (B, Tp, H); 1 where u is NULL) */
static inline void NAME(ll_uc)(T *restrict uc, const T *restrict u, long b, long j, long h,
                               long C, long H, long N) {
    if (!u) {
        for (long s = 0; s < C; s++) uc[s] = 1;
        return;
    }
    const T *un = u + (b * N + j) * C * H + h;
    for (long s = 0; s < C; s++) uc[s] = un[s * H];
}

/* row t of M over columns [0, e): lam's level weight times the decay for s <= t, 0 after;
   the decays e^(G_t - G_s) (s < t, 0 from t on) also into dd unless NULL. The decays in one
   pass over whole vectors, then each level run (the runs of the set bits of t partition
   [0, t)) scaled by its weight: the exps ran a short loop a run before */
static inline void NAME(ll_mrow)(T *restrict m, T *restrict dd, const T *restrict G,
                                 const T *restrict lam, long t, long e, long L) {
    const T gt = G[t];
    if (dd) {
#pragma omp simd
        for (long s = 0; s < e; s++) {
            const T x = EXP(gt - G[s]);
            m[s] = dd[s] = s < t ? x : 0;
        }
    } else {
#pragma omp simd
        for (long s = 0; s < e; s++) {
            const T x = EXP(gt - G[s]);
            m[s] = s < t ? x : 0;
        }
    }
    for (long l = 1; (1L << (l - 1)) <= t; l++) {
        if (!(t >> (l - 1) & 1)) continue;
        const long s0 = t >> l << l, s1 = s0 + (1L << (l - 1));
        const T w = lam[l < L - 1 ? l : L - 1];
#pragma omp simd
        for (long s = s0; s < s1; s++) m[s] *= w;
    }
    m[t] = lam[0];
}

/* tile rows [i0, i0 + t) over columns [0, e): M's rows and A = S o M, each (t, e), and the
   decays' rows into D unless NULL; lam's rows ldl apart; A's columns times uc unless NULL
   (the forward's v scales: A diag(u) v) */
static void NAME(ll_tile)(T *restrict A, T *restrict M, T *restrict D, const T *restrict S,
                          const T *restrict G, const T *restrict lam, const T *restrict uc,
                          long i0, long t, long e, long C, long L, long ldl) {
    for (long r = 0; r < t; r++) {
        T *restrict a = A + r * e, *restrict m = M + r * e;
        const T *restrict s = S + (i0 + r) * C;
        NAME(ll_mrow)(m, D ? D + r * e : 0, G, lam + (i0 + r) * ldl, i0 + r, e, L);
        if (uc) {
#pragma omp simd
            for (long j = 0; j < e; j++) a[j] = s[j] * m[j] * uc[j];
        } else {
#pragma omp simd
            for (long j = 0; j < e; j++) a[j] = s[j] * m[j];
        }
    }
}

void NAME(ll_intra_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict u, const T *restrict G, const T *restrict lam,
                        T *restrict y, T *restrict S, T *restrict chk, long C, long K, long V,
                        long L, long tile, long H, long N, long qb, long qt, long qg, long hg,
                        long vb, long vt, long n0, long n1) {
    T *kT = malloc((size_t)(K * C + 2 * tile * C + C + 1) * sizeof(T));
    T *A = kT + K * C, *M = A + tile * C, *uc = M + tile * C;
    const long ldv = H * V, ldl = H * L;
    for (long n = n0; n < n1; n++) {
        const long b = n / (H * N), h = n / N % H, j = n % N;
        const long qo = b * qb + j * C * qt + h / hg * qg;
        const T *qn = q + qo, *vn = v + NAME(ll_vo)(b, j, h, C, V, vb, vt), *Gn = G + n * C;
        const T *ln = lam + NAME(ll_tm)(b, j, h, C, H, N, L);
        T *Sn = S + n * C * C, *yn = y + NAME(ll_tm)(b, j, h, C, H, N, V);
        if (u) NAME(ll_uc)(uc, u, b, j, h, C, H, N);
        NAME(ll_transpose)(kT, k + qo, C, K, qt);
        for (long i0 = 0; i0 < C; i0 += tile) {
            const long i1 = i0 + tile < C ? i0 + tile : C, t = i1 - i0, e = i1;
            NAME(mm)(qn + i0 * qt, kT, Sn + i0 * C, t, e, K, qt, 1, C, 1, C, 0, 0, 0, 0, 0, t);
            NAME(ll_tile)(A, M, 0, Sn, Gn, ln, u ? uc : 0, i0, t, e, C, L, ldl);
            NAME(mm)(A, vn, yn + i0 * ldv, t, V, e, e, 1, vt, 1, ldv, 0, 0, 0, 0, 0, t);
        }
        if (chk) {  /* the block's inputs summed while in cache: non-finite iff one of them is
                       (or the sum overflows: then the caller's own check decides) */
            const T *kn = k + qo;
            T p[LL_LANES] = {0};
            for (long s = 0; s < C; s++) {
                NAME(ll_sum_into)(p, qn + s * qt, K);
                NAME(ll_sum_into)(p, kn + s * qt, K);
                NAME(ll_sum_into)(p, vn + s * vt, V);
                NAME(ll_sum_into)(p, ln + s * ldl, L);
            }
            NAME(ll_sum_into)(p, Gn, C);
            if (u) NAME(ll_sum_into)(p, uc, C);
            *chk += NAME(ll_tree)(p);
        }
    }
    free(kT);
}

void NAME(ll_intra_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict u, const T *restrict G, const T *restrict lam,
                        const T *restrict S, const T *restrict dy, T *restrict dq, T *restrict dk,
                        T *restrict dv, T *restrict dG, T *restrict dlam, long C, long K, long V,
                        long L, long tile, long H, long N, long qb, long qt, long qg, long hg,
                        long gd, long vb, long vt, long dqb, long dqt, long dvb, long dvt,
                        long n0, long n1) {
    T *vT = malloc((size_t)(V * C + 4 * tile * C + C + 1) * sizeof(T));
    T *A = vT + V * C, *M = A + tile * C, *dA = M + tile * C, *Dt = dA + tile * C;
    T *uc = Dt + tile * C;
    const long ldv = H * V, ldk = dqt, ldl = H * L;
    for (long n = n0; n < n1; n++) {
        const long b = n / (H * N), h = n / N % H, j = n % N, first = h % gd == 0;
        const long qo = b * qb + j * C * qt + h / hg * qg;
        const long ov = NAME(ll_tm)(b, j, h, C, H, N, V);
        const long ok = b * dqb + j * C * dqt + h / gd * K, odv = b * dvb + j * C * dvt + h * V;
        const long ol = NAME(ll_tm)(b, j, h, C, H, N, L);
        const T *qn = q + qo, *kn = k + qo, *Gn = G + n * C;
        const T *ln = lam + ol, *Sn = S + n * C * C, *dyn = dy + ov;
        T *dqn = dq + ok, *dkn = dk + ok, *dvn = dv + odv;
        T *dGn = dG + n * C, *dln = dlam + ol;
        NAME(ll_transpose)(vT, v + NAME(ll_vo)(b, j, h, C, V, vb, vt), C, V, vt);
        if (u) {  /* v' = diag(u) v: dA = dy v'^T; dv here is v''s gradient */
            NAME(ll_uc)(uc, u, b, j, h, C, H, N);
            for (long c = 0; c < V; c++)
#pragma omp simd
                for (long s = 0; s < C; s++) vT[c * C + s] *= uc[s];
        }
        /* no zeroing of dk, dv: the tiles run last first, and the last tile's products (over
           columns [0, C), all of them) write them (dk: the group's first head), the others add */
        for (long s = 0; s < C; s++)
            for (long c = 0; c < L; c++) dln[s * ldl + c] = 0;
        for (long s = 0; s < C; s++) dGn[s] = 0;
        for (long i0 = (C - 1) / tile * tile; i0 >= 0; i0 -= tile) {
            const long i1 = i0 + tile < C ? i0 + tile : C, t = i1 - i0, e = i1, add = i1 < C;
            NAME(ll_tile)(A, M, Dt, Sn, Gn, ln, 0, i0, t, e, C, L, ldl);
            NAME(mm)(dyn + i0 * ldv, vT, dA, t, e, V, ldv, 1, C, 1, e, 0, 0, 0, 0, 0, t);
            NAME(mm)(A, dyn + i0 * ldv, dvn, e, V, t, 1, e, ldv, 1, dvt, 0, 0, 0, add, 0, e);
            for (long r = 0; r < t; r++) {
                const long tt = i0 + r;
                T *restrict d = dA + r * e;
                const T *restrict m = M + r * e, *restrict s = Sn + tt * C, *Dr = Dt + r * e;
                const T *restrict lr = ln + tt * ldl;
                T *restrict dl = dln + tt * ldl;
                T rowE = 0;
                for (long l = 1; (1L << (l - 1)) <= tt; l++) {
                    if (!(tt >> (l - 1) & 1)) continue;
                    const long s0 = tt >> l << l, s1 = s0 + (1L << (l - 1));
                    const long lv = l < L - 1 ? l : L - 1;
                    const T w = lr[lv];
                    T acc = 0, accE = 0;
                    long j = s0;
                    if (s1 - s0 >= LL_LANES) {  /* lane sums (ll_tree) */
                        T pa[LL_LANES] = {0}, pe[LL_LANES] = {0};
                        for (; j + LL_LANES <= s1; j += LL_LANES)
                            for (int l = 0; l < LL_LANES; l++) {
                                const long i = j + l;
                                const T D = Dr[i], dM = d[i] * s[i], E = dM * w * D;
                                pa[l] += dM * D;
                                pe[l] += E;
                                dGn[i] -= E;
                                d[i] *= m[i];
                            }
                        acc = NAME(ll_tree)(pa);
                        accE = NAME(ll_tree)(pe);
                    }
                    for (; j < s1; j++) {
                        const T D = Dr[j], dM = d[j] * s[j], E = dM * w * D;
                        acc += dM * D;
                        accE += E;
                        dGn[j] -= E;
                        d[j] *= m[j];
                    }
                    dl[lv] += acc;
                    rowE += accE;
                }
                {  /* the diagonal: level 0, no decay; its E cancels in dG */
                    const T dM = d[tt] * s[tt];
                    dl[0] += dM;
                    d[tt] *= m[tt];
                }
                dGn[tt] += rowE;
                for (long j = tt + 1; j < e; j++) d[j] = 0;
            }
            NAME(mm)(dA, kn, dqn + i0 * ldk, t, K, e, e, 1, qt, 1, ldk, 0, 0, 0, !first, 0, t);
            NAME(mm)(dA, qn + i0 * qt, dkn, e, K, t, 1, e, qt, 1, ldk, 0, 0, 0, add || !first, 0,
                     e);
        }
    }
    free(vT);
}

/* The chunks' reads of the Fenwick blocks and the final buckets, one (batch, head) row at a
   time (rows [r0, r1) of BH), with the coefficients from the caller:

       U_j = (f_j o K_j)^T V_j                      (chunk j's state, decayed to its end)
       H_p = sum_j cP[p, j] U_j,   y_i += w_p o (Q_i H_p)   for the pairs p of chunk i = ip[p]
       F_l = sum_j cF[l, j] U_j                     (the final buckets)

   Layouts: q, k, dq, dk, v, y, dy, dv time-major as ll_intra's; f, df (BH, N, C); w, dw
   (BH, P, C); cP, dcP (BH, P, N); cF, dcF (BH, NL, N); F, dF (BH, NL, K, V); U (BH, N, K, V),
   the forward's chunk states, read back by the backward; ip (P,) the pairs' chunks. y, dq, dk
   and dv are added to (ll_intra's results), F, U and the other gradients written whole.
   With lp (P,) the pairs' levels (else NULL), w is not read but made from lam (B, Tp, H, L)
   and G (BH, N, C) as w_p = lam[.., lp[p]] e^(G of chunk ip[p]) (ll_pair_w), and dw is not
   written: its terms go into dlam and dG (added: ll_intra_bwd writes those rows first).
   Backward (dF may be NULL: zeros):
       dH_p = (w_p o Q_i)^T dy_i,   Z = dy_i H_p^T,   dq_i += w_p o Z,   dw_p = rowsum(Q_i o Z),
       dcP[p, j] = <dH_p, U_j>,   dcF[l, j] = <dF_l, U_j>   (0 where cP, cF are 0: the caller's
       coefficients are a mask times a decay, whose gradient that 0 cancels),
       dU_j = sum_p cP[p, j] dH_p + sum_l cF[l, j] dF_l,
       dk_j = f_j o (V_j dU_j^T),   df_j = rowsum(K_j o V_j dU_j^T),   dv_j = f_j o (K_j dU_j). */

static inline T NAME(ll_dot)(const T *restrict a, const T *restrict b, long n) {
    T p[LL_LANES] = {0};
    long i = 0;
    for (; i + LL_LANES <= n; i += LL_LANES)
        for (int l = 0; l < LL_LANES; l++) p[l] += a[i + l] * b[i + l];
    for (; i < n; i++) p[0] += a[i] * b[i];
    return NAME(ll_tree)(p);
}

static inline void NAME(ll_axpy)(T *restrict y, T a, const T *restrict x, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] += a * x[i];
}

/* y = a x (first) or y += a x */
static inline void NAME(ll_axpy_or_set)(T *restrict y, T a, const T *restrict x, long n,
                                        int first) {
    if (!first) {
        NAME(ll_axpy)(y, a, x, n);
        return;
    }
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = a * x[i];
}

/* H = sum_j c[j] U_j over the N states of KV entries (zero coefficients skipped; the first
   term written, not added to zeros) */
static inline void NAME(ll_mix)(T *restrict H, const T *restrict c, const T *restrict U, long N,
                                long KV) {
    int first = 1;
    for (long j = 0; j < N; j++)
        if (c[j] != 0) {
            NAME(ll_axpy_or_set)(H, c[j], U + j * KV, KV, first);
            first = 0;
        }
    if (first) memset(H, 0, (size_t)KV * sizeof(T));
}

/* pair p's row weights w (C) from the level weights themselves (lp: the pair's level): w_s =
   lam[b, i C + s, h, lp] e^(G[r, i, s]) for chunk i of row r = (b, h); e^G into e unless NULL */
static inline void NAME(ll_pair_w)(T *restrict w, T *restrict e, const T *restrict lam,
                                   const T *restrict G, long lv, long b, long i, long h, long r,
                                   long C, long NH, long N, long L) {
    const T *lr = lam + NAME(ll_tm)(b, i, h, C, NH, N, L) + lv, *Gr = G + (r * N + i) * C;
    for (long s = 0; s < C; s++) {
        const T x = EXP(Gr[s]);
        if (e) e[s] = x;
        w[s] = lr[s * NH * L] * x;
    }
}

void NAME(ll_inter_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict u, const T *restrict f, const T *restrict w,
                        const T *restrict cP, const T *restrict cF, const long *restrict ip,
                        const T *restrict lam, const T *restrict G, const long *restrict lp,
                        long L,
                        T *restrict y, T *restrict F, T *restrict U, long N, long C, long K,
                        long V, long P, long NL, long NH, long qb, long qt, long qg, long hg,
                        long vb, long vt, long r0, long r1) {
    const long KV = K * V, ldv = NH * V;
    T *buf = malloc((size_t)(C * K + KV + 2 * C + 1) * sizeof(T));
    T *kd = buf, *H = kd + C * K, *uc = H + KV, *wb = uc + C;
    for (long r = r0; r < r1; r++) {
        const long b = r / NH, h = r % NH;
        const T *qr = q + b * qb + h / hg * qg, *kr = k + b * qb + h / hg * qg;
        const T *vr = v + NAME(ll_vo)(b, 0, h, C, V, vb, vt);
        const T *fr = f + r * N * C, *wr = w ? w + r * P * C : 0, *cPr = cP + r * P * N;
        const T *cFr = cF + r * NL * N;
        T *yr = y + NAME(ll_tm)(b, 0, h, C, NH, N, V), *Fr = F + r * NL * KV, *Ur = U + r * N * KV;
        for (long j = 0; j < N; j++) {  /* U_j = (f_j u_j o K_j)^T V_j */
            const T *kj = kr + j * C * qt, *fj = fr + j * C;
            NAME(ll_uc)(uc, u, b, j, h, C, NH, N);
            for (long s = 0; s < C; s++) {
                const T fs = fj[s] * uc[s];
                for (long c = 0; c < K; c++) kd[s * K + c] = fs * kj[s * qt + c];
            }
            NAME(mm)(kd, vr + j * C * vt, Ur + j * KV, K, V, C, 1, K, vt, 1, V, 0, 0, 0, 0, 0,
                     K);
        }
        for (long p = 0; p < P; p++) {
            const long i = ip[p];
            const T *qi = qr + i * C * qt, *wp = lp ? wb : wr + p * C;
            if (lp) NAME(ll_pair_w)(wb, 0, lam, G, lp[p], b, i, h, r, C, NH, N, L);
            NAME(ll_mix)(H, cPr + p * N, Ur, N, KV);
            for (long s = 0; s < C; s++)
                for (long c = 0; c < K; c++) kd[s * K + c] = wp[s] * qi[s * qt + c];
            NAME(mm)(kd, H, yr + i * C * ldv, C, V, K, K, 1, V, 1, ldv, 0, 0, 0, 1, 0, C);
        }
        for (long l = 0; l < NL; l++) NAME(ll_mix)(Fr + l * KV, cFr + l * N, Ur, N, KV);
    }
    free(buf);
}

void NAME(ll_inter_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict u, const T *restrict f, const T *restrict w,
                        const T *restrict cP, const T *restrict cF, const long *restrict ip,
                        const T *restrict U, const T *restrict dy, const T *restrict dF,
                        const T *restrict lam, const T *restrict G, const long *restrict lp,
                        long L, T *restrict dlam, T *restrict dG,
                        T *restrict dq, T *restrict dk, T *restrict dv, T *restrict df,
                        T *restrict dw, T *restrict dcP, T *restrict dcF, long N, long C, long K,
                        long V, long P, long NL, long NH, long qb, long qt, long qg, long hg,
                        long gd, long vb, long vt, long dqb, long dqt, long dvb, long dvt,
                        long r0, long r1) {
    const long KV = K * V, CM = C * (K > V ? K : V), ldv = NH * V, ldk = dqt;
    T *buf = malloc((size_t)(N * KV + 3 * KV + 2 * CM + 4 * C + 1) * sizeof(T));
    T *dU = buf, *H = dU + N * KV, *HT = H + KV, *dH = HT + KV, *X = dH + KV, *Z = X + CM;
    T *uc = Z + CM, *wb = uc + C, *eb = wb + C, *dwb = eb + C;
    unsigned char *live = malloc((size_t)N + 1);  /* dU_j written (else 0: nothing to add) */
    for (long r = r0; r < r1; r++) {
        const long b = r / NH, h = r % NH, ov = NAME(ll_tm)(b, 0, h, C, NH, N, V);
        const long ok = b * dqb + h / gd * K, odv = b * dvb + h * V;
        const T *qr = q + b * qb + h / hg * qg, *kr = k + b * qb + h / hg * qg;
        const T *vr = v + NAME(ll_vo)(b, 0, h, C, V, vb, vt);
        const T *fr = f + r * N * C, *wr = w ? w + r * P * C : 0, *cPr = cP + r * P * N;
        const T *cFr = cF + r * NL * N, *Ur = U + r * N * KV, *dyr = dy + ov;
        const T *dFr = dF ? dF + r * NL * KV : 0;
        T *dqr = dq + ok, *dkr = dk + ok, *dvr = dv + odv;
        T *dfr = df + r * N * C, *dwr = dw ? dw + r * P * C : 0, *dcPr = dcP + r * P * N;
        T *dcFr = dcF + r * NL * N;
        memset(live, 0, (size_t)N);
        for (long p = 0; p < P; p++) {
            const long i = ip[p];
            const T *qi = qr + i * C * qt, *wp = lp ? wb : wr + p * C, *dyi = dyr + i * C * ldv;
            T *dqi = dqr + i * C * ldk, *dwp = lp ? dwb : dwr + p * C;
            if (lp) NAME(ll_pair_w)(wb, eb, lam, G, lp[p], b, i, h, r, C, NH, N, L);
            NAME(ll_mix)(H, cPr + p * N, Ur, N, KV);
            NAME(ll_transpose)(HT, H, K, V, V);
            for (long s = 0; s < C; s++)
                for (long c = 0; c < V; c++) X[s * V + c] = wp[s] * dyi[s * ldv + c];
            NAME(mm)(qi, X, dH, K, V, C, 1, qt, V, 1, V, 0, 0, 0, 0, 0, K);
            NAME(mm)(dyi, HT, Z, C, K, V, ldv, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            for (long s = 0; s < C; s++) {
                dwp[s] = NAME(ll_dot)(qi + s * qt, Z + s * K, K);
                NAME(ll_axpy)(dqi + s * ldk, wp[s], Z + s * K, K);
            }
            if (lp) {  /* w = lam e^G: dlam += dw e^G at the pair's level, dG += dw w (ll_intra_bwd
                          wrote these rows first: its levels are below the pairs') */
                T *dl = dlam + NAME(ll_tm)(b, i, h, C, NH, N, L) + lp[p], *dg = dG + (r * N + i) * C;
                for (long s = 0; s < C; s++) {
                    dl[s * NH * L] += dwb[s] * eb[s];
                    dg[s] += dwb[s] * wb[s];
                }
            }
            for (long j = 0; j < N; j++) {
                const T c = cPr[p * N + j];
                dcPr[p * N + j] = c != 0 ? NAME(ll_dot)(dH, Ur + j * KV, KV) : 0;
                if (c != 0) {
                    NAME(ll_axpy_or_set)(dU + j * KV, c, dH, KV, !live[j]);
                    live[j] = 1;
                }
            }
        }
        for (long l = 0; l < NL; l++)
            for (long j = 0; j < N; j++) {
                const T c = cFr[l * N + j];
                dcFr[l * N + j] = dFr && c != 0 ? NAME(ll_dot)(dFr + l * KV, Ur + j * KV, KV) : 0;
                if (dFr && c != 0) {
                    NAME(ll_axpy_or_set)(dU + j * KV, c, dFr + l * KV, KV, !live[j]);
                    live[j] = 1;
                }
            }
        for (long j = 0; j < N; j++) {  /* Z = V_j dU_j^T, its rows times u (v' = u v) */
            const T *kj = kr + j * C * qt, *vj = vr + j * C * vt, *fj = fr + j * C;
            if (!live[j]) {  /* dU_j = 0 (no later chunk reads chunk j, no final bucket's
                                gradient): no products, df_j = 0 */
                for (long s = 0; s < C; s++) dfr[j * C + s] = 0;
                continue;
            }
            NAME(ll_uc)(uc, u, b, j, h, C, NH, N);
            NAME(ll_transpose)(HT, dU + j * KV, K, V, V);
            NAME(mm)(vj, HT, Z, C, K, V, vt, 1, K, 1, K, 0, 0, 0, 0, 0, C);
            NAME(mm)(kj, dU + j * KV, X, C, V, K, qt, 1, V, 1, V, 0, 0, 0, 0, 0, C);
            for (long s = 0; s < C; s++) {
                dfr[j * C + s] = uc[s] * NAME(ll_dot)(kj + s * qt, Z + s * K, K);
                NAME(ll_axpy)(dkr + (j * C + s) * ldk, fj[s] * uc[s], Z + s * K, K);
                NAME(ll_axpy)(dvr + (j * C + s) * dvt, fj[s], X + s * V, V);
            }
        }
    }
    free(live);
    free(buf);
}

/* Both passes a (batch, head) row at a time, rows [r0, r1) of B H: ll_intra over the row's N
   chunks (blocks r N .. r N + N - 1), then ll_inter's adds into the same row's y (forward) or
   dq, dk, dv (backward) while they are in cache (as two passes over all rows, ll_inter's
   read-modify-writes of those rows missed the cache). Arguments: ll_intra's and ll_inter's. */
void NAME(ll_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                  const T *restrict u, const T *restrict G, const T *restrict lam,
                  const T *restrict f, const T *restrict w, const T *restrict cP,
                  const T *restrict cF, const long *restrict ip, const long *restrict lp,
                  const T *restrict sk, T *restrict y, T *restrict S,
                  T *restrict F, T *restrict U, T *restrict bad, const long *restrict z,
                  long r0, long r1) {
    /* the sizes and strides in one array (z), so that ops.native.run can hand the ranges to
       torch's OpenMP team (team.c takes at most 32 integer-class arguments) */
    const long N = z[0], C = z[1], K = z[2], V = z[3], L = z[4], P = z[5], NL = z[6];
    const long tile = z[7], H = z[8], qb = z[9], qt = z[10], qg = z[11], hg = z[12];
    const long vb = z[13], vt = z[14];
    for (long r = r0; r < r1; r++) {
        T a = 0;
        NAME(ll_intra_fwd)(q, k, v, u, G, lam, y, S, bad ? &a : 0, C, K, V, L, tile, H, N, qb,
                           qt, qg, hg, vb, vt, r * N, r * N + N);
        if (bad) bad[r] = a - a;  /* 0, or NaN where an input of the row is not finite */
        NAME(ll_inter_fwd)(q, k, v, u, f, w, cP, cF, ip, lam, G, lp, L, y, F, U, N, C, K, V, P,
                           NL, H, qb, qt, qg, hg, vb, vt, r, r + 1);
        if (sk) {  /* the skip y += sk_h v (the unscaled v), the row's steps while in cache */
            const long b = r / H, h = r % H, Tp = N * C;
            const T sh = sk[h];
            for (long t = 0; t < Tp; t++) {
                T *restrict yt = y + ((b * Tp + t) * H + h) * V;
                const T *restrict vs = v + b * vb + t * vt + h * V;
#pragma omp simd
                for (long c = 0; c < V; c++) yt[c] += sh * vs[c];
            }
        }
    }
}

void NAME(ll_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                  const T *restrict u, const T *restrict G, const T *restrict lam,
                  const T *restrict f, const T *restrict w, const T *restrict cP,
                  const T *restrict cF, const long *restrict ip, const long *restrict lp,
                  const T *restrict S,
                  const T *restrict U, const T *restrict dy, const T *restrict dF,
                  const T *restrict sk, T *restrict dsk, T *restrict dq, T *restrict dk, T *restrict dv, T *restrict du,
                  T *restrict dG, T *restrict dlam, T *restrict df, T *restrict dw,
                  T *restrict dcP, T *restrict dcF, const long *restrict z, long r0, long r1) {
    /* z as ll_fwd's, then gd and the strides of dq and dv */
    const long N = z[0], C = z[1], K = z[2], V = z[3], L = z[4], P = z[5], NL = z[6];
    const long tile = z[7], H = z[8], qb = z[9], qt = z[10], qg = z[11], hg = z[12];
    const long gd = z[13], vb = z[14], vt = z[15], dqb = z[16], dqt = z[17], dvb = z[18];
    const long dvt = z[19];
    for (long r = r0; r < r1; r++) {
        NAME(ll_intra_bwd)(q, k, v, u, G, lam, S, dy, dq, dk, dv, dG, dlam, C, K, V, L, tile, H,
                           N, qb, qt, qg, hg, gd, vb, vt, dqb, dqt, dvb, dvt, r * N, r * N + N);
        NAME(ll_inter_bwd)(q, k, v, u, f, w, cP, cF, ip, U, dy, dF, lam, G, lp, L, dlam, dG, dq,
                           dk, dv, df, dw, dcP, dcF, N, C, K, V, P, NL, H, qb, qt, qg, hg, gd, vb,
                           vt, dqb, dqt, dvb, dvt, r, r + 1);
        if (u || sk) {  /* dv' (v' = u v) -> du = v . dv', dv = u dv'; the skip sk_h v:
                           dv += sk_h dy, dsk = v . dy; the row's steps while in cache */
            const long b = r / H, h = r % H, Tp = N * C;
            const T sh = sk ? sk[h] : 0;
            T ds = 0;
            for (long t = 0; t < Tp; t++) {
                const long i = (b * Tp + t) * H + h;
                T *restrict d = dv + b * dvb + t * dvt + h * V;
                const T *restrict vs = v + b * vb + t * vt + h * V, *restrict dyt = dy + i * V;
                if (u) {
                    du[i] = NAME(ll_dot)(vs, d, V);
                    const T ut = u[i];
#pragma omp simd
                    for (long c = 0; c < V; c++) d[c] *= ut;
                }
                if (sk) {
                    ds += NAME(ll_dot)(vs, dyt, V);
#pragma omp simd
                    for (long c = 0; c < V; c++) d[c] += sh * dyt[c];
                }
            }
            if (sk) dsk[r] = ds;
        }
    }
}

#endif
