/* ttt_norm.h: one row of the TTT inner loss's gradient through its layer norm and of its
   backward (the formulas: ttt_norm.c's comment), for a kernel file's T section
   (each_type.h): ttt_norm.c's row loops and ttt_loop.c's mini-batch loop. */

/* mean, s and zh of one row into zh; returns s */
static inline T NAME(ttt_norm_row)(const T *restrict z, T *restrict zh, long D, T eps) {
    T mu = 0, v = 0;
    #pragma omp simd reduction(+:mu)
    for (long j = 0; j < D; j++) mu += z[j];
    mu /= D;
    #pragma omp simd reduction(+:v)
    for (long j = 0; j < D; j++) {
        zh[j] = z[j] - mu;
        v += zh[j] * zh[j];
    }
    T s = SQRT(v / D + eps), is = 1 / s;
    #pragma omp simd
    for (long j = 0; j < D; j++) zh[j] *= is;
    return s;
}

/* out = J x = (x - mean x - zh mean(x zh)) / s */
static inline void NAME(ttt_norm_jac)(const T *restrict x, const T *restrict zh, T s,
                                      T *restrict out, long D) {
    T sx = 0, sxz = 0;
    #pragma omp simd reduction(+:sx, sxz)
    for (long j = 0; j < D; j++) {
        sx += x[j];
        sxz += x[j] * zh[j];
    }
    const T is = 1 / s;
    sx /= D;
    sxz /= D;
    #pragma omp simd
    for (long j = 0; j < D; j++) out[j] = (x[j] - sx - zh[j] * sxz) * is;
}

/* G = J u for one row: z, t (D), the head's wh, bh; scratch zh, u (D each) */
static inline void NAME(ttt_norm_fwd_row)(const T *restrict z, const T *restrict t,
                                          const T *restrict wh, const T *restrict bh,
                                          T *restrict G, T *restrict zh, T *restrict u, long D,
                                          T eps) {
    T s = NAME(ttt_norm_row)(z, zh, D, eps);
    #pragma omp simd
    for (long j = 0; j < D; j++) u[j] = (zh[j] * wh[j] + bh[j] - t[j]) * wh[j];
    NAME(ttt_norm_jac)(u, zh, s, G, D);
}

/* The backward of one row from g (of G): dz, dt, dw, db (D each, written); scratch sc (5 D) */
static inline void NAME(ttt_norm_bwd_row)(const T *restrict z, const T *restrict t,
                                          const T *restrict wh, const T *restrict bh,
                                          const T *restrict g, T *restrict dz, T *restrict dt,
                                          T *restrict dw, T *restrict db, T *restrict sc, long D,
                                          T eps) {
    T *zh = sc, *e = zh + D, *u = e + D, *rg = u + D, *x = rg + D;
    const T s = NAME(ttt_norm_row)(z, zh, D, eps);
    T m = 0, c = 0, S = 0, gd = 0, sg = 0;
    #pragma omp simd reduction(+:m, c, S, gd, sg)
    for (long j = 0; j < D; j++) {
        e[j] = zh[j] * wh[j] + bh[j] - t[j];
        u[j] = e[j] * wh[j];
        m += u[j];
        c += u[j] * zh[j];          /* mean(u d) = s mean(u zh) */
        gd += g[j] * zh[j];         /* sum g d = s sum g zh */
        sg += g[j];
        S += g[j] * u[j];
    }
    m /= D;
    c *= s / D;
    gd *= s;
    S -= sg * m;
    NAME(ttt_norm_jac)(g, zh, s, rg, D);
    #pragma omp simd
    for (long j = 0; j < D; j++) {
        const T de = rg[j] * wh[j];
        dt[j] = -de;
        db[j] = de;
        dw[j] = e[j] * rg[j] + zh[j] * de;
        x[j] = wh[j] * de;
    }
    NAME(ttt_norm_jac)(x, zh, s, dz, D);
    /* center(v), d = s zh: v = zh (3 gd c / (D s^4) - S / (D s^2)) - (g c + gd u / D) / s^3 */
    const T is3 = 1 / (s * s * s), a = (3 * gd * c / (s * s) - S) / (D * s * s);
    const T gdD = gd / D;
    T mv = 0;
    #pragma omp simd reduction(+:mv)
    for (long j = 0; j < D; j++) {
        x[j] = zh[j] * a - (g[j] * c + gdD * u[j]) * is3;
        mv += x[j];
    }
    mv /= D;
    #pragma omp simd
    for (long j = 0; j < D; j++) dz[j] += x[j] - mv;
}
