// Emulates the CUDA device features the dllm kernels use, on host threads (one std::thread per
// CUDA thread, std::barrier for __syncthreads and warp shuffles). For logic tests only: no memory
// model, no timing; blocks run one after another. Used by tests/test_cuda_emulated.py.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <math.h>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct uint4 { uint32_t x, y, z, w; };
struct EmuDim { unsigned x, y, z; };
inline thread_local EmuDim threadIdx, blockIdx;
struct EmuWarp { std::barrier<>* bar; uint64_t slots[32]; };
inline thread_local std::barrier<>* emu_block_bar;
inline thread_local EmuWarp* emu_warp;

inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
template <typename T>
T __shfl_down_sync(unsigned, T v, int delta) {
  const int lane = threadIdx.x & 31;
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  emu_warp->slots[lane] = b;
  emu_warp->bar->arrive_and_wait();
  const uint64_t o = lane + delta < 32 ? emu_warp->slots[lane + delta] : b;
  emu_warp->bar->arrive_and_wait();
  T r;
  std::memcpy(&r, &o, sizeof(T));
  return r;
}
template <typename T> T __ldg(const T* p) { return *p; }
inline unsigned atomicOr(uint32_t* a, uint32_t v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int32_t __float_as_int(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }
inline int32_t min(int32_t a, int32_t b) { return a < b ? a : b; }

struct __half { unsigned short bits; };
struct __nv_bfloat16 { unsigned short bits; };
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline float __half2float(__half h) {
  const uint32_t w = h.bits, sign = (w & 0x8000u) << 16, em = w & 0x7fffu;
  if (em >= 0x7c00u) return __uint_as_float(sign | 0x7f800000u | (em & 0x3ffu) << 13);
  const float f = __uint_as_float(em << 13) * 5.192296858534828e+33f;
  uint32_t fb; std::memcpy(&fb, &f, 4);
  return __uint_as_float(fb | sign);
}

// Runs `kernel` for grid blocks of `threads` threads, one block after another.
inline void emu_launch(int64_t grid, int threads, const std::function<void()>& kernel) {
  for (int64_t b = 0; b < grid; ++b) {
    std::barrier<> bar(threads);
    const int nw = (threads + 31) / 32;
    std::vector<EmuWarp> warps(nw);
    for (int w = 0; w < nw; ++w) { warps[w].bar = new std::barrier<>(std::min(32, threads - 32 * w)); }
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        threadIdx = EmuDim{static_cast<unsigned>(t), 0, 0};
        blockIdx = EmuDim{static_cast<unsigned>(b), 0, 0};
        emu_block_bar = &bar;
        emu_warp = &warps[t / 32];
        kernel();
        emu_warp->bar->arrive_and_drop();
        bar.arrive_and_drop();
      });
    for (auto& t : ts) t.join();
    for (auto& w : warps) delete w.bar;
  }
}
