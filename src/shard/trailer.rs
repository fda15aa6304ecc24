//! shardflow's integrity trailer: the format is documented on [`Trailer`], which the shard module
//! re-exports with [`TRAILER_MAGIC`] and [`TRAILER_LEN`]; the parsing and hashing stay here.

use crate::hash::{Xxh64, xxh64};

/// The trailer's magic, its first 8 bytes.
pub const TRAILER_MAGIC: &[u8; 8] = b"SFPAIR01";
/// The trailer's length in bytes.
pub const TRAILER_LEN: usize = 48;

const SAMPLE_BLOCKS: usize = 16;
const SAMPLE_BLOCK: usize = 4096;

/// shardflow's integrity trailer: 48 bytes after a Megatron `.idx`'s document indices that tie
/// the index to its `.bin`. Megatron-core reads its arrays at fixed offsets and ignores them.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 8 | magic `SFPAIR01` ([`TRAILER_MAGIC`]) |
/// | 8 | 8 | u64 length of the `.bin` in bytes |
/// | 16 | 8 | u64 XXH64 (seed 0) of the whole `.bin` (`xxhsum -H64` prints it) |
/// | 24 | 8 | u64 XXH64 of a sample of the `.bin`: its length, then 16 blocks of 4 KiB at evenly spaced offsets (the whole file when it is at most 64 KiB) |
/// | 32 | 8 | u64 XXH64 of the `.idx` bytes before the trailer |
/// | 40 | 8 | u64 XXH64 of trailer bytes 0..40 |
///
/// All integers are little-endian; the trailer is [`TRAILER_LEN`] bytes. Opening a shard checks
/// the `.bin` length, the sampled hash and the index hash: a `.bin` from another write is an
/// error, at the cost of reading 64 KiB of it. [`crate::IndexedShard::verify`] (`shardflow
/// inspect --verify`) checks the whole `.bin` against the full hash. Shards written by other
/// tools have no trailer and get the structural checks only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The `.bin` length in bytes.
    pub bin_len: u64,
    /// XXH64 of the whole `.bin`.
    pub bin_hash: u64,
    /// XXH64 of the `.bin`'s sample (its length, then 16 blocks of 4 KiB; see the table above).
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
    /// The trailer of a `.bin` whose [`bin_hashes`] are `(bin_len, bin_hash, bin_sample)`.
    pub(crate) fn with_hashes(
        (bin_len, bin_hash, bin_sample): (u64, u64, u64),
        idx_hash: u64,
    ) -> Self {
        Trailer {
            bin_len,
            bin_hash,
            bin_sample,
            idx_hash,
        }
    }

    #[cfg(test)]
    pub(crate) fn of(bin: &[u8], idx_hash: u64) -> Self {
        Trailer {
            bin_len: bin.len() as u64,
            bin_hash: xxh64(bin),
            bin_sample: sample_hash(bin),
            idx_hash,
        }
    }

    /// The 48 bytes.
    pub(crate) fn to_bytes(self) -> [u8; TRAILER_LEN] {
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
pub(crate) fn sample_hash(bin: &[u8]) -> u64 {
    sample_hash_with(bin.len(), |at, out| {
        out.copy_from_slice(&bin[at..at + out.len()]);
        Ok(())
    })
    .expect("reading a slice cannot fail")
}

/// [`sample_hash`] of a `len`-byte file whose bytes `read(offset, buffer)` fills in.
fn sample_hash_with(
    len: usize,
    mut read: impl FnMut(usize, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut h = Xxh64::new(0);
    h.update(&(len as u64).to_le_bytes());
    if len <= SAMPLE_BLOCKS * SAMPLE_BLOCK {
        let mut all = vec![0; len];
        read(0, &mut all)?;
        h.update(&all);
    } else {
        let span = (len - SAMPLE_BLOCK) as u128;
        let mut block = [0u8; SAMPLE_BLOCK];
        for i in 0..SAMPLE_BLOCKS {
            let at = (i as u128 * span / (SAMPLE_BLOCKS - 1) as u128) as usize;
            read(at, &mut block)?;
            h.update(&block);
        }
    }
    Ok(h.finish())
}

/// The `.bin` part of a trailer, read from `file` in chunks rather than mapped, so that a large
/// shard's pages never count in its writer's memory: the `.bin`'s length, XXH64 and sample hash.
pub(crate) fn bin_hashes(file: &std::fs::File) -> std::io::Result<(u64, u64, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: usize = 4 << 20;
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    let mut whole = Xxh64::new(0);
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut left = len as usize;
    while left > 0 {
        let n = CHUNK.min(left);
        f.read_exact(&mut buf[..n])?;
        whole.update(&buf[..n]);
        left -= n;
    }
    let sample = sample_hash_with(len as usize, |at, out| {
        f.seek(SeekFrom::Start(at as u64))?;
        f.read_exact(out)
    })?;
    Ok((len, whole.finish(), sample))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_read_from_a_file_equal_those_of_its_bytes() {
        for len in [0, 1, 31, 32, 4097, 65_536, 65_537, 1 << 20, (9 << 20) + 3] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut file = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut file, &bytes).unwrap();
            let hashes = bin_hashes(&file).unwrap();
            assert_eq!(
                Trailer::with_hashes(hashes, 5),
                Trailer::of(&bytes, 5),
                "{len} bytes"
            );
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
