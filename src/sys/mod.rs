//! The few system calls aioctx makes, wrapped so that the rest of the crate
//! stays free of `unsafe`. Every function here is a thin, checked wrapper:
//! it validates what the kernel cannot and turns `-1`/errno into `io::Error`.

pub mod epoll;
pub mod eventfd;
pub mod file;
pub mod thread;
pub mod uring;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Makes descriptor number `old` refer to `fresh`'s file (close-on-exec),
/// and closes `fresh`: for objects a `fork()`'s child shares with its parent
/// and must not, replaced in place so the number others know stays valid.
pub fn replace_fd(old: RawFd, fresh: OwnedFd) -> std::io::Result<()> {
    // SAFETY: both are open descriptors; dup3 closes `old`'s file atomically.
    if unsafe { libc::dup3(fresh.as_raw_fd(), old, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

use std::ffi::CStr;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of every timer deadline.
pub fn clock_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The kernel thread id of the caller, as `top -H` and gdb show it.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The kernel's name of the calling thread (what `top -H` shows).
pub fn thread_name() -> String {
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into `buf`.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    if rc != 0 {
        return "thread".to_string();
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
