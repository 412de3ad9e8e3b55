//! Library-wide calls: the last error and the version.

use std::ffi::{c_char, c_int};

use super::boundary;

/// The calling thread's message for its last failed aioctx call, or "" if
/// none failed yet. Names the function and the object, and says how to fix
/// the call. The pointer stays valid for the life of the calling thread; its
/// text changes at the thread's next failing call. Every thread has its own.
/// Also usable from `atexit()` handlers and pthread-key destructors, where
/// it reports the failures of the calls made there.
#[no_mangle]
pub extern "C" fn aioctx_last_error() -> *const c_char {
    boundary::last_error()
}

/// The calling thread's last failure as a negative errno (for example
/// -EAGAIN when `aioctx_node_open_file` returned NULL because another process
/// writes the image), or 0 if no call failed yet. Failing calls also set
/// `errno` to the positive value, so constructors behave like `fopen`.
#[no_mangle]
pub extern "C" fn aioctx_last_errno() -> c_int {
    boundary::last_errno()
}

/// The version of the library loaded at run time, e.g. "0.2.0"
/// (`AIOCTX_VERSION_MAJOR.MINOR.MICRO` of the header it was built with; the
/// pkg-config version). Static storage.
#[no_mangle]
pub extern "C" fn aioctx_version() -> *const c_char {
    const V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}
