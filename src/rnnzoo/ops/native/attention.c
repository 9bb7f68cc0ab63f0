/* Row kernels of the attention family (rnnzoo.ops.native.attention): the stick-breaking
   weights and the packed quadratic features of Based / ReBased, forward and backward.

   Stick-breaking (Tan et al. 2024, arXiv:2410.17980), one row i of logits z_i. over the keys
   j, with the keys' visibility m_ij (keys in position order):

       A_ij = sigmoid(z_ij) prod_{l > j, m_il} sigmoid(-z_il)      (m_ij; else 0)

   one reverse product along the row (below 1e-30 it is flushed to 0: exp of the log form
   underflows there too, and denormal products are slow), sigmoid(z) and sigmoid(-z) from
   one exp. Backward, dL = dA A:

       dz_ij = dL_ij sigmoid(-z_ij) - sigmoid(z_ij) sum_{j' < j, m_ij'} dL_ij'   (m_ij; else 0)

   one forward sum along the row. Entries past the row's last visible key are zeros without
   being read. The caller (ops.native.attention) runs them on blocks of rows, so that z and
   A never exist whole: see sb_fwd for the layout.

   Packed features (ops.feature_maps.packed): x (rows, d) ->
       psi = [1, x, w_p x_a x_b over the pairs p = (a, b), a <= b]   (lin = 1: taylor)
       psi = [w_p x_a x_b]                                           (lin = 0: square)
   and dx from dpsi: dx_c = [dpsi_(1 + c)] + sum_p dpsi_p w_p (x_b [a = c] + x_a [b = c]).
   Causal softmax rows (sm_fwd, sm_bwd): a block of logits s_i. over keys j (key j visible to
   query i when j <= i), with an optional bias b_j per key (FoX's -G_j):

       P_ij = exp(s_ij + b_j - m_i) / sum_{j' <= i} exp(s_ij' + b_j' - m_i),   m_i their max
       dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij')        (dP = dL/dP; 0 past the diagonal)

   in place (S becomes P, dP becomes dS), one row at a time.

   Rotary positions (rope, GPT-NeoX's pairs (a, a + R/2) of the first R channels) from
   tables c, s = cos, sin of the angles (positions, R/2): y_a = x_a c - x_{a+R/2} s,
   y_{a+R/2} = x_{a+R/2} c + x_a s; sign -1 turns back (the backward); channels past R copied.
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "attention.c"
#include "each_type.h"

#else

#include "mm.h"  /* mm: the batched block products (exported here) */
#include "bands.h"  /* BANDS, KEY_BANDS: a causal tile's bands (sb_heads_*, sm_heads_*) */
#include "softmax_row.h"
#include "transpose.h"

/* dst (D, Tn) = src (Tn, D) transposed: a head's keys or values as columns for mm. */
static inline void NAME(transpose)(T *restrict dst, const T *restrict src, long Tn, long D) {
    NAME(trs)(dst, Tn, src, D, Tn, D);
}

/* The visibility of one row: its mask row (mask not NULL), else keys j <= diag; returns one
   past the last visible key (0 when none) within the row's e keys. */
static inline long NAME(row_end)(const unsigned char *restrict m, long diag, long e) {
    if (!m) return diag + 1 < 0 ? 0 : (diag + 1 < e ? diag + 1 : e);
    while (e > 0 && !m[e - 1]) e--;
    return e;
}

/* A row's scans run on vectors of SB_L lanes (an AVX-512 register, else an AVX2 one), the row
   in order: within a vector the suffix products (forward) or prefix sums (backward) by
   log2(SB_L) shifted products or sums, across vectors one scalar carried (its chain is one
   multiply or add a vector, not one a key); the sigmoids and the products with A, dA in
   contiguous passes over the row before. */
#ifdef __AVX512F__
#define SB_BYTES 64
#else
#define SB_BYTES 32
#endif
#define SB_L ((long)(SB_BYTES / sizeof(T)))
typedef T NAME(sbv) __attribute__((vector_size(SB_BYTES)));
typedef T NAME(sbu) __attribute__((vector_size(SB_BYTES), aligned(sizeof(T)), may_alias));
typedef __typeof__((NAME(sbv)){0} < (NAME(sbv)){0}) NAME(sbi);

/* x shifted by s lanes, down (lane l takes x[l + s]) or up (lane l takes x[l - s]), the lanes
   shifted in taken from fill (a broadcast) */
static inline __attribute__((always_inline)) NAME(sbv) NAME(sb_shift)(NAME(sbv) x,
                                                                      NAME(sbv) fill, int s,
                                                                      int down) {
    NAME(sbi) m;
    for (int l = 0; l < SB_L; l++)
        m[l] = down ? (l + s < SB_L ? l + s : SB_L) : (l >= s ? l - s : SB_L);
    return __builtin_shuffle(x, fill, m);
}

/* The first n keys of a row visible where m (e bytes) allows (m NULL: all of them), the rest
   of its e keys not: bt = sigmoid(z), ot = sigmoid(-z) (0 and 1 where not visible) for keys
   [0, np), np = n rounded up to SB_L, the padding not visible either. Both from one E =
   exp(-z) and to full precision (for z << 0 beta is 1 / (1 + E) itself, for z >> 0 om is E
   beta). mode 0: z read; 1: z read and E written over it (for a backward: mode 2); 2: E read. */
