/* The chunk loop of Miras' chunk form (ops/memory.py, miras_chunked) for the two-layer MLP
   memory (K -> F -> K, tanh GELU between), forward and backward, one (batch row, head) pair
   at a time with its four (K, F) / (F, K) weights in cache. Chunk n (C steps k, v, delta)
   takes the memory's gradient at its gradient point Pg (the state's U' for the first chunk,
   the chunk's starting U after it) and carries the accumulators U:

       W1 = phi(U1_init + Pg1),  W2 = phi(U2_init + Pg2)                     (the retention)
       Z1 = k W1,  X2 = gelu(Z1),  E = X2 W2 - v,  G2 = dloss(E, delta)       (C, F), (C, K)
       R = G2 W2^T,  G1 = gelu'(Z1) o R
       U1 <- aT U1 - k^T (c o G1),  U2 <- aT U2 - X2^T (c o G2)       (c: the rows' weights)

   phi (kind 0): softmax over each row;  (1): V / sqrt(sum V^4) (the q-scale, q = 4);
   (2): the identity.  dloss (kind 0): E (l2);  (1): 3 E |E| (l_3);  (2): Huber, E where the
   row's |E|_2 <= delta, else delta sign(E).  Every chunk's starting U is written out (Us:
   N + 1 of them, the last the final accumulators) with X2, G1, G2 (what the reads take), and
   for the backward the error E and the GELU's factors D1 = gelu'(Z1), D2 = R o gelu''(Z1)
   (one tanh an entry, in the forward); the backward reads them back and recomputes only
   W = phi(U_init + Pg). With gU the gradient of a chunk's final
   U (plus the external dX2, dG1, dG2):

       daT = <gU1, U1> + <gU2, U2>,   dc_s = -(k_s gU1) . G1_s - (X2_s gU2) . G2_s
       dG1_s -= c_s k_s gU1,  dk_s -= c_s gU1 G1_s,  dG2_s -= c_s X2_s gU2,  dX2_s -= c_s gU2 G2_s
       dR = dG1 o gelu'(Z1),  dZ1 = dG1 o R o gelu''(Z1),  dG2 += dR W2,  dW2 = dR^T G2
       dE = dloss'(dG2),  dv = -dE,  dX2 += dE W2^T,  dW2 += X2^T dE,  dZ1 += dX2 o gelu'(Z1)
       dk += dZ1 W1^T,  dW1 = k^T dZ1,  dV = phi'(dW),  dU_init += dV,  dPg = dV
       gU <- aT gU + dUs (+ dPg after the first chunk, whose Pg is the state's U')

   Layouts (row-major, contiguous), pr = b H + h a pair, h = pr % H: k, v, dk, dv
   (pairs, N, C, K); dl (delta), cT, ddl, dcT (pairs, N, C); aT, daT (pairs, N); U1_init,
   dU1_init (H, K, F), U2_init, dU2_init (H, F, K); Pg1, U1, their gradients (pairs, K, F),
   Pg2, U2 (pairs, F, K); Us1, Us2: N + 1 pointers each, one a chunk start, to (pairs, K, F) and (pairs, F, K) (one
   tensor each: a single (N + 1, ...) one is over glibc's mmap threshold, faulted in anew on
   every call); X2, G1, D1, D2
   (N, pairs, C, F), G2, E (N, pairs, C, K) (chunk-major: each chunk's slice is one block, as
   the reads take it); their gradients alike (dX2, dG1, dG2 and the entries of dUs1, dUs2 may
   be NULL: zero).
   Each function does the pairs [p0, p1); the backward adds into dU_init (each thread its
   own, zeroed and summed by the caller). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "miras_chunk.c"
#include "each_type.h"

#else

#ifndef INLINE
#define INLINE inline __attribute__((always_inline))
#endif

#include "assoc_sums.h"
#include "mm.h"
#include "transpose.h"  /* trs: W1, W2 and gU transposed for mm's right factors */

/* sum_o a[o] (b[o] + c[o]) */
static SUMS T NAME(dot2)(const T *restrict a, const T *restrict b, const T *restrict c, long n) {
    T s = 0;
    for (long o = 0; o < n; o++) s += a[o] * (b[o] + c[o]);
    return s;
}

