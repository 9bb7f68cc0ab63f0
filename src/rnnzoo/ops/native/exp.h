/* exp_f, exp_d: a vectorisable exp for the kernels of rnnzoo.ops.native (shared header); tanh_f,
   tanh_d on it. */
#ifndef RNNZOO_NATIVE_EXP_H
#define RNNZOO_NATIVE_EXP_H
#include <math.h>
#include <stdint.h>

/* exp by range reduction x = k ln2 + r, |r| <= ln2 / 2, and a Taylor polynomial in r;
   2^k assembled in the exponent bits from the rounding constant's own bits (which vectorises
   on AVX2, where a double -> int64 conversion does not). Clamped to normal results. */
static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float t = x * 1.44269504088896341f + 12582912.0f;   /* 1.5 * 2^23: rounds to an integer */
    float k = t - 12582912.0f;
    float r = x - k * 0.693359375f - k * -2.12194440e-4f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666667e-1f + r * (4.16666667e-2f
              + r * (8.33333333e-3f + r * (1.38888889e-3f + r * 1.98412698e-4f))))));
    union { float f; uint32_t i; } tb = {t}, s;
    s.i = (tb.i + 127u) << 23;
    return p * s.f;
}

static inline double exp_d(double x) {
    x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
    double t = x * 1.4426950408889634074 + 6755399441055744.0;   /* 1.5 * 2^52 */
    double k = t - 6755399441055744.0;
    double r = x - k * 6.93147180369123816490e-01 - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;                                /* 1/13! */
    static const double c[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
        1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
        1.0 / 6.0, 0.5, 1.0, 1.0};
    for (int i = 0; i < 13; i++) p = p * r + c[i];
    union { double f; uint64_t i; } tb = {t}, s;
    s.i = (tb.i + 1023u) << 52;
    return p * s.f;
}

/* tanh_f, tanh_d: tanh with a relative error of about an ulp everywhere. 1 - 2 / (e^{2x} + 1)
   alone is one minus a number near one at small |x|: an absolute error of an ulp of 1, which a
   sum over steps keeps (mamba3's angles drifted ~100x torch's float32 form where phi was small).
   As cephes' tanhf: below |x| = 0.625 its odd polynomial, above that form with exp_f; double
   takes libm's tanh. */
static inline float tanh_f(float x) {
    const float z = x * x;
    const float p = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                      + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    const float e = copysignf(1 - 2 / (1 + exp_f(2 * fabsf(x))), x);
    return z < 0.390625f ? p : e;  /* 0.625^2 */
}

static inline double tanh_d(double x) { return tanh(x); }

#endif
