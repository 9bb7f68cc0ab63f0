/* The shared driver of the classic cells' C loops (rnnzoo.ops.native.cells): a cell's whole
   sequence, forward and backward, with `cells.manual`'s conventions.

   Included inside the typed half of a cell's .c file (T, EXP and NAME defined there, as in
   conv.c): it is written once per dtype, so it has no include guard of its own.

   One call runs the batch rows [b0, b1) over all T steps; the threads take disjoint rows.
   Every argument arrives in one array of pointers and one of sizes (`cells.py` builds them):

     p = [xp, y (forward) or dy (backward), saved, dxp,
          state[n_s], init[n_s], W[n_m], WT[n_m], vec[n_v], rg[n_m], dvec[n_v],
          x, w_in, dx]
     d = [T, B, H, P, O, S, keep, own, n_s, n_m, n_v, n_int,
          state sizes[n_s], (G_j, K_j)[n_m], vector lengths[n_v], ints[n_int], I, floats]

   xp (B, T, P) the projections, y / dy (B, T, O), dxp (B, T, P); W_j (G_j, K_j) the
   recurrent matrices and WT_j their transposes (K_j, G_j), all contiguous.
   Forward: `state` the running state (B, n_i), set from `init` (the initial state) and
   left holding the final one; `rg[j]` = r_j (B, T, K_j), the left operands of the products
   r_j W_j^T; `saved` (B, T, S) what the backward reads. Without `keep` (no gradient
   wanted) saved and rg hold one step (B, 1, .), rewritten each step.
   Backward: `state` the running gradient of the state, set from `init` (that of the final
   state) and left holding the initial state's; `rg[j]` = g_j (B, T, G_j), the gradients at
   the products' outputs (dW_j = g_j^T r_j is one product, done by the caller); `dvec`
   (B, len_v) per-row sums over the steps of each vector's gradient (the caller sums rows);
   rg[0] may be dxp itself (NativeStep.g_is_dxp), which a step then writes once.
   `floats`: the cell's float options as doubles, their bits in d's last slots (a.floats).
   `own`: the output is state[0] (the driver copies it to y, and adds dy to its gradient);
   otherwise the cell's step writes y and reads dy itself.
   x, w_in, dx (NULL where absent; I = x's width): the input projection xp = x w_in^T inside
   the loop (cells.scan_projected; nas). Forward: x (B, T, I) in place of xp (then NULL) and
   w_in^T (I, P); backward: w_in (P, I) and dx (B, T, I), d x_t = d xp_t w_in. A step that
   takes them multiplies a step's rows itself (drive_packed hands w_in over packed), so that
   the (B, T, P) projection is never written and read back, nor d xp read for d x.

   A cell gives two step functions, (args, t, b0, b1, scratch) -> void, and calls
   NAME(drive_fwd) / NAME(drive_bwd) from its exported functions with the scratch size per
   row it needs; NAME(mm) is the row-block x matrix product its steps use (or, through
   NAME(drive_packed), NAME(mmp) on the recurrent matrices packed once per call). Keep the steps'
   elementwise loops free of branches (a.zeros stands for an absent vector) and mark them
   ELEMENTWISE, so that they vectorise (exp.h's exp does). */

#ifndef RNNZOO_CELL_LOOP_ONCE
#define RNNZOO_CELL_LOOP_ONCE
#define NAME_MAX_ 8
/* before a step's elementwise loop over k < H: its iterations are independent (in-place
   updates read and write the same k). GCC ignores `restrict` on local pointers and gives up
   on loops with many arrays (its alias-check limit); this lets them vectorise. */
#if defined(__clang__)
#define ELEMENTWISE _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define ELEMENTWISE _Pragma("GCC ivdep")
#else
#define ELEMENTWISE
#endif
#endif

typedef struct {
    long Tn, B, H, P, O, S, keep, own, ns, nm, nv, nint;
    long ssz[NAME_MAX_], G[NAME_MAX_], K[NAME_MAX_], vlen[NAME_MAX_];
    const long *ints;
    const double *floats;
    const T *xp;
    T *y;          /* forward: outputs; backward: their gradient (read only) */
    T *saved, *dxp;
    T *state[NAME_MAX_];
    const T *init[NAME_MAX_];
    const T *W[NAME_MAX_], *WT[NAME_MAX_], *vec[NAME_MAX_];
    T *rg[NAME_MAX_], *dvec[NAME_MAX_];
    const T *x, *w_in;  /* the projection inside the loop (NULL: none); x (B, T, I) */
    T *dx;
    long I;
    const T *zeros;  /* 8 H zeros: an absent vector, so that loops need no branch */
} NAME(args);

