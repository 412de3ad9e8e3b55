//! `AioctxContext`: an event loop and its recursive lock.

use std::ffi::{c_char, c_int, c_void};

use super::boundary::{
    self, borrow, borrow_arc, borrowed_arc_ptr, clone_arc, ffi, into_arc_ptr, opaque, optional_out,
    out_param, str_arg, take_arc, AioctxCallback, AioctxPollFn,
};
use crate::context::Context;
use crate::sys;

/// An AioContext-style event loop with a recursive lock. Reference counted
/// (`aioctx_context_ref`/`aioctx_context_unref`); thread-safe, except that only
/// the context's home thread may poll it.
pub struct AioctxContext {
    _private: [u8; 0],
}

opaque!(AioctxContext => Context, ArcOwned, "ctx");

/// Creates a context named `name` (copied; used in messages and dumps) with no
/// home thread yet: the first thread to poll or claim it becomes its home.
/// Returns a new reference, or NULL with `aioctx_last_error()` set:
/// `name` NULL or empty, or out of file descriptors.
#[no_mangle]
pub extern "C" fn aioctx_context_new(name: *const c_char) -> *mut AioctxContext {
    ffi("aioctx_context_new", || {
        Ok(into_arc_ptr(Context::new(str_arg(name, "name")?)?))
    })
}

/// The process-wide main context, created on first use and never freed. The
/// pointer is borrowed: do not unref it (take a reference with
/// `aioctx_context_ref` if you want one). NULL only if it cannot be created.
#[no_mangle]
pub extern "C" fn aioctx_main_context() -> *mut AioctxContext {
    ffi("aioctx_main_context", || {
        Ok(borrowed_arc_ptr(&Context::main()?))
    })
}

/// Takes a new reference to `ctx` and returns it (NULL if `ctx` is NULL).
/// The main context is never freed; references to it are not counted.
#[no_mangle]
pub extern "C" fn aioctx_context_ref(ctx: *mut AioctxContext) -> *mut AioctxContext {
    ffi("aioctx_context_ref", || {
        if Context::is_main(borrow(ctx)?) {
            return Ok(ctx);
        }
        Ok(into_arc_ptr(clone_arc(ctx)?))
    })
}

/// Drops a reference; the last one frees the context. NULL and the main
/// context are no-ops. Callbacks, BHs and timers of a freed context never run.
/// The last reference may be dropped from one of the context's own
/// callbacks: the poll running it keeps the context until it returns (the
/// rest of that dispatch still runs).
#[no_mangle]
pub extern "C" fn aioctx_context_unref(ctx: *mut AioctxContext) {
    ffi("aioctx_context_unref", || {
        if borrow(ctx).is_ok_and(|c| !Context::is_main(c)) {
            drop(take_arc(ctx));
        }
        Ok(())
    })
}

/// The name given at creation. Valid as long as the context. NULL if `ctx` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_context_name(ctx: *const AioctxContext) -> *const c_char {
    ffi("aioctx_context_name", || Ok(borrow(ctx)?.c_name().as_ptr()))
}

/// The context's id: unique, ascending in creation order, never 0. Sets acquire
/// their contexts in ascending id order. 0 if `ctx` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_context_id(ctx: *const AioctxContext) -> u64 {
    ffi("aioctx_context_id", || Ok(borrow(ctx)?.id()))
}

/// Makes the calling thread the context's home thread: the only thread that
/// may poll it, and where its callbacks run. The first context a thread
/// claims becomes that thread's current context (see `aioctx_poll_while`).
/// Returns 0 (also if the caller already is the home), -EPERM if another
/// thread is, -EINVAL if `ctx` is NULL. When the home thread exits (or its
/// IOThread is freed) the context has no home again: the next thread that
/// claims or polls it — a wait on its work, for instance — becomes its home.
/// (A home thread that exits while holding the context's lock leaves it
/// held: release before exiting.)
#[no_mangle]
pub extern "C" fn aioctx_context_claim(ctx: *mut AioctxContext) -> c_int {
    ffi("aioctx_context_claim", || {
        borrow_arc(ctx)?.claim()?;
        Ok(0)
    })
}

/// Whether the calling thread is `ctx`'s home thread (false for NULL).
#[no_mangle]
pub extern "C" fn aioctx_context_is_home(ctx: *const AioctxContext) -> bool {
    ffi("aioctx_context_is_home", || Ok(borrow(ctx)?.is_home()))
}

