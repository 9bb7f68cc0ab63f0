/* team.c: the ranges of one native.run call taken by the threads of the OpenMP team that
   torch runs its own ops on (`ops.native.run_team`, through libgomp's GOMP_parallel), where
   run() would start them on a thread pool of its own: between torch's parallel ops
   libgomp's idle workers spin for a while (GOMP_SPINCOUNT), so a pool thread of ours
   shares a core with a spinning worker on a machine with as many cores as threads.

   A kernel here is any native function whose arguments are INTEGER class (pointers,
   long, int) and at most TEAM_NF floating ones, all float or all double: on the x86-64
   System V and AArch64 calling conventions those travel in separate register files (the
   integers in order, then on the stack; the floats in order), so the call below passes
   TEAM_NI integers and TEAM_NF floats and the kernel reads the ones it declares (a
   callee ignores trailing arguments it does not declare). Each range i has its own
   argument row: ia[i * TEAM_NI ...], fa[i * TEAM_NF ...]; threads take rows from a
   shared counter. Plain C; compiled by rnnzoo.ops.native. */

#define TEAM_NI 32
#define TEAM_NF 4

typedef struct {
    void *fn;
    long parts, dbl, next;
    const long *ia;
    const double *fa;
} team_job;

#define L8(o) long, long, long, long, long, long, long, long
#define A8(o) a[o], a[o + 1], a[o + 2], a[o + 3], a[o + 4], a[o + 5], a[o + 6], a[o + 7]
typedef void (*team_f32)(L8(0), L8(8), L8(16), L8(24), float, float, float, float);
typedef void (*team_f64)(L8(0), L8(8), L8(16), L8(24), double, double, double, double);

void team_body(void *data) {
    team_job *job = data;
    long i;
    while ((i = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED)) < job->parts) {
        const long *a = job->ia + i * TEAM_NI;
        const double *f = job->fa + i * TEAM_NF;
        if (job->dbl)
            ((team_f64)job->fn)(A8(0), A8(8), A8(16), A8(24), f[0], f[1], f[2], f[3]);
        else
            ((team_f32)job->fn)(A8(0), A8(8), A8(16), A8(24), (float)f[0], (float)f[1],
                                (float)f[2], (float)f[3]);
    }
}
