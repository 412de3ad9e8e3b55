//! fd handlers: read/write callbacks run when a descriptor is ready.
//!
//! Each registration gets a fresh key that epoll reports back, so a stale
//! event for a handler removed (or replaced) by an earlier callback in the
//! same dispatch is recognised and dropped.
//!
//! Removing or replacing a handler waits while its read or write callback
//! runs in another thread (as cancelling a BH does), so once the call
//! returns the callbacks' `opaque` may be freed; not from that callback's
//! own thread, nor holding the context (callbacks run with it held: one
//! running elsewhere is parked in a wait that released it, and needs it
//! back to return).
//!
//! A handler may also have a poll callback (QEMU's `io_poll`), which a
//! busy-polling loop calls instead of waiting for the fd: when it reports
//! work, the handler's read callback runs as if the fd were readable.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::{wait_for_callback, Callback, PollCallback};
use crate::error::{invalid, Error, Result};
use crate::sys::epoll::{Epoll, Interest, Ready};
use crate::thread;

/// Key 0 is the context's own notifier; handlers start at 1.
pub(crate) const NOTIFIER_KEY: u64 = 0;

struct Handler {
    read: Option<Callback>,
    write: Option<Callback>,
    poll: Option<PollCallback>,
}

#[derive(Default)]
struct Table {
    next_key: u64,
    key_of_fd: HashMap<RawFd, u64>,
    handlers: HashMap<u64, Arc<Handler>>,
    /// (key, thread) of each read or write callback running now.
    running: Vec<(u64, u64)>,
}

impl Table {
    /// The thread other than `me` running a callback of `key`, if any (one
    /// that did not survive a `fork()` never returns).
    fn runs_elsewhere(&self, key: u64, me: u64) -> Option<u64> {
        self.running
            .iter()
            .find(|&&(k, t)| k == key && t != me && thread::alive(t))
            .map(|&(_, t)| t)
    }
}

#[derive(Default)]
pub(crate) struct FdHandlers {
    table: Mutex<Table>,
    /// Signalled when a callback returns: `set` may wait for it.
    finished: Condvar,
    /// Handlers with a poll callback: a spin skips the table's lock when 0.
    pollers: AtomicUsize,
}

/// A read or write callback marked running; unmarked (waking a waiting
/// `set`) when dropped, also if the callback unwinds.
struct Running<'a> {
    handlers: &'a FdHandlers,
    key: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut t = self.handlers.table.lock();
        let me = thread::current();
        if let Some(i) = t.running.iter().rposition(|&r| r == (self.key, me)) {
            t.running.swap_remove(i);
        }
        self.handlers.finished.notify_all();
    }
}

/// [`IN_POLL_CALLBACK`] for as long as it lives, also if a callback panics.
struct InPollCallback;

impl InPollCallback {
    fn set() -> Self {
        IN_POLL_CALLBACK.with(|f| f.set(true));
        InPollCallback
    }
}

impl Drop for InPollCallback {
    fn drop(&mut self) {
        IN_POLL_CALLBACK.with(|f| f.set(false));
    }
}

/// Folds entries for the same handler into the first: a handler found by
/// its poll callback may also be reported ready by epoll, and must run once.
pub(crate) fn merge_duplicates(ready: &mut Vec<Ready>) {
    let mut i = 0;
    while i < ready.len() {
        let key = ready[i].key;
        let mut j = i + 1;
        while j < ready.len() {
            if ready[j].key == key {
                let dup = ready.swap_remove(j);
                ready[i].read |= dup.read;
                ready[i].write |= dup.write;
            } else {
                j += 1;
            }
        }
        i += 1;
    }
}

/// The three callbacks of one fd.
pub(crate) struct Callbacks {
    pub read: Option<Callback>,
    pub write: Option<Callback>,
    pub poll: Option<PollCallback>,
}