static inline __attribute__((always_inline)) void NAME(sb_sigmoids)(
        T *z, const unsigned char *restrict m, long n, long np, T *restrict bt, T *restrict ot,
        int mode) {
    if (m) {
        for (long j = 0; j < n; j++) {
            const int v = m[j] != 0;
            const T x = v ? z[j] : 0, tt = mode == 2 ? x : EXP(-x), b = 1 / (1 + tt);
            if (mode == 1) z[j] = tt;
            bt[j] = v ? b : 0;
            ot[j] = v ? tt * b : 1;
        }
    } else {
        for (long j = 0; j < n; j++) {
            const T tt = mode == 2 ? z[j] : EXP(-z[j]), b = 1 / (1 + tt);
            if (mode == 1) z[j] = tt;
            bt[j] = b;
            ot[j] = tt * b;
        }
    }
    for (long j = n; j < np; j++) bt[j] = 0, ot[j] = 1;
}

/* dst[c .. min(c + SB_L, e)) <- x's lanes (those before key e; the caller zeros [np, e)) */
static inline void NAME(sb_store)(T *restrict dst, NAME(sbv) x, long c, long e) {
    if (c + SB_L <= e) *(NAME(sbu) *)(dst + c) = x;
    else for (long l = 0; c + l < e; l++) dst[c + l] = x[l];
}

/* Row r of a block (r0 <= r < r1: head-row n0 + r / t, query i0 + r % t; head-row n is batch
   row n / H): its mask row (or NULL) and its end. Visible keys: mask (B, Tq, Tk) bytes when
   not NULL, else keys j <= query + shift (0: the current key too, -1: before it). */
static inline long NAME(sb_row)(const unsigned char *restrict mask, long r, long t, long e,
                                long n0, long H, long Tq, long Tk, long i0, long shift,
                                const unsigned char **m) {
    const long n = n0 + r / t, i = i0 + r % t;
    *m = mask ? mask + ((n / H) * Tq + i) * Tk : 0;
    return NAME(row_end)(*m, i + shift, e);
}

/* A block of rows of stick-breaking weights: z, A (rows, e), rows [r0, r1) (see sb_row).
   Keys past a row's end are zeros, not read. mode: sb_sigmoids'. */
static inline __attribute__((always_inline)) void NAME(sb_rows_fwd)(
        T *z, const unsigned char *restrict mask, T *restrict A, long t, long e, long n0, long H,
        long Tq, long Tk, long i0, long shift, long r0, long r1, int mode) {
    typedef NAME(sbv) V;
    const long ep = (e + SB_L - 1) / SB_L * SB_L;
    T *bt = aligned_alloc(SB_BYTES, 2 * ep * sizeof(T) + SB_BYTES), *ot = bt + ep;
    const V one = (V){0} + 1;
    for (long r = r0; r < r1; r++) {
        const unsigned char *m;
        const long n = NAME(sb_row)(mask, r, t, e, n0, H, Tq, Tk, i0, shift, &m);
        const long np = (n + SB_L - 1) / SB_L * SB_L;
        T *restrict a = A + r * e;
        NAME(sb_sigmoids)(z + r * e, m, n, np, bt, ot, mode);
        T acc = 1;   /* the product of sigmoid(-z) over the keys past this vector */
        for (long c = np - SB_L; c >= 0; c -= SB_L) {
            V s = *(const V *)(ot + c);   /* suffix products within the vector, inclusive */
            s *= NAME(sb_shift)(s, one, 1, 1);
            s *= NAME(sb_shift)(s, one, 2, 1);
            if (SB_L > 4) s *= NAME(sb_shift)(s, one, 4, 1);
            if (SB_L > 8) s *= NAME(sb_shift)(s, one, 8, 1);
            V p = NAME(sb_shift)(s, one, 1, 1) * acc;   /* exclusive, times the carry */
            /* below 1e-30 flushed to 0 (exp of the log form underflows there too, and
               denormal products are slow) */
            p = (V)((NAME(sbi))p & (p >= (T)1e-30));
            NAME(sb_store)(a, *(const V *)(bt + c) * p, c, e);
            acc *= s[0];
            acc = acc < (T)1e-30 ? 0 : acc;
        }
        for (long j = np; j < e; j++) a[j] = 0;
    }
    free(bt);
}

void NAME(sb_fwd)(const T *restrict z, const unsigned char *restrict mask, T *restrict A,
                  long t, long e, long n0, long H, long Tq, long Tk, long i0, long shift,
                  long r0, long r1) {
    NAME(sb_rows_fwd)((T *)z, mask, A, t, e, n0, H, Tq, Tk, i0, shift, r0, r1, 0);
}

/* Its backward: dz (rows, e) from z (mode 0) or E = exp(-z) (mode 2), A and dA = dL/dA
   (rows, e), dL = dA A. */
