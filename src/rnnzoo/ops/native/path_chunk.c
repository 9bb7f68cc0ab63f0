/* PaTH attention's chunk pieces (ops.path_attention._ChunkHeads): the UT transform of every
   sub-chunk of c steps and the pairwise merges up to the attention block of C = c 2^levels
   steps, one C call per thread over whole (batch x head) rows, the products on mm.h's mm in
   per-block buffers (a block's pieces stay in cache; the torch form ran ~50 batched products,
   a triangular solve and ~60 elementwise passes over (B, H, N, ...) tensors a fwd+bwd).

   One sub-chunk (rows q_t, k_t, w_t of Q, K, W (c, D); b = beta; SL / tril: strictly lower /
   lower parts), as ops.path_attention._UT:
       G = SL(W W^T), SK = SL(W K^T), QW = tril(Q W^T)
       (I + diag(b) G) [Y | Z] = [diag(b) W | diag(b) SK]      (forward substitution)
       Q' = Q - QW Y,  intra = tril(Q K^T) - QW Z,  K' = K - Z^T W,  P = I - W^T Y
   Merging pieces a, b (b after a), as ops.path_attention._merge:
       Q' = [Q'_a ; Q'_b P_a],  K' = [K'_a P_b^T ; K'_b],  P = P_b P_a,
       intra's lower-left block Q'_b K'_a^T.
   Outputs of a block: qs = scale Q' (C, D), K' (C, D), P (D, D), scale intra (C, C) (zero
   above the diagonal: path_fwd reads only the causal part). The backward recomputes a
   block's forward (keeping each level's pieces and each sub-chunk's G, SK, QW, [Y | Z]) and
   runs the merges top-down, then each sub-chunk's UT backward (ops.path_attention._UT's):
       X = [dQ' | dI] (dI = tril(d intra)),  dQW = -tril(X [Y | Z]^T)
       d[Y | Z] = -(QW^T X + W [dP | dK'^T]),  dR = (I + diag(b) G)^-T d[Y | Z]
       dA = -SL(dR [Y | Z]^T),  db = rowsum(dA o G) + rowsum(dR_Y o W) + rowsum(dR_Z o SK)
       dQ = dQ' + dI K + dQW W,  dK = dK' + dI^T Q + (b o dR_Z)^T W,
       dW = dQW^T Q - [Y | Z] [dP^T ; dK'] + (b o dA + (b o dA)^T) W + b o dR_Y + (b o dR_Z) K
   (b o M: row i of M times b_i; (b o dR_Z) strictly lower.)

   Layout: q, k (B, H, T, D)-strided as (b, h, t) strides (sq), w likewise (sw), beta (sb):
   entry (b, h, t, d) at base + b s[0] + h s[1] + t s[2] + d. Steps t >= T read as zero
   (a last short block: the zero padding of ops.chunk.to_chunks). Outputs (G = B H, N blocks):
   qs, k1 (G, N, C, D), P (G, N, D, D), intra (G, N, C, C). Gradients dq, dk, dw, dbeta
   written with the inputs' strides (steps < T only). */

#ifndef T
/* GCC: no memcpy / memset calls for the copy and fill loops (pc_cp, pc_zero; a call a row) */
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#define KERNELS "path_chunk.c"
#include "each_type.h"

#else

#include "mm.h"
#include "transpose.h"
#include "softmax_row.h"

/* dst[0, n) = src[0, n) / = 0 in line: the rows here are D or c values, and glibc's
   memmove / memset calls (~0.4 M of them a fwd+bwd at the #17 size) cost more than the
   copies (the pragma at the top keeps the compiler from turning these loops into calls) */
static inline void NAME(pc_cp)(T *restrict dst, const T *restrict src, long n) {
    for (long i = 0; i < n; i++) dst[i] = src[i];
}

static inline void NAME(pc_zero)(T *restrict dst, long n) {
    for (long i = 0; i < n; i++) dst[i] = 0;
}

/* C (m, n) (+)= A (m, k) B (k, n): A's (i, p) at A + i a_rs + p a_cs, B row-major (ldb) */
static inline void NAME(pm)(const T *A, long a_rs, long a_cs, const T *B, long ldb, T *C,
                            long ldc, long m, long n, long k, long acc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!acc) for (long i = 0; i < m; i++) NAME(pc_zero)(C + i * ldc, n);
        return;
    }
    NAME(mm)(A, B, C, m, n, k, a_rs, a_cs, ldb, 1, ldc, 0, 0, 0, acc, 0, m);
}

/* dst (cols, rows) = src (rows, cols; row stride lds) transposed */
static inline void NAME(tr)(T *restrict dst, const T *restrict src, long rows, long cols,
                            long lds) {
    NAME(trs)(dst, rows, src, lds, rows, cols);
}

/* Y (c, E) holds R; rows i in order: Y_i = R_i - sum_{m < i} b_i G_im Y_m ((I + diag(b) G)^-1 R,
   G strictly lower), or (back) rows from the last: Y_i = R_i - sum_{m > i} b_m G_mi Y_m
   ((I + diag(b) G)^-T R); W columns of a row at a time in registers (pc_subst_w): 64 where
   E allows (E = D + c = 64 at the #17 size: four vectors a step, where 32 columns left the
   chain over m at one FMA's latency a step), then 32, the rest in memory */
static inline __attribute__((always_inline)) void NAME(pc_subst_w)(
    T *restrict Y, long E, long c, const T *restrict G, const T *restrict b, long back, long j,
    const long W) {
    for (long s = 1; s < c; s++) {
        const long i = back ? c - 1 - s : s, m0 = back ? i + 1 : 0, m1 = back ? c : i;
        T *restrict y = Y + i * E + j;
        T acc[64];
        for (long l = 0; l < W; l++) acc[l] = y[l];
        for (long m = m0; m < m1; m++) {
            const T f = back ? b[m] * G[m * c + i] : b[i] * G[i * c + m];
            const T *restrict x = Y + m * E + j;
            for (long l = 0; l < W; l++) acc[l] -= f * x[l];
        }
        for (long l = 0; l < W; l++) y[l] = acc[l];
    }
}