typedef void (*NAME(step_fn))(const NAME(args) *a, long t, long b0, long b1, T *scratch);

static void NAME(parse)(NAME(args) *a, void **p, const long *d) {
    a->Tn = d[0]; a->B = d[1]; a->H = d[2]; a->P = d[3]; a->O = d[4]; a->S = d[5];
    a->keep = d[6]; a->own = d[7]; a->ns = d[8]; a->nm = d[9]; a->nv = d[10]; a->nint = d[11];
    const long *q = d + 12;
    for (long i = 0; i < a->ns; i++) a->ssz[i] = *q++;
    for (long j = 0; j < a->nm; j++) { a->G[j] = *q++; a->K[j] = *q++; }
    for (long v = 0; v < a->nv; v++) a->vlen[v] = *q++;
    a->ints = q;
    a->I = q[a->nint];
    a->floats = (const double *)(q + a->nint + 1);
    a->xp = p[0]; a->y = p[1]; a->saved = p[2]; a->dxp = p[3];
    void **r = p + 4;
    for (long i = 0; i < a->ns; i++) a->state[i] = *r++;
    for (long i = 0; i < a->ns; i++) a->init[i] = *r++;
    for (long j = 0; j < a->nm; j++) a->W[j] = *r++;
    for (long j = 0; j < a->nm; j++) a->WT[j] = *r++;
    for (long v = 0; v < a->nv; v++) a->vec[v] = *r++;
    for (long j = 0; j < a->nm; j++) a->rg[j] = *r++;
    for (long v = 0; v < a->nv; v++) a->dvec[v] = *r++;
    a->x = *r++; a->w_in = *r++; a->dx = *r++;
}

/* row b, step t of a (B, T, width) tensor; `kept` ones (saved, rg) hold one step without keep */
static inline T *NAME(at)(const T *base, const NAME(args) *a, long b, long t, long width) {
    return (T *)base + (b * a->Tn + t) * width;
}
static inline T *NAME(kept)(const T *base, const NAME(args) *a, long b, long t, long width) {
    return a->keep ? (T *)base + (b * a->Tn + t) * width : (T *)base + b * width;
}
/* the row stride of a `kept` buffer of that width */
static inline long NAME(kept_ld)(const NAME(args) *a, long width) {
    return a->keep ? a->Tn * width : width;
}

/* out[r, n] = init[r, n] (0 where init is NULL; init == out accumulates)
               + sum_m A[r, m] Bm[m, n],   r < rows, n < N, m < M; all row-major with the
   given leading dimensions. Register blocks of 4 rows x 3 vectors (GCC/Clang vector
   extensions: any target; -march=native picks the width's instructions). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
/* B's vectors stay in registers: otherwise GCC folds each load into the 4 rows' FMAs and
   the loop is bound by loads (measured: 26 -> 45 GFLOP/s at 16 x 128 @ 128 x 512) */
#define KEEP_IN_REGISTER_(v) __asm__("" : "+x"(v))
#else
#define KEEP_IN_REGISTER_(v) ((void)0)
#endif
/* the vector: 512 bits where the CPU has AVX-512 (the build is -march=native; 4 x 3 tiles of
   16 floats then take 12 of the 32 registers), else 256 */
#if defined(__AVX512F__)
#define VBYTES_ 64
#else
#define VBYTES_ 32
#endif
typedef T NAME(vec_t) __attribute__((vector_size(VBYTES_), aligned(sizeof(T)), may_alias));
#define VL_ ((long)(VBYTES_ / sizeof(T)))
#ifndef PPW_  /* the packed products' (mmp, pack) panels: PPW_ vectors wide, 4 x PPW_ tiles;
                 a cell's file may set it before the include (searched_cells.c: 4) */
#define PPW_ 3
#endif

/* an R x NV register tile (R <= 4, NV <= WMAX vectors): out = init + A Bm over M; `tile`
   for NAME(mm) (4 x 3 and 4 x 1), `tilep` for NAME(mmp)'s PPW_-vector panels */
