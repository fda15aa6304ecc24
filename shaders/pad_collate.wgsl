// Ragged token ids to a padded batch, exactly as `collate::pad_host` builds it on the host.
//
// Inputs (all u32): the real tokens row after row, the row offsets into them ([rows + 1]), for
// each row the range of its document pieces ([rows + 1]), and the non-empty pieces as (start
// column, length), sorted by start within each row (found by binary search, so that a row of
// many short documents costs log(pieces) per element). Outputs, each [rows, width] row-major: ids (pad after each row's length), the attention
// mask (one byte per element, four to a u32), labels (the next token of the same piece, else the
// ignore id) and position ids (0, 1, ... from each piece's start). i32 ids travel as their bits.
//
// One invocation writes four consecutive elements, so that it owns a whole mask word.

struct Params {
    rows: u32,
    width: u32,
    pad: u32,
    ignore: u32,
    // Bit 0: write the mask; bit 1: labels; bit 2: position ids.
    fields: u32,
    total: u32,
    _unused0: u32,
    _unused1: u32,
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
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = gid.x * 4u;
    if (first >= params.total) {
        return;
    }
    var bytes = 0u;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let i = first + k;
        if (i >= params.total) {
            break;
        }
        let r = i / params.width;
        let t = i % params.width;
        let start = offsets[r];
        let len = offsets[r + 1u] - start;
        var id = params.pad;
        var label = params.ignore;
        var pos = 0u;
        if (t < len) {
            id = tokens[start + t];
            bytes = bytes | (1u << (8u * k));
            // The row's last piece starting at or before t (pieces are non-empty and sorted).
            var lo = row_pieces[r];
            var hi = row_pieces[r + 1u];
            if (lo < hi && pieces[lo].x <= t) {
                while (hi - lo > 1u) {
                    let mid = (lo + hi) / 2u;
                    if (pieces[mid].x <= t) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let piece = pieces[lo];
                if (t < piece.x + piece.y) {
                    pos = t - piece.x;
                    if (t + 1u < piece.x + piece.y) {
                        label = tokens[start + t + 1u];
                    }
                }
            }
        }
        ids[i] = id;
        if ((params.fields & 2u) != 0u) {
            labels[i] = label;
        }
        if ((params.fields & 4u) != 0u) {
            positions[i] = pos;
        }
    }
    if ((params.fields & 1u) != 0u) {
        mask[gid.x] = bytes;
    }
}