static void NAME(pc_subst)(T *restrict Y, long E, long c, const T *restrict G,
                           const T *restrict b, long back) {
    long j = 0;
    for (; E - j >= 64; j += 64) NAME(pc_subst_w)(Y, E, c, G, b, back, j, 64);
    for (; E - j >= 32; j += 32) NAME(pc_subst_w)(Y, E, c, G, b, back, j, 32);
    if (j == E) return;
    for (long s = 1; s < c; s++) {
        const long i = back ? c - 1 - s : s, m0 = back ? i + 1 : 0, m1 = back ? c : i;
        T *restrict y = Y + i * E + j;
        for (long m = m0; m < m1; m++) {
            const T f = back ? b[m] * G[m * c + i] : b[i] * G[i * c + m];
            const T *restrict x = Y + m * E + j;
            for (long l = 0; l < E - j; l++) y[l] -= f * x[l];
        }
    }
}

typedef struct {
    long c, D, C, S, L;  /* sub-chunk, channels, block, sub-chunks a block, levels */
    T *q, *k, *w, *b;    /* the block's inputs (C, D), (C) */
    T *r, *fl;           /* raw inputs: each row's 1 / max(|w|, eps) and floor (1: |w| <= eps) */
    T *ql, *kl, *Pl;     /* each level's pieces: (L + 1) (C, D), (L + 1) (C, D), (2 S, D, D) */
    T *G, *SK, *QW, *YZ; /* each sub-chunk's: S (c, c) x 3, S (c, D + c) */
    T *intra;            /* (C, C), unscaled */
    T *t1, *t2, *t3;     /* temporaries of (D + 2 c) max(D, c, ...) */
} NAME(pblk);

static long NAME(pc_tmp)(long c, long D, long C) {  /* covers every use of t1, t2, t3 */
    return (2 * D + 5 * c) * (c + D) + C * D + 64;
}

static T *NAME(pc_alloc)(NAME(pblk) *s, long c, long D, long levels) {
    const long S = 1L << levels, C = c * S, tmp = NAME(pc_tmp)(c, D, C);
    const long n = 3 * C * D + 3 * C + 2 * (levels + 1) * C * D + 2 * S * D * D
                   + S * (3 * c * c + c * (D + c)) + C * C + 3 * tmp;
    T *buf = aligned_alloc(64, (size_t)((n + 15) / 16 * 16) * sizeof(T));
    T *p = buf;
    s->c = c, s->D = D, s->C = C, s->S = S, s->L = levels;
    s->q = p, p += C * D;
    s->k = p, p += C * D;
    s->w = p, p += C * D;
    s->b = p, p += C;
    s->r = p, p += C;
    s->fl = p, p += C;
    s->ql = p, p += (levels + 1) * C * D;
    s->kl = p, p += (levels + 1) * C * D;
    s->Pl = p, p += 2 * S * D * D;
    s->G = p, p += S * c * c;
    s->SK = p, p += S * c * c;
    s->QW = p, p += S * c * c;
    s->YZ = p, p += S * c * (D + c);
    s->intra = p, p += C * C;
    s->t1 = p, p += tmp;
    s->t2 = p, p += tmp;
    s->t3 = p;
    return buf;
}

/* the block's inputs: steps [t0, t0 + C) of head-row (bi, h), zero from T on. raw: w and
   beta are the projections before the layer's l2norm (eps) and 2 sigmoid (of beta + bias[h]
   when bias is not NULL), applied here (the rows' r and floor kept for the backward). With check, returns 0 when q, k, w, beta (and
   v, read with q's strides, when not NULL) are finite in the block, else inf or NaN. */
static T NAME(pc_load)(NAME(pblk) *s, const T *q, const T *k, const T *w, const T *beta,
                       const T *bias, const T *v, const long *sq, const long *sw,
                       const long *sb, long bi, long h, long t0, long Tn, long raw, T eps,
                       long check) {
    const long C = s->C, D = s->D;
    T bad = 0;
    for (long r = 0; r < C; r++) {
        const long t = t0 + r;
        if (t < Tn) {
            const long oq = bi * sq[0] + h * sq[1] + t * sq[2];
            T *restrict qr = s->q + r * D, *restrict kr = s->k + r * D, *restrict wr = s->w + r * D;
            NAME(pc_cp)(qr, q + oq, D);
            NAME(pc_cp)(kr, k + oq, D);
            NAME(pc_cp)(wr, w + bi * sw[0] + h * sw[1] + t * sw[2], D);
            T b = beta[bi * sb[0] + h * sb[1] + t * sb[2]], z = b * 0, ss = 0;
            if (check) {  /* the sums in vector lanes (simd; a serial chain of adds was slow) */
                const T *restrict vr = v ? v + oq : qr;
#pragma omp simd reduction(+:z)
                for (long d = 0; d < D; d++) z += qr[d] * 0 + kr[d] * 0 + wr[d] * 0 + vr[d] * 0;
                bad += z;
            }
            if (raw) {  /* the layer's l2norm: w / max(|w|, eps); beta = 2 sigmoid */
#pragma omp simd reduction(+:ss)
                for (long d = 0; d < D; d++) ss += wr[d] * wr[d];
                const int fl = ss <= eps * eps;
                const T rr = 1 / SQRT(fl ? eps * eps : ss);
                for (long d = 0; d < D; d++) wr[d] *= rr;
                s->r[r] = rr, s->fl[r] = fl;
                b = 2 / (1 + EXP(-(bias ? b + bias[h] : b)));
            }
            s->b[r] = b;
        } else {
            NAME(pc_zero)(s->q + r * D, D);
            NAME(pc_zero)(s->k + r * D, D);
            NAME(pc_zero)(s->w + r * D, D);
            s->b[r] = 0;
        }
    }
    return bad;
}

/* piece j's P at level l: Pl + (offset of level l) + j D D (level l has S >> l pieces) */
static inline T *NAME(pc_P)(NAME(pblk) *s, long l, long j) {
    long off = 0;
    for (long i = 0; i < l; i++) off += s->S >> i;
    return s->Pl + (off + j) * s->D * s->D;
}

/* sub-chunk j's UT transform: level-0 pieces (Q', K', P), its intra on the block's diagonal
   (not for the backward, which reads the pieces only), and G, SK, QW, [Y | Z] kept */
