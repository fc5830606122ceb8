//! Page-aligned heap buffers for io_uring registration and O_DIRECT.
//!
//! `Vec<u8>` is not page-aligned: O_DIRECT needs 4096-aligned memory, and an unaligned
//! buffer pins one page more than its size against RLIMIT_MEMLOCK.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use tokio_uring::buf::{IoBuf, IoBufMut};

/// Alignment of every buffer: the page size and the largest logical block size in use.
pub const ALIGN_BYTES: usize = 4096;

/// A zero-initialised, 4096-aligned heap buffer whose whole length counts as initialised.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (`len` is rounded up to the alignment).
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.div_ceil(ALIGN_BYTES).max(1) * ALIGN_BYTES;
        let layout = Layout::from_size_align(len, ALIGN_BYTES).expect("valid buffer layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, ALIGN_BYTES).expect("valid buffer layout");
        // SAFETY: `ptr` came from `alloc_zeroed` with this very layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

// SAFETY: the pointer is to a heap allocation owned by the value; moving the value does
// not move the allocation, so `stable_ptr` stays valid while the runtime owns it, and all
// `len` bytes were zero-initialised at allocation.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }

    fn bytes_total(&self) -> usize {
        self.len
    }
}

// SAFETY: same allocation argument as `IoBuf`; every byte is always initialised, so
// `set_init` has nothing to record.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    unsafe fn set_init(&mut self, _pos: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded() {
        let buf = AlignedBuf::new(5000);
        assert_eq!(buf.len(), 8192);
        assert_eq!(buf.stable_ptr() as usize % ALIGN_BYTES, 0);
    }
}
