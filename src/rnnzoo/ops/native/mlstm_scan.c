/* The stabilised mLSTM recurrence (Beck et al. 2024, xLSTM, eqs. 19-27 with appendix A.2's
   max-stabiliser m; rnnzoo.ops.chunk.linear.mlstm_recurrent is the reference), forward and
   backward, one (batch row, head) pair at a time with its (K, V) memory in cache:

       m_t = max(lf_t + m_{t-1}, li_t),  f_t = exp(lf_t + m_{t-1} - m_t),  i_t = exp(li_t - m_t)
       C_t = f_t C_{t-1} + i_t k_t v_t^T,   n_t = f_t n_{t-1} + i_t k_t
       s_t = q_t . n_t,   den_t = max(|s_t|, exp(-m_t)) + eps,   h_t = C_t^T q_t / den_t

   Backward: the exact chain rule with m an ordinary variable (the maxima route their
   gradient to the larger argument, half each on a tie, as torch.maximum). With dC, dn the
   gradients of C_t, n_t (their own use plus f_{t+1} times the next step's), dnum = dh / den,
   dden = -dh . h / den, ds = dden sign(s) when |s| wins (else dm_t gets -dden exp(-m_t)):
       dq = C_t dnum + ds n_t,   dC = f_{t+1} dC_{t+1} + q dnum^T,   dn = f_{t+1} dn_{t+1} + ds q
       dk = i_t (dC v + dn),   dv = i_t dC^T k,   Y = k . dk   (= d / d log i_t)
       X = <dC, C_t> + <dn, n_t> - Y   (= d / d log f_t, from f_t C_{t-1} = C_t - i_t k v^T)
       dli += Y,  dlf += X,  dm_{t-1} += X,  dm_t -= X + Y,  then dm_t to lf_t and m_{t-1}
       or to li_t, whichever won the max.
   C_t, n_t are recomputed from the state stored every CK steps (with the stored m_t).
   Each step's passes over the memory run in column tiles (tile.h: two vectors of T, the
   tile's h or dv slice in registers, a row's dot products summed as trees); the per-row
   terms that need whole rows (n, s, dn, dk, the log-gate gradients) run once a step.

   Layouts (row-major, contiguous): q, k (batch, T, H, K) (q already scaled); v, h, dh, dv
   (batch, T, H, V); li, lf, s, m, dli, dlf (batch, T, H); C0, CT, dCT, dC0 (batch, H, K, V);
   n0, nT, dnT, dn0 (batch, H, K); m0, mT, dmT, dm0 (batch, H); ck (batch, H, nck, K V + K)
   with nck = ceil(T / CK): (C, n) entering steps 0, CK, 2 CK, ... Gradients given as NULL
   are zero. Each function does the (batch row, head) pairs [p0, p1). Plain C; compiled by
   rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define CK 32
#define KERNELS "mlstm_scan.c"
#include "each_type.h"

#else

#include "tile.h"

void NAME(mlstm_fwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict li, const T *restrict lf, const T *restrict C0,
                     const T *restrict n0, const T *restrict m0, T *restrict h,
                     T *restrict CT, T *restrict nT, T *restrict mT, T *restrict s_out,
                     T *restrict m_out, T *restrict ck, T eps, long Tn, long H, long K, long V,
                     long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, KV = K * V;
    for (long p = p0; p < p1; p++) {
        const long b = p / H, hh = p % H;
        T *restrict C = CT + p * KV, *restrict n = nT + p * K;
        memcpy(C, C0 + p * KV, KV * sizeof(T));
        memcpy(n, n0 + p * K, K * sizeof(T));
        T m = m0[p];
        for (long t = 0; t < Tn; t++) {
            if (t % CK == 0) {
                T *c = ck + (p * nck + t / CK) * (KV + K);
                memcpy(c, C, KV * sizeof(T));
                memcpy(c + KV, n, K * sizeof(T));
            }
            const long row = (b * Tn + t) * H + hh;
            const T a = lf[row] + m, m_new = a > li[row] ? a : li[row];
            const T f = EXP(a - m_new), i = EXP(li[row] - m_new);
            const T *restrict qt = q + row * K, *restrict kt = k + row * K,
                    *restrict vt = v + row * V;
            T *restrict ht = h + row * V;
            T s = 0;
            for (long r = 0; r < K; r++) {
                n[r] = f * n[r] + i * kt[r];
                s += qt[r] * n[r];
            }
            const T as = s < 0 ? -s : s, e = EXP(-m_new);
            const T inv = 1 / ((as > e ? as : e) + eps);
            for (long j0 = 0; j0 < V; j0 += VT) {  /* the memory in column tiles */
                const long w = V - j0 < VT ? V - j0 : VT;
                VEC vv[2], h0 = {0}, h1 = {0};
                NAME(tile_load)(vv, vt + j0, w);
                for (long r = 0; r < K; r++) {
                    VEC c[2];
                    NAME(tile_load)(c, C + r * V + j0, w);
                    const T ik = i * kt[r], qr = qt[r];
                    c[0] = f * c[0] + ik * vv[0];
                    c[1] = f * c[1] + ik * vv[1];
                    NAME(tile_store)(C + r * V + j0, c, w);
                    h0 += qr * c[0];
                    h1 += qr * c[1];
                }
                const VEC hv[2] = {inv * h0, inv * h1};
                NAME(tile_store)(ht + j0, hv, w);
            }
            s_out[row] = s;
            m_out[row] = m_new;
            m = m_new;
        }
        mT[p] = m;
    }
}