/// The calling thread's current context: the first context it claimed (or
/// homed by polling), borrowed; NULL if it has none. Unlike
/// `aioctx_poll_while`, it does not adopt the main context.
#[no_mangle]
pub extern "C" fn aioctx_current_context() -> *mut AioctxContext {
    ffi("aioctx_current_context", || {
        // No current context is an answer, not a failure: errno is untouched.
        Ok(Context::current_if_any().map_or(std::ptr::null_mut(), |c| borrowed_arc_ptr(&c)))
    })
}

/// Blocks until the calling thread owns `ctx`. Recursive: each call must be
/// matched by `aioctx_release`. Prefer an `AioctxSet` when acquiring the
/// contexts of several objects, so that each is acquired once.
/// Returns 0, -EINVAL (`ctx` NULL), -EOVERFLOW (depth at its limit).
/// Any thread. Uncontended, it makes no system call.
#[no_mangle]
pub extern "C" fn aioctx_acquire(ctx: *mut AioctxContext) -> c_int {
    ffi("aioctx_acquire", || borrow(ctx)?.acquire().map(|()| 0))
}

/// Like `aioctx_acquire`, but returns -EBUSY instead of blocking when another
/// thread owns `ctx`. Succeeds recursively for the owner.
#[no_mangle]
pub extern "C" fn aioctx_try_acquire(ctx: *mut AioctxContext) -> c_int {
    ffi("aioctx_try_acquire", || {
        borrow(ctx)?.try_acquire().map(|()| 0)
    })
}

/// Gives back one level of `ctx`. When the depth reaches 0, a thread blocked
/// in `aioctx_acquire` gets the lock. Returns 0, -EPERM if the calling thread
/// does not own `ctx` (nothing changes), -EINVAL if `ctx` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_release(ctx: *mut AioctxContext) -> c_int {
    ffi("aioctx_release", || borrow(ctx)?.release().map(|()| 0))
}

/// How many times the calling thread holds `ctx` (0 if it does not own it).
/// -EINVAL if `ctx` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_lock_depth(ctx: *const AioctxContext) -> c_int {
    ffi("aioctx_lock_depth", || {
        Ok(borrow(ctx)?.lock().depth().min(c_int::MAX as u32) as c_int)
    })
}

/// Runs one iteration of the loop: waits (if `blocking`) for an fd event, a
/// timer, a bottom half or `aioctx_notify`, then runs — with `ctx` held — the
/// BHs pending when the dispatch began, ready fd handlers and due timers.
/// A BH scheduled during the poll runs in the next one.
/// A blocking poll does not block when an `aioctx_notify` came since the
/// last poll. Returns 1 if a callback ran, 0 if none (a blocking poll woken
/// only by `aioctx_notify` returns 0), -EPERM if the caller is not the home thread
/// (the first poll makes the caller the home), -EINVAL if `ctx` is NULL.
/// A callback may poll `ctx` again (a nested poll); fd readiness that poll
/// used up is not handed to the outer poll's fd handlers.
/// The home thread may poll while holding `ctx`; -EOVERFLOW (nothing
/// dispatched, no waiting) if it holds it 2^32-1 times, the depth limit,
/// since the dispatch takes one more level. A poll keeps `ctx` alive until
/// it returns: a callback may drop the last reference.
#[no_mangle]
pub extern "C" fn aioctx_poll(ctx: *mut AioctxContext, blocking: bool) -> c_int {
    ffi("aioctx_poll", || {
        // Cloned, not borrowed: a callback may unref the last reference.
        Ok(clone_arc(ctx)?.poll(blocking)? as c_int)
    })
}

/// Wakes a blocking `aioctx_poll` of `ctx`. Any thread. A notify is never
/// lost: made while nobody polls `ctx`, it keeps the next poll (blocking or
/// not) from blocking, and that poll consumes it (returning 0 if no callback
/// ran), so `while (!flag) aioctx_poll(ctx, true);` against
/// `flag = 1; aioctx_notify(ctx);` cannot hang. Makes no system call when
/// nobody is blocked in a poll of `ctx` (and `ctx` is not embedded).
/// Returns 0, or -EINVAL if `ctx` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_notify(ctx: *mut AioctxContext) -> c_int {
    ffi("aioctx_notify", || {
        borrow(ctx)?.notify();
        Ok(0)
    })
}