/* the tanh GELU and its derivatives, as memory_gelu.c: u = s (z + c z^3), t = tanh u,
   g = z (1 + t) / 2, g' = (1 + t) / 2 + z (1 - t^2) u' / 2,
   g'' = (1 - t^2) (u' - z t u'^2 + z u'' / 2) */
#define GELU_S ((T)0.7978845608028654)
#define GELU_C ((T)0.044715)
static INLINE T NAME(tanh_u)(T z, T *sech2) {
    T u = GELU_S * (z + GELU_C * z * z * z), e = EXP(2 * u), r = 1 / (e + 1);
    *sech2 = 4 * r * (e * r);
    return 1 - 2 * r;
}

/* W = phi(u + P) (I, O); *s the q-scale's 1 / sqrt(sum V^4) (kind 1) */
static INLINE void NAME(phi)(const T *restrict u, const T *restrict P, T *restrict W, long I,
                             long O, int kind, T *s) {
    const long n = I * O;
    if (kind == 1) {   /* V and the lane partials of sum V^4 in one pass */
        T s4 = 0;
#pragma omp simd reduction(+:s4)
        for (long e = 0; e < n; e++) {
            const T v = u[e] + P[e], v2 = v * v;
            W[e] = v;
            s4 += v2 * v2;
        }
        *s = 1 / SQRT(s4);
#pragma omp simd
        for (long e = 0; e < n; e++) W[e] *= *s;
        return;
    }
#pragma omp simd
    for (long e = 0; e < n; e++) W[e] = u[e] + P[e];
    if (kind == 0) {
        for (long i = 0; i < I; i++) {
            T *restrict w = W + i * O;
            T m = w[0];
#pragma omp simd reduction(max:m)
            for (long o = 0; o < O; o++) m = w[o] > m ? w[o] : m;
#pragma omp simd
            for (long o = 0; o < O; o++) w[o] = EXP(w[o] - m);
            const T r = 1 / NAME(total)(w, O);
#pragma omp simd
            for (long o = 0; o < O; o++) w[o] *= r;
        }
    }
}

/* dV = phi'(dW) at W = phi(u + P) (written over dW) */
static INLINE void NAME(phi_back)(const T *restrict u, const T *restrict P, const T *restrict W,
                                  T *restrict dW, long I, long O, int kind, T s) {
    const long n = I * O;
    if (kind == 0) {
        for (long i = 0; i < I; i++) {
            T *restrict d = dW + i * O;
            const T *restrict w = W + i * O;
            const T r = NAME(dot)(d, w, O);
#pragma omp simd
            for (long o = 0; o < O; o++) d[o] = w[o] * (d[o] - r);
        }
    } else if (kind == 1) {  /* dV = s dW - 2 s^3 <dW, V> V^3 */
        const T f = 2 * s * s * s * NAME(dot2)(dW, u, P, n);
#pragma omp simd
        for (long e = 0; e < n; e++) {
            const T v = u[e] + P[e];
            dW[e] = s * dW[e] - f * v * v * v;
        }
    }
}

/* the n entries at p into the cache ahead of their use (a chunk's blocks: separate tensors,
   which the hardware prefetcher meets cold at each chunk) */
static INLINE void NAME(prefetch)(const T *p, long n) {
    if (!p) return;
    for (long e = 0; e < n; e += 64 / sizeof(T)) __builtin_prefetch(p + e, 0, 2);
}

/* y += a x */
static INLINE void NAME(axpy)(T *restrict y, T a, const T *restrict x, long n) {
#pragma omp simd
    for (long e = 0; e < n; e++) y[e] += a * x[e];
}

/* a chunk's end in one pass a weight (n entries): dU_init += dV (dh), <gU, U> returned
   (daT's share; gU the gradient of the chunk's final U, U its starting one) and gU carried
   to the chunk's start, gU <- a gU + dUs (dUs may be NULL: zero) + dV where `own` (the
   chunk's gradient point is its own start, as after the first chunk) */