static inline __attribute__((always_inline)) void NAME(sb_rows_bwd)(
        const T *restrict z, const unsigned char *restrict mask, const T *restrict A,
        const T *restrict dA, T *restrict dz, long t, long e, long n0, long H, long Tq, long Tk,
        long i0, long shift, long r0, long r1, int mode) {
    typedef NAME(sbv) V;
    const long ep = (e + SB_L - 1) / SB_L * SB_L;
    T *bt = aligned_alloc(SB_BYTES, 3 * ep * sizeof(T) + SB_BYTES), *ut = bt + ep,
      *lt = ut + ep;
    const V zero = (V){0};
    for (long r = r0; r < r1; r++) {
        const unsigned char *m;
        const long n = NAME(sb_row)(mask, r, t, e, n0, H, Tq, Tk, i0, shift, &m);
        const long np = (n + SB_L - 1) / SB_L * SB_L;
        const T *restrict zr = z + r * e, *restrict a = A + r * e, *restrict g = dA + r * e;
        T *restrict d = dz + r * e;
        /* bt = sigmoid(z), lt = dL, ut = dL sigmoid(-z) (as sb_sigmoids; all 0 where not
           visible) */
        for (long j = 0; j < n; j++) {
            const int v = !m || m[j];
            const T x = v ? zr[j] : 0, tt = mode == 2 ? x : EXP(-x), b = 1 / (1 + tt);
            const T l = v ? g[j] * a[j] : 0;
            bt[j] = v ? b : 0;
            lt[j] = l;
            ut[j] = l * (tt * b);
        }
        for (long j = n; j < np; j++) bt[j] = 0, lt[j] = 0, ut[j] = 0;
        T before = 0;   /* the sum of dL over the keys before this vector */
        for (long c = 0; c < np; c += SB_L) {
            V s = *(const V *)(lt + c);   /* prefix sums within the vector, inclusive */
            s += NAME(sb_shift)(s, zero, 1, 0);
            s += NAME(sb_shift)(s, zero, 2, 0);
            if (SB_L > 4) s += NAME(sb_shift)(s, zero, 4, 0);
            if (SB_L > 8) s += NAME(sb_shift)(s, zero, 8, 0);
            const V p = NAME(sb_shift)(s, zero, 1, 0) + before;
            NAME(sb_store)(d, *(const V *)(ut + c) - *(const V *)(bt + c) * p, c, e);
            before += s[SB_L - 1];
        }
        for (long j = np; j < e; j++) d[j] = 0;
    }
    free(bt);
}

void NAME(sb_bwd)(const T *restrict z, const unsigned char *restrict mask, const T *restrict A,
                  const T *restrict dA, T *restrict dz, long t, long e, long n0, long H, long Tq,
                  long Tk, long i0, long shift, long r0, long r1) {
    NAME(sb_rows_bwd)(z, mask, A, dA, dz, t, e, n0, H, Tq, Tk, i0, shift, r0, r1, 0);
}

/* Stick-breaking's split of its fused projection, rows r = (b, t) of B x T: qkv (B, T, 3 H D)
   laid out [q | k | v] (each head's D channels together) -> q (scale times), k, v (B, H, T, D);
   back: the gradient's way, dq (times scale), dk, dv -> dqkv (in qkv's place). One division a
   row of 3 H D values, each head's D channels one contiguous copy. */
void NAME(sb_split)(T *restrict qkv, T *restrict q, T *restrict k, T *restrict v, long T_,
                    long H, long D, double scale, long back, long r0, long r1) {
    const T s = (T)scale;
    const long w = H * D;
    for (long r = r0; r < r1; r++) {
        const long b = r / T_, t = r % T_;
        T *restrict x = qkv + r * 3 * w;
        for (long h = 0; h < H; h++) {
            const long o = ((b * H + h) * T_ + t) * D;
            T *restrict xq = x + h * D, *restrict xk = xq + w, *restrict xv = xk + w;
            if (back) {
                for (long a = 0; a < D; a++) xq[a] = s * q[o + a];
                memcpy(xk, k + o, (size_t)D * sizeof(T));
                memcpy(xv, v + o, (size_t)D * sizeof(T));
            } else {
                for (long a = 0; a < D; a++) q[o + a] = s * xq[a];
                memcpy(k + o, xk, (size_t)D * sizeof(T));
                memcpy(v + o, xv, (size_t)D * sizeof(T));
            }
        }
    }
}

/* Causal softmax of a block of logits S (rows, e) in place, row r = (head-row n0 + r / t,
   query i0 + r % t), keys [0, e): keys j <= i visible, zeros past; bias (N, Tk) or NULL is
   added to key j of head-row n (bias + n Tk). */
void NAME(sm_fwd)(T *restrict S, const T *restrict bias, long t, long e, long n0, long Tk,
                  long i0, long r0, long r1) {
    for (long r = r0; r < r1; r++) {
        const long i = i0 + r % t, end = i + 1 < e ? i + 1 : e;
        T *restrict s = S + r * e;
        if (bias) {
            const T *restrict b = bias + (n0 + r / t) * Tk;
            for (long j = 0; j < end; j++) s[j] += b[j];
        }
        T Z;
        NAME(softmax_row)(s, end, &Z);
        for (long j = end; j < e; j++) s[j] = 0;
    }
}

/* dP (rows, e) -> dS in place from the block's probabilities P (sm_fwd's layout). */
void NAME(sm_bwd)(const T *restrict P, T *restrict dP, long t, long e, long i0, long r0,
                  long r1) {
    for (long r = r0; r < r1; r++) {
        const long i = i0 + r % t;
        NAME(softmax_row_bwd)(P + r * e, dP + r * e, i + 1 < e ? i + 1 : e, e);
    }
}