void NAME(mlstm_bwd)(const T *restrict q, const T *restrict k, const T *restrict v,
                     const T *restrict li, const T *restrict lf, const T *restrict m0,
                     const T *restrict h, const T *restrict s_in, const T *restrict m_in,
                     const T *restrict ck, const T *restrict dh, const T *restrict dCT,
                     const T *restrict dnT, const T *restrict dmT, T *restrict dq,
                     T *restrict dk, T *restrict dv, T *restrict dli, T *restrict dlf,
                     T *restrict dC0, T *restrict dn0, T *restrict dm0, T eps, long Tn, long H,
                     long K, long V, long p0, long p1) {
    const long nck = (Tn + CK - 1) / CK, KV = K * V;
    T *buf = malloc(CK * (KV + K) * sizeof(T)), *dnum = malloc(V * sizeof(T));
    T *sqa = malloc(K * sizeof(T)), *ska = malloc(K * sizeof(T));  /* C_t dnum, dC v_t */
    for (long p = p0; p < p1; p++) {
        const long b = p / H, hh = p % H;
        T *restrict dC = dC0 + p * KV, *restrict dn = dn0 + p * K;
        if (dCT) memcpy(dC, dCT + p * KV, KV * sizeof(T)); else memset(dC, 0, KV * sizeof(T));
        if (dnT) memcpy(dn, dnT + p * K, K * sizeof(T)); else memset(dn, 0, K * sizeof(T));
        T dm = dmT ? dmT[p] : 0, f_next = 1;
        for (long c = nck - 1; c >= 0; c--) {
            const long t0 = c * CK, t1 = t0 + CK < Tn ? t0 + CK : Tn;
            const T *prev = ck + (p * nck + c) * (KV + K);
            for (long t = t0; t < t1; t++) {  /* recompute (C_t, n_t) for the block */
                const long row = (b * Tn + t) * H + hh;
                const T mp = t ? m_in[row - H] : m0[p], mt = m_in[row];
                const T f = EXP(lf[row] + mp - mt), i = EXP(li[row] - mt);
                const T *restrict kt = k + row * K, *restrict vt = v + row * V;
                T *restrict St = buf + (t - t0) * (KV + K);
                for (long r = 0; r < K; r++) {
                    const T ik = i * kt[r];
                    for (long j = 0; j < V; j++) St[r * V + j] = f * prev[r * V + j] + ik * vt[j];
                    St[KV + r] = f * prev[KV + r] + ik;
                }
                prev = St;
            }
            for (long t = t1 - 1; t >= t0; t--) {
                const long row = (b * Tn + t) * H + hh;
                const T mp = t ? m_in[row - H] : m0[p], mt = m_in[row], a = lf[row] + mp;
                const T f = EXP(a - mt), i = EXP(li[row] - mt);
                const T *restrict qt = q + row * K, *restrict kt = k + row * K,
                        *restrict vt = v + row * V, *restrict ht = h + row * V,
                        *restrict dht = dh + row * V;
                const T *restrict Ct = buf + (t - t0) * (KV + K), *restrict nt = Ct + KV;
                T *restrict dqt = dq + row * K, *restrict dkt = dk + row * K,
                  *restrict dvt = dv + row * V;
                const T s = s_in[row], as = s < 0 ? -s : s, e = EXP(-mt);
                const T den = (as > e ? as : e) + eps;
                T hd = 0;
                for (long j = 0; j < V; j++) {
                    dnum[j] = dht[j] / den;
                    hd += dht[j] * ht[j];
                }
                const T dden = -hd / den;
                const T ws = as > e ? 1 : (as < e ? 0 : (T)0.5);  /* torch.maximum's split */
                const T sg = s > 0 ? 1 : (s < 0 ? -1 : 0);
                const T ds = dden * ws * sg;
                dm -= dden * (1 - ws) * e;
                for (long r = 0; r < K; r++) sqa[r] = ska[r] = 0;
                VEC gv = {0};
                for (long j0 = 0; j0 < V; j0 += VT) {  /* the memory in column tiles */
                    const long w = V - j0 < VT ? V - j0 : VT;
                    VEC dnv[2], vv[2], dv0 = {0}, dv1 = {0};
                    NAME(tile_load)(dnv, dnum + j0, w);
                    NAME(tile_load)(vv, vt + j0, w);
                    for (long r = 0; r < K; r++) {
                        VEC c[2], d[2];
                        NAME(tile_load)(c, Ct + r * V + j0, w);
                        NAME(tile_load)(d, dC + r * V + j0, w);
                        const T qr = qt[r], kr = kt[r];
                        d[0] = f_next * d[0] + qr * dnv[0];
                        d[1] = f_next * d[1] + qr * dnv[1];
                        NAME(tile_store)(dC + r * V + j0, d, w);
                        sqa[r] += NAME(hsum)(c[0] * dnv[0] + c[1] * dnv[1]);
                        ska[r] += NAME(hsum)(d[0] * vv[0] + d[1] * vv[1]);
                        gv += d[0] * c[0] + d[1] * c[1];
                        dv0 += kr * d[0];
                        dv1 += kr * d[1];
                    }
                    const VEC dvv[2] = {i * dv0, i * dv1};
                    NAME(tile_store)(dvt + j0, dvv, w);
                }
                T X = NAME(hsum)(gv), Y = 0;
                for (long r = 0; r < K; r++) {
                    const T qr = qt[r], kr = kt[r];
                    const T dnr = f_next * dn[r] + ds * qr;
                    dn[r] = dnr;
                    dqt[r] = sqa[r] + ds * nt[r];
                    const T dkr = i * (ska[r] + dnr);
                    dkt[r] = dkr;
                    Y += kr * dkr;
                    X += dnr * nt[r];
                }
                X -= Y;
                dm -= X + Y;
                const T wa = a > li[row] ? 1 : (a < li[row] ? 0 : (T)0.5);
                dli[row] = Y + dm * (1 - wa);
                dlf[row] = X + dm * wa;
                dm = X + dm * wa;  /* to m_{t-1} */
                f_next = f;
            }
        }
        for (long r = 0; r < KV; r++) dC[r] *= f_next;
        for (long r = 0; r < K; r++) dn[r] *= f_next;
        dm0[p] = dm;
    }
    free(buf);
    free(dnum);
    free(sqa);
    free(ska);
}

#include "tile.h"  /* its names undefined for the next type */
#endif