static INLINE T NAME(carry)(T *restrict gU, T *restrict dh, const T *restrict dV,
                            const T *restrict U, const T *restrict dUs, T a, int own, long n) {
    T s = 0;
#define CARRY(MORE) { _Pragma("omp simd reduction(+:s)") \
    for (long e = 0; e < n; e++) { \
        const T g = gU[e]; \
        s += g * U[e]; \
        dh[e] += dV[e]; \
        gU[e] = a * g MORE; \
    } }
    if (dUs && own) CARRY(+ dUs[e] + dV[e])
    else if (dUs) CARRY(+ dUs[e])
    else if (own) CARRY(+ dV[e])
    else CARRY()
#undef CARRY
    return s;
}

/* Y (R, O) (+)= A (R, I) B (I, O), row-major, on mm.h's register tiles */
static INLINE void NAME(mmr)(const T *restrict A, const T *restrict B, T *restrict Y, long R,
                             long I, long O, int add) {
    NAME(mm)(A, B, Y, R, O, I, I, 1, O, 1, O, 0, 0, 0, add, 0, R);
}

/* Y (I, O) (+)= A^T B, A (R, I), B (R, O) */
static INLINE void NAME(mtm)(const T *restrict A, const T *restrict B, T *restrict Y, long R,
                             long I, long O, int add) {
    NAME(mm)(A, B, Y, I, O, R, 1, I, O, 1, O, 0, 0, 0, add, 0, I);
}

/* Xt (O, I) = X^T, X (I, O) (transpose.h's 8 x 8 blocks of shuffles) */
static INLINE void NAME(transpose)(const T *restrict X, T *restrict Xt, long I, long O) {
    NAME(trs)(Xt, I, X, O, I, O);
}

/* the chunk's gradients at its gradient point (P1, P2): W1, W2, W2t = W2^T, Z1, X2, E, G2,
   R, G1 as the header says (s1, s2: the q-scales), and what the backward takes of the GELU
   (one tanh an entry): D1 = gelu'(Z1), D2 = R o gelu''(Z1) */
static INLINE void NAME(grads)(const T *restrict k, const T *restrict v, const T *restrict dl,
                               const T *restrict u1, const T *restrict u2, const T *restrict P1,
                               const T *restrict P2, T *restrict W1, T *restrict W2,
                               T *restrict W2t, T *restrict Z1, T *restrict X2, T *restrict E,
                               T *restrict G2, T *restrict R, T *restrict G1, T *restrict D1,
                               T *restrict D2, T *s1, T *s2, long C, long K, long F, int kind,
                               int loss) {
    NAME(phi)(u1, P1, W1, K, F, kind, s1);
    NAME(phi)(u2, P2, W2, F, K, kind, s2);
    NAME(transpose)(W2, W2t, F, K);
    NAME(mmr)(k, W1, Z1, C, K, F, 0);
#pragma omp simd
    for (long e = 0; e < C * F; e++) {
        T z = Z1[e], sech2, t = NAME(tanh_u)(z, &sech2), du = GELU_S * (1 + 3 * GELU_C * z * z);
        X2[e] = (T)0.5 * z * (1 + t);
        D1[e] = (T)0.5 * (1 + t) + (T)0.5 * z * sech2 * du;
        D2[e] = sech2 * (du - z * t * du * du + 3 * GELU_S * GELU_C * z * z);
    }
    NAME(mmr)(X2, W2, E, C, F, K, 0);
    for (long s = 0; s < C; s++) {
        T *restrict e = E + s * K, *restrict g = G2 + s * K;
        const T *restrict vs = v + s * K;
#pragma omp simd
        for (long o = 0; o < K; o++) e[o] -= vs[o];
        if (loss == 0) {
            memcpy(g, e, K * sizeof(T));
        } else if (loss == 1) {
#pragma omp simd
            for (long o = 0; o < K; o++) g[o] = 3 * e[o] * fabs(e[o]);
        } else {
            if (SQRT(NAME(dot)(e, e, K)) <= dl[s])
                memcpy(g, e, K * sizeof(T));
            else
                for (long o = 0; o < K; o++)
                    g[o] = e[o] > 0 ? dl[s] : e[o] < 0 ? -dl[s] : 0;
        }
    }
    NAME(mmr)(G2, W2t, R, C, K, F, 0);
#pragma omp simd
    for (long e = 0; e < C * F; e++) {
        G1[e] = R[e] * D1[e];
        D2[e] *= R[e];
    }
}


