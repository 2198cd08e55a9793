// The ATen pieces the C++ bindings use, included instead of <torch/types.h>: that header pulls in
// the whole C++ frontend (about 26 s of compile per file on a 2-core build machine, against about
// 14 s for these), and the bindings need only tensors, a few factory functions and parallel_for.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
