//! fd handlers: read/write callbacks run when a descriptor is ready.
//!
//! Each registration gets a fresh key that epoll reports back, so a stale
//! event for a handler removed (or replaced) by an earlier callback in the
//! same dispatch is recognised and dropped.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Callback;
use crate::error::{invalid, Error, Result};
use crate::sys::epoll::{Epoll, Interest, Ready};

/// Key 0 is the context's own notifier; handlers start at 1.
pub(crate) const NOTIFIER_KEY: u64 = 0;

struct Handler {
    read: Option<Callback>,
    write: Option<Callback>,
}

#[derive(Default)]
struct Table {
    next_key: u64,
    key_of_fd: HashMap<RawFd, u64>,
    handlers: HashMap<u64, Arc<Handler>>,
}

#[derive(Default)]
pub(crate) struct FdHandlers(Mutex<Table>);

impl FdHandlers {
    /// Installs, replaces or (both callbacks `None`) removes the handler of `fd`.
    pub(crate) fn set(
        &self,
        epoll: &Epoll,
        ctx_name: &str,
        fd: RawFd,
        read: Option<Callback>,
        write: Option<Callback>,
    ) -> Result<()> {
        if fd < 0 {
            return Err(invalid(format!(
                "fd {fd} is negative: pass an open file descriptor"
            )));
        }
        let mut t = self.0.lock();
        let old = t.key_of_fd.get(&fd).copied();
        if read.is_none() && write.is_none() {
            if let Some(key) = old {
                // The fd may already be closed, which removed it from epoll.
                let _ = epoll.delete(fd);
                t.key_of_fd.remove(&fd);
                t.handlers.remove(&key);
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
        if let Some(old_key) = old {
            t.handlers.remove(&old_key);
        }
        t.key_of_fd.insert(fd, key);
        t.handlers.insert(key, Arc::new(Handler { read, write }));
        Ok(())
    }

    /// Registers every handler's fd again, in a fresh `epoll`.
    pub(crate) fn rearm(&self, epoll: &Epoll) {
        let t = self.0.lock();
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
        self.0.lock().handlers.len()
    }

    /// Runs the callbacks for `ready` while `current()` says the readiness
    /// is still this dispatch's to use; returns how many ran.
    pub(crate) fn dispatch(&self, ready: &[Ready], current: impl Fn() -> bool) -> usize {
        let mut ran = 0;
        for ev in ready.iter().filter(|ev| ev.key != NOTIFIER_KEY) {
            if !current() {
                break;
            }
            if ev.read {
                if let Some(cb) = self.callback(ev.key, |h| h.read.clone()) {
                    cb();
                    ran += 1;
                }
            }
            // Looked up again: the read callback may have removed the handler.
            if ev.write && current() {
                if let Some(cb) = self.callback(ev.key, |h| h.write.clone()) {
                    cb();
                    ran += 1;
                }
            }
        }
        ran
    }

    fn callback(&self, key: u64, pick: impl Fn(&Handler) -> Option<Callback>) -> Option<Callback> {
        self.0.lock().handlers.get(&key).and_then(|h| pick(h))
    }
}
