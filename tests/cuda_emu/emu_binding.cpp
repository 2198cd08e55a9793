// Host emulation of the CUDA fused_unmask for CPU-only machines: the real kernel sources
// (csrc/kernels/fused_unmask_*.cuh, copied with the one line emulation cannot take rewritten; see
// tests/test_cuda_emulated.py) run on emulated thread blocks, launched the way
// csrc/cuda/fused_unmask_launch.cu launches them. Outputs start as garbage, as on the device.
#include <torch/extension.h>
#include "cuda_emu.h"
#include "fused_unmask_args.h"
#include "kernels/fused_unmask_launch.h"
#include "kernels/fused_unmask_stats.cuh"
#include "kernels/fused_unmask_policy.cuh"

using namespace dllm;
using namespace dllm::cuda;

std::tuple<at::Tensor, at::Tensor, at::Tensor> emu(DLLM_FUSED_UNMASK_PARAMS, int64_t override_slots) {
  const FusedUnmaskArgs a = check_fused_unmask_args(DLLM_FUSED_UNMASK_ARGS);
  at::Tensor x0 = at::full({a.B, a.L}, -7, x.options());
  at::Tensor transfer = at::ones({a.B, a.L}, x.options().dtype(at::kBool));  // garbage: must be overwritten
  at::Tensor window_stats = at::full({a.B, 3}, 123.f, x.options().dtype(at::kFloat));
  const size_t ws_bytes = unmask_workspace_bytes(a.B, a.R, a.V, a.L);
  at::Tensor workspace = at::full({static_cast<int64_t>(ws_bytes)}, 0xAB, x.options().dtype(at::kByte));
  UnmaskParams p;
  p.logits = logits.data_ptr();
  p.dtype = logits.scalar_type() == at::kHalf ? LogitsDtype::kFloat16
            : logits.scalar_type() == at::kBFloat16 ? LogitsDtype::kBFloat16 : LogitsDtype::kFloat32;
  p.B = a.B; p.R = a.R; p.V = a.V; p.L = a.L;
  p.stride_b = a.logits_stride_b; p.stride_r = a.logits_stride_r;
  p.x = x.data_ptr<int64_t>(); p.conf = conf.data_ptr<float>(); p.state = state.data_ptr<int64_t>();
  p.row_start = row_start ? row_start->data_ptr<int64_t>() : nullptr;
  p.gumbel_u = gumbel_u ? gumbel_u->data_ptr<float>() : nullptr;
  p.rank_u = rank_u ? rank_u->data_ptr<float>() : nullptr;
  const at::Tensor pack = unmask_params_or_defaults(params, x);
  p.params = pack.data_ptr<double>();
  p.params_stride = kUnmaskParams;
  p.suppress_ids = ids_ptr(suppress_ids); p.n_suppress = ids_len(suppress_ids);
  p.zero_conf_ids = ids_ptr(zero_conf_ids); p.n_zero_conf = ids_len(zero_conf_ids);
  p.policy = a.policy;
  p.x0 = x0.data_ptr<int64_t>(); p.transfer = transfer.data_ptr<bool>();
  p.window_stats = window_stats.data_ptr<float>(); p.workspace = workspace.data_ptr();

  const UnmaskWorkspace ws = unmask_workspace(p.workspace, p.B, p.R, p.V, p.L);
  StatsArgs args = stats_args(p, ws);
  if (override_slots > 0) args.slots = override_slots;
  const int64_t blocks = p.B * args.slots * args.splits;
  if (p.R > 0) {
    switch (p.dtype) {
      case LogitsDtype::kFloat16:
        emu_launch(blocks, kStatsThreads, [&] { unmask_stats_kernel<__half>(args); });
        break;
      case LogitsDtype::kBFloat16:
        emu_launch(blocks, kStatsThreads, [&] { unmask_stats_kernel<__nv_bfloat16>(args); });
        break;
      default:
        emu_launch(blocks, kStatsThreads, [&] { unmask_stats_kernel<float>(args); });
    }
  }
  emu_launch(p.B, kPolicyThreads, [&] { unmask_policy_kernel(p, ws, args.splits); });
  return {x0, transfer, window_stats};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("emu", &emu); }
