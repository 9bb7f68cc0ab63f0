/* The momentum delta rule (ops/momentum_delta.py, Momentum DeltaNet) as its recurrence,
   forward and backward, one (batch row, head) pair at a time, the (K, V) states S and M in
   cache:

       e_t = S_{t-1}^T p_t - v_t                    (the regression error, V)
       M_t = mu_t M_{t-1} + eta_t k_t e_t^T,        mu_t = exp(lm_t)
       S_t = alpha_t S_{t-1} - beta_t M_t,          alpha_t = exp(la_t)
       o_t = scale S_t^T q_t

   The forward takes one pass over (S, M) a step: the update, the read-out and the next
   step's error p_{t+1}^T S_t together. It writes e_t (batch, T, H, V) and (S, M) every CK
   steps; the backward rebuilds the states of a block of CK steps from them (one pass a
   step) and runs back through it. With dS, dM the gradients of S_t, M_t from later steps:
       D = dS + scale q_t do_t^T                (all of S_t's gradient)
       dq_t = scale S_t do_t,  dbeta_t = -<D, M_t>,  dla_t = alpha_t <D, S_{t-1}>
       E = dM - beta_t D                        (all of M_t's gradient)
       dlm_t = mu_t <E, M_{t-1}>,  dk_t = eta_t E e_t,  deta_t = k_t^T E e_t,
       de = eta_t E^T k_t,  dv_t = -de,  dp_t = S_{t-1} de
       dS_{t-1} = alpha_t D + p_t de^T,  dM_{t-1} = mu_t E

   Layouts (row-major, contiguous): q, k, p and their gradients (batch, T, H, K); v, o, e, dv
   (batch, T, H, V); la, lm, beta, eta and their gradients (batch, T, H); S0, M0, ST, MT,
   dST, dMT, dS0, dM0 (batch, H, K, V); ck (batch, H, nck, 2, K, V), nck = ceil(T / CK)
   (S then M entering steps 0, CK, 2 CK, ...). Each function does the pairs [p0, p1).
   Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "momentum_scan.c"
#include "each_type.h"

#else

void NAME(momentum_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                        const T *restrict p, const T *restrict la, const T *restrict lm,
                        const T *restrict beta, const T *restrict eta, const T *restrict S0,
                        const T *restrict M0, T *restrict o, T *restrict e, T *restrict ST,
                        T *restrict MT, T *restrict ck, T scale, long Tn, long H, long K,
                        long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, KV = K * V;
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        T *restrict S = ST + pr * KV, *restrict M = MT + pr * KV;
        memcpy(S, S0 + pr * KV, KV * sizeof(T));
        memcpy(M, M0 + pr * KV, KV * sizeof(T));
        if (Tn == 0) continue;
        {   /* e_0 = S_0^T p_0 - v_0 */
            const long row = (b * Tn) * H + h;
            T *restrict et = e + row * V;
            const T *restrict pt = p + row * K, *restrict vt = v + row * V;
            for (long j = 0; j < V; j++) et[j] = -vt[j];
            for (long i = 0; i < K; i++) {
                const T pi = pt[i];
                const T *restrict Si = S + i * V;
                for (long j = 0; j < V; j++) et[j] += pi * Si[j];
            }
        }
        for (long t = 0; t < Tn; t++) {
            if (ck && t % CK == 0) {
                memcpy(ck + (pr * nck + t / CK) * 2 * KV, S, KV * sizeof(T));
                memcpy(ck + (pr * nck + t / CK) * 2 * KV + KV, M, KV * sizeof(T));
            }
            const long row = (b * Tn + t) * H + h, nrow = row + H;
            const T a = EXP(la[row]), mu = EXP(lm[row]), bt = beta[row], ht = eta[row];
            const T *restrict qt = q + row * K, *restrict kt = k + row * K;
            const T *restrict et = e + row * V;
            T *restrict ot = o + row * V;
            const int next = t + 1 < Tn;
            T *restrict en = next ? e + nrow * V : NULL;
            const T *restrict pn = next ? p + nrow * K : NULL;
            for (long j = 0; j < V; j++) ot[j] = 0;
            if (next) {
                const T *restrict vn = v + nrow * V;
                for (long j = 0; j < V; j++) en[j] = -vn[j];
            }
            for (long i = 0; i < K; i++) {
                T *restrict Si = S + i * V, *restrict Mi = M + i * V;
                const T hk = ht * kt[i], qi = scale * qt[i], pi = next ? pn[i] : 0;
                if (next) {
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        const T m = mu * Mi[j] + hk * et[j];
                        const T s = a * Si[j] - bt * m;
                        Mi[j] = m;
                        Si[j] = s;
                        ot[j] += qi * s;
                        en[j] += pi * s;
                    }
                } else {
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        const T m = mu * Mi[j] + hk * et[j];
                        const T s = a * Si[j] - bt * m;
                        Mi[j] = m;
                        Si[j] = s;
                        ot[j] += qi * s;
                    }
                }
            }
        }
    }
}

