// CUDA's built-ins on the host, so that `kernels/*.cu` compile as C++20 and run on the CPU
// (tests/cuda_kernels_on_cpu.rs builds tests/cpu_kernels/driver.cpp with it).
//
// Blocks run one after another. The threads of a block run either in turn on the calling
// thread (kernels without __syncthreads) or all at once, one std::thread each, meeting at a
// std::barrier for __syncthreads; a thread that returns drops out of the barrier, as an exited
// CUDA thread does. __shared__ arrays are function statics: one copy, which each block uses in
// turn (a kernel that forgets to initialize its shared memory sees the last block's). Atomics
// are real ones (std::atomic_ref), so concurrent threads race as they do on a GPU.

#pragma once

#include <atomic>
#include <barrier>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace cuda_cpu {

inline thread_local dim3 thread_idx{0, 0, 0};
inline thread_local dim3 block_idx{0, 0, 0};
inline dim3 block_dim;
inline dim3 grid_dim;
// The barrier of the running block, for threads that run concurrently; null otherwise.
inline thread_local std::barrier<>* block_barrier = nullptr;

// Runs `kernel` (a callable running the kernel's body for the current thread) over `grid`
// blocks of `block` threads, one dimension. `concurrent`: the threads of a block run at once
// (needed by __syncthreads), else in turn.
template <class F>
void launch(unsigned grid, unsigned block, bool concurrent, F kernel)
{
    grid_dim = {grid, 1, 1};
    block_dim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        if (!concurrent) {
            block_idx = {b, 0, 0};
            for (unsigned t = 0; t < block; ++t) {
                thread_idx = {t, 0, 0};
                kernel();
            }
            continue;
        }
        std::barrier<> barrier(block);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([&barrier, &kernel, b, t] {
                thread_idx = {t, 0, 0};
                block_idx = {b, 0, 0};
                block_barrier = &barrier;
                kernel();
                barrier.arrive_and_drop();
            });
        }
        for (auto& th : threads) {
            th.join();
        }
    }
}

}  // namespace cuda_cpu

#define threadIdx (::cuda_cpu::thread_idx)
#define blockIdx (::cuda_cpu::block_idx)
#define blockDim (::cuda_cpu::block_dim)
#define gridDim (::cuda_cpu::grid_dim)

#define __global__
#define __device__ inline
#define __shared__ static
// `__restrict__` is a GNU C++ keyword already (g++ and clang++).

inline void __syncthreads()
{
    if (cuda_cpu::block_barrier == nullptr) {
        std::fprintf(stderr, "__syncthreads in a launch whose threads run in turn\n");
        std::abort();
    }
    cuda_cpu::block_barrier->arrive_and_wait();
}

template <class T>
T atomicAdd(T* p, T v)
{
    return std::atomic_ref<T>(*p).fetch_add(v);
}

inline unsigned atomicCAS(unsigned* p, unsigned compare, unsigned value)
{
    std::atomic_ref<unsigned>(*p).compare_exchange_strong(compare, value);
    return compare;  // the old value, whether or not it was replaced
}

inline unsigned atomicMin(unsigned* p, unsigned v)
{
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

inline unsigned atomicMax(unsigned* p, unsigned v)
{
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (v > old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

// The sketch kernel's read of a shared word that other threads change with atomics.
#define SHARED_LOAD(p) (std::atomic_ref<unsigned>(*(p)).load(std::memory_order_relaxed))

inline float __int_as_float(int i)
{
    return std::bit_cast<float>(i);
}
