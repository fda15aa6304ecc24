//! Pooled, 64-byte-aligned staging memory. A buffer taken from the [`Pool`] goes back to it when
//! dropped, so a steady stream of batches allocates nothing once the pool is warm.
//!
//! A pool's memory comes from a `HostMemory` (crate-private): the heap by default, or page-locked
//! memory that a device runtime allocates (the CUDA sink's pinned memory), so that the buffers
//! the workers write ragged ids into are the ones the device copies from.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use bytemuck::Pod;

/// The unit staging memory is allocated in, and its alignment: a cache line (also the alignment
/// device copies like best).
const LINE: usize = 64;

/// Where a [`Pool`]'s buffers come from. Crate-private: the pool hands its bytes out as safe
/// slices, so an implementation that broke this contract would be unsound from safe code.
///
/// # Safety
///
/// [`HostMemory::allocate`] returns either `None` or memory of at least `bytes` bytes, aligned
/// to 64 bytes, **initialized** (zeroed, say: the pool reads it as `&[u8]`), that nothing else
/// uses until it is given to [`HostMemory::release`]. It is sound for every `bytes`, zero
/// included.
pub(crate) unsafe trait HostMemory: Send + Sync + 'static {
    /// The memory's name, as reports give it (`heap`, `cuda pinned`).
    fn name(&self) -> &str;

    /// `bytes` bytes (a positive multiple of 64), 64-byte aligned; `None` when the memory is
    /// exhausted, and the pool then takes the buffer from the heap instead. Called without the
    /// pool's lock, so possibly from several threads at once, and free to be slow (pinning
    /// memory takes milliseconds): the pool's other takers do not wait for it.
    fn allocate(&self, bytes: usize) -> Option<NonNull<u8>>;

    /// Gives back a buffer.
    ///
    /// # Safety
    ///
    /// `ptr` came from `allocate(bytes)` of this memory and is not used afterwards.
    unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize);
}

/// Heap memory (the global allocator), zeroed when allocated.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Heap;

fn line_layout(bytes: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(bytes, LINE).expect("a pool buffer's layout")
}

// SAFETY: the global allocator with a 64-byte-aligned layout of the requested size.
unsafe impl HostMemory for Heap {
    fn name(&self) -> &str {
        "heap"
    }

    fn allocate(&self, bytes: usize) -> Option<NonNull<u8>> {
        // A zero-size layout is undefined behaviour for the allocator; and an absurd size has no
        // layout: neither is memory the heap can give.
        let layout = std::alloc::Layout::from_size_align(bytes, LINE).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size (checked just above).
        NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
    }

    unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: allocated above with the same layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), line_layout(bytes)) }
    }
}

/// A buffer of whole lines, owned by whoever holds it, and the memory it came from.
struct Block {
    ptr: NonNull<u8>,
    bytes: usize,
    /// Taken from the heap because the pool's own memory was exhausted.
    heap: bool,
}

// SAFETY: a block is exclusively owned memory, like a `Vec<u8>`.
unsafe impl Send for Block {}
// SAFETY: shared access is read-only (`bytes`), like a `&Vec<u8>`.
unsafe impl Sync for Block {}

impl Block {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `bytes` bytes at `ptr` are owned by the block and initialized (zeroed by the
        // heap, or written by the memory's allocator).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.bytes) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.bytes) }
    }
}

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
    /// Buffers taken from the heap because the pool's own memory (pinned memory, say) was
    /// exhausted.
    pub heap_fallbacks: u64,
}

struct Shared {
    memory: Arc<dyn HostMemory>,
    free: Vec<Block>,
    stats: PoolStats,
}

/// Frees `block`, which came from `memory` (or the heap, as it records).
fn free_block(memory: &dyn HostMemory, block: Block) {
    // SAFETY: the block came from this memory (or the heap) with this size, and is dropped.
    unsafe {
        if block.heap {
            Heap.release(block.ptr, block.bytes);
        } else {
            memory.release(block.ptr, block.bytes);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for block in std::mem::take(&mut self.free) {
            free_block(&*self.memory, block);
        }
    }
}

/// A pool of aligned byte buffers, shared by the threads of a loader.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Mutex<Shared>>,
}

impl Default for Pool {
    fn default() -> Self {
        Self::with_memory(Arc::new(Heap))
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.lock();
        f.debug_struct("Pool")
            .field("memory", &shared.memory.name())
            .field("stats", &shared.stats)
            .finish()
    }
}

/// Idle buffers kept at most; more are freed.
const MAX_IDLE: usize = 256;

