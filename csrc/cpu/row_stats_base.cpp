// row_partial for the baseline instruction set of the build (SSE2 on x86-64, NEON on arm64).
#define DLLM_VEC_BYTES 16
#define DLLM_ROW_PARTIAL_NAME row_partial_base
#include "row_stats_impl.h"
