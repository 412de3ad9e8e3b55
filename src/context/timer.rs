//! Timers: callbacks that run in the home thread once CLOCK_MONOTONIC passes
//! an absolute deadline in nanoseconds.
//!
//! Invariant, kept under the list lock: a timer is in the list iff its
//! `expire` is a deadline (>= 0), and then under the key (expire, id).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::{Callback, Context};
use crate::error::{invalid, Error, Result};

const DISARMED: i64 = -1;
/// Taken out of the list by a dispatch that has not run it yet.
const FIRING: i64 = -2;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A timer bound to one context.
pub struct Timer {
    ctx: Weak<Context>,
    callback: Callback,
    id: u64,
    /// Deadline, DISARMED or FIRING; written under the list lock.
    expire: AtomicI64,
}

/// A context's armed timers, ordered by deadline.
#[derive(Default)]
pub(crate) struct TimerList(Mutex<BTreeMap<(i64, u64), Arc<Timer>>>);

impl Timer {
    /// A disarmed timer that runs `callback` in `ctx`'s home thread.
    pub fn new(ctx: &Arc<Context>, callback: Callback) -> Arc<Timer> {
        Arc::new(Timer {
            ctx: Arc::downgrade(ctx),
            callback,
            id: NEXT_ID.fetch_add(1, Relaxed),
            expire: AtomicI64::new(DISARMED),
        })
    }

    /// Arms (or re-arms) the timer for the absolute time `expire_ns` on
    /// CLOCK_MONOTONIC. A deadline in the past fires at the next poll.
    pub fn modify(self: &Arc<Self>, expire_ns: i64) -> Result<()> {
        if expire_ns < 0 {
            return Err(invalid(format!(
                "timer deadline {expire_ns} is negative: pass an absolute aioctx_clock_ns() time"
            )));
        }
        let ctx = self.context()?;
        // The nearest deadline moved earlier: a poll blocked in another thread
        // (or an embedding loop) must recompute its timeout. The home thread
        // itself is not blocked, and computes it at its next poll.
        if ctx.timers.arm(self, expire_ns) && !ctx.is_home() {
            ctx.notify();
        }
        Ok(())
    }

    /// Disarms the timer; returns whether it was armed.
    pub fn del(&self) -> bool {
        self.ctx
            .upgrade()
            .is_some_and(|ctx| ctx.timers.disarm(self))
    }

    /// The armed deadline, if any.
    pub fn expire_ns(&self) -> Option<i64> {
        Some(self.expire.load(Relaxed)).filter(|&e| e >= 0)
    }

    fn context(&self) -> Result<Arc<Context>> {
        self.ctx.upgrade().ok_or_else(|| {
            Error::new(
                libc::ENODEV,
                "timer's context was destroyed: free the timer first",
            )
        })
    }
}

impl TimerList {
    /// Returns whether the timer is now the earliest.
    fn arm(&self, timer: &Arc<Timer>, expire: i64) -> bool {
        let mut list = self.0.lock();
        Self::unlink(&mut list, timer);
        timer.expire.store(expire, Relaxed);
        list.insert((expire, timer.id), timer.clone());
        list.first_key_value()
            .is_some_and(|(k, _)| *k == (expire, timer.id))
    }

    fn disarm(&self, timer: &Timer) -> bool {
        let mut list = self.0.lock();
        let was_armed = Self::unlink(&mut list, timer);
        timer.expire.store(DISARMED, Relaxed);
        was_armed
    }

    fn unlink(list: &mut BTreeMap<(i64, u64), Arc<Timer>>, timer: &Timer) -> bool {
        let expire = timer.expire.load(Relaxed);
        expire >= 0 && list.remove(&(expire, timer.id)).is_some()
    }

    /// The nearest deadline, or `None`.
    pub(crate) fn deadline(&self) -> Option<i64> {
        self.0
            .lock()
            .first_key_value()
            .map(|((expire, _), _)| *expire)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Takes every timer due at `now`. Timers armed while they run land in
    /// the list again and wait for the next dispatch.
    pub(crate) fn take_expired(&self, now: i64) -> Vec<Arc<Timer>> {
        let mut list = self.0.lock();
        let mut due = Vec::new();
        while let Some(entry) = list.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            timer.expire.store(FIRING, Relaxed);
            due.push(timer);
        }
        due
    }

    /// The callback of a timer taken by `take_expired`, unless a callback
    /// that ran before it deleted or re-armed it.
    pub(crate) fn fire(&self, timer: &Timer) -> Option<Callback> {
        let _list = self.0.lock();
        (timer.expire.load(Relaxed) == FIRING).then(|| {
            timer.expire.store(DISARMED, Relaxed);
            timer.callback.clone()
        })
    }
}
