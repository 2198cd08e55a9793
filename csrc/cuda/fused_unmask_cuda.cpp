// CUDA implementation of dllm::fused_unmask: checks the arguments (shared with the CPU op),
// allocates the outputs and the workspace with torch, and launches the kernels on the current
// stream. Built by the host compiler against torch's CPU-compatible headers (docs/building.md): the
// stream comes from the device-guard interface, not from ATen/cuda.
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>
#include "../aten_deps.h"

#include <map>
#include <mutex>
#include <tuple>

#include "../fused_unmask_args.h"
#include "../kernels/fused_unmask_launch.h"

namespace dllm {
namespace {

cuda::LogitsDtype logits_dtype(at::ScalarType t) {
  if (t == at::kHalf) return cuda::LogitsDtype::kFloat16;
  if (t == at::kBFloat16) return cuda::LogitsDtype::kBFloat16;
  return cuda::LogitsDtype::kFloat32;
}

template <typename T>
T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// The pack's defaults as one [1, P] row per device, read with row stride 0 by a call without
// `params`. Made on first use (a host-to-device copy): a CUDA graph that calls the op without
// `params` must be warmed up outside the capture.
const at::Tensor& default_params_row(const at::Tensor& like) {
  static std::mutex mu;
  static std::map<int, at::Tensor> rows;
  const std::lock_guard<std::mutex> lock(mu);
  at::Tensor& row = rows[like.device().index()];
  if (!row.defined()) {
    at::Tensor host = at::empty({1, kUnmaskParams}, at::TensorOptions().dtype(at::kDouble));
    default_unmask_row(host.data_ptr<double>());
    row = host.to(like.device());
  }
  return row;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_unmask_cuda(DLLM_FUSED_UNMASK_PARAMS) {
  const FusedUnmaskArgs a = check_fused_unmask_args(DLLM_FUSED_UNMASK_ARGS);
  TORCH_CHECK(logits.is_cuda(), "fused_unmask (CUDA): logits must be a CUDA tensor");
  TORCH_CHECK(!row_stats, "fused_unmask (CUDA): row_stats is served by the Triton kernels "
              "(dllm_kernels.fused_unmask routes it there; call fused_unmask_triton directly otherwise)");
  const c10::DeviceGuard guard(logits.device());

  at::Tensor x0 = at::empty({a.B, a.L}, x.options());
  at::Tensor transfer = at::empty({a.B, a.L}, x.options().dtype(at::kBool));
  at::Tensor window_stats = at::empty({a.B, 3}, x.options().dtype(at::kFloat));
  const size_t ws_bytes = cuda::unmask_workspace_bytes(a.B, a.R, a.V, a.L);
  at::Tensor workspace = at::empty({static_cast<int64_t>(ws_bytes)}, x.options().dtype(at::kByte));

  cuda::UnmaskParams p;
  p.logits = logits.data_ptr();
  p.dtype = logits_dtype(logits.scalar_type());
  p.B = a.B;
  p.R = a.R;
  p.V = a.V;
  p.L = a.L;
  p.stride_b = a.logits_stride_b;
  p.stride_r = a.logits_stride_r;
  p.x = x.data_ptr<int64_t>();
  p.conf = conf.data_ptr<float>();
  p.state = state.data_ptr<int64_t>();
  p.row_start = opt_ptr<int64_t>(row_start);
  p.gumbel_u = opt_ptr<float>(gumbel_u);
  p.rank_u = opt_ptr<float>(rank_u);
  p.params = params ? params->data_ptr<double>() : default_params_row(x).data_ptr<double>();
  p.params_stride = params ? kUnmaskParams : 0;
  p.suppress_ids = ids_ptr(suppress_ids);
  p.n_suppress = ids_len(suppress_ids);
  p.zero_conf_ids = ids_ptr(zero_conf_ids);
  p.n_zero_conf = ids_len(zero_conf_ids);
  p.policy = a.policy;
  p.x0 = x0.data_ptr<int64_t>();
  p.transfer = transfer.data_ptr<bool>();
  p.window_stats = window_stats.data_ptr<float>();
  p.workspace = workspace.data_ptr();

  void* stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
                     ->getStream(logits.device())
                     .native_handle();
  const char* err = cuda::launch_fused_unmask(p, stream);
  TORCH_CHECK(err == nullptr, "fused_unmask (CUDA): kernel launch failed: ", err ? err : "");
  return {x0, transfer, window_stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm, CUDA, m) { m.impl("fused_unmask", &fused_unmask_cuda); }

}  // namespace dllm

// Importing dllm_kernels._C_cuda loads this library, which runs the registration above.
#include <Python.h>
extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", "dllm CUDA ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