static INLINE void NAME(fwd)(const T *k, const T *v, const T *dl, const T *aT, const T *cT,
                             const T *u1, const T *u2, const T *Pg1, const T *Pg2,
                             const T *U1, const T *U2, T *const *Us1, T *const *Us2, T *X2o, T *G1o, T *G2o,
                             T *D1o, T *D2o, T *Eo, long H, long N, long C, long K, long F,
                             long NP, int kind, int loss, long p0, long p1) {
    const long KF = K * F, CK = C * K, CF = C * F;
    T *buf = malloc((3 * KF + 3 * CF + CK) * sizeof(T));   /* W1 W2 W2t, Z1 R xc, kc */
    T *W1 = buf, *W2 = W1 + KF, *W2t = W2 + KF, *Z1 = W2t + KF, *R = Z1 + CF, *kc = R + CF,
      *xc = kc + CK;
    for (long pr = p0; pr < p1; pr++) {
        const long h = pr % H;
        const T *uh1 = u1 + h * KF, *uh2 = u2 + h * KF;
        memcpy(Us1[0] + pr * KF, U1 + pr * KF, KF * sizeof(T));
        memcpy(Us2[0] + pr * KF, U2 + pr * KF, KF * sizeof(T));
        for (long n = 0; n < N; n++) {
            const long c = pr * N + n, o = n * NP + pr;
            const T *P1 = (n ? Us1[n] : Pg1) + pr * KF, *P2 = (n ? Us2[n] : Pg2) + pr * KF;
            T s1, s2, *X2 = X2o + o * CF, *G2 = G2o + o * CK;   /* written in place */
            NAME(grads)(k + c * CK, v + c * CK, dl + c * C, uh1, uh2, P1, P2, W1, W2, W2t, Z1,
                        X2, Eo + o * CK, G2, R, G1o + o * CF, D1o + o * CF, D2o + o * CF, &s1,
                        &s2, C, K, F, kind, loss);
            const T *G1 = G1o + o * CF;
            const T a = aT[c], *cn = cT + c * C;
            const T *restrict A1 = Us1[n] + pr * KF, *restrict A2 = Us2[n] + pr * KF;
            T *restrict B1 = Us1[n + 1] + pr * KF, *restrict B2 = Us2[n + 1] + pr * KF;
#pragma omp simd
            for (long e = 0; e < KF; e++) { B1[e] = a * A1[e]; B2[e] = a * A2[e]; }
            /* U <- aT U - X^T (c o G): the rows of k and X2 scaled by -c, two products */
            for (long s = 0; s < C; s++) {
                const T w = -cn[s];
                for (long i = 0; i < K; i++) kc[s * K + i] = w * k[c * CK + s * K + i];
                for (long i = 0; i < F; i++) xc[s * F + i] = w * X2[s * F + i];
            }
            NAME(mtm)(kc, G1, B1, C, K, F, 1);
            NAME(mtm)(xc, G2, B2, C, F, K, 1);
        }
    }
    free(buf);
}