static void NAME(pc_ut)(NAME(pblk) *s, long j, long bwd) {
    const long c = s->c, D = s->D, C = s->C, E = D + c;
    const T *Q = s->q + j * c * D, *K = s->k + j * c * D, *W = s->w + j * c * D,
            *b = s->b + j * c;
    T *G = s->G + j * c * c, *SK = s->SK + j * c * c, *QW = s->QW + j * c * c,
      *YZ = s->YZ + j * c * E, *WT = s->t1, *KT = s->t1 + D * c, *QZ = s->t2;
    NAME(tr)(WT, W, c, D, D);
    NAME(tr)(KT, K, c, D, D);
    /* the (strictly) lower products by row halves: rows [0, h) read columns [0, h) only (the
       upper parts are zeroed below), and a lower A's rows [0, h) only its first h columns */
    const long h = c / 2;
    T *in = s->intra + j * c * C + j * c;
    for (long half = 0; half < 2; half++) {
        const long r0 = half ? h : 0, nr = half ? c - h : h, nc = half ? c : h;
        NAME(pm)(W + r0 * D, D, 1, WT, c, G + r0 * c, c, nr, nc, D, 0);
        NAME(pm)(W + r0 * D, D, 1, KT, c, SK + r0 * c, c, nr, nc, D, 0);
        NAME(pm)(Q + r0 * D, D, 1, WT, c, QW + r0 * c, c, nr, nc, D, 0);
        if (!bwd) NAME(pm)(Q + r0 * D, D, 1, KT, c, in + r0 * C, C, nr, nc, D, 0);
    }
    for (long i = 0; i < c; i++) {
        for (long m = i; m < c; m++) G[i * c + m] = SK[i * c + m] = 0;
        for (long m = i + 1; m < c; m++) QW[i * c + m] = 0;
    }
    /* [Y | Z] = (I + diag(b) G)^-1 [b W | b SK] */
    for (long i = 0; i < c; i++) {
        T *restrict y = YZ + i * E;
        for (long d = 0; d < D; d++) y[d] = b[i] * W[i * D + d];
        for (long m = 0; m < c; m++) y[D + m] = b[i] * SK[i * c + m];
    }
    NAME(pc_subst)(YZ, E, c, G, b, 0);
    NAME(pm)(QW, c, 1, YZ, E, QZ, E, h, E, h, 0);  /* QW lower: rows < h read h columns */
    NAME(pm)(QW + h * c, c, 1, YZ, E, QZ + h * E, E, c - h, E, c, 0);
    T *q1 = s->ql + j * c * D, *k1 = s->kl + j * c * D, *P = NAME(pc_P)(s, 0, j);
    for (long i = 0; i < c; i++) {
        for (long d = 0; d < D; d++) q1[i * D + d] = Q[i * D + d] - QZ[i * E + d];
        if (bwd) continue;
        for (long m = 0; m <= i; m++) in[i * C + m] -= QZ[i * E + D + m];
        for (long m = i + 1; m < c; m++) in[i * C + m] = 0;
    }
    /* Z^T W (Z strictly lower: Z^T's rows >= h read its columns >= h only) */
    NAME(pm)(YZ + D, 1, E, W, D, k1, D, h, D, c, 0);
    NAME(pm)(YZ + D + h + h * E, 1, E, W + h * D, D, k1 + h * D, D, c - h, D, c - h, 0);
    for (long i = 0; i < c * D; i++) k1[i] = K[i] - k1[i];
    NAME(pm)(WT, c, 1, YZ, E, P, D, D, D, c, 0);      /* W^T Y */
    for (long i = 0; i < D * D; i++) P[i] = -P[i];
    for (long d = 0; d < D; d++) P[d * D + d] += 1;
}

/* level l's pieces merged pairwise into level l + 1's; the cross blocks into intra */
static void NAME(pc_merge)(NAME(pblk) *s, long l) {
    const long D = s->D, C = s->C, cl = s->c << l, n = s->S >> l;
    const T *ql = s->ql + l * C * D, *kl = s->kl + l * C * D;
    T *qn = s->ql + (l + 1) * C * D, *kn = s->kl + (l + 1) * C * D, *t = s->t1;
    for (long p = 0; p < n / 2; p++) {
        const long oa = 2 * p * cl, ob = oa + cl;
        const T *Pa = NAME(pc_P)(s, l, 2 * p), *Pb = NAME(pc_P)(s, l, 2 * p + 1);
        NAME(pc_cp)(qn + oa * D, ql + oa * D, cl * D);
        NAME(pm)(ql + ob * D, D, 1, Pa, D, qn + ob * D, D, cl, D, D, 0);     /* Q'_b P_a */
        NAME(tr)(t, Pb, D, D, D);
        NAME(pm)(kl + oa * D, D, 1, t, D, kn + oa * D, D, cl, D, D, 0);      /* K'_a P_b^T */
        NAME(pc_cp)(kn + ob * D, kl + ob * D, cl * D);
        NAME(tr)(t, kl + oa * D, cl, D, D);
        NAME(pm)(ql + ob * D, D, 1, t, cl, s->intra + ob * C + oa, C, cl, cl, D, 0);
        for (long i = 0; i < cl; i++)
            NAME(pc_zero)(s->intra + (oa + i) * C + ob, cl);
        NAME(pm)(Pb, D, 1, Pa, D, NAME(pc_P)(s, l + 1, p), D, D, D, D, 0);   /* P_b P_a */
    }
}

/* the block's pieces; for the backward (bwd) only what it reads: no intra, no last merge
   (the merges' backward reads their inputs) */
static void NAME(pc_forward)(NAME(pblk) *s, long bwd) {
    for (long j = 0; j < s->S; j++) NAME(pc_ut)(s, j, bwd);
    for (long l = 0; l < s->L - (bwd ? 1 : 0); l++) NAME(pc_merge)(s, l);
}

