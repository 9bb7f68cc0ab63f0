/* Softmax of one row of logits s[0 .. n) in place (n >= 1), for a kernel instantiated per
   type by each_type.h (include it inside the typed part): s_j <- exp(s_j - m) / Z with m the
   row's max and Z = sum_j exp(s_j - m); returns m and writes Z (the row's log-sum-exp is
   m + log Z). attention.c's causal rows and deltaformer_attn.c's rows. softmax_row_bwd: its
   backward on a row of e entries, the first n live: d_j <- p_j (d_j - sum_i p_i d_i) for
   j < n, 0 after (attention.c's sm_bwd, path_chunk.c's fused backward). */
static inline T NAME(softmax_row)(T *restrict s, long n, T *Z) {
    T m = s[0], sum = 0;
#pragma omp simd reduction(max:m)
    for (long j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
#pragma omp simd reduction(+:sum)
    for (long j = 0; j < n; j++) {
        s[j] = EXP(s[j] - m);
        sum += s[j];
    }
    const T inv = 1 / sum;
    for (long j = 0; j < n; j++) s[j] *= inv;
    *Z = sum;
    return m;
}

static inline void NAME(softmax_row_bwd)(const T *restrict p, T *restrict d, long n, long e) {
    T dot = 0;
#pragma omp simd reduction(+:dot)
    for (long j = 0; j < n; j++) dot += p[j] * d[j];
    for (long j = 0; j < n; j++) d[j] = p[j] * (d[j] - dot);
    for (long j = n; j < e; j++) d[j] = 0;
}
