// Launchers of fused_unmask on CUDA (not named fused_unmask_cuda.cu: torch's build would give it
// the same object file as fused_unmask_cuda.cpp): two kernels per step on the caller's stream, no host
// synchronisation (capturable in a CUDA graph). Raw pointers only; the torch binding is
// fused_unmask_cuda.cpp.
#include <cuda_runtime.h>

#include "../kernels/fused_unmask_launch.h"
#include "../kernels/fused_unmask_policy.cuh"
#include "../kernels/fused_unmask_stats.cuh"

namespace dllm {
namespace cuda {
namespace {

// Whether a row samples is decided per sequence inside the kernel (the temperature is in the pack).
template <typename T>
cudaError_t launch_stats(const StatsArgs& args, dim3 grid, size_t smem, cudaStream_t stream) {
  unmask_stats_kernel<T><<<grid, kStatsThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

const char* launch_fused_unmask(const UnmaskParams& p, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const UnmaskWorkspace ws = unmask_workspace(p.workspace, p.B, p.R, p.V, p.L);

  const StatsArgs args = stats_args(p, ws);
  const int64_t blocks = p.B * args.slots * args.splits;
  if (blocks > 0x7fffffffLL) return "fused_unmask: too many rows for one launch";
  const size_t smem = p.n_suppress > 0 ? static_cast<size_t>((args.tile + 31) / 32) * sizeof(uint32_t) : 0;
  if (smem > 48 * 1024) return "fused_unmask: vocabulary too large for the suppression bitmap";

  if (p.R > 0) {
    cudaError_t err = cudaSuccess;
    const dim3 grid(static_cast<unsigned>(blocks));
    switch (p.dtype) {
      case LogitsDtype::kFloat16: err = launch_stats<__half>(args, grid, smem, stream); break;
      case LogitsDtype::kBFloat16: err = launch_stats<__nv_bfloat16>(args, grid, smem, stream); break;
      default: err = launch_stats<float>(args, grid, smem, stream); break;
    }
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  unmask_policy_kernel<<<static_cast<unsigned>(p.B), kPolicyThreads, 0, stream>>>(p, ws, args.splits);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda
}  // namespace dllm