void NAME(momentum_bwd)(const T *restrict q, const T *restrict k, const T *restrict p,
                        const T *restrict la, const T *restrict lm, const T *restrict beta,
                        const T *restrict eta, const T *restrict e, const T *restrict ck,
                        const T *restrict dST, const T *restrict dMT, const T *restrict dout,
                        T *restrict dq, T *restrict dk, T *restrict dv, T *restrict dp,
                        T *restrict dla, T *restrict dlm, T *restrict dbeta, T *restrict deta,
                        T *restrict dS0, T *restrict dM0, T scale, long Tn, long H, long K,
                        long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, KV = K * V;
    T *buf = malloc(CK * 2 * KV * sizeof(T));  /* S_t, M_t for the steps of one block */
    T *de = malloc(V * sizeof(T));
    for (long pr = p0; pr < p1; pr++) {
        const long b = pr / H, h = pr % H;
        T *restrict dS = dS0 + pr * KV, *restrict dM = dM0 + pr * KV;  /* end as dS_0, dM_0 */
        if (dST) memcpy(dS, dST + pr * KV, KV * sizeof(T));
        else memset(dS, 0, KV * sizeof(T));
        if (dMT) memcpy(dM, dMT + pr * KV, KV * sizeof(T));
        else memset(dM, 0, KV * sizeof(T));
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *start = ck + (pr * nck + c) * 2 * KV;
            const T *Sp = start, *Mp = start + KV;
            for (long t = t0; t < t1; t++) {  /* recompute S_t, M_t, t in the block */
                const long row = (b * Tn + t) * H + h;
                const T a = EXP(la[row]), mu = EXP(lm[row]), bt = beta[row], ht = eta[row];
                const T *restrict kt = k + row * K, *restrict et = e + row * V;
                T *restrict St = buf + (t - t0) * 2 * KV, *restrict Mt = St + KV;
                for (long i = 0; i < K; i++) {
                    const T hk = ht * kt[i];
                    const T *restrict Spi = Sp + i * V, *restrict Mpi = Mp + i * V;
                    T *restrict Si = St + i * V, *restrict Mi = Mt + i * V;
#pragma omp simd
                    for (long j = 0; j < V; j++) {
                        const T m = mu * Mpi[j] + hk * et[j];
                        Mi[j] = m;
                        Si[j] = a * Spi[j] - bt * m;
                    }
                }
                Sp = St;
                Mp = Mt;
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (b * Tn + t) * H + h;
                const T a = EXP(la[row]), mu = EXP(lm[row]), bt = beta[row], ht = eta[row];
                const T *restrict qt = q + row * K, *restrict kt = k + row * K;
                const T *restrict pt = p + row * K, *restrict et = e + row * V;
                const T *restrict dot = dout + row * V;
                const T *restrict St = buf + (t - t0) * 2 * KV, *restrict Mt = St + KV;
                const T *restrict Sq = t > t0 ? St - 2 * KV : start;        /* S_{t-1} */
                const T *restrict Mq = t > t0 ? Mt - 2 * KV : start + KV;   /* M_{t-1} */
                T *restrict dqt = dq + row * K, *restrict dkt = dk + row * K;
                T *restrict dpt = dp + row * K;
                T sdb = 0, sda = 0, sdm = 0, sde = 0;
                for (long j = 0; j < V; j++) de[j] = 0;
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V, *restrict dMi = dM + i * V;
                    const T *restrict Si = St + i * V, *restrict Mi = Mt + i * V;
                    const T *restrict Spi = Sq + i * V, *restrict Mpi = Mq + i * V;
                    const T qi = scale * qt[i], ki = kt[i];
                    T sq = 0, sk = 0, db = 0, da = 0, dm = 0;
#pragma omp simd reduction(+ : sq, sk, db, da, dm)
                    for (long j = 0; j < V; j++) {
                        const T D = dSi[j] + qi * dot[j];
                        const T E = dMi[j] - bt * D;
                        sq += Si[j] * dot[j];
                        db += D * Mi[j];
                        da += D * Spi[j];
                        dm += E * Mpi[j];
                        sk += E * et[j];
                        de[j] += ki * E;
                        dSi[j] = a * D;
                        dMi[j] = mu * E;
                    }
                    dqt[i] = scale * sq;
                    dkt[i] = ht * sk;
                    sde += ki * sk;
                    sdb += db;
                    sda += da;
                    sdm += dm;
                }
                dbeta[row] = -sdb;
                dla[row] = a * sda;
                dlm[row] = mu * sdm;
                deta[row] = sde;
                T *restrict dvt = dv + row * V;
                for (long j = 0; j < V; j++) {
                    de[j] *= ht;
                    dvt[j] = -de[j];
                }
                for (long i = 0; i < K; i++) {
                    T *restrict dSi = dS + i * V;
                    const T *restrict Spi = Sq + i * V;
                    const T pi = pt[i];
                    T s = 0;
#pragma omp simd reduction(+ : s)
                    for (long j = 0; j < V; j++) {
                        s += Spi[j] * de[j];
                        dSi[j] += pi * de[j];
                    }
                    dpt[i] = s;
                }
            }
        }
    }
    free(buf);
    free(de);
}

#endif
