// Elementwise reduction of `ranks` stacked buffers of `len` elements each (rank r's buffer at
// r * len), as `shaders/reduce_f64.wgsl` and `reduce_u64.wgsl` do on wgpu and the in-process
// engine on the host: ranks are folded in rank order, so every rank gets bitwise the same result.
// op: 0 sum, 1 max, 2 min. u64 sums wrap, as the host's wrapping_add.

template <typename T>
__device__ void reduce(const T* __restrict__ stacked, unsigned int len, unsigned int ranks,
                       unsigned int op, T* __restrict__ out)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) {
        return;
    }
    T acc = stacked[i];
    for (unsigned int r = 1; r < ranks; ++r) {
        T v = stacked[(unsigned long long)r * len + i];
        if (op == 0) {
            acc = acc + v;
        } else if (op == 1) {
            acc = v > acc ? v : acc;
        } else {
            acc = v < acc ? v : acc;
        }
    }
    out[i] = acc;
}

extern "C" __global__ void reduce_f64(
    const double* __restrict__ stacked, unsigned int len, unsigned int ranks, unsigned int op,
    double* __restrict__ out)
{
    reduce(stacked, len, ranks, op, out);
}

extern "C" __global__ void reduce_u64(
    const unsigned long long* __restrict__ stacked, unsigned int len, unsigned int ranks,
    unsigned int op, unsigned long long* __restrict__ out)
{
    reduce(stacked, len, ranks, op, out);
}
