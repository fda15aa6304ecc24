//! Page-locked (pinned) host memory of a CUDA context: device copies from it run asynchronously
//! at full bus speed. The CUDA sink stages batches in it (through its pool, in `device::cuda`);
//! [`CudaContext::pinned_copy_bandwidth`] times copies from it.

use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::CudaContext as Driver;

use super::CudaContext;

/// Page-locked host memory from `cuMemHostAlloc` (portable: usable by every context).
#[derive(Clone)]
pub(crate) struct PinnedMemory {
    driver: Arc<Driver>,
}

impl std::fmt::Debug for PinnedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedMemory")
            .field("device", &self.driver.ordinal())
            .finish()
    }
}

impl PinnedMemory {
    /// `bytes` zeroed bytes of page-locked memory (page-aligned), owned by the caller until it
    /// gives them to [`PinnedMemory::release`]; `None` when the driver refuses (no memory left,
    /// zero bytes, a lost device).
    pub(crate) fn allocate(&self, bytes: usize) -> Option<NonNull<u8>> {
        self.driver.bind_to_thread().ok()?;
        // SAFETY: cuMemHostAlloc only allocates; its result is checked before use and the memory
        // is zeroed below before anyone reads it.
        let ptr = unsafe {
            cudarc::driver::result::malloc_host(
                bytes,
                cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        }
        .ok()?;
        let ptr = NonNull::new(ptr as *mut u8)?;
        // SAFETY: `bytes` bytes at `ptr` were just allocated for us, and nothing else holds them.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
        Some(ptr)
    }

    /// Gives back memory from [`PinnedMemory::allocate`].
    ///
    /// # Safety
    ///
    /// `ptr` came from `allocate` of this memory (or of any context's: the memory is portable),
    /// is released once, and is not used afterwards.
    pub(crate) unsafe fn release(&self, ptr: NonNull<u8>) {
        if self.driver.bind_to_thread().is_ok() {
            // SAFETY: the caller guarantees `ptr` is a live cuMemHostAlloc allocation, freed once.
            let _ = unsafe { cudarc::driver::result::free_host(ptr.as_ptr() as *mut _) };
        }
    }
}

/// An owned buffer of page-locked memory, zeroed when made and freed when dropped.
pub(crate) struct PinnedBuffer {
    memory: PinnedMemory,
    ptr: NonNull<u8>,
    len: usize,
}

impl PinnedBuffer {
    /// `len` zeroed pinned bytes; `None` when the driver refuses them.
    pub(crate) fn new(memory: PinnedMemory, len: usize) -> Option<Self> {
        let ptr = memory.allocate(len.max(1))?;
        Some(PinnedBuffer { memory, ptr, len })
    }
}

impl std::ops::Deref for PinnedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` holds at least `len` initialized (zeroed) bytes that this buffer owns
        // until it is dropped; `&self` keeps them from being written meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for PinnedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only view of them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `self.memory.allocate` in `new`, and is released only here.
        unsafe { self.memory.release(self.ptr) }
    }
}

impl CudaContext {
    /// This context's page-locked host memory.
    pub(crate) fn pinned_memory(&self) -> PinnedMemory {
        PinnedMemory {
            driver: self.driver.clone(),
        }
    }
}