#define CELL_TILE_(FN, WMAX)                                                                   \
    static inline __attribute__((always_inline)) void FN(                                      \
        T *out, long ldo, const T *init, long ldi, const T *A, long lda, const T *Bm, long ldb, \
        long M, const long R, const long NV) {                                                 \
        NAME(vec_t) acc[4][WMAX];                                                              \
        for (long r = 0; r < R; r++)                                                           \
            for (long j = 0; j < NV; j++) {                                                    \
                if (init) acc[r][j] = *(const NAME(vec_t) *)(init + r * ldi + j * VL_);        \
                else acc[r][j] = (NAME(vec_t)){0};                                             \
            }                                                                                  \
        for (long m = 0; m < M; m++) {                                                         \
            NAME(vec_t) bv[WMAX];                                                              \
            for (long j = 0; j < NV; j++) {                                                    \
                bv[j] = *(const NAME(vec_t) *)(Bm + m * ldb + j * VL_);                        \
                KEEP_IN_REGISTER_(bv[j]);                                                      \
            }                                                                                  \
            for (long r = 0; r < R; r++) {                                                     \
                const T s = A[r * lda + m];                                                    \
                for (long j = 0; j < NV; j++) acc[r][j] += s * bv[j];                          \
            }                                                                                  \
        }                                                                                      \
        for (long r = 0; r < R; r++)                                                           \
            for (long j = 0; j < NV; j++) *(NAME(vec_t) *)(out + r * ldo + j * VL_) = acc[r][j]; \
    }
CELL_TILE_(NAME(tile), 3)
CELL_TILE_(NAME(tilep), PPW_)
#undef CELL_TILE_

static __attribute__((unused)) void NAME(mm)(T *out, long ldo, const T *init, long ldi, const T *A, long lda,
                     const T *Bm, long ldb, long rows, long M, long N) {
    long n = 0;
#define TILE_(R, NV) NAME(tile)(out + r * ldo + n, ldo, init ? init + r * ldi + n : 0, ldi, \
                                A + r * lda, lda, Bm + n, ldb, M, R, NV)
    for (; n + 3 * VL_ <= N; n += 3 * VL_) {
        long r = 0;
        for (; r + 4 <= rows; r += 4) TILE_(4, 3);
        for (; r < rows; r++) TILE_(1, 3);
    }
    for (; n + VL_ <= N; n += VL_) {
        long r = 0;
        for (; r + 4 <= rows; r += 4) TILE_(4, 1);
        for (; r < rows; r++) TILE_(1, 1);
    }
#undef TILE_
    for (; n < N; n++)
        for (long r = 0; r < rows; r++) {
            T s = init ? init[r * ldi + n] : 0;
            for (long m = 0; m < M; m++) s += A[r * lda + m] * Bm[m * ldb + n];
            out[r * ldo + n] = s;
        }
}

/* B (M, N) (leading dimension ldb) copied into the panels NAME(mm) walks: each block of
   3 vectors of columns, then each single vector, then the scalar tail, as a contiguous
   (M, width) matrix; M N values. NAME(mmp) on the copy is NAME(mm) on B: with B's row
   stride a multiple of 4 KB (a (K, 8H) matrix at H = 128) the rows of one panel share an
   L1 set, and the panel falls out of L1 between row blocks (measured: 37 -> 70 GFLOP/s
   at 16 x 128 @ 128 x 1024). */
static __attribute__((unused)) void NAME(pack)(T *out, const T *Bm, long ldb, long M, long N) {
    long n = 0, w = PPW_ * VL_;
    while (n < N) {
        w = n + w <= N ? w : (n + VL_ <= N ? VL_ : N - n);  /* PPW_ vectors, then 1, then the tail */
        for (long m = 0; m < M; m++, out += w) memcpy(out, Bm + m * ldb + n, w * sizeof(T));
        n += w;
    }
}

/* NAME(mm) with B given as NAME(pack)(B) */
static __attribute__((unused)) void NAME(mmp)(T *out, long ldo, const T *init, long ldi,
                                               const T *A, long lda, const T *Bp, long rows,
                                               long M, long N) {
    long n = 0;
#define TILE_(R, NV) NAME(tilep)(out + r * ldo + n, ldo, init ? init + r * ldi + n : 0, ldi, \
                                A + r * lda, lda, Bp, NV * VL_, M, R, NV)
    for (; n + PPW_ * VL_ <= N; n += PPW_ * VL_, Bp += PPW_ * VL_ * M) {
        long r = 0;
        for (; r + 4 <= rows; r += 4) TILE_(4, PPW_);
        for (; r < rows; r++) TILE_(1, PPW_);
    }
    for (; n + VL_ <= N; n += VL_, Bp += VL_ * M) {
        long r = 0;
        for (; r + 4 <= rows; r += 4) TILE_(4, 1);
        for (; r < rows; r++) TILE_(1, 1);
    }
#undef TILE_
    if (n < N)
        NAME(mm)(out + n, ldo, init ? init + n : 0, ldi, A, lda, Bp, N - n, rows, M, N - n);
}

/* sum_k x[k] y[k] (y NULL: sum_k x[k]) over k < n, in 4 vector accumulators (a plain
   loop would not vectorise: reordering a floating-point sum needs -ffast-math) */