thread_local! {
    /// Set while this thread runs poll callbacks, under the table's lock:
    /// a poll callback that changes handlers or polls again would deadlock.
    static IN_POLL_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

impl FdHandlers {
    /// Installs, replaces or (both callbacks `None`) removes the handler of `fd`.
    /// A poll callback needs a read callback (what it triggers); `poll`
    /// with both `read` and `write` `None` is refused.
    /// `holding_ctx`: the caller holds the context, so it does not wait for
    /// a callback of the old handler (see the module's comment).
    pub(crate) fn set(
        &self,
        epoll: &Epoll,
        ctx_name: &str,
        fd: RawFd,
        cbs: Callbacks,
        holding_ctx: bool,
    ) -> Result<()> {
        let Callbacks { read, write, poll } = cbs;
        if fd < 0 {
            return Err(invalid(format!(
                "fd {fd} is negative: pass an open file descriptor"
            )));
        }
        if poll.is_some() && read.is_none() {
            return Err(invalid(format!(
                "context '{ctx_name}': fd {fd} has a poll callback but no read callback: \
                 pass io_read, which runs when io_poll reports work"
            )));
        }
        if IN_POLL_CALLBACK.with(Cell::get) {
            return Err(Error::new(
                libc::EDEADLK,
                format!(
                    "context '{ctx_name}': fd {fd}: fd handlers cannot change from inside an \
                     io_poll callback; do it from io_read or a bottom half"
                ),
            ));
        }
        let mut t = self.table.lock();
        let old = t.key_of_fd.get(&fd).copied();
        if read.is_none() && write.is_none() {
            if let Some(key) = old {
                // The fd may already be closed, which removed it from epoll.
                let _ = epoll.delete(fd);
                t.key_of_fd.remove(&fd);
                self.forget(&mut t, key);
                self.wait_until_returned(t, (key, fd), holding_ctx);
            }
            return Ok(());
        }
        t.next_key += 1;
        let key = t.next_key;
        let interest = Interest {
            read: read.is_some(),
            write: write.is_some(),
        };
        let added = match old {
            Some(_) => epoll.modify(fd, key, interest),
            None => epoll.add(fd, key, interest),
        };
        added.map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => " (regular files and directories cannot be polled)",
                Some(libc::EBADF) => " (not an open file descriptor)",
                _ => "",
            };
            Error::from_io(
                &format!("context '{ctx_name}': cannot watch fd {fd}{hint}"),
                e,
            )
        })?;
        if poll.is_some() {
            self.pollers.fetch_add(1, Relaxed);
        }
        t.key_of_fd.insert(fd, key);
        t.handlers
            .insert(key, Arc::new(Handler { read, write, poll }));
        if let Some(old_key) = old {
            self.forget(&mut t, old_key);
            self.wait_until_returned(t, (old_key, fd), holding_ctx);
        }
        Ok(())
    }

    fn forget(&self, t: &mut Table, key: u64) {
        if t.handlers.remove(&key).is_some_and(|h| h.poll.is_some()) {
            self.pollers.fetch_sub(1, Relaxed);
        }
    }

    /// Waits while a callback of the removed handler `key` of `fd` runs in
    /// another thread, unless the caller holds the context.
    fn wait_until_returned(
        &self,
        mut t: parking_lot::MutexGuard<'_, Table>,
        (key, fd): (u64, RawFd),
        holding_ctx: bool,
    ) {
        if holding_ctx {
            return;
        }
        let what = format!("removing the handler of fd {fd}");
        let me = thread::current();
        wait_for_callback(&self.finished, &mut t, &what, |t| t.runs_elsewhere(key, me));
    }

    /// Calls every poll callback; each that reports work adds its handler
    /// to `ready` as readable (once). Returns whether any did. Called with
    /// the table locked, so once `set` removed a handler, its poll callback
    /// is not running and never runs again (its `opaque` may be freed).
    pub(crate) fn poll(&self, ready: &mut Vec<Ready>) -> bool {
        if self.pollers.load(Relaxed) == 0 || IN_POLL_CALLBACK.with(Cell::get) {
            return false;
        }
        let t = self.table.lock();
        let _flag = InPollCallback::set();
        let mut found = false;
        for (&key, h) in &t.handlers {
            let Some(poll) = &h.poll else { continue };
            if poll() {
                found = true;
                if !ready.iter().any(|r| r.key == key) {
                    ready.push(Ready {
                        key,
                        read: true,
                        write: false,
                    });
                }
            }
        }
        found
    }

    /// Registers every handler's fd again, in a fresh `epoll`.
    pub(crate) fn rearm(&self, epoll: &Epoll) {
        let t = self.table.lock();
        for (&fd, key) in &t.key_of_fd {
            if let Some(h) = t.handlers.get(key) {
                let interest = Interest {
                    read: h.read.is_some(),
                    write: h.write.is_some(),
                };
                // An fd closed since cannot be watched; its handler never runs.
                let _ = epoll.add(fd, *key, interest);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.lock().handlers.len()
    }

    /// Runs the callbacks for `ready` while `current()` says the readiness
    /// is still this dispatch's to use; returns how many ran.
    pub(crate) fn dispatch(&self, ready: &[Ready], current: impl Fn() -> bool) -> usize {
        let mut ran = 0;
        for ev in ready.iter().filter(|ev| ev.key != NOTIFIER_KEY) {
            if !current() {
                break;
            }
            if ev.read && self.run(ev.key, |h| h.read.clone()) {
                ran += 1;
            }
            // Looked up again: the read callback may have removed the handler.
            if ev.write && current() && self.run(ev.key, |h| h.write.clone()) {
                ran += 1;
            }
        }
        ran
    }

    /// Runs the callback `pick` finds in handler `key`, marked running;
    /// whether there was one.
    fn run(&self, key: u64, pick: impl Fn(&Handler) -> Option<Callback>) -> bool {
        let callback = {
            let mut t = self.table.lock();
            let Some(cb) = t.handlers.get(&key).and_then(|h| pick(h)) else {
                return false;
            };
            t.running.push((key, thread::current()));
            cb
        };
        let _running = Running {
            handlers: self,
            key,
        };
        callback();
        true
    }
}
