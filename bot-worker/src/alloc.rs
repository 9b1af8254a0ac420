//! The system allocator, except that a refused allocation ends the worker
//! with [`bot_worker::EXIT_OUT_OF_MEMORY`] instead of an abort.
//!
//! The host may run a worker under a data-segment limit (`RLIMIT_DATA`) at
//! its memory ceiling. Reaching it makes an allocation fail; Rust's default
//! answer is to abort (SIGABRT), which looks like any crash. This exit
//! status tells the host the worker reached its ceiling, so the death is
//! counted as reason `memory` and the bot's crash budget is left alone.
//!
//! It must never allocate: it runs exactly when memory is refused.

use std::alloc::{GlobalAlloc, Layout, System};

pub struct ExitWhenRefused;

// SAFETY: every call is forwarded to `System` unchanged; only a null result
// is acted on, and then the process ends without returning it.
unsafe impl GlobalAlloc for ExitWhenRefused {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { System.alloc_zeroed(layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        checked(unsafe { System.realloc(ptr, layout, new_size) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn checked(ptr: *mut u8) -> *mut u8 {
    if ptr.is_null() {
        const LINE: &[u8] =
            b"ERROR out of memory: an allocation was refused at the worker's memory ceiling\n";
        // SAFETY: write(2) of a static buffer, then _exit(2): no allocation,
        // no unwinding, no atexit handlers that might allocate.
        unsafe {
            libc::write(2, LINE.as_ptr().cast(), LINE.len());
            libc::_exit(bot_worker::EXIT_OUT_OF_MEMORY);
        }
    }
    ptr
}
