//! shardflow's integrity trailer: 48 bytes after a Megatron `.idx`'s document indices that tie
//! the index to its `.bin`. Megatron-core reads its arrays at fixed offsets and ignores them.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `SFPAIR01` |
//! | 8 | 8 | u64 length of the `.bin` in bytes |
//! | 16 | 8 | u64 XXH64 (seed 0) of the whole `.bin` (`xxhsum -H64` prints it) |
//! | 24 | 8 | u64 XXH64 of a sample of the `.bin`: its length, then 16 blocks of 4 KiB at evenly spaced offsets (the whole file when it is at most 64 KiB) |
//! | 32 | 8 | u64 XXH64 of the `.idx` bytes before the trailer |
//! | 40 | 8 | u64 XXH64 of trailer bytes 0..40 |
//!
//! Opening a shard checks the `.bin` length, the sampled hash and the index hash: a `.bin` from
//! another write is an error, at the cost of reading 64 KiB of it. [`crate::IndexedShard::verify`]
//! (`shardflow inspect --verify`) checks the whole `.bin` against the full hash. Shards written
//! by other tools have no trailer and get the structural checks only.

/// The trailer's magic.
pub const TRAILER_MAGIC: &[u8; 8] = b"SFPAIR01";
/// The trailer's length in bytes.
pub const TRAILER_LEN: usize = 48;

const SAMPLE_BLOCKS: usize = 16;
const SAMPLE_BLOCK: usize = 4096;

/// What a trailer records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The `.bin` length in bytes.
    pub bin_len: u64,
    /// XXH64 of the whole `.bin`.
    pub bin_hash: u64,
    /// XXH64 of the `.bin`'s sample ([`sample_hash`]).
    pub bin_sample: u64,
    /// XXH64 of the `.idx` bytes before the trailer.
    pub idx_hash: u64,
}

/// Why a trailer could not be read; the reader turns it into an error naming the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrailerError {
    /// The trailer's own checksum does not match.
    Checksum,
}

impl Trailer {
    /// The trailer of `bin` for an index whose bytes before the trailer hash to `idx_hash`.
    pub fn of(bin: &[u8], idx_hash: u64) -> Self {
        Trailer {
            bin_len: bin.len() as u64,
            bin_hash: xxh64(bin),
            bin_sample: sample_hash(bin),
            idx_hash,
        }
    }

    /// The 48 bytes.
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[..8].copy_from_slice(TRAILER_MAGIC);
        for (i, v) in [self.bin_len, self.bin_hash, self.bin_sample, self.idx_hash]
            .into_iter()
            .enumerate()
        {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let check = xxh64(&out[..40]);
        out[40..].copy_from_slice(&check.to_le_bytes());
        out
    }

    /// Reads the trailer from the bytes after the document indices: `Ok(None)` when they are not
    /// a shardflow trailer (no bytes, or another tool's data).
    pub(crate) fn parse(tail: &[u8]) -> Result<Option<Self>, TrailerError> {
        if tail.len() != TRAILER_LEN || &tail[..8] != TRAILER_MAGIC {
            return Ok(None);
        }
        let word = |i: usize| u64::from_le_bytes(tail[i..i + 8].try_into().expect("8 bytes"));
        if word(40) != xxh64(&tail[..40]) {
            return Err(TrailerError::Checksum);
        }
        Ok(Some(Trailer {
            bin_len: word(8),
            bin_hash: word(16),
            bin_sample: word(24),
            idx_hash: word(32),
        }))
    }
}

/// XXH64 of a sample of `bin`: its length, then 16 blocks of 4096
/// bytes at evenly spaced offsets (first and last included), or the whole of a small file.
pub fn sample_hash(bin: &[u8]) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(&(bin.len() as u64).to_le_bytes());
    if bin.len() <= SAMPLE_BLOCKS * SAMPLE_BLOCK {
        h.update(bin);
    } else {
        let span = (bin.len() - SAMPLE_BLOCK) as u128;
        for i in 0..SAMPLE_BLOCKS {
            let at = (i as u128 * span / (SAMPLE_BLOCKS - 1) as u128) as usize;
            h.update(&bin[at..at + SAMPLE_BLOCK]);
        }
    }
    h.finish()
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// XXH64 of `bytes` with seed 0, as `xxhsum -H64` prints it.
pub fn xxh64(bytes: &[u8]) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(bytes);
    h.finish()
}

