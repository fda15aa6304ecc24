// Ragged token ids to a padded batch, exactly as `collate::pad_host` builds it on the host.
//
// Inputs (all u32): the real tokens row after row, the row offsets into them ([rows + 1]), for
// each row the range of its document pieces ([rows + 1]), and the non-empty pieces as (start
// column, length), sorted by start within each row (found by binary search, so that a row of
// many short documents costs log(pieces) per element). Outputs, each [rows, width] row-major:
// ids (pad after each row's length), the attention mask (one byte per element, four to a u32),
// labels (the next token of the same piece, else the ignore id) and position ids (0, 1, ... from
// each piece's start). i32 ids travel as their bits.
//
// One invocation writes four consecutive elements, so that it owns a whole mask word.
//
// A dispatch covers one chunk of the batch: cells `base .. base + cells` of the flat [rows,
// width] grid. The sink splits a batch into chunks when a whole field would pass the device's
// largest storage binding, and binds a window of each buffer per chunk: the output windows start
// at the chunk's first cell, and the input windows at `row_base` (offsets, row pieces),
// `token_base` (tokens) and `piece_base` (pieces), in the global numbering the index arrays use.
// A batch of one chunk binds whole buffers with every base 0. The workgroups of a dispatch form
// a 2-D grid (a dimension holds at most 65 535 on most devices): the flat invocation index is
// `(workgroup.y * workgroups.x + workgroup.x) * 64 + local index`. Every index stays below 2^32:
// the sink refuses batches over 2^28 cells (the loader's MAX_BATCH_TOKENS).

struct Params {
    rows: u32,
    width: u32,
    pad: u32,
    ignore: u32,
    // Bit 0: write the mask; bit 1: labels; bit 2: position ids.
    fields: u32,
    // The chunk: its first cell and its number of cells.
    base: u32,
    cells: u32,
    // The global indices of the first element of the bound input windows.
    row_base: u32,
    token_base: u32,
    piece_base: u32,
    // The pieces this chunk may read, global indices [piece_lo, piece_hi): a row's piece range
    // is clamped to them (a chunk that starts or ends inside a row needs only some of its pieces).
    piece_lo: u32,
    piece_hi: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> offsets: array<u32>;
@group(0) @binding(3) var<storage, read> row_pieces: array<u32>;
@group(0) @binding(4) var<storage, read> pieces: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> mask: array<u32>;
@group(0) @binding(7) var<storage, read_write> labels: array<u32>;
@group(0) @binding(8) var<storage, read_write> positions: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let invocation = (group.y * groups.x + group.x) * 64u + local;
    // At most 2^26 + 2^22 invocations (the grid's last row may run past the chunk), so the
    // product below cannot wrap.
    let first = invocation * 4u;
    if (first >= params.cells) {
        return;
    }
    var bytes = 0u;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let j = first + k;
        if (j >= params.cells) {
            break;
        }
        let i = params.base + j;
        let r = i / params.width;
        let t = i % params.width;
        let start = offsets[r - params.row_base];
        let len = offsets[r + 1u - params.row_base] - start;
        var id = params.pad;
        var label = params.ignore;
        var pos = 0u;
        if (t < len) {
            id = tokens[start + t - params.token_base];
            bytes = bytes | (1u << (8u * k));
            // The row's last piece starting at or before t (pieces are non-empty and sorted).
            var lo = max(row_pieces[r - params.row_base], params.piece_lo);
            var hi = min(row_pieces[r + 1u - params.row_base], params.piece_hi);
            if (lo < hi && pieces[lo - params.piece_base].x <= t) {
                while (hi - lo > 1u) {
                    let mid = lo + (hi - lo) / 2u;
                    if (pieces[mid - params.piece_base].x <= t) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let piece = pieces[lo - params.piece_base];
                if (t < piece.x + piece.y) {
                    pos = t - piece.x;
                    if (t + 1u < piece.x + piece.y) {
                        label = tokens[start + t + 1u - params.token_base];
                    }
                }
            }
        }
        ids[j] = id;
        if ((params.fields & 2u) != 0u) {
            labels[j] = label;
        }
        if ((params.fields & 4u) != 0u) {
            positions[j] = pos;
        }
    }
    if ((params.fields & 1u) != 0u) {
        mask[invocation] = bytes;
    }
}
