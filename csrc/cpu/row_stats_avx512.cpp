// row_partial built for AVX-512 (picked at run time when the CPU has it).
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define DLLM_VEC_BYTES 64
#define DLLM_ROW_PARTIAL_NAME row_partial_avx512
#include "row_stats_impl.h"
#endif