/* PaTH attention's block attention (ops.path_attention._AttendHeads) for whole head-rows
   [g0, g1) of G = B H, one at a time, N chunks of C steps, D channels, a cache of L keys:
   qs (G, N, C, D) the moved queries times the scale, k1 (G, N, C, D) the keys moved to their
   chunk's end, P (G, N, D, D) the chunks' products, intra (G, N, C, C) the intra scores times
   the scale (-inf above the diagonal), values (G, L + N C, D): row j of head-row g = b H + h
   at values + b vb + h vh + j vt (a (B, T, 3, H, D) projection's v read in place), keys0
   (G, L, D) the cache's keys, bias (B, L) 0 / -inf per slot (NULL when L = 0; head-row g
   reads row g / H).
   Chunk n (m = L + n C keys before it, e = m + C): S = [qs_n K^T | intra_n] (+ bias on the
   cache's keys), the causal softmax rows (keys <= m + r for row r), o_n = S values[:e];
   then K <- [K P_n^T ; k1_n]. Saved for the backward: each chunk's keys read, KS (G, sum_n
   m D), and probabilities, PS (G, sum_n C e). keys (G, Lk, D), Lk >= L + N C: every key
   moved to the last step, zeros in rows [L + N C, Lk) (a fresh cache of Lk slots). o (B, N C,
   H, D) (head-row g = b H + h): the layout the output projection reads. */
void NAME(path_fwd)(const T *restrict qs, const T *restrict k1, const T *restrict P,
                    const T *restrict intra, const T *restrict values, const T *restrict keys0,
                    const T *restrict bias, T *restrict o, T *restrict keys, T *restrict KS,
                    T *restrict PS, long N, long C, long D, long L, long H, long KT, long PT,
                    long vb, long vh, long vt, long Lk, long g0, long g1) {
    const long Lt = L + N * C;
    T *kt = malloc((size_t)(Lt * D + D * D) * sizeof(T)), *pt = kt + Lt * D;  /* K^T, P_n^T */
    for (long g = g0; g < g1; g++) {
        const T *qg = qs + g * N * C * D, *kg = k1 + g * N * C * D, *Pg = P + g * N * D * D;
        const T *ig = intra + g * N * C * C, *vg = values + (g / H) * vb + (g % H) * vh;
        const T *bg = bias ? bias + (g / H) * L : 0;
        T *K = keys + g * Lk * D, *og = o + ((g / H) * N * C * H + g % H) * D, *ks = KS + g * KT,
          *ps = PS + g * PT;
        memcpy(ks, keys0 + g * L * D, (size_t)(L * D) * sizeof(T));
        memset(K + Lt * D, 0, (size_t)((Lk - Lt) * D) * sizeof(T));
        for (long n = 0; n < N; n++) {  /* block n reads its keys at ks (m rows), kept */
            const long m = L + n * C, e = m + C;
            if (m) {
                NAME(trs)(kt, m, ks, D, m, D);
                NAME(mm)(qg + n * C * D, kt, ps, C, m, D, D, 1, m, 1, e, 0, 0, 0, 0, 0, C);
            }
            for (long r = 0; r < C; r++) {
                T *restrict s = ps + r * e;
                const T *restrict in = ig + (n * C + r) * C;
                for (long j = 0; j < C; j++) s[m + j] = in[j];
                if (bg) for (long j = 0; j < L; j++) s[j] += bg[j];
            }
            NAME(sm_fwd)(ps, 0, C, e, 0, e, m, 0, C);
            NAME(mm)(ps, vg, og + n * C * H * D, C, D, e, e, 1, vt, 1, H * D, 0, 0, 0, 0, 0, C);
            /* the next block's keys [K P_n^T ; k1_n] straight after these (the last: keys) */
            T *next = n + 1 < N ? ks + m * D : K;
            if (m) {
                NAME(trs)(pt, D, Pg + n * D * D, D, D, D);
                NAME(mm)(ks, pt, next, m, D, D, D, 1, D, 1, D, 0, 0, 0, 0, 0, m);
            }
            memcpy(next + m * D, kg + n * C * D, (size_t)(C * D) * sizeof(T));
            ks += m * D;
            ps += C * e;
        }
    }
    free(kt);
}

/* Its backward for head-rows [g0, g1): do (B, N C, H, D) (o's layout), dkeys (G, Lk, D) the
   gradient of the moved keys (rows past L + N C not read; NULL: zero) -> dqs (G, N, C, D) (of
   qs: the caller applies the scale), dk1 (G, N, C, D), dP (G, N, D, D), dintra (G, N, C, C)
   (of the scaled intra scores), dvalues (G, L + N C, D) (written whole, row j of head-row
   g = b H + h at dvalues + b db + h dh + j dt), dkeys0 (G, L, D); values read as path_fwd's. Chunks in reverse: dk1_n = dK[m:e],
   dP_n = dK[:m]^T K_n, dK[:m] <- dK[:m] P_n, dvalues[:e] += P^T do_n, dS = sm_bwd(P, do_n
   values^T), dintra_n = dS[:, m:], dqs_n = dS[:, :m] K_n, dK[:m] += dS[:, :m]^T qs_n. */