void NAME(path_chunk_fwd)(const T *restrict q, const T *restrict k, const T *restrict w,
                          const T *restrict beta, T *restrict qs, T *restrict k1,
                          T *restrict P, T *restrict intra, const T *restrict v,
                          T *restrict fin, const T *restrict bias, long Tn, long H, long D, long c, long levels, long N,
                          long sq0, long sq1, long sq2, long sw0, long sw1, long sw2, long sb0,
                          long sb1, long sb2, long raw, double eps, double scale, long g0,
                          long g1) {
    NAME(pblk) s;
    T *buf = NAME(pc_alloc)(&s, c, D, levels);
    const long C = s.C, sq[3] = {sq0, sq1, sq2}, sw[3] = {sw0, sw1, sw2},
               sb[3] = {sb0, sb1, sb2};
    const T sc = (T)scale;
    for (long g = g0; g < g1; g++)
        for (long n = 0; n < N; n++) {
            const T bad = NAME(pc_load)(&s, q, k, w, beta, bias, v, sq, sw, sb, g / H, g % H,
                                        n * C, Tn, raw, (T)eps, fin != 0);
            if (fin) fin[g] = n ? fin[g] + bad : bad;
            NAME(pc_forward)(&s, 0);
            const long o = g * N + n;
            const T *qt = s.ql + s.L * C * D;
            T *qo = qs + o * C * D, *io = intra + o * C * C;
            for (long i = 0; i < C * D; i++) qo[i] = sc * qt[i];
            NAME(pc_cp)(k1 + o * C * D, s.kl + s.L * C * D, C * D);
            NAME(pc_cp)(P + o * D * D, NAME(pc_P)(&s, s.L, 0), D * D);
            for (long i = 0; i < C * C; i++) io[i] = sc * s.intra[i];
        }
    free(buf);
}

/* path_chunk_fwd and attention.c's path_fwd in one pass, for a fresh sequence (no cache, T =
   N C): each block's pieces go from cache straight into its attention (path_fwd's block step:
   scores [qs_n K^T | intra_n], the causal softmax rows in PS, o_n = P values, then the keys
   K <- [K P_n^T ; k1_n]), where k1 and intra (16 MB at the #17 size) went to memory and back.
   q, k, w, beta, bias, fin and the strides as path_chunk_fwd's (check on, v read with q's
   strides as the values too); o, keys, KS, PS (KT, PT, Lk) as path_fwd's with L = 0; qs and P
   as path_chunk_fwd's (what path_bwd reads); IN (B H N, 3 C D + 3 C): each block's inputs as
   pc_load left them (q, k, w normalised, beta, w's 1 / norm and floor flag), which
   path_fused_bwd reads in order where it loaded the projection's strided rows again. vals
   (B H, Lv, D), Lv >= T, or NULL: the values dense are written into each head-row's first T
   rows (a fresh cache of values; the rows past T are not written), else into a buffer. */
static void NAME(pf_fwd)(const T *restrict q, const T *restrict k, const T *restrict w,
                          const T *restrict beta, const T *restrict v, T *restrict fin,
                          const T *restrict bias, T *restrict o, T *restrict keys,
                          T *restrict KS, T *restrict PS, T *restrict qs, T *restrict P,
                          T *restrict IN, T *restrict vals, long Tn, long H, long D, long c,
                          long levels, long N, long sq0, long sq1, long sq2, long sw0, long sw1,
                          long sw2, long sb0, long sb1, long sb2, long raw, double eps,
                          double scale, long KT, long PT, long Lk, long Lv, long g0, long g1) {
    NAME(pblk) s;
    T *buf = NAME(pc_alloc)(&s, c, D, levels);
    const long C = s.C, L = s.L, Lt = N * C, sq[3] = {sq0, sq1, sq2}, sw[3] = {sw0, sw1, sw2},
               sb[3] = {sb0, sb1, sb2}, NI = 3 * C * D + 3 * C;
    const long hC = C / 2;  /* the diagonal block's row halves */
    const T sc = (T)scale;
    T *kt = aligned_alloc(64, (size_t)((2 * Lt * D + D * D + 15) / 16 * 16) * sizeof(T));
    T *pt = kt + Lt * D, *vbuf = pt + D * D;  /* K^T, P_n^T, the head-row's values */
    for (long g = g0; g < g1; g++) {
        const long bi = g / H, h = g % H;
        T *vg = vals ? vals + g * Lv * D : vbuf;  /* the values' cache rows, when asked */
        for (long j = 0; j < Lt; j++)  /* its values dense, read by every block's product */
            NAME(pc_cp)(vg + j * D, v + bi * sq0 + h * sq1 + j * sq2, D);
        T *K = keys + g * Lk * D, *og = o + (bi * Lt * H + h) * D, *ks = KS + g * KT,
          *ps = PS + g * PT;
        NAME(pc_zero)(K + Lt * D, (Lk - Lt) * D);
        for (long n = 0; n < N; n++) {
            const long m = n * C, e = m + C, ob = g * N + n;
            /* the block's inputs loaded straight into IN (pblk's q k w b r fl order), which the
               backward reads */
            s.q = IN + ob * NI, s.k = s.q + C * D, s.w = s.k + C * D, s.b = s.w + C * D;
            s.r = s.b + C, s.fl = s.r + C;
            const T bad = NAME(pc_load)(&s, q, k, w, beta, bias, v, sq, sw, sb, bi, h, m, Tn,
                                        raw, (T)eps, 1);
            fin[g] = n ? fin[g] + bad : bad;
            NAME(pc_forward)(&s, 0);
            const T *qt = s.ql + L * C * D, *Pn = NAME(pc_P)(&s, L, 0);
            T *qn = qs + ob * C * D;
            for (long i = 0; i < C * D; i++) qn[i] = sc * qt[i];
            NAME(pc_cp)(P + ob * D * D, Pn, D * D);
            if (m) {
                NAME(trs)(kt, m, ks, D, m, D);
                NAME(mm)(qn, kt, ps, C, m, D, D, 1, m, 1, e, 0, 0, 0, 0, 0, C);
            }
            for (long r = 0; r < C; r++) {  /* path_fwd's sm_fwd: keys <= m + r, zeros past */
                T *restrict sr = ps + r * e, Z;
                const T *restrict in = s.intra + r * C;
                for (long j = 0; j <= r; j++) sr[m + j] = sc * in[j];
                NAME(softmax_row)(sr, m + r + 1, &Z);
                for (long j = m + r + 1; j < e; j++) sr[j] = 0;
            }
            /* o = P V; P's rows < C / 2 are zero from column m + C / 2 on (read when a value
               so far is not finite: 0 x inf is NaN, as path_fwd's product gives) */
            NAME(mm)(ps, vg, og + m * H * D, hC, D, fin[g] == 0 ? m + hC : e, e, 1, D, 1, H * D,
                     0, 0, 0, 0, 0, hC);
            NAME(mm)(ps + hC * e, vg, og + (m + hC) * H * D, C - hC, D, e, e, 1, D, 1, H * D, 0,
                     0, 0, 0, 0, C - hC);
            T *next = n + 1 < N ? ks + m * D : K;  /* the next block's keys after these */
            if (m) {
                NAME(trs)(pt, D, Pn, D, D, D);
                NAME(mm)(ks, pt, next, m, D, D, D, 1, D, 1, D, 0, 0, 0, 0, 0, m);
            }
            NAME(pc_cp)(next + m * D, s.kl + L * C * D, C * D);
            ks += m * D;
            ps += C * e;
        }
    }
    free(kt);
    free(buf);
}

