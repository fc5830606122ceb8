//! Page-aligned buffers for io_uring registration and O_DIRECT, mapped straight from the
//! kernel.
//!
//! `Vec<u8>` is not page-aligned: O_DIRECT needs 4096-aligned memory, and an unaligned
//! buffer pins one page more than its size against RLIMIT_MEMLOCK. Anonymous mappings are
//! page-aligned and zero-filled by construction, and `munmap` gives the memory back to the
//! system at once (heap allocations of this size would stay in malloc's arenas).

use std::ptr::NonNull;

use tokio_uring::buf::{IoBuf, IoBufMut};

/// Alignment of every buffer: the page size and the largest logical block size in use.
pub const ALIGN_BYTES: usize = 4096;

/// A zero-initialised, page-aligned anonymous mapping whose whole length counts as
/// initialised.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl AlignedBuf {
    /// Maps `len` zeroed bytes (`len` is rounded up to the alignment); aborts when the
    /// system is out of memory, like any allocation.
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.div_ceil(ALIGN_BYTES).max(1) * ALIGN_BYTES;
        // SAFETY: a private anonymous mapping with no address hint touches no existing
        // memory; the result is checked against MAP_FAILED before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            let layout =
                std::alloc::Layout::from_size_align(len, ALIGN_BYTES).expect("valid buffer layout");
            std::alloc::handle_alloc_error(layout);
        }
        let ptr = NonNull::new(raw.cast::<u8>()).expect("mmap never returns null on success");
        AlignedBuf { ptr, len }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, unmapped once here;
        // tokio-uring drops pool buffers only after they are unregistered and idle.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

// SAFETY: the pointer is to a mapping owned by the value; moving the value does
// not move the allocation, so `stable_ptr` stays valid while the runtime owns it, and all
// `len` bytes are zero-filled by the kernel at mapping time.
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
        assert_eq!(buf.bytes_total(), 8192);
        assert_eq!(buf.stable_ptr() as usize % ALIGN_BYTES, 0);
    }
}
