// Ragged token ids to a padded batch, exactly as `collate::pad_host` builds it on the host and
// `shaders/pad_collate.wgsl` on a wgpu device (this kernel is its port, line for line).
//
// Inputs (4-byte ids travel as their bits): the real tokens row after row, the row offsets
// ([rows + 1]), for each row the range of its document pieces ([rows + 1]), and the non-empty
// pieces as (start column, length) pairs sorted by start within each row. Outputs, [rows, width]
// row-major: ids (pad after each row's length), the attention mask (one byte per element),
// labels (the next token of the same piece, else the ignore id) and position ids (0, 1, ... from
// each piece's start). `fields`: bit 0 the mask, bit 1 labels, bit 2 position ids.
// `tokens_len` and `pieces_len` are the elements of `tokens` and the pairs of `pieces`: every
// index formed from the index arrays' contents is clamped below them, so no content reads outside
// the buffers (on a well-formed batch the clamps change nothing).
//
// One cell per thread, in a grid-stride loop: thread g of the T = gridDim.x * blockDim.x threads
// writes cells g, g + T, ... (64-bit indexes), so any grid covers rows * width cells; the
// launch caps the grid (`src/gpu/cuda/launch.rs`).
//
// NVRTC has no standard headers: fixed-width types are spelled out.

typedef unsigned int u32;
typedef unsigned char u8;
typedef unsigned long long u64;

extern "C" __global__ void pad_collate(
    u32 rows, u32 width, u32 pad, u32 ignore, u32 fields, u32 tokens_len, u32 pieces_len,
    const u32* __restrict__ tokens,
    const u32* __restrict__ offsets,
    const u32* __restrict__ row_pieces,
    const u32* __restrict__ pieces,  // (start, length) pairs
    u32* __restrict__ ids,
    u8* __restrict__ mask,
    u32* __restrict__ labels,
    u32* __restrict__ positions)
{
    u64 total = (u64)rows * width;
    u64 threads = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += threads) {
        u32 r = (u32)(i / width);
        u32 t = (u32)(i % width);
        u32 start = offsets[r];
        u32 len = offsets[r + 1] - start;
        if (start > tokens_len) {
            len = 0;
        } else if (len > tokens_len - start) {
            len = tokens_len - start;
        }
        u32 id = pad;
        u32 label = ignore;
        u32 pos = 0;
        if (t < len) {
            id = tokens[start + t];
            // The row's last piece starting at or before t (pieces are non-empty and sorted).
            u32 lo = row_pieces[r];
            u32 hi = row_pieces[r + 1];
            if (hi > pieces_len) {
                hi = pieces_len;
            }
            if (lo < hi && pieces[2 * lo] <= t) {
                while (hi - lo > 1) {
                    u32 mid = (lo + hi) / 2;
                    if (pieces[2 * mid] <= t) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                u32 p_start = pieces[2 * lo];
                u32 p_len = pieces[2 * lo + 1];
                if (t < p_start + p_len) {
                    pos = t - p_start;
                    if (t + 1 < p_start + p_len && t + 1 < len) {
                        label = tokens[start + t + 1];
                    }
                }
            }
        }
        ids[i] = id;
        if (fields & 1u) {
            mask[i] = t < len ? 1 : 0;
        }
        if (fields & 2u) {
            labels[i] = label;
        }
        if (fields & 4u) {
            positions[i] = pos;
        }
    }
}