/* the UT backward of sub-chunk j: dq1, dk1 (c, D) row-major (ld D), dPj (D, D), dI (c, c)
   (ld ldi, read on and below the diagonal) -> dQ, dK, dW (c, D) (ld D), db (c) */
static void NAME(pc_ut_bwd)(NAME(pblk) *s, long j, const T *dq1, const T *dk1, const T *dPj,
                            const T *dI, long ldi, T *dQ, T *dK, T *dW, T *db) {
    const long c = s->c, D = s->D, E = D + c, F = 2 * c;
    const T *Q = s->q + j * c * D, *K = s->k + j * c * D, *W = s->w + j * c * D,
            *b = s->b + j * c;
    const T *G = s->G + j * c * c, *SK = s->SK + j * c * c, *QW = s->QW + j * c * c,
            *YZ = s->YZ + j * c * E;
    T *X = s->t1;            /* [dQ' | dI] (c, E); later [dI | dQW] / [dS | dSK] (c, 2c) */
    T *YZT = s->t2;          /* [Y | Z]^T (E, c) */
    T *t = s->t3;
    T *dR = X + c * E;       /* (c, E) */
    T *Fm = dR + c * E;      /* (c, 2c) */
    T *dqw = Fm + c * F;     /* (c, c) */
    T *KW = t;               /* [K ; W] (2c, D) */
    T *Em = KW + F * D;      /* [dP | dK'^T] (D, E), then [dP^T ; dK'] (E, D) */
    for (long i = 0; i < c; i++) {
        NAME(pc_cp)(X + i * E, dq1 + i * D, D);
        for (long m = 0; m < c; m++) X[i * E + D + m] = m <= i ? dI[i * ldi + m] : 0;
    }
    NAME(tr)(YZT, YZ, c, E, E);
    /* lower products by row halves, as pc_ut's (h = c / 2): rows [0, h) of the lower dQW
       and dA need columns [0, h), and there X's dI and YZ's Z only their first D + h */
    const long h = c / 2;
    NAME(pm)(X, E, 1, YZT, c, dqw, c, h, h, D + h, 0);
    NAME(pm)(X + h * E, E, 1, YZT, c, dqw + h * c, c, c - h, c, E, 0);
    for (long i = 0; i < c; i++)
        for (long m = 0; m < c; m++) dqw[i * c + m] = m <= i ? -dqw[i * c + m] : 0;
    /* d[Y | Z] = -(QW^T X + W [dP | dK'^T]) into dR */
    for (long d = 0; d < D; d++) NAME(pc_cp)(Em + d * E, dPj + d * D, D);
    NAME(trs)(Em + D, E, dk1, D, c, D);
    NAME(pm)(QW, 1, c, X, E, dR, E, h, E, c, 0);  /* QW^T upper: rows >= h from rows >= h */
    NAME(pm)(QW + h + h * c, 1, c, X + h * E, E, dR + h * E, E, c - h, E, c - h, 0);
    NAME(pm)(W, D, 1, Em, E, dR, E, c, E, D, 1);
    /* dQ = dQ' + [dI | dQW] [K ; W];  dK = dK' + dI^T Q */
    NAME(pc_cp)(KW, K, c * D);
    NAME(pc_cp)(KW + c * D, W, c * D);
    for (long i = 0; i < c; i++) {
        NAME(pc_cp)(Fm + i * F, X + i * E + D, c);
        NAME(pc_cp)(Fm + i * F + c, dqw + i * c, c);
    }
    NAME(pm)(Fm, F, 1, KW, D, dQ, D, c, D, F, 0);
    for (long i = 0; i < c * D; i++) dQ[i] += dq1[i];
    NAME(pm)(X + D, 1, E, Q, D, dK, D, h, D, c, 0);  /* dI^T upper */
    NAME(pm)(X + D + h + h * E, 1, E, Q + h * D, D, dK + h * D, D, c - h, D, c - h, 0);
    for (long i = 0; i < c * D; i++) dK[i] += dk1[i];
    /* dW = dQW^T Q - [Y | Z] [dP^T ; dK'] */
    NAME(pm)(dqw, 1, c, Q, D, dW, D, h, D, c, 0);  /* dQW^T upper */
    NAME(pm)(dqw + h + h * c, 1, c, Q + h * D, D, dW + h * D, D, c - h, D, c - h, 0);
    NAME(trs)(Em, D, dPj, D, D, D);
    NAME(pc_cp)(Em + D * D, dk1, c * D);
    for (long i = 0; i < E * D; i++) Em[i] = -Em[i];
    NAME(pm)(YZ, E, 1, Em, D, dW, D, c, D, E, 1);
    /* dR = (I + diag(b) G)^-T (-dR) */
    for (long i = 0; i < c * E; i++) dR[i] = -dR[i];
    NAME(pc_subst)(dR, E, c, G, b, 1);
    /* dA = -SL(dR [Y | Z]^T) into dqw's place (dqw done) */
    T *dA = dqw;
    NAME(pm)(dR, E, 1, YZT, c, dA, c, h, h, D + h, 0);  /* strictly lower, as dQW */
    NAME(pm)(dR + h * E, E, 1, YZT, c, dA + h * c, c, c - h, c, E, 0);
    for (long i = 0; i < c; i++) {
        T acc = 0;
        T *restrict da = dA + i * c;
        const T *restrict gi = G + i * c, *restrict ri = dR + i * E, *restrict ski = SK + i * c,
                          *restrict wi = W + i * D;
#pragma omp simd reduction(+:acc)
        for (long m = 0; m < i; m++) {
            da[m] = -da[m];
            acc += da[m] * gi[m];
        }
        for (long m = i; m < c; m++) da[m] = 0;
#pragma omp simd reduction(+:acc)
        for (long d = 0; d < D; d++) acc += ri[d] * wi[d];
#pragma omp simd reduction(+:acc)
        for (long m = 0; m < i; m++) acc += ri[D + m] * ski[m];
        db[i] = acc;
    }
    /* dW += [b o dR_Z | S] [K ; W] + b o dR_Y, S = b o dA + (b o dA)^T;  dK += (b o dR_Z)^T W */
    T *dAT = YZT;  /* dA^T (c, c) in [Y | Z]^T's place (read for the last time above) */
    NAME(tr)(dAT, dA, c, c, c);
    for (long i = 0; i < c; i++) {
        for (long m = 0; m < c; m++) Fm[i * F + m] = m < i ? b[i] * dR[i * E + D + m] : 0;
        for (long m = 0; m < c; m++)
            Fm[i * F + c + m] = b[i] * dA[i * c + m] + b[m] * dAT[i * c + m];
    }
    NAME(pm)(Fm, F, 1, KW, D, dW, D, c, D, F, 1);
    for (long i = 0; i < c; i++)
        for (long d = 0; d < D; d++) dW[i * D + d] += b[i] * dR[i * E + d];
    NAME(pm)(Fm, 1, F, W, D, dK, D, h, D, c, 1);  /* (b o dR_Z)^T upper */
    NAME(pm)(Fm + h + h * F, 1, F, W + h * D, D, dK + h * D, D, c - h, D, c - h, 1);
}