static INLINE void NAME(bwd)(const T *k, const T *v, const T *dl, const T *aT, const T *cT,
                             const T *u1, const T *u2, const T *Pg1, const T *Pg2,
                             const T *const *Us1, const T *const *Us2,
                             const T *const *dUs1, const T *const *dUs2, const T *dX2o, const T *dG1o, const T *dG2o, T *dk, T *dv, T *ddl,
                             T *daT, T *dcT, T *du1, T *du2, T *dPg1, T *dPg2, T *dU1, T *dU2,
                             const T *X2o, const T *G1o, const T *G2o, const T *D1o,
                             const T *D2o, const T *Eo, long H, long N, long C, long K, long F,
                             long NP, int kind, int loss, long p0, long p1) {
    const long KF = K * F, CK = C * K, CF = C * F;
    T *buf = malloc((9 * KF + 5 * CF + 3 * CK) * sizeof(T));
    T *W1 = buf, *W2 = W1 + KF, *W2t = W2 + KF;
    T *gU1 = W2t + KF, *gU2 = gU1 + KF, *gt1 = gU2 + KF, *dW1 = gt1 + KF, *dW2 = dW1 + KF, *gt2 = dW2 + KF;
    T *dZ1 = gt2 + KF, *dX2 = dZ1 + CF, *dR = dX2 + CF, *dG2 = dR + CF, *dE = dG2 + CK;
    T *Y1 = dE + CK, *Y3 = Y1 + CF, *Y2 = Y3 + CF;
    for (long pr = p0; pr < p1; pr++) {
        const long h = pr % H;
        const T *uh1 = u1 + h * KF, *uh2 = u2 + h * KF;
        T *dh1 = du1 + h * KF, *dh2 = du2 + h * KF;
        memset(gU1, 0, KF * sizeof(T));
        memset(gU2, 0, KF * sizeof(T));
        if (dUs1[N]) NAME(axpy)(gU1, 1, dUs1[N] + pr * KF, KF);
        if (dUs2[N]) NAME(axpy)(gU2, 1, dUs2[N] + pr * KF, KF);
        for (long n = N - 1; n >= 0; n--) {
            const long c = pr * N + n, o = n * NP + pr;
            const T *P1 = (n ? Us1[n] : Pg1) + pr * KF, *P2 = (n ? Us2[n] : Pg2) + pr * KF;
            const T *kn = k + c * CK, *cn = cT + c * C;
            if (n) {   /* the next chunk's (n - 1) blocks, while this one computes */
                const long op = o - NP;
                NAME(prefetch)((n > 1 ? Us1[n - 1] : Pg1) + pr * KF, KF);
                NAME(prefetch)((n > 1 ? Us2[n - 1] : Pg2) + pr * KF, KF);
                NAME(prefetch)(Us1[n - 1] + pr * KF, KF);
                NAME(prefetch)(Us2[n - 1] + pr * KF, KF);
                if (dUs1[n - 1]) NAME(prefetch)(dUs1[n - 1] + pr * KF, KF);
                if (dUs2[n - 1]) NAME(prefetch)(dUs2[n - 1] + pr * KF, KF);
                NAME(prefetch)(X2o + op * CF, CF);
                NAME(prefetch)(G1o + op * CF, CF);
                NAME(prefetch)(D1o + op * CF, CF);
                NAME(prefetch)(D2o + op * CF, CF);
                NAME(prefetch)(G2o + op * CK, CK);
                NAME(prefetch)(Eo + op * CK, CK);
                if (dX2o) NAME(prefetch)(dX2o + op * CF, CF);
                if (dG1o) NAME(prefetch)(dG1o + op * CF, CF);
                if (dG2o) NAME(prefetch)(dG2o + op * CK, CK);
            }
            /* the forward's X2, G1, G2, E and GELU factors D1, D2; the weights again */
            const T *X2 = X2o + o * CF, *G1 = G1o + o * CF, *G2 = G2o + o * CK,
                    *D1 = D1o + o * CF, *D2 = D2o + o * CF, *E = Eo + o * CK;
            T s1 = 0, s2 = 0;
            NAME(phi)(uh1, P1, W1, K, F, kind, &s1);
            NAME(phi)(uh2, P2, W2, F, K, kind, &s2);
            NAME(transpose)(W2, W2t, F, K);
            /* the update U' = aT U - X^T (c o G): daT at the chunk's end (carry) */
            T *dkn = dk + c * CK;
            if (dG1o) memcpy(dR, dG1o + o * CF, CF * sizeof(T)); else memset(dR, 0, CF * sizeof(T));
            if (dX2o) memcpy(dX2, dX2o + o * CF, CF * sizeof(T)); else memset(dX2, 0, CF * sizeof(T));
            if (dG2o) memcpy(dG2, dG2o + o * CK, CK * sizeof(T)); else memset(dG2, 0, CK * sizeof(T));
            NAME(transpose)(gU1, gt1, K, F);                                   /* (F, K) */
            NAME(transpose)(gU2, gt2, F, K);                                   /* (K, F) */
            /* per step s: y1 = k_s gU1, y2 = X2_s gU2 (the update's products, as four
               products over the chunk's C rows): dc_s, dG1_s, dG2_s, dk_s, dX2_s */
            NAME(mmr)(kn, gU1, Y1, C, K, F, 0);
            NAME(mmr)(X2, gU2, Y2, C, F, K, 0);
            NAME(mmr)(G1, gt1, dkn, C, F, K, 0);                 /* G1_s gU1^T */
            NAME(mmr)(G2, gt2, Y3, C, K, F, 0);                  /* G2_s gU2^T */
            for (long s = 0; s < C; s++) {
                const T cs = cn[s];
                const T *restrict y1 = Y1 + s * F, *restrict y2 = Y2 + s * K,
                        *restrict y3 = Y3 + s * F;
                T *restrict dks = dkn + s * K, *restrict dxs = dX2 + s * F;
                T *restrict dg1 = dR + s * F, *restrict dg2 = dG2 + s * K;
                dcT[c * C + s] = -(NAME(dot)(y1, G1 + s * F, F) + NAME(dot)(y2, G2 + s * K, K));
#pragma omp simd
                for (long j = 0; j < F; j++) { dg1[j] -= cs * y1[j]; dxs[j] -= cs * y3[j]; }
#pragma omp simd
                for (long j = 0; j < K; j++) { dg2[j] -= cs * y2[j]; dks[j] *= -cs; }
            }
            /* G1 = gelu'(Z1) o R: dR = dG1 gelu', dZ1 = dG1 R gelu'' (dR holds dG1) */
#pragma omp simd
            for (long e = 0; e < CF; e++) {
                dZ1[e] = dR[e] * D2[e];       /* dX2's share added below */
                dR[e] *= D1[e];
            }
            /* R = G2 W2^T: dG2 += dR W2, dW2 = dR^T G2 */
            NAME(mmr)(dR, W2, dG2, C, F, K, 1);
            NAME(mtm)(dR, G2, dW2, C, F, K, 0);
            /* G2 = dloss(E) */
            for (long s = 0; s < C; s++) {
                T *restrict de = dE + s * K;
                const T *restrict e = E + s * K, *restrict g = dG2 + s * K;
                if (loss == 0) {
                    memcpy(de, g, K * sizeof(T));
                    ddl[c * C + s] = 0;
                } else if (loss == 1) {
#pragma omp simd
                    for (long o = 0; o < K; o++) de[o] = 6 * fabs(e[o]) * g[o];
                    ddl[c * C + s] = 0;
                } else if (SQRT(NAME(dot)(e, e, K)) <= dl[c * C + s]) {
                    memcpy(de, g, K * sizeof(T));
                    ddl[c * C + s] = 0;
                } else {
                    T r = 0;
                    for (long o = 0; o < K; o++) {
                        de[o] = 0;
                        r += e[o] > 0 ? g[o] : e[o] < 0 ? -g[o] : 0;
                    }
                    ddl[c * C + s] = r;
                }
            }
            T *dvn = dv + c * CK;
            for (long e = 0; e < CK; e++) dvn[e] = -dE[e];
            /* E = X2 W2 - v: dX2 += dE W2^T, dW2 += X2^T dE */
            NAME(mmr)(dE, W2t, dX2, C, K, F, 1);
            NAME(mtm)(X2, dE, dW2, C, F, K, 1);
            /* X2 = gelu(Z1) */
#pragma omp simd
            for (long e = 0; e < CF; e++) dZ1[e] += dX2[e] * D1[e];
            /* Z1 = k W1: dk += dZ1 W1^T, dW1 = k^T dZ1 */
            NAME(transpose)(W1, gt1, K, F);
            NAME(mmr)(dZ1, gt1, dkn, C, F, K, 1);
            NAME(mtm)(kn, dZ1, dW1, C, K, F, 0);
            /* W = phi(U_init + Pg) */
            NAME(phi_back)(uh1, P1, W1, dW1, K, F, kind, s1);
            NAME(phi_back)(uh2, P2, W2, dW2, F, K, kind, s2);
            /* dU_init, daT and the gradient of the chunk's starting U, one pass a weight */
            const T a = aT[c];
            daT[c] = NAME(carry)(gU1, dh1, dW1, Us1[n] + pr * KF,
                                 dUs1[n] ? dUs1[n] + pr * KF : 0, a, n > 0, KF)
                     + NAME(carry)(gU2, dh2, dW2, Us2[n] + pr * KF,
                                   dUs2[n] ? dUs2[n] + pr * KF : 0, a, n > 0, KF);
            if (!n) {
                memcpy(dPg1 + pr * KF, dW1, KF * sizeof(T));
                memcpy(dPg2 + pr * KF, dW2, KF * sizeof(T));
            }
        }
        memcpy(dU1 + pr * KF, gU1, KF * sizeof(T));
        memcpy(dU2 + pr * KF, gU2, KF * sizeof(T));
    }
    free(buf);
}

