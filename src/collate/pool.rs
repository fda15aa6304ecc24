//! Pooled, 64-byte-aligned staging memory. A buffer taken from the [`Pool`] goes back to it when
//! dropped, so a steady stream of batches allocates nothing once the pool is warm.

use std::sync::{Arc, Mutex};

use bytemuck::{Pod, Zeroable};

/// 64 bytes, 64-aligned: the unit staging memory is allocated in (a cache line; also the
/// alignment device copies like best).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Counters of a [`Pool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Buffers allocated or grown.
    pub allocations: u64,
    /// Buffers served from the free list without allocating.
    pub reuses: u64,
    /// Buffers waiting in the free list now.
    pub idle: u64,
    /// Bytes held by idle buffers.
    pub idle_bytes: u64,
}

#[derive(Default)]
struct Shared {
    free: Vec<Vec<Line>>,
    stats: PoolStats,
}

/// A pool of aligned byte buffers, shared by the threads of a loader.
#[derive(Clone, Default)]
pub struct Pool {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Idle buffers kept at most; more are freed.
const MAX_IDLE: usize = 256;

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves only counters and a free list behind: still valid.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` elements of `T`, taken from the free list when one is large enough.
    /// Its contents are unspecified (whatever an earlier batch left): the caller writes every
    /// element it exposes, so no time goes to clearing memory that is about to be overwritten.
    pub fn take<T: Pod>(&self, len: usize) -> PooledBuf<T> {
        self.take_within(len, len)
    }

    /// Like [`Pool::take`], from a buffer able to hold `bound` elements: buffers whose lengths
    /// vary from batch to batch under a known bound all come from one size class, so a steady
    /// stream reuses them instead of allocating ever larger ones.
    pub fn take_within<T: Pod>(&self, len: usize, bound: usize) -> PooledBuf<T> {
        let bytes = len.max(bound) * size_of::<T>();
        let lines = bytes.div_ceil(64).max(1);
        let mut shared = self.lock();
        // The smallest idle buffer that is large enough; else a new one, its size rounded up to
        // a power of two so that it also serves later, slightly larger requests.
        let pick = shared
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= lines)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        let buf = match pick {
            Some(i) => {
                let buf = shared.free.swap_remove(i);
                shared.stats.reuses += 1;
                shared.stats.idle_bytes -= (buf.len() * 64) as u64;
                buf
            }
            None => {
                shared.stats.allocations += 1;
                vec![Line([0; 64]); lines.next_power_of_two()]
            }
        };
        shared.stats.idle = shared.free.len() as u64;
        drop(shared);
        PooledBuf {
            lines: buf,
            len,
            pool: Some(self.clone()),
            _t: std::marker::PhantomData,
        }
    }

    fn give_back(&self, lines: Vec<Line>) {
        let mut shared = self.lock();
        if shared.free.len() < MAX_IDLE {
            shared.stats.idle_bytes += (lines.len() * 64) as u64;
            shared.free.push(lines);
            shared.stats.idle = shared.free.len() as u64;
        }
    }
}

/// A typed view of a pooled, 64-byte-aligned buffer; derefs to `[T]` and returns to its pool
/// when dropped.
pub struct PooledBuf<T: Pod> {
    lines: Vec<Line>,
    len: usize,
    pool: Option<Pool>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> PooledBuf<T> {
    /// Shortens the buffer to `len` elements (capacity is kept).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The bytes of the elements.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Line, u8>(&self.lines)[..self.len * size_of::<T>()]
    }
}

impl<T: Pod> std::ops::Deref for PooledBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // Cast only the bytes in use: a line need not hold a whole number of `T`s.
        let bytes = &bytemuck::cast_slice::<Line, u8>(&self.lines)[..self.len * size_of::<T>()];
        bytemuck::cast_slice(bytes)
    }
}

impl<T: Pod> std::ops::DerefMut for PooledBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let n = self.len * size_of::<T>();
        bytemuck::cast_slice_mut(&mut bytemuck::cast_slice_mut::<Line, u8>(&mut self.lines)[..n])
    }
}

impl<T: Pod> Drop for PooledBuf<T> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.lines));
        }
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for PooledBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Pod + PartialEq> PartialEq for PooledBuf<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