/* the layout of a block's gradient buffer (pc_gbuf values): each level's piece gradients
   (as ql, kl, Pl), the block's scaled intra gradient (C, C), its input gradients */
static long NAME(pc_gbuf)(const NAME(pblk) *s) {
    return 2 * (s->L + 1) * s->C * s->D + 2 * s->S * s->D * s->D + s->C * s->C
           + 3 * s->C * s->D + s->C;
}

/* a block's backward from its pieces' gradients in gb (the top level's dQ' (scaled back),
   dK', dP at dql + L C D, dkl + L C D, dPl's top piece; dI (C, C), scaled back, read on and
   below the diagonal), s holding pc_forward(s, 1) of the block: the merges top-down, each
   sub-chunk's UT backward, the raw inputs' l2norm and sigmoid, and the rows of steps < Tn
   written to dq, dk (q's strides sq), dw (sw), dbeta (sb) */
static void NAME(pc_block_bwd)(NAME(pblk) *s, T *gb, T *restrict dq, T *restrict dk,
                               T *restrict dw, T *restrict dbeta, const long *sq,
                               const long *sw, const long *sb, long bi, long h, long t0,
                               long Tn, long raw) {
    const long C = s->C, S = s->S, L = s->L, D = s->D, nP = 2 * S * D * D;
    T *dql = gb, *dkl = dql + (L + 1) * C * D, *dPl = dkl + (L + 1) * C * D,
      *dI = dPl + nP, *gq = dI + C * C, *gk = gq + C * D, *gw = gk + C * D, *gbt = gw + C * D;
    for (long l = L - 1; l >= 0; l--) {
        const long cl = s->c << l, np = S >> (l + 1);
        const T *ql = s->ql + l * C * D, *kl = s->kl + l * C * D;
        const T *dqn = dql + (l + 1) * C * D, *dkn = dkl + (l + 1) * C * D;
        T *dqc = dql + l * C * D, *dkc = dkl + l * C * D, *t = s->t1;
        for (long p = 0; p < np; p++) {
            const long oa = 2 * p * cl, ob = oa + cl;
            const T *Pa = NAME(pc_P)(s, l, 2 * p), *Pb = NAME(pc_P)(s, l, 2 * p + 1),
                    *Pab = NAME(pc_P)(s, l + 1, p);
            T *dPa = dPl + (Pa - s->Pl), *dPb = dPl + (Pb - s->Pl);
            const T *dPab = dPl + (Pab - s->Pl), *dX = dI + ob * C + oa;
            /* dQ'_a = dQ[a];  dQ'_b = dQ[b] P_a^T + dX K'_a */
            NAME(pc_cp)(dqc + oa * D, dqn + oa * D, cl * D);
            NAME(tr)(t, Pa, D, D, D);
            NAME(pm)(dqn + ob * D, D, 1, t, D, dqc + ob * D, D, cl, D, D, 0);
            NAME(pm)(dX, C, 1, kl + oa * D, D, dqc + ob * D, D, cl, D, cl, 1);
            /* dK'_a = dK[a] P_b + dX^T Q'_b;  dK'_b = dK[b] */
            NAME(pm)(dkn + oa * D, D, 1, Pb, D, dkc + oa * D, D, cl, D, D, 0);
            NAME(pm)(dX, 1, C, ql + ob * D, D, dkc + oa * D, D, cl, D, cl, 1);
            NAME(pc_cp)(dkc + ob * D, dkn + ob * D, cl * D);
            /* dP_a = Q'_b^T dQ[b] + P_b^T dP;  dP_b = dK[a]^T K'_a + dP P_a^T */
            NAME(pm)(ql + ob * D, 1, D, dqn + ob * D, D, dPa, D, D, D, cl, 0);
            NAME(pm)(Pb, 1, D, dPab, D, dPa, D, D, D, D, 1);
            NAME(pm)(dkn + oa * D, 1, D, kl + oa * D, D, dPb, D, D, D, cl, 0);
            NAME(pm)(dPab, D, 1, t, D, dPb, D, D, D, D, 1);
        }
    }
    for (long j = 0; j < S; j++)
        NAME(pc_ut_bwd)(s, j, dql + j * s->c * D, dkl + j * s->c * D,
                        dPl + j * D * D, dI + j * s->c * C + j * s->c, C,
                        gq + j * s->c * D, gk + j * s->c * D, gw + j * s->c * D,
                        gbt + j * s->c);
    if (raw)  /* through the l2norm (dx = r (dy - y (y . dy)); floor: r dy) and
                 2 sigmoid (b (1 - b / 2), b = 2 sigmoid) */
        for (long r = 0; r < C; r++) {
            const T *restrict y = s->w + r * D;
            T *restrict gr = gw + r * D, dot = 0;
#pragma omp simd reduction(+:dot)
            for (long d = 0; d < D; d++) dot += y[d] * gr[d];
            dot = s->fl[r] ? 0 : dot;
            for (long d = 0; d < D; d++) gr[d] = s->r[r] * (gr[d] - y[d] * dot);
            gbt[r] *= s->b[r] * (1 - s->b[r] / 2);
        }
    for (long r = 0; r < C && t0 + r < Tn; r++) {
        const long t = t0 + r, oq = bi * sq[0] + h * sq[1] + t * sq[2],
                   ow = bi * sw[0] + h * sw[1] + t * sw[2];
        NAME(pc_cp)(dq + oq, gq + r * D, D);
        NAME(pc_cp)(dk + oq, gk + r * D, D);
        NAME(pc_cp)(dw + ow, gw + r * D, D);
        dbeta[bi * sb[0] + h * sb[1] + t * sb[2]] = gbt[r];
    }
}

