//! Context sets: acquire each distinct context exactly once, in ascending
//! id order, and release each once in descending order.
//!
//! Holding a context twice is what turns "release once and wait" into a
//! hang; a set makes that impossible by construction. A single global order
//! means two threads acquiring overlapping sets can never deadlock ABBA-style.

use std::sync::Arc;

use crate::context::Context;
use crate::error::{busy, not_permitted, Result};
use crate::thread;

/// A deduplicated collection of contexts, acquired in ascending id order.
///
/// Membership is an open-addressing hash on the contexts' addresses, so an
/// add never reads the context itself (a cache miss per node with thousands
/// of contexts); members are sorted by id once, when the set is acquired.
/// Up to `SMALL` (8) members need no table: a scan of them is as quick, and
/// the common set (a few IOThreads) then costs one allocation.
#[derive(Default)]
pub struct ContextSet {
    members: Vec<Arc<Context>>,
    /// Linear-probing table of `members` indices + 1 (0: empty), keyed by
    /// address; its length is a power of two, at least twice `members`.
    /// Empty while the set has no more than `SMALL` members.
    slots: Vec<u32>,
    /// Whether `members` is in ascending id order.
    sorted: bool,
    /// Address of the last context added or found: collecting the contexts
    /// of many nodes mostly sees the same one again (one IOThread, many drives).
    last: usize,
    /// Token of the thread that holds the set (0: not held).
    holder: u64,
}

/// The most members a set holds without a hash table.
const SMALL: usize = 8;

/// A set's size and order at some point, to undo what was added since.
#[derive(Clone, Copy)]
pub struct Checkpoint {
    len: usize,
    sorted: bool,
}

impl ContextSet {
    /// An empty set.
    pub fn new() -> Self {
        ContextSet {
            sorted: true,
            ..Self::default()
        }
    }

    /// Adds `ctx`; returns false if it was already a member. O(1) expected.
    #[inline]
    pub fn add(&mut self, ctx: &Arc<Context>) -> Result<bool> {
        if self.holder != 0 {
            return Err(self.held_error(ctx));
        }
        let key = Arc::as_ptr(ctx) as usize;
        if key == self.last {
            return Ok(false);
        }
        self.last = key;
        Ok(self.insert(key, ctx))
    }