/* the exported kernels: the bodies above compiled again for C = 16, K = 32, F = 128 (the
   layers' default: constant widths let the compiler unroll the rows), else for any widths */
void NAME(miras_chunk_fwd)(const T *k, const T *v, const T *dl, const T *aT, const T *cT,
                           const T *u1, const T *u2, const T *Pg1, const T *Pg2, const T *U1,
                           const T *U2, T *const *Us1, T *const *Us2, T *X2, T *G1, T *G2,
                           T *D1, T *D2, T *E, long H, long N,
                           long C, long K, long F, long NP, int kind, int loss, long p0,
                           long p1) {
    if (C == 16 && K == 32 && F == 128)
        NAME(fwd)(k, v, dl, aT, cT, u1, u2, Pg1, Pg2, U1, U2, Us1, Us2, X2, G1, G2, D1, D2, E,
                  H, N, 16, 32, 128, NP, kind, loss, p0, p1);
    else
        NAME(fwd)(k, v, dl, aT, cT, u1, u2, Pg1, Pg2, U1, U2, Us1, Us2, X2, G1, G2, D1, D2, E,
                  H, N, C, K, F, NP, kind, loss, p0, p1);
}

/* the backward's forward blocks (X2, G1, G2, D1, D2, E) in one pointer array sv and its sizes
   (H, N, C, K, F, NP, kind, loss) in one long array sz: 28 pointers and four longs, within
   the 32 integer arguments ops.native.run's OpenMP team path (team.c) passes */
