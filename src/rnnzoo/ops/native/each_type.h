/* each_type.h: a kernel file's body compiled once for float and once for double.
   A kernel file of rnnzoo.ops.native reads

       #ifndef T
       #define KERNELS "name.c"     (its own name: __FILE__ would name this header)
       #include "each_type.h"
       #else
       ... the kernels, written in T (the float type), EXP and TANH (exp.h's for T),
           SQRT, POW, LOG1P (math.h's function for T) and NAME(f) (f_f32 or f_f64,
           the exported names) ...
       #endif

   and this header includes it back twice, with T defined. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "exp.h"

#define T float
#define EXP exp_f
#define TANH tanh_f
#define SQRT sqrtf
#define POW powf
#define LOG1P log1pf
#define NAME(f) f##_f32
#include KERNELS
#undef T
#undef EXP
#undef TANH
#undef SQRT
#undef POW
#undef LOG1P
#undef NAME
#define T double
#define EXP exp_d
#define TANH tanh_d
#define SQRT sqrt
#define POW pow
#define LOG1P log1p
#define NAME(f) f##_f64
#include KERNELS