void NAME(path_bwd)(const T *restrict qs, const T *restrict P, const T *restrict values,
                    const T *restrict KS, const T *restrict PS, const T *restrict do_,
                    const T *restrict dkeys, T *restrict dqs, T *restrict dk1, T *restrict dP,
                    T *restrict dintra, T *restrict dvalues, T *restrict dkeys0, long N, long C,
                    long D, long L, long H, long KT, long PT, long vb, long vh, long vt,
                    long db, long dh, long dt, long Lk, long g0, long g1) {
    const long Lt = L + N * C;
    T *buf = malloc((size_t)(3 * Lt * D + C * Lt + 1) * sizeof(T));
    T *dK = buf, *tmp = dK + Lt * D, *vT = tmp + Lt * D, *ds = vT + Lt * D;
    for (long g = g0; g < g1; g++) {
        const T *qg = qs + g * N * C * D, *Pg = P + g * N * D * D;
        const T *vg = values + (g / H) * vb + (g % H) * vh;
        NAME(trs)(vT, Lt, vg, vt, Lt, D);  /* V^T (D, Lt): the columns of do V^T */
        const T *dog = do_ + ((g / H) * N * C * H + g % H) * D;
        T *dvg = dvalues + (g / H) * db + (g % H) * dh;
        if (dkeys) memcpy(dK, dkeys + g * Lk * D, (size_t)(Lt * D) * sizeof(T));
        else memset(dK, 0, (size_t)(Lt * D) * sizeof(T));
        for (long j = 0; j < Lt; j++) memset(dvg + j * dt, 0, (size_t)D * sizeof(T));
        const T *ks = KS + (g + 1) * KT, *ps = PS + (g + 1) * PT;
        for (long n = N - 1; n >= 0; n--) {
            const long m = L + n * C, e = m + C;
            ks -= m * D;
            ps -= C * e;
            const T *don = dog + n * C * H * D, *qn = qg + n * C * D;
            memcpy(dk1 + (g * N + n) * C * D, dK + m * D, (size_t)(C * D) * sizeof(T));
            T *dPn = dP + (g * N + n) * D * D;
            if (m) {  /* dK[:m] P_n into the other buffer, which becomes dK */
                NAME(mm)(dK, ks, dPn, D, D, m, 1, D, D, 1, D, 0, 0, 0, 0, 0, D);
                NAME(mm)(dK, Pg + n * D * D, tmp, m, D, D, D, 1, D, 1, D, 0, 0, 0, 0, 0, m);
                T *t = dK;
                dK = tmp, tmp = t;
            } else {
                memset(dPn, 0, (size_t)(D * D) * sizeof(T));
            }
            /* P read first in row order by sm_bwd (cold: the hardware prefetcher follows
               it), then across its rows by dV's product from cache */
            NAME(mm)(don, vT, ds, C, e, D, H * D, 1, Lt, 1, e, 0, 0, 0, 0, 0, C);
            NAME(sm_bwd)(ps, ds, C, e, m, 0, C);
            NAME(mm)(ps, don, dvg, e, D, C, 1, e, H * D, 1, dt, 0, 0, 0, 1, 0, e);
            T *di = dintra + (g * N + n) * C * C;
            for (long r = 0; r < C; r++)
                for (long j = 0; j < C; j++) di[r * C + j] = ds[r * e + m + j];
            if (m) {
                NAME(mm)(ds, ks, dqs + (g * N + n) * C * D, C, D, m, e, 1, D, 1, D, 0, 0, 0, 0,
                         0, C);
                NAME(mm)(ds, qn, dK, m, D, C, 1, e, D, 1, D, 0, 0, 0, 1, 0, m);
            } else {
                memset(dqs + (g * N + n) * C * D, 0, (size_t)(C * D) * sizeof(T));
            }
        }
        memcpy(dkeys0 + g * L * D, dK, (size_t)(L * D) * sizeof(T));
    }
    free(buf);
}

/* Causal stick-breaking attention of whole head-rows [n0, n1) of N (Tq = Tk = T, keys
   j <= i + shift), one at a time: q (N, T, Dh) (the scale in), k (N, T, Dh), v (N, T, Dv) ->
   out (N, T, Dv), in tiles of `tile` queries [i0, i1) over keys [0, e), e = max(1, min(T,
   i1 + shift)) by bands (the tile's first rows over fewer keys): z = q k^T (k transposed
   once a head), A = sb_fwd(z), out = A v. The tiles'
   E = exp(-z) (over z, for the backward's sigmoids) and A are kept in Z, A (N, PT) when not
   NULL (tile after tile, t e entries each), else in buffers. Threads split the head-rows (one
   call each). */
