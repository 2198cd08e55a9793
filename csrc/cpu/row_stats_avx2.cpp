// row_partial built for AVX2 + FMA (picked at run time when the CPU has it).
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#define DLLM_VEC_BYTES 32
#define DLLM_ROW_PARTIAL_NAME row_partial_avx2
#include "row_stats_impl.h"
#endif
