//! `AioctxIoThread`: named threads running one context each.

use std::ffi::{c_char, c_int};

use super::boundary::{
    borrow, borrow_mut, borrowed_arc_ptr, ffi, into_box_ptr, opaque, str_arg, take_box,
};
use super::context::AioctxContext;
use crate::iothread::IoThread;

/// An OS thread that polls its own context until freed.
pub struct AioctxIoThread {
    _private: [u8; 0],
}

opaque!(AioctxIoThread => IoThread, BoxOwned, "iothread");

/// Starts a thread named `name` (as `top -H` and gdb show it; the kernel keeps
/// 15 bytes) that is the home of a new context of the same name and polls it.
/// Returns when the thread runs. NULL on failure (`name` NULL or empty:
/// EINVAL; the thread cannot be created). Its context polls adaptively
/// (max_ns 64000; see `aioctx_context_set_poll_params`, which changes it).
#[no_mangle]
pub extern "C" fn aioctx_iothread_new(name: *const c_char) -> *mut AioctxIoThread {
    ffi("aioctx_iothread_new", || {
        Ok(into_box_ptr(IoThread::new(str_arg(name, "name")?)?))
    })
}

/// The IOThread's context, borrowed: valid until `aioctx_iothread_free`
/// (take a reference to keep it longer). NULL if `it` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_iothread_context(it: *mut AioctxIoThread) -> *mut AioctxContext {
    ffi("aioctx_iothread_context", || {
        Ok(borrowed_arc_ptr(borrow(it)?.context()))
    })
}

/// Runs the BHs already scheduled on the IOThread's context, waits for the
/// requests the thread has in flight on the context's io_uring (their
/// completions then run as BHs of the context), stops the thread and joins
/// it, then frees `it`. Returns 0 (also for NULL); -EDEADLK, with
/// `it` still running and valid, when called from the IOThread itself or
/// while the caller holds its context (the thread could never stop).
/// A caller that holds other contexts lends one (gives it back until the
/// thread has exited, then takes it back at its depth, said in the log) when
/// a BH still to run there blocks acquiring it, directly or through other
/// threads: from an event loop as `aioctx_poll_while` with
/// `AIOCTX_WAIT_RELEASE_HELD` does, from any other thread the same way.
/// A context still referenced afterwards (by a node, a BH or a reference)
/// lives on without a home: the next thread that polls it — for instance a
/// `aioctx_poll_while` or a graph-wide call waiting on one of its nodes —
/// becomes its home and runs its work, instead of waiting forever.
/// From an `atexit()` handler or a pthread-key destructor it stops the
/// thread as anywhere else. In the child of a `fork()` (where the thread
/// does not exist) it frees `it` at once, without a thread to stop.
#[no_mangle]
pub extern "C" fn aioctx_iothread_free(it: *mut AioctxIoThread) -> c_int {
    ffi("aioctx_iothread_free", || {
        if it.is_null() {
            return Ok(0);
        }
        borrow_mut(it)?.stop()?;
        drop(take_box(it));
        Ok(0)
    })
}
