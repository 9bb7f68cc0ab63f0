/* Sums over a row, for a kernel instantiated per type by each_type.h (include it inside the
   typed part: it defines NAME(dot) and NAME(total) for the current T). They are called, not
   inlined, and reassociated: an `omp simd` sum over a row of constant width was folded lane by
   lane in order at the end of each row, 16 dependent adds; -fassociative-math for a whole
   file would also undo exp.h's rounding constant. */

#ifndef SUMS
#define SUMS __attribute__((noinline, optimize("associative-math", "no-signed-zeros")))
#endif

/* sum_o a[o] b[o] */
static SUMS T NAME(dot)(const T *restrict a, const T *restrict b, long n) {
    T s = 0;
    for (long o = 0; o < n; o++) s += a[o] * b[o];
    return s;
}

/* sum_o a[o] */
static SUMS T NAME(total)(const T *restrict a, long n) {
    T s = 0;
    for (long o = 0; o < n; o++) s += a[o];
    return s;
}