impl Pool {
    /// An empty pool of heap memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty pool whose buffers come from `memory`.
    pub(crate) fn with_memory(memory: Arc<dyn HostMemory>) -> Self {
        Pool {
            shared: Arc::new(Mutex::new(Shared {
                memory,
                free: Vec::new(),
                stats: PoolStats::default(),
            })),
        }
    }

    /// The name of the memory the buffers come from.
    pub fn memory(&self) -> String {
        self.lock().memory.name().to_string()
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
        const { assert!(align_of::<T>() <= LINE) };
        let bytes = len.max(bound) * size_of::<T>();
        let lines = bytes.div_ceil(LINE).max(1);
        // The decision is taken under the lock; a new buffer is allocated outside it, since
        // pinning memory can take milliseconds and every worker takes from this pool.
        let memory = {
            let mut shared = self.lock();
            // The smallest idle buffer that is large enough; else a new one, its size rounded up
            // to a power of two so that it also serves later, slightly larger requests.
            let pick = shared
                .free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.bytes >= lines * LINE)
                .min_by_key(|(_, b)| b.bytes)
                .map(|(i, _)| i);
            match pick {
                Some(i) => {
                    let block = shared.free.swap_remove(i);
                    shared.stats.reuses += 1;
                    shared.stats.idle_bytes -= block.bytes as u64;
                    shared.stats.idle = shared.free.len() as u64;
                    return self.lend(block, len);
                }
                None => {
                    shared.stats.allocations += 1;
                    shared.memory.clone()
                }
            }
        };
        let bytes = lines.next_power_of_two() * LINE;
        let block = match memory.allocate(bytes) {
            Some(ptr) => Block {
                ptr,
                bytes,
                heap: false,
            },
            None => {
                self.lock().stats.heap_fallbacks += 1;
                let ptr = Heap
                    .allocate(bytes)
                    .unwrap_or_else(|| std::alloc::handle_alloc_error(line_layout(bytes)));
                Block {
                    ptr,
                    bytes,
                    heap: true,
                }
            }
        };
        self.lend(block, len)
    }

    /// `block` as a buffer of `len` elements that comes back to this pool.
    fn lend<T: Pod>(&self, block: Block, len: usize) -> PooledBuf<T> {
        PooledBuf {
            block: Some(block),
            len,
            pool: self.clone(),
            _t: std::marker::PhantomData,
        }
    }

    fn give_back(&self, block: Block) {
        let memory = {
            let mut shared = self.lock();
            if shared.free.len() < MAX_IDLE {
                shared.stats.idle_bytes += block.bytes as u64;
                shared.free.push(block);
                shared.stats.idle = shared.free.len() as u64;
                return;
            }
            shared.memory.clone()
        };
        // Freed outside the lock, like allocations (unpinning can be as slow as pinning).
        free_block(&*memory, block);
    }
}

/// A typed view of a pooled, 64-byte-aligned buffer; derefs to `[T]` and returns to its pool
/// when dropped.
pub struct PooledBuf<T: Pod> {
    /// Always `Some` until dropped.
    block: Option<Block>,
    len: usize,
    pool: Pool,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> PooledBuf<T> {
    /// Shortens the buffer to `len` elements (capacity is kept).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The bytes of the elements.
    pub fn as_bytes(&self) -> &[u8] {
        &self.block().bytes()[..self.len * size_of::<T>()]
    }

    /// The address of the first element (in the pool's memory: pinned memory for a device
    /// copy, say).
    pub fn as_ptr(&self) -> *const T {
        self.block().ptr.as_ptr() as *const T
    }

    fn block(&self) -> &Block {
        self.block.as_ref().expect("a live buffer holds its block")
    }
}

impl<T: Pod> std::ops::Deref for PooledBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // Cast only the bytes in use: a line need not hold a whole number of `T`s.
        bytemuck::cast_slice(self.as_bytes())
    }
}

impl<T: Pod> std::ops::DerefMut for PooledBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let n = self.len * size_of::<T>();
        let block = self.block.as_mut().expect("a live buffer holds its block");
        bytemuck::cast_slice_mut(&mut block.bytes_mut()[..n])
    }
}

impl<T: Pod> Drop for PooledBuf<T> {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.give_back(block);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Heap memory that counts what it holds and refuses more than `limit` bytes.
    #[derive(Default)]
    struct Counted {
        held: AtomicUsize,
        limit: usize,
    }