void NAME(sb_heads_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        T *restrict out, T *restrict Z, T *restrict A, long T_, long Dh, long Dv,
                        long tile, long shift, long PT, long n0, long n1) {
    const long Tn = T_;
    T *kT = malloc((size_t)(Dh * Tn + 2 * tile * Tn + 1) * sizeof(T));
    T *zb = kT + Dh * Tn, *ab = zb + tile * Tn;
    for (long n = n0; n < n1; n++) {
        const T *qn = q + n * Tn * Dh, *kn = k + n * Tn * Dh, *vn = v + n * Tn * Dv;
        NAME(transpose)(kT, kn, Tn, Dh);
        T *zn = Z ? Z + n * PT : zb, *an = A ? A + n * PT : ab;
        for (long i0 = 0; i0 < Tn; i0 += tile) {
            const long i1 = i0 + tile < Tn ? i0 + tile : Tn, t = i1 - i0;
            long e = i1 + shift < Tn ? i1 + shift : Tn;
            e = e < 1 ? 1 : e;
            BANDS NAME(mm)(qn + i0 * Dh, kT, zn, t, c, Dh, Dh, 1, Tn, 1, e, 0, 0, 0, 0, r, r1);
            NAME(sb_rows_fwd)(zn, 0, an, t, e, n, 1, Tn, Tn, i0, shift, 0, t, 1);
            BANDS NAME(mm)(an, vn, out + (n * Tn + i0) * Dv, t, Dv, c, e, 1, Dv, 1, Dv, 0, 0, 0,
                           0, r, r1);
            if (Z) zn += t * e, an += t * e;
        }
    }
    free(kT);
}

/* Its backward for head-rows [n0, n1): do (N, T, Dv) -> dq, dk (N, T, Dh), dv (N, T, Dv)
   (written whole), E and A read from Z, A (sb_heads_fwd's layout) or, when NULL,
   recomputed. Per tile: dA = do v^T, dv += A^T do, dz = sb_bwd, dq = dz k, dk += dz^T q. */
void NAME(sb_heads_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict do_, const T *restrict Z, const T *restrict A,
                        T *restrict dq, T *restrict dk, T *restrict dv, long T_, long Dh, long Dv,
                        long tile, long shift, long PT, long n0, long n1) {
    const long Tn = T_;
    T *vT = malloc((size_t)((Dv + Dh + 4 * tile) * Tn + 1) * sizeof(T));
    T *kT = vT + Dv * Tn, *dA = kT + Dh * Tn, *dz = dA + tile * Tn, *zb = dz + tile * Tn,
      *ab = zb + tile * Tn;
    for (long n = n0; n < n1; n++) {
        const T *qn = q + n * Tn * Dh, *kn = k + n * Tn * Dh, *vn = v + n * Tn * Dv;
        const T *don = do_ + n * Tn * Dv;
        T *dqn = dq + n * Tn * Dh, *dkn = dk + n * Tn * Dh, *dvn = dv + n * Tn * Dv;
        NAME(transpose)(vT, vn, Tn, Dv);
        if (!Z)
            NAME(transpose)(kT, kn, Tn, Dh);
        memset(dkn, 0, (size_t)(Tn * Dh) * sizeof(T));
        memset(dvn, 0, (size_t)(Tn * Dv) * sizeof(T));
        const T *zn = Z ? Z + n * PT : zb, *an = A ? A + n * PT : ab;
        for (long i0 = 0; i0 < Tn; i0 += tile) {
            const long i1 = i0 + tile < Tn ? i0 + tile : Tn, t = i1 - i0;
            long e = i1 + shift < Tn ? i1 + shift : Tn;
            e = e < 1 ? 1 : e;
            if (!Z) {
                BANDS NAME(mm)(qn + i0 * Dh, kT, zb, t, c, Dh, Dh, 1, Tn, 1, e, 0, 0, 0, 0, r,
                               r1);
                NAME(sb_rows_fwd)(zb, 0, ab, t, e, n, 1, Tn, Tn, i0, shift, 0, t, 1);
            }
            BANDS NAME(mm)(don + i0 * Dv, vT, dA, t, c, Dv, Dv, 1, Tn, 1, e, 0, 0, 0, 0, r, r1);
            KEY_BANDS NAME(mm)(an + r * e, don + (i0 + r) * Dv, dvn, e, Dv, t - r, 1, e, Dv, 1,
                               Dv, 0, 0, 0, 1, c0, c);
            NAME(sb_rows_bwd)(zn, 0, an, dA, dz, t, e, n, 1, Tn, Tn, i0, shift, 0, t, 2);
            BANDS NAME(mm)(dz, kn, dqn + i0 * Dh, t, Dh, c, e, 1, Dh, 1, Dh, 0, 0, 0, 0, r, r1);
            KEY_BANDS NAME(mm)(dz + r * e, qn + (i0 + r) * Dh, dkn, e, Dh, t - r, 1, e, Dh, 1,
                               Dh, 0, 0, 0, 1, c0, c);
            if (Z) zn += t * e, an += t * e;
        }
    }
    free(vT);
}

/* Causal softmax attention of whole head-rows [n0, n1) of N, one at a time: q (N, T, Dh)
   (the scale in), k (N, T, Dh), v (N, T, Dv), bias (N, T) or NULL -> out (N, T, Dv), in causal
   tiles of `tile` queries [i0, i1) over keys [0, i1) (by bands: the tile's first rows over
   fewer): S = q k^T (k transposed once a head into a buffer), sm_fwd's rows, out = P v. The
   tiles' P are kept in P (N, PT), tile after
   tile (t (i1) entries each, PT in all a head-row), when P is not NULL; else in a buffer.
   A head-row's products stay in cache, and threads split the head-rows (one call each). */
