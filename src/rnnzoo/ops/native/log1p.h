/* log1p.h: NAME(log1p_unit), a vectorisable log1p on [0, 1] for the type T of the including
   kernel file (shared header; included in each_type.h's per-type part, once per type: no
   include guard). gla_scan.c (LightNet's additive gate, gated slot attention's forget gate),
   selective_scan.c (Mamba's softplus step sizes). */

/* log1p(y) for 0 <= y <= 1, vectorisable: log(u) for u = 1 + y (u or u / 2 in
   [sqrt(1/2), sqrt(2)], log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, as its
   odd series), scaled by y / (u - 1) to recover the bits that 1 + y rounded away. */
static inline T NAME(log1p_unit)(T y) {
    static const T c[12] = {1.0 / 23, 1.0 / 21, 1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13,
                            1.0 / 11, 1.0 / 9, 1.0 / 7, 1.0 / 5, 1.0 / 3, 1.0};
    const T u = 1 + y;
    const int big = u > (T)1.41421356237309504880;
    const T m = big ? u * (T)0.5 : u, s = (m - 1) / (m + 1), s2 = s * s;
    T p = 0;
    for (int i = sizeof(T) == 4 ? 7 : 0; i < 12; i++) p = p * s2 + c[i];  /* float: to s^9 */
    const T l = 2 * s * p + (big ? (T)0.69314718055994530942 : 0);
    return u == 1 ? y : l * (y / (u - 1));
}
