//! Stored token id types, and host decoding of stored ids into the caller's id type.
//!
//! Decoding is the hot loop of the whole crate: a stored sequence is widened straight from the
//! memory map into the caller's buffer, with no allocation. Conversions that cannot fail (u16 into
//! i32, say) compile to a plain vectorized widening loop; the others check every id.

use std::path::Path;

use crate::error::{Error, Result};

/// The integer type of the token ids stored in a shard.
///
/// Megatron's `.idx` dtype codes: 1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 8 u16 (6 and 7 are floats and
/// are refused). `U32` has no Megatron code; it serves flat token files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Unsigned 8-bit ids (code 1).
    U8,
    /// Signed 8-bit ids (code 2).
    I8,
    /// Signed 16-bit ids (code 3).
    I16,
    /// Signed 32-bit ids (code 4).
    I32,
    /// Signed 64-bit ids (code 5).
    I64,
    /// Unsigned 16-bit ids (code 8), the usual choice for vocabularies under 65 536.
    U16,
    /// Unsigned 32-bit ids (flat token files only).
    U32,
}

/// What a Megatron dtype code means.
pub(crate) enum CodeMeaning {
    Int(Dtype),
    Float(&'static str),
    Unknown,
}

impl Dtype {
    /// Every integer dtype a Megatron shard can hold.
    pub const MEGATRON: [Dtype; 6] = [
        Dtype::U8,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::U16,
    ];

