/* The tanh GELU of the test-time-memory layers' MLP memories (ops/memory.py: _gelu,
   _gelu_back), elementwise, with the derivatives their chunk forms need: the memory's
   gradient holds g'(z), so the chunk form's backward needs g''(z).

       u = s (z + c z^3),  t = tanh u,  s = sqrt(2 / pi),  c = 0.044715
       g(z)   = z (1 + t) / 2
       g'(z)  = (1 + t) / 2 + z (1 - t^2) u' / 2,            u' = s (1 + 3 c z^2)
       g''(z) = (1 - t^2) (u' - z t u'^2 + z u'' / 2),       u'' = 6 s c z

   tanh u = 1 - 2 / (exp(2u) + 1), 1 - t^2 = 4 exp(2u) / (exp(2u) + 1)^2, with exp.h's
   exponential (libm's tanh does not vectorise).
   Each function does the elements [j0, j1). Plain C; compiled by rnnzoo.ops.native. */

#ifndef T  /* instantiated for float and double by each_type.h */
#define KERNELS "memory_gelu.c"
#include "each_type.h"

#else

#define GELU_S ((T)0.7978845608028654)
#define GELU_C ((T)0.044715)

/* t = tanh u and 1 - t^2 = 4 e / (e + 1)^2 (e = exp 2u: no cancellation where |t| -> 1) */
static inline T NAME(tanh_u)(T z, T *sech2) {
    T u = GELU_S * (z + GELU_C * z * z * z), e = EXP(2 * u), r = 1 / (e + 1);
    *sech2 = 4 * r * (e * r);            /* e r <= 1: no overflow */
    return 1 - 2 * r;
}

void NAME(gelu_fwd)(const T *restrict z, T *restrict y, long j0, long j1) {
    #pragma omp simd
    for (long j = j0; j < j1; j++) {
        T sech2;
        y[j] = (T)0.5 * z[j] * (1 + NAME(tanh_u)(z[j], &sech2));
    }
}

/* out = g g'(z) */
void NAME(gelu_bwd)(const T *restrict g, const T *restrict z, T *restrict out, long j0, long j1) {
    #pragma omp simd
    for (long j = j0; j < j1; j++) {
        T x = z[j], sech2, t = NAME(tanh_u)(x, &sech2), du = GELU_S * (1 + 3 * GELU_C * x * x);
        out[j] = g[j] * ((T)0.5 * (1 + t) + (T)0.5 * x * sech2 * du);
    }
}

/* the gradients of out = g g'(z) from d (of out): dg = d g'(z), dz = d g g''(z) */
void NAME(gelu_bwd2)(const T *restrict d, const T *restrict g, const T *restrict z,
                     T *restrict dg, T *restrict dz, long j0, long j1) {
    #pragma omp simd
    for (long j = j0; j < j1; j++) {
        T x = z[j], sech2, t = NAME(tanh_u)(x, &sech2), du = GELU_S * (1 + 3 * GELU_C * x * x);
        dg[j] = d[j] * ((T)0.5 * (1 + t) + (T)0.5 * x * sech2 * du);
        dz[j] = d[j] * g[j] * sech2 * (du - x * t * du * du + 3 * GELU_S * GELU_C * x * x);
    }
}

#undef GELU_S
#undef GELU_C

#endif
