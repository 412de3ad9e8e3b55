//! Thread-exit and fork hooks, and the one log write that must not fail.
//!
//! Rust's thread-local destructors run before the pthread-key destructors of
//! the same thread, and (for the main thread) before `atexit()` handlers, so
//! cleanup that must follow every call of a thread — whatever C code makes it
//! from those places — hangs off a pthread key of its own instead.

use std::ffi::c_void;
use std::sync::OnceLock;

/// What runs when a thread that [`arm_exit_hook`]ed ends, with its argument.
static ON_EXIT: OnceLock<(libc::pthread_key_t, fn(u64))> = OnceLock::new();

/// Calls `on_exit(value)` when the calling thread ends (not for the main
/// thread's `exit()`, which ends the process). Arm again after it ran — a
/// pthread-key destructor that calls in again — and it runs again (glibc
/// repeats the destructor rounds while a key is set). `value` is not 0.
/// The first call fixes `on_exit` for the process. False if no key could be
/// created (the hook then never runs).
pub fn arm_exit_hook(value: u64, on_exit: fn(u64)) -> bool {
    let hook = ON_EXIT.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; `exit_destructor` has the
        // signature pthread expects and never unwinds.
        if unsafe { libc::pthread_key_create(&mut key, Some(exit_destructor)) } != 0 {
            key = libc::pthread_key_t::MAX;
        }
        (key, on_exit)
    });
    if hook.0 == libc::pthread_key_t::MAX {
        return false;
    }
    // SAFETY: the key was created above; the value is an integer, never
    // dereferenced.
    unsafe { libc::pthread_setspecific(hook.0, value as usize as *const c_void) == 0 }
}

extern "C" fn exit_destructor(value: *mut c_void) {
    if let Some(&(_, on_exit)) = ON_EXIT.get() {
        // A panic must not unwind into libc: the thread's cleanup is best effort.
        let _ = std::panic::catch_unwind(|| on_exit(value as usize as u64));
    }
}

/// The three `pthread_atfork` handlers.
#[derive(Clone, Copy)]
pub struct ForkHandlers {
    /// In the forking thread, before `fork()`.
    pub prepare: fn(),
    /// In the forking thread, after `fork()`, in the parent.
    pub parent: fn(),
    /// In the child's only thread.
    pub child: fn(),
}

/// Registers `handlers` with `pthread_atfork`; only the first call counts.
pub fn at_fork(handlers: ForkHandlers) {
    static HANDLERS: OnceLock<ForkHandlers> = OnceLock::new();
    extern "C" fn prepare_hook() {
        run(|h| h.prepare)
    }
    extern "C" fn parent_hook() {
        run(|h| h.parent)
    }
    extern "C" fn child_hook() {
        run(|h| h.child)
    }
    fn run(which: fn(&ForkHandlers) -> fn()) {
        if let Some(h) = HANDLERS.get() {
            let _ = std::panic::catch_unwind(which(h));
        }
    }
    if HANDLERS.set(handlers).is_ok() {
        // SAFETY: the hooks are plain functions that never unwind.
        unsafe { libc::pthread_atfork(Some(prepare_hook), Some(parent_hook), Some(child_hook)) };
    }
}

/// Writes `text` to stderr (fd 2) with `write(2)` only: no lock, no
/// allocation, no panic. A full disk, a closed pipe (with SIGPIPE ignored)
/// or a closed fd 2 loses the text silently; a signal interrupting the
/// write is retried.
pub fn write_stderr(text: &[u8]) {
    let mut rest = text;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return;
        }
    }
}