    /// Bytes per stored id.
    pub const fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::U32 => 4,
            Dtype::I64 => 8,
        }
    }

    /// The Megatron `.idx` code, or `None` for [`Dtype::U32`], which Megatron cannot store.
    pub const fn megatron_code(self) -> Option<u8> {
        match self {
            Dtype::U8 => Some(1),
            Dtype::I8 => Some(2),
            Dtype::I16 => Some(3),
            Dtype::I32 => Some(4),
            Dtype::I64 => Some(5),
            Dtype::U16 => Some(8),
            Dtype::U32 => None,
        }
    }

    pub(crate) fn from_megatron_code(code: u8) -> CodeMeaning {
        match code {
            1 => CodeMeaning::Int(Dtype::U8),
            2 => CodeMeaning::Int(Dtype::I8),
            3 => CodeMeaning::Int(Dtype::I16),
            4 => CodeMeaning::Int(Dtype::I32),
            5 => CodeMeaning::Int(Dtype::I64),
            6 => CodeMeaning::Float("f64"),
            7 => CodeMeaning::Float("f32"),
            8 => CodeMeaning::Int(Dtype::U16),
            _ => CodeMeaning::Unknown,
        }
    }

    /// The name used in the command line and in reports: `u8`, `i8`, `i16`, `i32`, `i64`, `u16`,
    /// `u32`.
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "u8",
            Dtype::I8 => "i8",
            Dtype::I16 => "i16",
            Dtype::I32 => "i32",
            Dtype::I64 => "i64",
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        }
    }

    /// Parses a name as [`Dtype::name`] prints it.
    pub fn from_name(name: &str) -> Option<Self> {
        [Dtype::U32]
            .into_iter()
            .chain(Dtype::MEGATRON)
            .find(|d| d.name() == name)
    }

    /// The smallest and largest id this dtype can store.
    pub const fn range(self) -> (i64, i64) {
        match self {
            Dtype::U8 => (0, u8::MAX as i64),
            Dtype::I8 => (i8::MIN as i64, i8::MAX as i64),
            Dtype::I16 => (i16::MIN as i64, i16::MAX as i64),
            Dtype::I32 => (i32::MIN as i64, i32::MAX as i64),
            Dtype::I64 => (i64::MIN, i64::MAX),
            Dtype::U16 => (0, u16::MAX as i64),
            Dtype::U32 => (0, u32::MAX as i64),
        }
    }

    /// Whether `token` fits this dtype.
    pub const fn holds(self, token: i64) -> bool {
        let (lo, hi) = self.range();
        lo <= token && token <= hi
    }

    /// Reads the id at the start of `bytes` (little-endian).
    ///
    /// # Panics
    ///
    /// If `bytes` is shorter than [`Dtype::size`].
    pub fn read(self, bytes: &[u8]) -> i64 {
        let n = self.size();
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(&bytes[..n]);
        match self {
            Dtype::U8 => le[0] as i64,
            Dtype::I8 => le[0] as i8 as i64,
            Dtype::I16 => i16::from_le_bytes([le[0], le[1]]) as i64,
            Dtype::U16 => u16::from_le_bytes([le[0], le[1]]) as i64,
            Dtype::I32 => i32::from_le_bytes([le[0], le[1], le[2], le[3]]) as i64,
            Dtype::U32 => u32::from_le_bytes([le[0], le[1], le[2], le[3]]) as i64,
            Dtype::I64 => i64::from_le_bytes(le),
        }
    }

    /// Appends `token` to `out` in this dtype, little-endian. The caller checks
    /// [`Dtype::holds`] first; an id that does not fit is truncated.
    pub(crate) fn write_le(self, token: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(&token.to_le_bytes()[..self.size()]);
    }

    /// [`Dtype::write_le`] for each of `tokens`, one width chosen for the whole slice.
    pub(crate) fn extend_le<T: Copy + Into<i64>>(self, tokens: &[T], out: &mut Vec<u8>) {
        fn put<T: Copy + Into<i64>, const N: usize>(tokens: &[T], out: &mut Vec<u8>) {
            let start = out.len();
            out.resize(start + tokens.len() * N, 0);
            for (bytes, &t) in out[start..].chunks_exact_mut(N).zip(tokens) {
                bytes.copy_from_slice(&t.into().to_le_bytes()[..N]);
            }
        }
        match self.size() {
            1 => put::<T, 1>(tokens, out),
            2 => put::<T, 2>(tokens, out),
            4 => put::<T, 4>(tokens, out),
            _ => put::<T, 8>(tokens, out),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An output token id type that sequences decode into: `i32`, `i64` or `u32`.
///
/// Sealed: the decoding loops are written for exactly these types.
pub trait TokenId:
    Copy
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + PartialEq
    + TryFrom<i64>
    + Into<i64>
    + bytemuck::Pod
    + sealed::Sealed
    + 'static
{
    /// The type's name, for errors.
    const NAME: &'static str;
    /// The label that losses ignore: -100 for the signed types, `u32::MAX` for u32.
    const IGNORE: Self;
    /// The smallest and largest values, as i64.
    const RANGE: (i64, i64);
    /// A small non-negative number (positions, lengths) as this type.
    fn from_usize(n: usize) -> Self;
    /// `v` cast with `as` (wrapping); the caller has checked that it fits.
    fn wrap(v: i64) -> Self;
}

impl TokenId for i32 {
    const NAME: &'static str = "i32";
    const IGNORE: Self = -100;
    const RANGE: (i64, i64) = (i32::MIN as i64, i32::MAX as i64);
    fn from_usize(n: usize) -> Self {
        n as i32
    }
    fn wrap(v: i64) -> Self {
        v as i32
    }
}
impl TokenId for i64 {
    const NAME: &'static str = "i64";
    const IGNORE: Self = -100;
    const RANGE: (i64, i64) = (i64::MIN, i64::MAX);
    fn from_usize(n: usize) -> Self {
        n as i64
    }
    fn wrap(v: i64) -> Self {
        v
    }
}
impl TokenId for u32 {
    const NAME: &'static str = "u32";
    const IGNORE: Self = u32::MAX;
    const RANGE: (i64, i64) = (0, u32::MAX as i64);
    fn from_usize(n: usize) -> Self {
        n as u32
    }
    fn wrap(v: i64) -> Self {
        v as u32
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
    impl Sealed for u32 {}
}

/// One stored sequence, borrowed from the memory map: no copy is made until it is decoded.
#[derive(Clone, Copy, Debug)]
pub struct TokenSlice<'a> {
    bytes: &'a [u8],
    dtype: Dtype,
    path: &'a Path,
    offset: u64,
}

impl<'a> TokenSlice<'a> {
    /// A slice over `bytes`, which hold whole ids of `dtype`, found at `offset` of `path`.
    pub(crate) fn new(bytes: &'a [u8], dtype: Dtype, path: &'a Path, offset: u64) -> Self {
        debug_assert_eq!(
            bytes.len() % dtype.size(),
            0,
            "a token slice holds whole ids"
        );
        TokenSlice {
            bytes,
            dtype,
            path,
            offset,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Asks the CPU to bring the first `lines` cache lines of the sequence into its caches
    /// (a software prefetch: no effect on what is read, and nothing on targets without one).
    /// A worker calls it for a row a few rows ahead, so that the row's first cache misses
    /// overlap the decoding of the rows before it; the hardware prefetcher follows the rest.
    #[inline]
    pub fn prefetch(&self, lines: usize) {
        for at in (0..self.bytes.len().min(lines * 64)).step_by(64) {
            prefetch_byte(&self.bytes[at]);
        }
    }

    /// Whether the sequence holds no token.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The stored dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The raw little-endian bytes, as stored.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The file the sequence lives in.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// Byte offset of the sequence in its file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Tokens `range` of the sequence, still borrowed.
    ///
    /// # Panics
    ///
    /// If the range runs past [`TokenSlice::len`].
    pub fn sub(&self, range: std::ops::Range<usize>) -> TokenSlice<'a> {
        let size = self.dtype.size();
        TokenSlice {
            bytes: &self.bytes[range.start * size..range.end * size],
            dtype: self.dtype,
            path: self.path,
            offset: self.offset + (range.start * size) as u64,
        }
    }

    /// Token `j`, widened to `i64`.
    pub fn get(&self, j: usize) -> Option<i64> {
        let size = self.dtype.size();
        self.bytes
            .get(j * size..(j + 1) * size)
            .map(|b| self.dtype.read(b))
    }

    /// The tokens, widened to `i64`. For bulk copies use [`TokenSlice::decode_into`].
    pub fn iter(&self) -> impl ExactSizeIterator<Item = i64> + 'a {
        let dtype = self.dtype;
        self.bytes
            .chunks_exact(dtype.size())
            .map(move |b| dtype.read(b))
    }

    /// The tokens, collected (allocates; for tests and tools, not the hot path).
    pub fn to_vec(&self) -> Vec<i64> {
        self.iter().collect()
    }

    /// Copies the ids into `out[..self.len()]`, converted to `T`, and returns the count.
    ///
    /// # Errors
    ///
    /// [`Error::BufferTooSmall`] when `out` is shorter than the sequence;
    /// [`Error::TokenOutOfRange`] when a stored id does not fit `T` (a negative id into `u32`, a
    /// large `i64` id into `i32`), naming the file and the token's byte offset.
    pub fn decode_into<T: TokenId>(&self, out: &mut [T]) -> Result<usize> {
        let n = self.len();
        let Some(out) = out.get_mut(..n) else {
            return Err(Error::BufferTooSmall {
                path: self.path.to_path_buf(),
                offset: self.offset,
                needed: n,
                got: out.len(),
            });
        };
        let b = self.bytes;
        // Only a conversion that can lose values checks them, in a pass of its own, so that the
        // copy itself stays a plain widening loop the compiler vectorizes.
        let (lo, hi) = self.dtype.range();
        let bad = if T::RANGE.0 <= lo && hi <= T::RANGE.1 {
            None
        } else {
            self.iter().position(|t| t < T::RANGE.0 || t > T::RANGE.1)
        };
        if bad.is_none() {
            match self.dtype {
                Dtype::U8 => widen_native::<u8, T>(b, out, |x| x as i64),
                Dtype::I8 => widen_native::<i8, T>(b, out, |x| x as i64),
                Dtype::I16 => widen::<2, i16, T>(b, out, i16::from_le_bytes, |x| x as i64),
                Dtype::U16 => widen::<2, u16, T>(b, out, u16::from_le_bytes, |x| x as i64),
                Dtype::I32 => widen::<4, i32, T>(b, out, i32::from_le_bytes, |x| x as i64),
                Dtype::U32 => widen::<4, u32, T>(b, out, u32::from_le_bytes, |x| x as i64),
                Dtype::I64 => widen::<8, i64, T>(b, out, i64::from_le_bytes, |x| x),
            }
        }
        match bad {
            None => Ok(n),
            Some(j) => Err(Error::TokenOutOfRange {
                path: self.path.to_path_buf(),
                offset: self.offset + (j * self.dtype.size()) as u64,
                token: self
                    .get(j)
                    .expect("the failing index lies inside the slice"),
                target: T::NAME,
            }),
        }
    }
}

/// Asks the CPU to bring the cache line holding `byte` into its caches (nothing on targets
/// without a prefetch instruction; a prefetch never faults and changes nothing).
#[inline(always)]
pub(crate) fn prefetch_byte(byte: &u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the address is a valid reference's; a prefetch reads nothing architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            byte as *const u8 as *const i8,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}

/// Converts little-endian ids of `N` bytes into `out`, all known to fit `T`. On a
/// little-endian machine, bytes aligned for `S` (the usual case: sequences start at multiples of
/// their id size in a page-aligned map) are read as `S` directly, a widening loop the compiler
/// vectorizes; otherwise id by id from the bytes.
#[inline(always)]
fn widen<const N: usize, S: bytemuck::Pod, T: TokenId>(
    bytes: &[u8],
    out: &mut [T],
    from_le: impl Fn([u8; N]) -> S,
    to_i64: impl Fn(S) -> i64,
) {
    #[cfg(target_endian = "little")]
    if let Ok(src) = bytemuck::try_cast_slice::<u8, S>(bytes) {
        return widen_from(src, out, to_i64);
    }
    for (chunk, o) in bytes.chunks_exact(N).zip(out.iter_mut()) {
        *o = T::wrap(to_i64(from_le(
            chunk.try_into().expect("chunks_exact yields N bytes"),
        )));
    }
}

/// [`widen`] for one-byte ids, which need no alignment.
#[inline(always)]
fn widen_native<S: bytemuck::Pod, T: TokenId>(
    bytes: &[u8],
    out: &mut [T],
    to_i64: impl Fn(S) -> i64,
) {
    widen_from(bytemuck::cast_slice::<u8, S>(bytes), out, to_i64);
}

#[inline(always)]
fn widen_from<S: Copy, T: TokenId>(src: &[S], out: &mut [T], to_i64: impl Fn(S) -> i64) {
    for (o, &x) in out.iter_mut().zip(src) {
        *o = T::wrap(to_i64(x));
    }
}