/// A file descriptor for embedding `ctx` in a foreign main loop (glib, libuv,
/// epoll): it is readable whenever a BH is pending or an fd handler's fd is
/// ready. Timers do not make it readable: wake up by
/// `aioctx_context_deadline_ns`. When it is readable (or the deadline passed),
/// call `aioctx_poll(ctx, false)` from the home thread. Owned by `ctx`: do not
/// close it. Returns the fd, or -EINVAL if `ctx` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_context_fd(ctx: *mut AioctxContext) -> c_int {
    ffi("aioctx_context_fd", || Ok(borrow(ctx)?.fd()))
}

/// The nearest armed timer deadline of `ctx` in CLOCK_MONOTONIC nanoseconds
/// (compare with `aioctx_clock_ns()`), or -1 when no timer is armed.
/// -EINVAL if `ctx` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_context_deadline_ns(ctx: *mut AioctxContext) -> i64 {
    ffi("aioctx_context_deadline_ns", || {
        Ok(borrow(ctx)?.deadline_ns().unwrap_or(-1))
    })
}

/// Sets `ctx`'s adaptive-polling parameters (QEMU's `poll-max-ns`,
/// `poll-grow`, `poll-shrink`). With polling on, a blocking `aioctx_poll`
/// first busy-checks for work — a notify, a bottom half, the `io_poll`
/// callbacks of `aioctx_set_fd_handler_full` — for up to its current poll
/// window before it sleeps. After each blocking poll the window moves by
/// when the work arrived: inside the window, it stays; later but within
/// `max_ns`, it grows (from 4 µs, then times `grow`; `grow` 0 means 2);
/// later than `max_ns` or not at all, it shrinks (divided by `shrink`;
/// `shrink` 0 means closed at once, as in QEMU), so an idle loop stops
/// spinning after one idle poll. `max_ns` 0 turns polling off. A thread
/// that may run on one CPU only never spins (the work it waits for would
/// need its CPU), and a spin yields the CPU every 5 µs.
/// Defaults: off for the main context and `aioctx_context_new` contexts; on
/// for IOThreads with `max_ns` 64000 (see README's benchmark results).
/// A `aioctx_poll_while` whose thread's loop has polling off spins with the
/// waited-for context's parameters. Any thread; applies from the next poll.
/// Returns 0; -EINVAL if `ctx` is NULL or a value is negative (the message
/// names the context and the value; nothing is changed).
#[no_mangle]
pub extern "C" fn aioctx_context_set_poll_params(
    ctx: *mut AioctxContext,
    max_ns: i64,
    grow: i64,
    shrink: i64,
) -> c_int {
    ffi("aioctx_context_set_poll_params", || {
        borrow(ctx)?.set_poll_params(max_ns, grow, shrink)?;
        Ok(0)
    })
}

/// Reads `ctx`'s adaptive-polling parameters as last set (or defaulted:
/// see `aioctx_context_set_poll_params`) into the non-NULL ones of
/// `max_ns`, `grow` and `shrink`. Any thread. Returns 0, or -EINVAL if
/// `ctx` is NULL.
/// Since: 0.2
#[no_mangle]
pub extern "C" fn aioctx_context_get_poll_params(
    ctx: *const AioctxContext,
    max_ns: *mut i64,
    grow: *mut i64,
    shrink: *mut i64,
) -> c_int {
    ffi("aioctx_context_get_poll_params", || {
        let p = borrow(ctx)?.poll_params();
        for (out, value) in [(max_ns, p.max_ns), (grow, p.grow), (shrink, p.shrink)] {
            if let Some(out) = optional_out(out) {
                *out = value;
            }
        }
        Ok(0)
    })
}

/// The current adaptive poll window of `ctx` in nanoseconds: how long its
/// next blocking poll busy-checks for work before sleeping (0: it sleeps at
/// once). For diagnostics and tuning; any thread. -EINVAL if `ctx` is NULL.
/// Since: 0.2
#[no_mangle]
pub extern "C" fn aioctx_context_poll_window_ns(ctx: *const AioctxContext) -> i64 {
    ffi("aioctx_context_poll_window_ns", || {
        Ok(borrow(ctx)?.poll_window_ns())
    })
}

/// A context's counters, filled by `aioctx_context_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AioctxContextStats {
    /// Polls started (blocking or not).
    pub polls: u64,
    /// Callbacks run: bottom halves, fd handlers, timers.
    pub dispatches: u64,
    /// Times a blocked poll (or an embedding loop) was woken through the notifier.
    pub wakeups: u64,
    /// Longest time the context's lock was held, in ns: by dispatches
    /// always, and by acquire/release pairs when the environment variable
    /// `AIOCTX_LOCK_TIMING=1` is set (it costs two clock reads per pair).
    pub longest_hold_ns: i64,
}