    // SAFETY: delegates to the heap.
    unsafe impl HostMemory for Counted {
        fn name(&self) -> &str {
            "counted"
        }
        fn allocate(&self, bytes: usize) -> Option<NonNull<u8>> {
            if self.held.load(Ordering::SeqCst) + bytes > self.limit {
                return None;
            }
            self.held.fetch_add(bytes, Ordering::SeqCst);
            Heap.allocate(bytes)
        }
        unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize) {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
            // SAFETY: from `Heap.allocate(bytes)` above.
            unsafe { Heap.release(ptr, bytes) }
        }
    }

    /// Heap memory whose allocations of `gate` bytes or more park until the test lets them go,
    /// as a slow first pinning of a large size class does.
    struct Gated {
        gate: usize,
        parked: Mutex<std::sync::mpsc::Sender<usize>>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    // SAFETY: delegates to the heap.
    unsafe impl HostMemory for Gated {
        fn name(&self) -> &str {
            "gated"
        }
        fn allocate(&self, bytes: usize) -> Option<NonNull<u8>> {
            if bytes >= self.gate {
                self.parked.lock().unwrap().send(bytes).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
            Heap.allocate(bytes)
        }
        unsafe fn release(&self, ptr: NonNull<u8>, bytes: usize) {
            // SAFETY: from `Heap.allocate(bytes)` above.
            unsafe { Heap.release(ptr, bytes) }
        }
    }

    #[test]
    fn a_slow_allocation_leaves_the_other_takers_of_the_pool_unblocked() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let (parked_tx, parked) = channel();
        let (go, go_rx) = channel();
        let pool = Pool::with_memory(Arc::new(Gated {
            gate: 1 << 20,
            parked: Mutex::new(parked_tx),
            go: Mutex::new(go_rx),
        }));
        drop(pool.take::<u8>(1000)); // a size class in the free list
        let slow = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.take::<u8>(1 << 20).len())
        };
        assert_eq!(
            parked.recv_timeout(Duration::from_secs(20)),
            Ok(1 << 20),
            "the large allocation started"
        );
        // While it is parked, another worker takes the cached class, allocates a new small one
        // and gives both back.
        let (done_tx, done) = channel();
        let other = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let cached = pool.take::<u8>(1000);
                let fresh = pool.take::<u32>(5000);
                drop((cached, fresh));
                done_tx.send(()).unwrap();
            })
        };
        let finished = done.recv_timeout(Duration::from_secs(20));
        // Let the parked allocation go whatever happened, so that a failure does not hang.
        go.send(()).unwrap();
        assert!(
            finished.is_ok(),
            "the other worker waited for the parked allocation"
        );
        assert_eq!(slow.join().unwrap(), 1 << 20);
        other.join().unwrap();
        let stats = pool.stats();
        assert_eq!((stats.allocations, stats.reuses), (3, 1), "{stats:?}");
        assert_eq!(stats.idle, 3, "{stats:?}");
    }

    #[test]
    fn the_heap_refuses_sizes_it_cannot_allocate() {
        // A zero-size request used to reach `alloc_zeroed` with a zero-size layout.
        assert!(Heap.allocate(0).is_none());
        assert!(Heap.allocate(usize::MAX - 10).is_none());
        let ptr = Heap.allocate(LINE).unwrap();
        // SAFETY: from `Heap.allocate(LINE)` just above, released once.
        unsafe { Heap.release(ptr, LINE) };
    }

    #[test]
    fn buffers_come_from_the_pools_memory_go_back_to_it_and_fall_back_to_the_heap() {
        let memory = Arc::new(Counted {
            limit: 4096,
            ..Default::default()
        });
        let pool = Pool::with_memory(memory.clone());
        assert_eq!(pool.memory(), "counted");
        let mut a = pool.take::<u32>(100); // 400 bytes: one 512-byte block
        a.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert_eq!(memory.held.load(Ordering::SeqCst), 512);
        let b = pool.take::<u8>(3000); // 4096 bytes: over the limit, from the heap
        assert_eq!(pool.stats().heap_fallbacks, 1);
        assert_eq!(memory.held.load(Ordering::SeqCst), 512);
        assert_eq!(a[99], 99);
        drop((a, b));
        // Both idle in the pool; the next small buffer reuses the pool's own block.
        let c = pool.take::<u64>(10);
        assert_eq!(pool.stats().reuses, 1);
        assert_eq!(pool.stats().allocations, 2);
        drop(c);
        assert_eq!(pool.stats().idle, 2);
        drop(pool);
        assert_eq!(memory.held.load(Ordering::SeqCst), 0, "freed with the pool");
    }

    #[test]
    fn a_buffer_outliving_its_pool_handle_is_freed_when_dropped() {
        let memory = Arc::new(Counted {
            limit: 1 << 20,
            ..Default::default()
        });
        let pool = Pool::with_memory(memory.clone());
        let buf = pool.take::<i64>(1000);
        drop(pool);
        assert_eq!(memory.held.load(Ordering::SeqCst), 8192);
        drop(buf);
        assert_eq!(memory.held.load(Ordering::SeqCst), 0);
    }
}
