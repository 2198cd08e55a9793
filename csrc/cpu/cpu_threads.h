// Thread fan-out of the CPU ops: split work over threads only when it pays.
#pragma once
#include <ATen/Parallel.h>
#include "../aten_deps.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>

namespace dllm {
namespace cpu {

// Fan-out pays only when the work outweighs waking another thread, and on a shared machine that
// thread may have to wait for a core another process holds (a timeslice, milliseconds): below
// min_parallel_values() logits values (about 1 ms on one core) a step runs on the calling thread.
// Measured with bench/bench_fused_unmask.py --contention (docs/fused_unmask.md, "Threads");
// DLLM_CPU_MIN_PARALLEL_VALUES=N (read once) overrides it, 0 fans out always.
inline int64_t min_parallel_values() {
  static const int64_t value = [] {
    const char* env = std::getenv("DLLM_CPU_MIN_PARALLEL_VALUES");
    if (env == nullptr || *env == '\0') return int64_t{1} << 20;
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && v >= 0,
                "DLLM_CPU_MIN_PARALLEL_VALUES must be an integer >= 0, got '", env, "'");
    return static_cast<int64_t>(v);
  }();
  return value;
}

// The join of for_each_item's helpers: how many are taking items, whether the caller has finished
// (a helper that starts later does nothing), and the first exception one of them threw.
struct ItemJoin {
  std::mutex mutex;
  std::condition_variable idle;
  int64_t running = 0;
  bool closed = false;
  std::exception_ptr error;
};

// body(i) for every i in [0, n): on the calling thread when `work` (in logits values, or the
// equivalent) is below min_parallel_values(), else on the caller and up to at::get_num_threads() - 1
// helpers on torch's inter-op pool (at::launch), all taking items one at a time, so a thread slowed
// by a busy core takes fewer items instead of holding back a fixed share. The caller then sleeps
// until the helpers that started are done: unlike OpenMP's join, which spins by default (libgomp),
// a sleeping join frees the caller's core at once, and the scheduler can move a helper stuck behind
// another process onto it (bench/bench_fused_unmask.py --contention). A helper the pool starts after
// the caller finished returns at once, so the caller never waits for a free pool thread. Every item
// writes its own outputs, so results never depend on the split; an exception reaches the caller.
template <class Body>
void for_each_item(int64_t n, int64_t work, const Body& body) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || work < min_parallel_values()) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto take_items = [&]() -> std::exception_ptr {
    try {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
           i = next.fetch_add(1, std::memory_order_relaxed))
        body(i);
    } catch (...) {
      next.store(n, std::memory_order_relaxed);  // the others stop at their next item
      return std::current_exception();
    }
    return nullptr;
  };
  auto join = std::make_shared<ItemJoin>();
  for (int64_t t = 1; t < threads; ++t) {
    at::launch([join, &take_items] {
      {
        std::lock_guard<std::mutex> lock(join->mutex);
        if (join->closed) return;  // take_items may be gone: touch nothing of the caller's
        ++join->running;
      }
      std::exception_ptr error = take_items();
      std::lock_guard<std::mutex> lock(join->mutex);
      if (error && !join->error) join->error = error;
      if (--join->running == 0) join->idle.notify_all();
    });
  }
  std::exception_ptr error = take_items();
  {
    std::unique_lock<std::mutex> lock(join->mutex);
    join->closed = true;
    join->idle.wait(lock, [&] { return join->running == 0; });
    if (!error) error = join->error;
  }
  if (error) std::rethrow_exception(error);
}

// The policy stage's work for at::parallel_for's grain: about L plus n log n per sequence for a
// block of n (ranks come from one sort), in the same units as the rows' logits values.
inline int64_t policy_grain(int64_t B, int64_t L, int64_t block) {
  int64_t log_n = 1;
  while ((int64_t{1} << log_n) < block) ++log_n;
  const int64_t work = B * (L + block * log_n);
  return work < min_parallel_values() ? B : 1;
}

}  // namespace cpu
}  // namespace dllm
