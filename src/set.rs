//! Context sets: acquire each distinct context exactly once, in ascending
//! id order, and release each once in descending order.
//!
//! Holding a context twice is what turns "release once and wait" into a
//! hang; a set makes that impossible by construction. A single global order
//! means two threads acquiring overlapping sets can never deadlock ABBA-style.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::context::Context;
use crate::error::{busy, not_permitted, Result};
use crate::thread;

/// A deduplicated collection of contexts, ordered by id.
#[derive(Default)]
pub struct ContextSet {
    members: BTreeMap<u64, Arc<Context>>,
    /// Id of the last context added or found: collecting the contexts of many
    /// nodes mostly sees the same one again (one IOThread, many drives).
    last: u64,
    /// Token of the thread that holds the set (0: not held).
    holder: u64,
}

impl ContextSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `ctx`; returns false if it was already a member. O(log n).
    pub fn add(&mut self, ctx: &Arc<Context>) -> Result<bool> {
        self.add_ref(ctx).map(|added| {
            if added {
                self.members.insert(ctx.id(), ctx.clone());
            }
            added
        })
    }

    /// The checks of `add`, and whether `ctx` is new (cheap for a repeat).
    fn add_ref(&mut self, ctx: &Context) -> Result<bool> {
        if self.holder != 0 {
            return Err(busy(format!(
                "cannot add context '{}' to a set that is held: release the set first",
                ctx.name()
            )));
        }
        let id = ctx.id();
        if id == self.last {
            return Ok(false);
        }
        self.last = id;
        Ok(!self.members.contains_key(&id))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the calling thread holds the set.
    pub fn is_held(&self) -> bool {
        self.holder != 0 && self.holder == thread::current()
    }

    /// Acquires every member once, in ascending id order.
    pub fn acquire(&mut self) -> Result<()> {
        if self.holder != 0 {
            return Err(busy(format!(
                "set already held by thread {}: release it before acquiring it again",
                thread::describe(self.holder)
            )));
        }
        for (i, ctx) in self.members.values().enumerate() {
            if let Err(e) = ctx.acquire() {
                // Leave nothing held: undo the ones taken so far.
                for taken in self.members.values().take(i).rev() {
                    let _ = taken.lock().release();
                }
                return Err(e);
            }
        }
        self.holder = thread::current();
        Ok(())
    }

    /// Releases every member once, in descending id order. Fails with `EPERM`
    /// unless the caller holds the set. Every member is released even if one
    /// was already given back behind the set's back; that one is reported.
    pub fn release(&mut self) -> Result<()> {
        if self.holder == 0 || self.holder != thread::current() {
            return Err(not_permitted(match self.holder {
                0 => "set is not held: release without a matching acquire".to_string(),
                h => format!(
                    "set is held by thread {}, not by the caller",
                    thread::describe(h)
                ),
            }));
        }
        self.holder = 0;
        let mut first_error = None;
        for ctx in self.members.values().rev() {
            if let Err(e) = ctx.release() {
                first_error.get_or_insert(not_permitted(format!(
                    "{} (it was released behind the set's back)",
                    e.message()
                )));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Acquires the set until the guard is dropped.
    pub fn guard(&mut self) -> Result<SetGuard<'_>> {
        self.acquire()?;
        Ok(SetGuard { set: self })
    }

    /// The members in acquisition order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Context>> {
        self.members.values()
    }
}

/// Holds a [`ContextSet`] until dropped.
pub struct SetGuard<'a> {
    set: &'a mut ContextSet,
}

impl Drop for SetGuard<'_> {
    fn drop(&mut self) {
        let _ = self.set.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_and_acquires_each_once() {
        let a = Context::new("a").unwrap();
        let b = Context::new("b").unwrap();
        let mut set = ContextSet::new();
        assert!(set.add(&b).unwrap());
        assert!(set.add(&a).unwrap());
        assert!(!set.add(&b).unwrap());
        assert_eq!(set.len(), 2);
        let ids: Vec<_> = set.iter().map(|c| c.id()).collect();
        assert!(ids[0] < ids[1]);
        {
            let _g = set.guard().unwrap();
            assert_eq!(a.lock().depth(), 1);
            assert_eq!(b.lock().depth(), 1);
        }
        assert_eq!(a.lock().depth(), 0);
        assert_eq!(set.release().unwrap_err().errno(), libc::EPERM);
    }

    #[test]
    fn held_set_refuses_add_and_second_acquire() {
        let a = Context::new("a").unwrap();
        let mut set = ContextSet::new();
        set.add(&a).unwrap();
        set.acquire().unwrap();
        assert_eq!(set.acquire().unwrap_err().errno(), libc::EBUSY);
        assert_eq!(set.add(&a).unwrap_err().errno(), libc::EBUSY);
        assert_eq!(a.lock().depth(), 1);
        set.release().unwrap();
    }

    #[test]
    fn overlapping_sets_in_opposite_orders_do_not_deadlock() {
        let ctxs: Vec<_> = (0..4)
            .map(|i| Context::new(&format!("c{i}")).unwrap())
            .collect();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut mine: Vec<_> = ctxs.clone();
                if t % 2 == 1 {
                    mine.reverse();
                }
                std::thread::spawn(move || {
                    let mut set = ContextSet::new();
                    for c in &mine {
                        set.add(c).unwrap();
                    }
                    for _ in 0..5_000 {
                        let _g = set.guard().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
