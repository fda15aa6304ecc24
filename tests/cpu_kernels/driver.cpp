// Runs the CUDA kernels of `kernels/` on the CPU (see cuda_on_cpu.hpp) for
// tests/cuda_kernels_on_cpu.rs: jobs in on stdin, results out on stdout, all little-endian.
//
// A job is a u32 kind, then the grid (blocks, threads per block) as two u32, then its inputs;
// a u32 array is its length (u32) and its words. Every result is the u32 0x600df00d, a u64 byte
// count and the bytes. Inputs end at end of file.
//
// kind 1, pad_collate: rows, width, pad, ignore, fields; arrays tokens, offsets, row_pieces,
//   pieces (words). tokens_len and pieces_len are the arrays' lengths (pieces in pairs), as
//   `launch_pad_collate` passes them. Result: ids [cells] u32, then the mask [cells] u8, labels
//   and positions [cells] u32 for the bits of `fields` set; each output starts as 0xa5 bytes,
//   and an output whose bit is clear is a null pointer.
// kind 2 (the kernel as NVRTC compiles it) and kind 3 (a 16-slot shared table, so that words
//   spill to global atomics), sketch: n, datasets, buckets; arrays values, dataset_of (n each),
//   table, counts (the initial counts). Result: the counts, then the partials [datasets, T] f64
//   (zeroed before the launch).
//
// Buffers are exactly their lengths (std::vector), so a build with AddressSanitizer catches a
// read or write past any of them.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_on_cpu.hpp"

namespace pad {
#include "pad_collate.cu"
}

namespace sketch_full {
#include "sketch.cu"
}

#undef SKETCH_SLOTS
#define SKETCH_SLOTS 16u
#define sketch sketch_tiny
namespace sketch_small {
#include "sketch.cu"
}
#undef sketch

namespace {

using u32 = std::uint32_t;

[[noreturn]] void die(const char* what)
{
    std::fprintf(stderr, "driver: %s\n", what);
    std::exit(2);
}

// Reads one u32; false at a clean end of input.
bool read_u32(u32& v, bool eof_ok = false)
{
    std::size_t got = std::fread(&v, 1, 4, stdin);
    if (got == 0 && eof_ok && std::feof(stdin)) {
        return false;
    }
    if (got != 4) {
        die("truncated input");
    }
    return true;
}

u32 word()
{
    u32 v = 0;
    read_u32(v);
    return v;
}

std::vector<u32> array()
{
    u32 len = word();
    std::vector<u32> v(len);
    if (len > 0 && std::fread(v.data(), 4, len, stdin) != len) {
        die("truncated array");
    }
    return v;
}

void result(const std::vector<std::vector<unsigned char>>& parts)
{
    u32 magic = 0x600df00du;
    std::uint64_t bytes = 0;
    for (const auto& p : parts) {
        bytes += p.size();
    }
    std::fwrite(&magic, 4, 1, stdout);
    std::fwrite(&bytes, 8, 1, stdout);
    for (const auto& p : parts) {
        if (!p.empty()) {
            std::fwrite(p.data(), 1, p.size(), stdout);
        }
    }
}

template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v)
{
    std::vector<unsigned char> out(v.size() * sizeof(T));
    if (!out.empty()) {
        std::memcpy(out.data(), v.data(), out.size());
    }
    return out;
}

void run_pad(u32 grid, u32 block)
{
    u32 rows = word(), width = word(), pad_id = word(), ignore = word(), fields = word();
    std::vector<u32> tokens = array(), offsets = array(), row_pieces = array(), pieces = array();
    std::size_t cells = std::size_t(rows) * width;
    std::vector<u32> ids(cells, 0xa5a5a5a5u);
    std::vector<unsigned char> mask(fields & 1u ? cells : 0, 0xa5);
    std::vector<u32> labels(fields & 2u ? cells : 0, 0xa5a5a5a5u);
    std::vector<u32> positions(fields & 4u ? cells : 0, 0xa5a5a5a5u);
    auto ptr = [](auto& v) { return v.empty() ? nullptr : v.data(); };
    cuda_cpu::launch(grid, block, false, [&] {
        pad::pad_collate(rows, width, pad_id, ignore, fields, u32(tokens.size()),
                         u32(pieces.size() / 2), ptr(tokens), ptr(offsets), ptr(row_pieces),
                         ptr(pieces), ptr(ids), ptr(mask), ptr(labels), ptr(positions));
    });
    result({bytes_of(ids), mask, bytes_of(labels), bytes_of(positions)});
}

void run_sketch(u32 grid, u32 block, bool tiny)
{
    u32 n = word(), datasets = word(), buckets = word();
    std::vector<u32> values = array(), dataset_of = array(), table = array(), counts = array();
    if (values.size() < n || dataset_of.size() < n) {
        die("fewer values or datasets than n");
    }
    std::vector<double> partials(std::size_t(datasets) * grid * block, 0.0);
    auto ptr = [](auto& v) { return v.empty() ? nullptr : v.data(); };
    cuda_cpu::launch(grid, block, true, [&] {
        if (tiny) {
            sketch_small::sketch_tiny(n, datasets, buckets, ptr(values), ptr(dataset_of),
                                      ptr(table), ptr(counts), ptr(partials));
        } else {
            sketch_full::sketch(n, datasets, buckets, ptr(values), ptr(dataset_of), ptr(table),
                                ptr(counts), ptr(partials));
        }
    });
    result({bytes_of(counts), bytes_of(partials)});
}

}  // namespace

int main()
{
    u32 kind = 0;
    while (read_u32(kind, true)) {
        u32 grid = word(), block = word();
        if (grid == 0 || block == 0) {
            die("an empty grid");
        }
        switch (kind) {
        case 1:
            run_pad(grid, block);
            break;
        case 2:
        case 3:
            run_sketch(grid, block, kind == 3);
            break;
        default:
            die("unknown job kind");
        }
    }
    return std::fflush(stdout) == 0 ? 0 : 1;
}