/// Fills `*out` with the counters of `ctx`. Any thread; the counters are
/// read without stopping the loop, so they may be mid-update relative to
/// each other. Returns 0, or -EINVAL if an argument is NULL.
#[no_mangle]
pub extern "C" fn aioctx_context_stats(
    ctx: *const AioctxContext,
    out: *mut AioctxContextStats,
) -> c_int {
    ffi("aioctx_context_stats", || {
        let st = borrow(ctx)?.stats();
        let stats = AioctxContextStats {
            polls: st.polls,
            dispatches: st.dispatches,
            wakeups: st.wakeups,
            longest_hold_ns: st.longest_hold_ns,
        };
        *out_param(out, "out")? = stats;
        Ok(0)
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of every timer deadline.
#[no_mangle]
pub extern "C" fn aioctx_clock_ns() -> i64 {
    sys::clock_ns()
}

/// Calls `io_read(opaque)` when `fd` is readable (or hung up / in error) and
/// `io_write(opaque)` when it is writable, in the home thread of `ctx` with
/// `ctx` held. Calling it again for the same fd replaces the callbacks; both
/// NULL removes the fd (do that before closing it). A callback may remove its
/// own or another fd. Any thread. Removing or replacing from another thread
/// waits while an old `io_read`/`io_write` runs in the home thread, so
/// `opaque` may be freed when it returns; not when the caller holds `ctx`
/// (a callback running then is parked in a wait that released `ctx`), nor
/// for a callback blocked acquiring a context the caller holds (as
/// `aioctx_bh_cancel`), nor for one left running by a thread of the parent
/// of a `fork()`. As with `aioctx_bh_cancel` (and `pthread_join`), do not
/// remove or replace a handler while holding a lock of your own its
/// callback takes, nor from a thread whose loop the callback waits on.
/// Returns 0; -EINVAL (`ctx` NULL, `fd` < 0); -EBADF (not an open fd); -EPERM
/// (a regular file or directory: epoll cannot watch those); other epoll errors.
#[no_mangle]
pub extern "C" fn aioctx_set_fd_handler(
    ctx: *mut AioctxContext,
    fd: c_int,
    io_read: AioctxCallback,
    io_write: AioctxCallback,
    opaque: *mut c_void,
) -> c_int {
    ffi("aioctx_set_fd_handler", || {
        let read = boundary::callback(io_read, opaque);
        let write = boundary::callback(io_write, opaque);
        borrow(ctx)?.set_fd_handler(fd, read, write)?;
        Ok(0)
    })
}

/// `aioctx_set_fd_handler` with a poll callback (QEMU's `io_poll`) for
/// busy-polling loops (`aioctx_context_set_poll_params`).
///
/// While `ctx` busy-polls (a blocking poll inside its poll window),
/// `io_poll(opaque)` is called repeatedly in the home thread, *without*
/// `ctx` held; it must be cheap, must not block, and should only look at
/// state (a ring index, a completion queue). When it returns true, that
/// poll ends its spin and runs `io_read(opaque)` once, with `ctx` held, as
/// if `fd` were readable (also when it is not; if it also is, `io_read`
/// still runs once). The fd stays watched as with `aioctx_set_fd_handler`,
/// so `io_read` also runs when `fd` becomes readable: `io_poll` is an
/// addition, never the only way work is seen. It is never called while
/// polling is off or the window is closed. After a call that replaces or
/// removes the handler returns, the old `io_poll` is not running and never
/// runs again (so its `opaque` may be freed). `io_poll` NULL is
/// `aioctx_set_fd_handler`.
/// Returns what `aioctx_set_fd_handler` returns, and -EINVAL when `io_poll`
/// is given without `io_read`, -EDEADLK when called from an `io_poll`
/// callback (change handlers from `io_read` or a bottom half instead).
/// Since: 0.2
#[no_mangle]
pub extern "C" fn aioctx_set_fd_handler_full(
    ctx: *mut AioctxContext,
    fd: c_int,
    io_read: AioctxCallback,
    io_write: AioctxCallback,
    io_poll: AioctxPollFn,
    opaque: *mut c_void,
) -> c_int {
    ffi("aioctx_set_fd_handler_full", || {
        let read = boundary::callback(io_read, opaque);
        let write = boundary::callback(io_write, opaque);
        let poll = boundary::poll_callback(io_poll, opaque);
        borrow(ctx)?.set_fd_handler_full(fd, read, write, poll)?;
        Ok(0)
    })
}