static inline T NAME(dot)(const T *x, const T *y, long n) {
    NAME(vec_t) acc[4] = {{0}, {0}, {0}, {0}};
    long k = 0;
    for (; k + 4 * VL_ <= n; k += 4 * VL_)
        for (int j = 0; j < 4; j++) {
            NAME(vec_t) v = *(const NAME(vec_t) *)(x + k + j * VL_);
            if (y) v *= *(const NAME(vec_t) *)(y + k + j * VL_);
            acc[j] += v;
        }
    acc[0] += acc[1] + acc[2] + acc[3];
    T s = 0;
    for (long e = 0; e < VL_; e++) s += acc[0][e];
    for (; k < n; k++) s += y ? x[k] * y[k] : x[k];
    return s;
}
#undef VL_
#undef VBYTES_

static inline T NAME(sigm)(T x) { return 1 / (1 + EXP(-x)); }
static inline T NAME(tanh_)(T x) { return 2 / (1 + EXP(-2 * x)) - 1; }

/* rows [b0, b1) of step t of a (B, T, width) tensor brought towards the cache, one step
   ahead of their use: the rows of one step lie T * width apart (2 MB for nas' projections),
   which the hardware prefetcher does not follow, and the products' first reads of them
   stalled (measured: nas' forward loop 34 -> 31 ms, forward + backward 94 -> 87 ms, 1 thread) */
static inline void NAME(prefetch_step)(const T *base, const NAME(args) *a, long b0, long b1,
                                       long t, long width, int write) {
    if (!base || t < 0 || t >= a->Tn) return;
    for (long b = b0; b < b1; b++) {
        const char *row = (const char *)NAME(at)(base, a, b, t, width);
        for (long o = 0; o < width * (long)sizeof(T); o += 64) {
            if (write) __builtin_prefetch(row + o, 1, 2);
            else __builtin_prefetch(row + o, 0, 2);
        }
    }
}

/* dst[0:n] = src[0:n] with streaming stores (AVX-512 builds, dst 64-byte aligned and n
   whole cache lines; else memcpy): for a step's rows of a (B, T, width) buffer that is
   read again only after the loop (nas' saved gates forward, its d xp backward). A plain
   store first reads each line of the (32-37 MB) buffer for ownership, and the lines push
   the packed recurrent matrix out of L2. The driver fences once at its end. */
#if defined(__AVX512F__) && !defined(RNNZOO_CELL_LOOP_NT)
#define RNNZOO_CELL_LOOP_NT
#include <immintrin.h>
#endif
static inline __attribute__((unused)) void NAME(stream_row)(T *dst, const T *src, long n) {
#if defined(__AVX512F__)
    if (((unsigned long)dst % 64) == 0 && (n * sizeof(T)) % 64 == 0) {
        for (long i = 0; i < n; i += 64 / sizeof(T)) {
            if (sizeof(T) == 4) _mm512_stream_ps((float *)(dst + i), _mm512_loadu_ps((const float *)(src + i)));
            else _mm512_stream_pd((double *)(dst + i), _mm512_loadu_pd((const double *)(src + i)));
        }
        return;
    }
#endif
    memcpy(dst, src, n * sizeof(T));
}

static inline void NAME(stream_fence)(void) {
#if defined(__AVX512F__)
    _mm_sfence();
#endif
}

/* the forward over all steps: state = init, then step(t) for t = 0..T-1 (y_t = state[0]
   copied by the driver when `own`) */
static void NAME(drive_fwd)(void **p, const long *d, long b0, long b1, NAME(step_fn) step,
                            long scratch_per_row) {
    NAME(args) a;
    NAME(parse)(&a, p, d);
    for (long i = 0; i < a.ns; i++)
        memcpy(a.state[i] + b0 * a.ssz[i], a.init[i] + b0 * a.ssz[i],
               (b1 - b0) * a.ssz[i] * sizeof(T));
    T *scratch = malloc((scratch_per_row * (b1 - b0) + 1) * sizeof(T)), *zeros = calloc(8 * a.H, sizeof(T));
    a.zeros = zeros;
    for (long t = 0; t < a.Tn; t++) {
        NAME(prefetch_step)(a.xp, &a, b0, b1, t + 1, a.P, 0);
        NAME(prefetch_step)(a.x, &a, b0, b1, t + 1, a.I, 0);
        step(&a, t, b0, b1, scratch);
        if (a.own)
            for (long b = b0; b < b1; b++)
                memcpy(NAME(at)(a.y, &a, b, t, a.O), a.state[0] + b * a.ssz[0], a.O * sizeof(T));
    }
    NAME(stream_fence)();
    free(scratch);
    free(zeros);
}