void NAME(path_chunk_bwd)(const T *restrict q, const T *restrict k, const T *restrict w,
                          const T *restrict beta, const T *restrict dqs,
                          const T *restrict dk1, const T *restrict dP,
                          const T *restrict dintra, T *restrict dq, T *restrict dk,
                          T *restrict dw, T *restrict dbeta, const T *restrict bias, long Tn,
                          long H, long D, long c,
                          long levels, long N, long sq0, long sq1, long sq2, long sw0, long sw1,
                          long sw2, long sb0, long sb1, long sb2, long raw, double eps,
                          double scale, long g0, long g1) {
    NAME(pblk) s;
    T *buf = NAME(pc_alloc)(&s, c, D, levels);
    const long C = s.C, S = s.S, L = s.L, sq[3] = {sq0, sq1, sq2}, sw[3] = {sw0, sw1, sw2},
               sb[3] = {sb0, sb1, sb2};
    const T sc = (T)scale;
    T *gb = aligned_alloc(64, (size_t)((NAME(pc_gbuf)(&s) + 15) / 16 * 16) * sizeof(T));
    T *dql = gb, *dkl = dql + (L + 1) * C * D, *dPl = dkl + (L + 1) * C * D,
      *dI = dPl + 2 * S * D * D;
    for (long g = g0; g < g1; g++)
        for (long n = 0; n < N; n++) {
            const long bi = g / H, h = g % H, t0 = n * C, o = g * N + n;
            NAME(pc_load)(&s, q, k, w, beta, bias, 0, sq, sw, sb, bi, h, t0, Tn, raw, (T)eps, 0);
            NAME(pc_forward)(&s, 1);
            const T *dqo = dqs + o * C * D, *dio = dintra + o * C * C;
            T *dqt = dql + L * C * D;
            for (long i = 0; i < C * D; i++) dqt[i] = sc * dqo[i];
            NAME(pc_cp)(dkl + L * C * D, dk1 + o * C * D, C * D);
            T *dPt = dPl + (NAME(pc_P)(&s, L, 0) - s.Pl);
            NAME(pc_cp)(dPt, dP + o * D * D, D * D);
            for (long i = 0; i < C * C; i++) dI[i] = sc * dio[i];
            NAME(pc_block_bwd)(&s, gb, dq, dk, dw, dbeta, sq, sw, sb, bi, h, t0, Tn, raw);
        }
    free(gb);
    free(buf);
}

/* path_fused_fwd's backward: attention.c's path_bwd block by block in reverse (L = 0; qs, P,
   KS, PS as path_fused_fwd wrote them), each block's piece gradients (dqs_n, dk1_n, dP_n,
   dintra_n) taken from cache by its chunk backward (path_chunk_bwd's, the block's pieces
   recomputed there as before), where they went to memory and back (26 MB at the #17 size).
   do, dkeys (NULL: zero) as path_bwd's; dv written whole with q's strides (sq), plus the
   first T rows of dvals (B H, Lv, D: the gradient of path_fused_fwd's vals) unless NULL; dq,
   dk, dw, dbeta as path_chunk_bwd's; IN as path_fused_fwd wrote it (q, k, w, beta and bias
   are not read again: IN holds what pc_load made of them). */