void NAME(sm_heads_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict bias, T *restrict out, T *restrict P, long T_, long Dh,
                        long Dv, long tile, long PT, long n0, long n1) {
    const long Tn = T_;
    T *kT = malloc((size_t)(Dh * Tn + (P ? 0 : tile * Tn) + 1) * sizeof(T));
    T *scratch = kT + Dh * Tn;
    for (long n = n0; n < n1; n++) {
        const T *qn = q + n * Tn * Dh, *kn = k + n * Tn * Dh, *vn = v + n * Tn * Dv;
        const T *bn = bias ? bias + n * Tn : 0;
        NAME(transpose)(kT, kn, Tn, Dh);
        T *Pn = P ? P + n * PT : scratch;
        for (long i0 = 0; i0 < Tn; i0 += tile) {
            const long i1 = i0 + tile < Tn ? i0 + tile : Tn, t = i1 - i0, e = i1;
            T *o = out + (n * Tn + i0) * Dv;
            BANDS NAME(mm)(qn + i0 * Dh, kT, Pn, t, c, Dh, Dh, 1, Tn, 1, e, 0, 0, 0, 0, r, r1);
            NAME(sm_fwd)(Pn, bn, t, e, 0, Tn, i0, 0, t);  /* zeros past each row's diagonal */
            BANDS NAME(mm)(Pn, vn, o, t, Dv, c, e, 1, Dv, 1, Dv, 0, 0, 0, 0, r, r1);
            if (P) Pn += t * e;
        }
    }
    free(kT);
}

/* Its backward for head-rows [n0, n1): do (N, T, Dv) -> dq, dk (N, T, Dh), dv (N, T, Dv),
   db (N, T) when bias is not NULL (written whole, no zeroing needed), the tiles' P read from
   P (sm_heads_fwd's layout) or, when P is NULL, recomputed. Per tile: dP = do v^T, dv += P^T do,
   dS = sm_bwd(P, dP), db += column sums of dS, dq = dS k, dk += dS^T q. */
void NAME(sm_heads_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict bias, const T *restrict do_, const T *restrict P,
                        T *restrict dq, T *restrict dk, T *restrict dv, T *restrict db, long T_,
                        long Dh, long Dv, long tile, long PT, long n0, long n1) {
    const long Tn = T_;
    /* vT, dS, and kT and a P buffer for recomputing */
    T *vT = malloc((size_t)((Dv + Dh + 2 * tile) * Tn + 1) * sizeof(T));
    T *dS = vT + Dv * Tn, *kT = dS + tile * Tn, *Pbuf = kT + Dh * Tn;
    for (long n = n0; n < n1; n++) {
        const T *qn = q + n * Tn * Dh, *kn = k + n * Tn * Dh, *vn = v + n * Tn * Dv;
        const T *don = do_ + n * Tn * Dv, *bn = bias ? bias + n * Tn : 0;
        T *dqn = dq + n * Tn * Dh, *dkn = dk + n * Tn * Dh, *dvn = dv + n * Tn * Dv;
        T *dbn = db ? db + n * Tn : 0;
        NAME(transpose)(vT, vn, Tn, Dv);
        if (!P)
            NAME(transpose)(kT, kn, Tn, Dh);
        memset(dkn, 0, (size_t)(Tn * Dh) * sizeof(T));
        memset(dvn, 0, (size_t)(Tn * Dv) * sizeof(T));
        if (dbn) memset(dbn, 0, (size_t)Tn * sizeof(T));
        const T *Pn = P ? P + n * PT : Pbuf;
        for (long i0 = 0; i0 < Tn; i0 += tile) {
            const long i1 = i0 + tile < Tn ? i0 + tile : Tn, t = i1 - i0, e = i1;
            if (!P) {
                BANDS NAME(mm)(qn + i0 * Dh, kT, Pbuf, t, c, Dh, Dh, 1, Tn, 1, e, 0, 0, 0, 0, r,
                               r1);
                NAME(sm_fwd)(Pbuf, bn, t, e, 0, Tn, i0, 0, t);
            }
            BANDS NAME(mm)(don + i0 * Dv, vT, dS, t, c, Dv, Dv, 1, Tn, 1, e, 0, 0, 0, 0, r, r1);
            KEY_BANDS NAME(mm)(Pn + r * e, don + (i0 + r) * Dv, dvn, e, Dv, t - r, 1, e, Dv, 1, Dv,
                               0, 0, 0, 1, c0, c);
            NAME(sm_bwd)(Pn, dS, t, e, i0, 0, t);  /* zeros past each row's diagonal */
            if (dbn)
                for (long r = 0; r < t; r++) {
                    const T *restrict d = dS + r * e;
                    for (long j = 0; j < e; j++) dbn[j] += d[j];
                }
            BANDS NAME(mm)(dS, kn, dqn + i0 * Dh, t, Dh, c, e, 1, Dh, 1, Dh, 0, 0, 0, 0, r, r1);
            KEY_BANDS NAME(mm)(dS + r * e, qn + (i0 + r) * Dh, dkn, e, Dh, t - r, 1, e, Dh, 1, Dh,
                               0, 0, 0, 1, c0, c);
            if (P) Pn += t * e;
        }
    }
    free(vT);
}

/* One row of D channels: y = g rope(x) by the angles' tables c, s (R/2 each; sign -1 turns
   back), the channels past R copied (R = 0: a scaled copy). */