/// The streaming XXH64 hash (Yann Collet's xxHash, 64-bit variant).
#[derive(Clone, Debug)]
pub struct Xxh64 {
    acc: [u64; 4],
    seed: u64,
    total: u64,
    buf: [u8; 32],
    buffered: usize,
}

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(h: u64, acc: u64) -> u64 {
    (h ^ round(0, acc)).wrapping_mul(P1).wrapping_add(P4)
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Xxh64 {
    /// A hasher with `seed`.
    pub fn new(seed: u64) -> Self {
        Xxh64 {
            acc: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            seed,
            total: 0,
            buf: [0; 32],
            buffered: 0,
        }
    }

    fn stripe(&mut self, s: &[u8]) {
        for (i, a) in self.acc.iter_mut().enumerate() {
            *a = round(*a, le64(&s[8 * i..]));
        }
    }

    /// Hashes more bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.buffered > 0 {
            let take = (32 - self.buffered).min(bytes.len());
            self.buf[self.buffered..self.buffered + take].copy_from_slice(&bytes[..take]);
            self.buffered += take;
            bytes = &bytes[take..];
            if self.buffered < 32 {
                return;
            }
            let buf = self.buf;
            self.stripe(&buf);
            self.buffered = 0;
        }
        let mut stripes = bytes.chunks_exact(32);
        for s in &mut stripes {
            self.stripe(s);
        }
        let rest = stripes.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// The hash of everything given so far.
    pub fn finish(&self) -> u64 {
        let mut h = if self.total >= 32 {
            let [a, b, c, d] = self.acc;
            let h = a
                .rotate_left(1)
                .wrapping_add(b.rotate_left(7))
                .wrapping_add(c.rotate_left(12))
                .wrapping_add(d.rotate_left(18));
            self.acc.iter().fold(h, |h, &a| merge(h, a))
        } else {
            self.seed.wrapping_add(P5)
        };
        h = h.wrapping_add(self.total);
        let mut rest = &self.buf[..self.buffered];
        while rest.len() >= 8 {
            h ^= round(0, le64(rest));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            rest = &rest[8..];
        }
        if rest.len() >= 4 {
            let w = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as u64;
            h ^= w.wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            rest = &rest[4..];
        }
        for &b in rest {
            h ^= (b as u64).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
        let long = b"Nobody inspects the spammish repetition";
        assert_eq!(xxh64(long), 0xFBCE_A83C_8A37_8BF1);
    }

    #[test]
    fn streaming_equals_one_shot_for_every_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = xxh64(&data);
        assert_eq!(whole, 0xC55F_F11A_6813_7B7B, "python-xxhash's value");
        for split in [0, 1, 7, 31, 32, 33, 64, 100, 299, 300] {
            let mut h = Xxh64::new(0);
            h.update(&data[..split]);
            h.update(&data[split..]);
            assert_eq!(h.finish(), whole, "split at {split}");
        }
    }

    #[test]
    fn a_trailer_round_trips_and_a_flipped_bit_is_caught() {
        let t = Trailer::of(&[1, 2, 3, 4], 99);
        let bytes = t.to_bytes();
        assert_eq!(Trailer::parse(&bytes), Ok(Some(t)));
        let mut bad = bytes;
        bad[9] ^= 1;
        assert_eq!(Trailer::parse(&bad), Err(TrailerError::Checksum));
        assert_eq!(Trailer::parse(&bytes[..47]), Ok(None));
        assert_eq!(Trailer::parse(b""), Ok(None));
    }
}