void NAME(miras_chunk_bwd)(const T *k, const T *v, const T *dl, const T *aT, const T *cT,
                           const T *u1, const T *u2, const T *Pg1, const T *Pg2,
                           const T *const *Us1, const T *const *Us2, const T *const *dUs1,
                           const T *const *dUs2, const T *dX2, const T *dG1, const T *dG2, T *dk,
                           T *dv, T *ddl, T *daT, T *dcT, T *du1, T *du2, T *dPg1, T *dPg2,
                           T *dU1, T *dU2, const T *const *sv, const long *sz, long p0,
                           long p1) {
    const T *X2 = sv[0], *G1 = sv[1], *G2 = sv[2], *D1 = sv[3], *D2 = sv[4], *E = sv[5];
    const long H = sz[0], N = sz[1], C = sz[2], K = sz[3], F = sz[4], NP = sz[5];
    const int kind = (int)sz[6], loss = (int)sz[7];
    if (C == 16 && K == 32 && F == 128)
        NAME(bwd)(k, v, dl, aT, cT, u1, u2, Pg1, Pg2, Us1, Us2, dUs1, dUs2, dX2,
                  dG1, dG2, dk, dv, ddl, daT, dcT, du1, du2, dPg1, dPg2, dU1, dU2, X2, G1, G2,
                  D1, D2, E, H, N, 16, 32, 128, NP, kind, loss, p0, p1);
    else
        NAME(bwd)(k, v, dl, aT, cT, u1, u2, Pg1, Pg2, Us1, Us2, dUs1, dUs2, dX2,
                  dG1, dG2, dk, dv, ddl, daT, dcT, du1, du2, dPg1, dPg2, dU1, dU2, X2, G1, G2,
                  D1, D2, E, H, N, C, K, F, NP, kind, loss, p0, p1);
}

#undef GELU_S
#undef GELU_C

#endif