static void NAME(pf_bwd)(const T *restrict q, const T *restrict k, const T *restrict w,
                          const T *restrict beta, const T *restrict v, const T *restrict qs,
                          const T *restrict P, const T *restrict KS, const T *restrict PS,
                          const T *restrict IN, const T *restrict do_, const T *restrict dkeys,
                          T *restrict dq, T *restrict dk, T *restrict dv, T *restrict dw,
                          T *restrict dbeta, const T *restrict bias,
                          const T *restrict dvals, long Tn, long H, long D, long c,
                          long levels, long N, long sq0, long sq1, long sq2, long sw0,
                          long sw1, long sw2, long sb0, long sb1, long sb2, long raw,
                          double eps, double scale, long KT, long PT, long Lk, long Lv,
                          long g0, long g1) {
    NAME(pblk) s;
    T *buf = NAME(pc_alloc)(&s, c, D, levels);
    const long C = s.C, S = s.S, L = s.L, Lt = N * C, sq[3] = {sq0, sq1, sq2},
               sw[3] = {sw0, sw1, sw2}, sb[3] = {sb0, sb1, sb2};
    const long hC = C / 2;  /* the diagonal block's row halves */
    const T sc = (T)scale;
    T *gb = aligned_alloc(64, (size_t)((NAME(pc_gbuf)(&s) + 15) / 16 * 16) * sizeof(T));
    T *dql = gb, *dkl = dql + (L + 1) * C * D, *dPl = dkl + (L + 1) * C * D,
      *dI = dPl + 2 * S * D * D;
    T *ab = aligned_alloc(64, (size_t)((4 * Lt * D + C * Lt + 15) / 16 * 16) * sizeof(T));
    T *dK = ab, *tmp = dK + Lt * D, *vT = tmp + Lt * D, *ds = vT + Lt * D, *dV = ds + C * Lt;
    for (long g = g0; g < g1; g++) {
        const long bi = g / H, h = g % H;
        NAME(trs)(vT, Lt, v + bi * sq0 + h * sq1, sq2, Lt, D);  /* V^T (D, Lt) */
        const T *dog = do_ + (bi * Lt * H + h) * D;
        T *dvg = dv + bi * sq0 + h * sq1;
        if (dkeys) NAME(pc_cp)(dK, dkeys + g * Lk * D, Lt * D);
        else NAME(pc_zero)(dK, Lt * D);
        int dK0 = !dkeys;  /* dK all zero: the last block's dP_n and dK P_n are zero */
        const T *ks = KS + (g + 1) * KT, *ps = PS + (g + 1) * PT;
        for (long n = N - 1; n >= 0; n--) {
            const long m = n * C, e = m + C, ob = g * N + n;
            ks -= m * D;
            ps -= C * e;
            NAME(pc_cp)(s.q, IN + ob * (3 * C * D + 3 * C), 3 * C * D + 3 * C);  /* q k w b r fl */
            NAME(pc_forward)(&s, 1);
            const T *don = dog + m * H * D, *qn = qs + ob * C * D, *Pn = P + ob * D * D;
            T *dqt = dql + L * C * D, *dPn = dPl + (NAME(pc_P)(&s, L, 0) - s.Pl);
            NAME(pc_cp)(dkl + L * C * D, dK + m * D, C * D);
            if (m && !dK0) {  /* dK[:m] P_n into the other buffer, which becomes dK */
                NAME(mm)(dK, ks, dPn, D, D, m, 1, D, D, 1, D, 0, 0, 0, 0, 0, D);
                NAME(mm)(dK, Pn, tmp, m, D, D, D, 1, D, 1, D, 0, 0, 0, 0, 0, m);
                T *t = dK;
                dK = tmp, tmp = t;
            } else {
                NAME(pc_zero)(dPn, D * D);
            }
            /* path_bwd's order: dS = P (do V^T - rowsum) reading P by rows, then dV */
            /* dP = do V^T where P is live: rows < C / 2 to column m + C / 2 (softmax_row_bwd
               zeroes the rest) */
            NAME(mm)(don, vT, ds, hC, m + hC, D, H * D, 1, Lt, 1, e, 0, 0, 0, 0, 0, hC);
            NAME(mm)(don + hC * H * D, vT, ds + hC * e, C - hC, e, D, H * D, 1, Lt, 1, e, 0, 0,
                     0, 0, 0, C - hC);
            for (long r = 0; r < C; r++)
                NAME(softmax_row_bwd)(ps + r * e, ds + r * e, m + r + 1, e);
            /* the last block (the first here) covers every value: dV written, then added */
            NAME(mm)(ps, don, dV, e, D, C, 1, e, H * D, 1, D, 0, 0, 0, n < N - 1, 0, e);
            for (long r = 0; r < C; r++)  /* the intra gradient, scaled back */
                for (long j = 0; j < C; j++) dI[r * C + j] = sc * ds[r * e + m + j];
            if (m) {
                NAME(mm)(ds, ks, dqt, C, D, m, e, 1, D, 1, D, 0, 0, 0, 0, 0, C);
                NAME(mm)(ds, qn, dK, m, D, C, 1, e, D, 1, D, 0, 0, 0, 1, 0, m);
                dK0 = 0;
                for (long i = 0; i < C * D; i++) dqt[i] *= sc;
            } else {
                NAME(pc_zero)(dqt, C * D);
            }
            NAME(pc_block_bwd)(&s, gb, dq, dk, dw, dbeta, sq, sw, sb, bi, h, m, Tn, raw);
        }
        if (dvals) {  /* the values' cache gradient, its first T rows */
            const T *dvl = dvals + g * Lv * D;
            for (long j = 0; j < Lt; j++)
                for (long i = 0; i < D; i++) dvg[j * sq2 + i] = dV[j * D + i] + dvl[j * D + i];
        } else {
            for (long j = 0; j < Lt; j++) NAME(pc_cp)(dvg + j * sq2, dV + j * D, D);
        }
    }
    free(ab);
    free(gb);
    free(buf);
}

/* The two fused kernels as run() calls them: the sizes and strides in one array a = [Tn, H,
   D, c, levels, N, sq0, sq1, sq2, sw0, sw1, sw2, sb0, sb1, sb2, raw, KT, PT, Lk, Lv] (the
   arguments of pf_fwd / pf_bwd above), so a call has 18 integer-class arguments and two
   doubles and runs on torch's OpenMP team (ops.native.team: at most 32), not a pool thread
   of ours beside libgomp's spinning workers. */
void NAME(path_fused_fwd)(const T *q, const T *k, const T *w, const T *beta, const T *v, T *fin,
                          const T *bias, T *o, T *keys, T *KS, T *PS, T *qs, T *P, T *IN,
                          T *vals, const long *a, double eps, double scale, long g0, long g1) {
    NAME(pf_fwd)(q, k, w, beta, v, fin, bias, o, keys, KS, PS, qs, P, IN, vals, a[0], a[1], a[2],
                 a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14],
                 a[15], eps, scale, a[16], a[17], a[18], a[19], g0, g1);
}

void NAME(path_fused_bwd)(const T *q, const T *k, const T *w, const T *beta, const T *v,
                          const T *qs, const T *P, const T *KS, const T *PS, const T *IN,
                          const T *do_, const T *dkeys, T *dq, T *dk, T *dv, T *dw, T *dbeta,
                          const T *bias, const T *dvals, const long *a, double eps,
                          double scale, long g0, long g1) {
    NAME(pf_bwd)(q, k, w, beta, v, qs, P, KS, PS, IN, do_, dkeys, dq, dk, dv, dw, dbeta, bias,
                 dvals, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10],
                 a[11], a[12], a[13], a[14], a[15], eps, scale, a[16], a[17], a[18], a[19], g0,
                 g1);
}

#endif