    /// Adds every context of `ctxs`; returns how many were new.
    pub fn add_all<'a>(
        &mut self,
        ctxs: impl IntoIterator<Item = &'a Arc<Context>>,
    ) -> Result<usize> {
        let mut added = 0;
        for ctx in ctxs {
            added += self.add(ctx)? as usize;
        }
        Ok(added)
    }

    #[cold]
    fn held_error(&self, ctx: &Context) -> crate::Error {
        busy(format!(
            "cannot add context '{}' to a set that is held: release the set first",
            ctx.name()
        ))
    }

    fn insert(&mut self, key: usize, ctx: &Arc<Context>) -> bool {
        if self.slots.is_empty() && self.members.len() < SMALL {
            if self.members.iter().any(|m| Arc::as_ptr(m) as usize == key) {
                return false;
            }
            self.members.push(ctx.clone());
            self.sorted = false;
            return true;
        }
        if (self.members.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = hash(key) & mask;
        loop {
            match self.slots[i] {
                0 => break,
                m if Arc::as_ptr(&self.members[m as usize - 1]) as usize == key => return false,
                _ => i = (i + 1) & mask,
            }
        }
        self.members.push(ctx.clone());
        self.slots[i] = self.members.len() as u32;
        self.sorted = false;
        true
    }

    /// Doubles the table (32 slots at first) and re-inserts every member.
    #[cold]
    fn grow(&mut self) {
        let len = (self.slots.len() * 2).max(4 * SMALL);
        self.slots = vec![0; len];
        self.reindex();
    }

    fn reindex(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        self.slots.iter_mut().for_each(|s| *s = 0);
        let mask = self.slots.len() - 1;
        for (m, ctx) in self.members.iter().enumerate() {
            let mut i = hash(Arc::as_ptr(ctx) as usize) & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = m as u32 + 1;
        }
    }

    /// Where the set stands now, for [`ContextSet::rollback`].
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            len: self.members.len(),
            sorted: self.sorted,
        }
    }

    /// Drops every member added since `checkpoint`: a batch add that fails
    /// half-way leaves the set as it was.
    pub fn rollback(&mut self, checkpoint: Checkpoint) {
        if checkpoint.len >= self.members.len() {
            return;
        }
        self.members.truncate(checkpoint.len);
        self.sorted = checkpoint.sorted;
        self.last = 0;
        self.reindex();
    }

    /// How many distinct contexts the set has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the set has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// True if the calling thread holds the set (acquired and not released).
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
        if !self.sorted {
            self.members.sort_unstable_by_key(|c| c.id());
            self.reindex();
            self.sorted = true;
        }
        // A member the caller already holds ranks the members below it out
        // of order: another set may hold one of those and wait for it.
        let me = thread::current();
        let held_above = self
            .members
            .iter()
            .rev()
            .find(|c| c.lock().owner() == me)
            .map_or(0, |c| c.id());
        for (i, ctx) in self.members.iter().enumerate() {
            let taken = if ctx.id() < held_above {
                ctx.acquire_or_deadlock()
            } else {
                ctx.acquire()
            };
            if let Err(e) = taken {
                // Leave nothing held: undo the ones taken so far.
                for taken in self.members.iter().take(i).rev() {
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
        for ctx in self.members.iter().rev() {
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

    /// The members: in acquisition order (ascending id) once the set has
    /// been acquired, in insertion order before.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Context>> {
        self.members.iter()
    }
}

/// Fibonacci hashing of an address (the low bits are alignment).
#[inline]
fn hash(key: usize) -> usize {
    ((key as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

/// Holds a [`ContextSet`] until dropped.
pub struct SetGuard<'a> {
    set: &'a mut ContextSet,
}

impl SetGuard<'_> {
    /// The held set, e.g. for a wait that gives it back while it waits.
    pub fn set(&self) -> &ContextSet {
        self.set
    }

    /// Releases the set now, reporting what [`ContextSet::release`] reports
    /// (dropping the guard releases it too, but cannot report).
    pub fn release(self) -> Result<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.set.release()
    }
}

impl Drop for SetGuard<'_> {
    fn drop(&mut self) {
        // Also on unwind: a call that panics leaves no context held.
        if self.set.is_held() {
            let _ = self.set.release();
        }
    }
}

/// The held set, e.g. for [`Waiter::with_set`](crate::Waiter::with_set),
/// which gives it back while it polls.
impl std::ops::Deref for SetGuard<'_> {
    type Target = ContextSet;

    fn deref(&self) -> &ContextSet {
        self.set
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
        {
            let _g = set.guard().unwrap();
            let ids: Vec<_> = set_ids(&a, &b);
            assert!(ids[0] < ids[1]);
            assert_eq!(a.lock().depth(), 1);
            assert_eq!(b.lock().depth(), 1);
        }
        assert_eq!(a.lock().depth(), 0);
        assert_eq!(set.release().unwrap_err().errno(), libc::EPERM);
    }

    fn set_ids(a: &Context, b: &Context) -> Vec<u64> {
        let mut ids = vec![a.id(), b.id()];
        ids.sort();
        ids
    }

    #[test]
    fn many_contexts_dedup_and_ascend() {
        let ctxs: Vec<_> = (0..300)
            .map(|i| Context::new(&format!("m{i}")).unwrap())
            .collect();
        let mut set = ContextSet::new();
        // Every context three times, in a scrambled order.
        let order: Vec<usize> = (0..900).map(|i| (i * 7919) % 300).collect();
        let added = set.add_all(order.iter().map(|&i| &ctxs[i])).unwrap();
        assert_eq!(added, 300);
        assert_eq!(set.len(), 300);
        set.acquire().unwrap();
        let ids: Vec<_> = set.iter().map(|c| c.id()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "acquired in ascending id order"
        );
        assert!(
            ctxs.iter().all(|c| c.lock().depth() == 1),
            "each exactly once"
        );
        set.release().unwrap();
        assert!(
            !set.add(&ctxs[5]).unwrap(),
            "still deduplicated after sorting"
        );
        assert!(ctxs.iter().all(|c| c.lock().depth() == 0));
    }

    #[test]
    fn small_sets_grow_a_table_and_roll_back() {
        // Across the switch from a scan of the members to the hash table, and
        // after a rollback (which rebuilds the table): no duplicates, nothing lost.
        let ctxs: Vec<_> = (0..3 * SMALL)
            .map(|i| Context::new(&format!("s{i}")).unwrap())
            .collect();
        let mut set = ContextSet::new();
        for ctx in ctxs.iter().take(SMALL) {
            assert!(set.add(ctx).unwrap());
        }
        let checkpoint = set.checkpoint();
        assert_eq!(set.add_all(ctxs.iter().rev()).unwrap(), 2 * SMALL);
        assert_eq!(set.add_all(&ctxs).unwrap(), 0);
        set.rollback(checkpoint);
        assert_eq!(set.len(), SMALL);
        assert!(
            (0..SMALL).all(|i| !set.add(&ctxs[i]).unwrap()),
            "the members before the checkpoint stay"
        );
        assert_eq!(
            Arc::strong_count(&ctxs[SMALL]),
            1,
            "a rolled-back member is let go"
        );
        assert!(set.add(&ctxs[SMALL]).unwrap(), "and can be added again");
        set.acquire().unwrap();
        let held = ctxs.iter().filter(|c| c.lock().depth() == 1).count();
        assert_eq!(held, SMALL + 1);
        set.release().unwrap();
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
