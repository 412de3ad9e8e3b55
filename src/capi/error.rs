//! Library-wide calls: the last error and the version.

use std::ffi::c_char;

use super::boundary;

/// The calling thread's message for its last failed aioctx call, or "" if
/// none failed yet. Names the function and the object, and says how to fix
/// the call. The pointer stays valid for the life of the calling thread; its
/// text changes at the thread's next failing call. Every thread has its own.
#[no_mangle]
pub extern "C" fn aioctx_last_error() -> *const c_char {
    boundary::last_error()
}

/// The library version, e.g. "0.1.0". Static storage.
#[no_mangle]
pub extern "C" fn aioctx_version() -> *const c_char {
    const V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}