/* the backward: d state = d final state, dvec = 0, then (dy_t added to d state[0] when
   `own`) step(t) for t = T-1..0; `streamed`: the step writes its gradients' rows (rg, dxp)
   with stream_row, so they are not prefetched for writing, and it prefetches its saved rows
   itself (nas keeps them in its own layout) */
static void NAME(drive_bwd_)(void **p, const long *d, long b0, long b1, NAME(step_fn) step,
                             long scratch_per_row, int streamed) {
    NAME(args) a;
    NAME(parse)(&a, p, d);
    for (long i = 0; i < a.ns; i++)
        memcpy(a.state[i] + b0 * a.ssz[i], a.init[i] + b0 * a.ssz[i],
               (b1 - b0) * a.ssz[i] * sizeof(T));
    for (long v = 0; v < a.nv; v++)
        if (a.dvec[v]) memset(a.dvec[v] + b0 * a.vlen[v], 0, (b1 - b0) * a.vlen[v] * sizeof(T));
    T *scratch = malloc((scratch_per_row * (b1 - b0) + 1) * sizeof(T)), *zeros = calloc(8 * a.H, sizeof(T));
    a.zeros = zeros;
    for (long t = a.Tn - 1; t >= 0; t--) {
        if (a.own)
            for (long b = b0; b < b1; b++) {
                T *restrict ds = a.state[0] + b * a.ssz[0];
                const T *restrict dy = NAME(at)(a.y, &a, b, t, a.O);
                for (long k = 0; k < a.O; k++) ds[k] += dy[k];
            }
        if (!streamed) NAME(prefetch_step)(a.saved, &a, b0, b1, t - 1, a.S, 0);
        NAME(prefetch_step)(a.y, &a, b0, b1, t - 1, a.O, 0);
        for (long j = 0; j < a.nm && !streamed; j++)
            NAME(prefetch_step)(a.rg[j], &a, b0, b1, t - 1, a.G[j], 1);
        if (!streamed && (a.nm == 0 || a.rg[0] != a.dxp))
            NAME(prefetch_step)(a.dxp, &a, b0, b1, t - 1, a.P, 1);
        step(&a, t, b0, b1, scratch);
    }
    NAME(stream_fence)();
    free(scratch);
    free(zeros);
}

static __attribute__((unused)) void NAME(drive_bwd)(void **p, const long *d, long b0, long b1,
                                                    NAME(step_fn) step, long scratch_per_row) {
    NAME(drive_bwd_)(p, d, b0, b1, step, scratch_per_row, 0);
}

/* drive_fwd (backward = 0) or drive_bwd (1) with the recurrent matrices the steps multiply
   by handed over packed (NAME(pack)): in the forward each WT[j], in the backward each W[j],
   copied once per call, for steps that use NAME(mmp) on them, and w_in where given (forward
   w_in^T (I, P), backward w_in (P, I)); the backward's steps stream their gradients' rows
   out (drive_bwd_'s `streamed`: nas, the one user) */
static __attribute__((unused)) void NAME(drive_packed)(void **p, const long *d, long b0, long b1,
                              NAME(step_fn) step, long scratch_per_row, int backward) {
    NAME(args) a;
    NAME(parse)(&a, p, d);
    const long n = 4 + 2 * a.ns + 3 * a.nm + 2 * a.nv + 3, at = 4 + 2 * a.ns + (backward ? 0 : a.nm);
    void **q = malloc(n * sizeof(void *));
    memcpy(q, p, n * sizeof(void *));
    for (long j = 0; j < a.nm; j++) {
        const long rows = backward ? a.G[j] : a.K[j], cols = backward ? a.K[j] : a.G[j];
        T *packed = malloc((rows * cols + 1) * sizeof(T));
        NAME(pack)(packed, q[at + j], cols, rows, cols);
        q[at + j] = packed;
    }
    if (a.w_in) {  /* w_in^T (I, P) forward, w_in (P, I) backward */
        const long rows = backward ? a.P : a.I, cols = backward ? a.I : a.P;
        T *packed = malloc((rows * cols + 1) * sizeof(T));
        NAME(pack)(packed, a.w_in, cols, rows, cols);
        q[n - 2] = packed;
    }
    if (backward) NAME(drive_bwd_)(q, d, b0, b1, step, scratch_per_row, 1);
    else NAME(drive_fwd)(q, d, b0, b1, step, scratch_per_row);
    for (long j = 0; j < a.nm; j++) free(q[at + j]);
    if (a.w_in) free(q[n - 2]);
    free(q);
}