static inline __attribute__((always_inline)) void NAME(rope_row)(
    const T *restrict xr, T *restrict yr, const T *restrict c, const T *restrict sg, long R,
    long D, T sign, T g) {
    const long half = R / 2;
    for (long a = 0; a < half; a++) {
        const T x1 = xr[a], x2 = xr[a + half], sv = sign * sg[a];
        yr[a] = g * (x1 * c[a] - x2 * sv);
        yr[a + half] = g * (x2 * c[a] + x1 * sv);
    }
    for (long a = R; a < D; a++) yr[a] = g * xr[a];
}

/* y = scale rope(x), rows r = (b, t, h) of B x T x H, each D channels: x at b sb + t st + h sh,
   y at b ob + t ot + h oh (element strides; channels contiguous); tables cs, sn (B T, R/2). */
void NAME(rope)(const T *restrict x, T *restrict y, const T *restrict cs, const T *restrict sn,
                long sb, long st, long sh, long ob, long ot, long oh, long Tn, long H, long D,
                long R, long sign, double scale, long r0, long r1) {
    const long half = R / 2;
    const int by_head = oh > ot;  /* y (B, H, T, D): rows in y's order, (b, h, t) */
    for (long r = r0; r < r1; r++) {
        const long b = r / (Tn * H), t = by_head ? r % Tn : r / H % Tn,
                   h = by_head ? r / Tn % H : r % H;
        NAME(rope_row)(x + b * sb + t * st + h * sh, y + b * ob + t * ot + h * oh,
                       cs + (b * Tn + t) * half, sn + (b * Tn + t) * half, R, D, (T)sign,
                       (T)scale);
    }
}

/* The fused projection's heads (ops.native.attention.heads) in one pass over its rows:
   qkv (B T, 3 H D) rows [q | k | v], each head's D channels together; q, k, v (B, H, T, D).
   Forward (back 0): q = scale rope(qkv's q), k = rope(qkv's k), v = qkv's v. Backward (back
   1): qkv's rows from the gradients q, k, v turned back (q's times scale; a NULL one: zeros).
   Rows r = (b, t) of B x T: each qkv row read or written whole, in order (three strided
   passes over its thirds read ~3x the lines: s23-titans). Tables cs, sn (B T, R/2). */
void NAME(qkv_rope)(T *restrict qkv, T *restrict q, T *restrict k, T *restrict v,
                    const T *restrict cs, const T *restrict sn, long Tn, long H, long D, long R,
                    long back, double scale, long r0, long r1) {
    const long half = R / 2, HD = H * D;
    T *const out[3] = {q, k, v};
    const T sign = back ? -1 : 1;
    for (long r = r0; r < r1; r++) {
        const long b = r / Tn, t = r % Tn;
        const T *c = cs + r * half, *sg = sn + r * half;
        T *xr = qkv + r * 3 * HD;
        for (long i = 0; i < 3; i++) {
            const long Ri = i == 2 ? 0 : R;
            const T g = i == 0 ? (T)scale : 1;
            for (long h = 0; h < H; h++) {
                T *x = xr + i * HD + h * D;
                if (!out[i]) {  /* back only: an unused output's gradient */
                    memset(x, 0, D * sizeof(T));
                    continue;
                }
                T *y = out[i] + ((b * H + h) * Tn + t) * D;
                if (back) NAME(rope_row)(y, x, c, sg, Ri, D, sign, g);
                else NAME(rope_row)(x, y, c, sg, Ri, D, sign, g);
            }
        }
    }
}

void NAME(pairs_fwd)(const T *restrict x, const T *restrict w, T *restrict out, long d, int lin,
                     long r0, long r1) {
    const long P = d * (d + 1) / 2, F = (lin ? 1 + d : 0) + P;
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * d;
        T *restrict o = out + r * F;
        if (lin) {
            *o++ = 1;
            for (long c = 0; c < d; c++) *o++ = xr[c];
        }
        const T *restrict wp = w;
        for (long a = 0; a < d; a++) {
            const T xa = xr[a];
            const long len = d - a;
            for (long c = 0; c < len; c++) o[c] = wp[c] * xa * xr[a + c];
            o += len;
            wp += len;
        }
    }
}

void NAME(pairs_bwd)(const T *restrict x, const T *restrict w, const T *restrict g, T *restrict dx,
                     long d, int lin, long r0, long r1) {
    const long P = d * (d + 1) / 2, F = (lin ? 1 + d : 0) + P;
    for (long r = r0; r < r1; r++) {
        const T *restrict xr = x + r * d, *restrict gr = g + r * F + (lin ? 1 + d : 0);
        T *restrict dr = dx + r * d;
        for (long c = 0; c < d; c++) dr[c] = lin ? g[r * F + 1 + c] : 0;
        const T *restrict wp = w;
        for (long a = 0; a < d; a++) {
            const T xa = xr[a];
            const long len = d - a;
            T acc = 0;
            for (long c = 0; c < len; c++) {
                const T gw = gr[c] * wp[c];
                acc += gw * xr[a + c];          /* d/dx_a of w x_a x_b */
                dr[a + c] += gw * xa;           /* d/dx_b (the diagonal: both, 2 w x_a) */
            }
            dr[a] += acc;
            gr += len;
            wp += len;
        }
    }
}

#endif
