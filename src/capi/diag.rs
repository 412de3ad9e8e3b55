//! Diagnostics: the state dump and the log handler.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;

use super::boundary::{ffi, out_bytes, CFn};
use crate::diag::{self, Level};
use crate::error::invalid;

/// `void (*)(void *opaque, int level, const char *message)`: receives the
/// library's log messages (`level`: `AIOCTX_LOG_INFO` or `AIOCTX_LOG_WARNING`).
/// Called from whichever thread logs; `message` is valid during the call.
pub type AioctxLogHandler =
    Option<unsafe extern "C" fn(opaque: *mut c_void, level: c_int, message: *const c_char)>;

/// `void (*)(void *opaque, const char *line)`: receives one line of
/// `aioctx_debug_dump_lines`; `line` is valid during the call.
pub type AioctxLineCallback =
    Option<unsafe extern "C" fn(opaque: *mut c_void, line: *const c_char)>;

/// Log level: information.
pub const AIOCTX_LOG_INFO: c_int = 0;
/// Log level: something is wrong or slow (e.g. a wait past `AIOCTX_WAIT_WARN_MS`).
pub const AIOCTX_LOG_WARNING: c_int = 1;

/// Sends the library's log messages to `handler(opaque, level, message)`;
/// NULL restores the default, which writes each one with `write(2)` to
/// file descriptor 2, ignoring errors (a full disk, a closed pipe with
/// SIGPIPE ignored): logging never fails or changes the call that logs.
/// Any thread.
///
/// The library logs when a `aioctx_poll_while`, an `aioctx_wait_begin` wait,
/// or a drain, flush or handover waiting inside the library is still waiting
/// after the number of milliseconds in the environment variable `AIOCTX_WAIT_WARN_MS` (read once;
/// unset: never): one warning per wait, with the `aioctx_debug_dump` text.
#[no_mangle]
pub extern "C" fn aioctx_set_log_handler(handler: AioctxLogHandler, opaque: *mut c_void) {
    ffi("aioctx_set_log_handler", || {
        let handler = handler.map(|f| {
            let c = CFn { f, opaque };
            let h: crate::diag::Handler = Arc::new(move |level, message| {
                let c = &c; // the whole pair (Send + Sync), not its raw-pointer field
                let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
                let level = match level {
                    Level::Info => AIOCTX_LOG_INFO,
                    Level::Warning => AIOCTX_LOG_WARNING,
                };
                // SAFETY: the C caller registered `f` for `opaque`.
                unsafe { (c.f)(c.opaque, level, text.as_ptr()) }
            });
            h
        });
        diag::set_log_handler(handler);
        Ok(())
    })
}

/// Describes every live context (name, id, home thread, owner and depth,
/// threads waiting to acquire it or in poll_while on it, pending BHs, timers
/// and the next deadline, counters) and every block node (context, requests
/// in flight, active/inactive, writable, children), one line each.
/// Writes at most `size` bytes, NUL included, into `buf` (NULL with size 0
/// only measures) and returns the length of the whole text, like snprintf:
/// a result >= `size` means it was cut. Any thread.
#[no_mangle]
pub extern "C" fn aioctx_debug_dump(buf: *mut c_char, size: usize) -> usize {
    ffi("aioctx_debug_dump", || {
        let text = diag::dump();
        if let Some(out) = out_bytes(buf, size, "buf")?.filter(|out| !out.is_empty()) {
            let n = text.len().min(out.len() - 1);
            out[..n].copy_from_slice(&text.as_bytes()[..n]);
            out[n] = 0;
        }
        Ok(text.len())
    })
}

/// The same text as `aioctx_debug_dump`, one `cb(opaque, line)` call per
/// line (no trailing newline). Returns the number of lines, or -EINVAL if
/// `cb` is NULL. Any thread; `cb` must not call back into the dump.
#[no_mangle]
pub extern "C" fn aioctx_debug_dump_lines(cb: AioctxLineCallback, opaque: *mut c_void) -> c_int {
    ffi("aioctx_debug_dump_lines", || {
        let c = CFn {
            f: cb.ok_or_else(|| invalid("cb is NULL: pass a function"))?,
            opaque,
        };
        let text = diag::dump();
        let mut lines = 0;
        for line in text.lines() {
            let line = CString::new(line.replace('\0', " ")).unwrap_or_default();
            // SAFETY: the C caller registered `f` for `opaque`.
            unsafe { (c.f)(c.opaque, line.as_ptr()) };
            lines += 1;
        }
        Ok(lines)
    })
}
