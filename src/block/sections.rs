//! The state of a node's drained sections (see `drain.rs` for the calls
//! that open and close them): the count of open sections, the requests
//! queued meanwhile, and which nodes' completions run on this thread. Kept
//! apart from `Node` so the node can hold it without a circle.

use std::cell::RefCell;
use std::collections::VecDeque;

use super::request::{IoDone, RequestKind};
use crate::sys::file::IoBuf;

/// A request submitted during a drained section, started after it.
pub(super) struct Queued {
    pub(super) kind: RequestKind,
    pub(super) buf: IoBuf,
    pub(super) offset: u64,
    pub(super) done: IoDone,
}

/// A node's drained sections and what waits for their end.
#[derive(Default)]
pub(super) struct Sections {
    /// Open sections (begins not yet ended), of the node's own and of the graph's.
    pub(super) open: u32,
    /// Submitted during a section, in submission order.
    pub(super) queued: VecDeque<Queued>,
    /// The last end is starting `queued`: later submissions still queue behind.
    pub(super) restarting: bool,
}

impl Sections {
    /// Whether a new asynchronous request must queue.
    pub(super) fn holds(&self) -> bool {
        self.open > 0 || self.restarting
    }

    pub(super) fn open(&self) -> u32 {
        self.open
    }

    pub(super) fn queue(&mut self, request: Queued) {
        self.queued.push_back(request);
    }

    pub(super) fn queued(&self) -> usize {
        self.queued.len()
    }
}

thread_local! {
    /// The nodes (by address) whose completion callbacks run on this thread's
    /// stack: each is still counted in flight until its callback returns.
    static COMPLETING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks a node's completion as running on this thread while it lives.
pub(super) struct Completing(usize);

impl Completing {
    /// For the node whose [`completion_key`](super::node::Node::completion_key) is `key`.
    pub(super) fn by_key(key: usize) -> Completing {
        COMPLETING.with(|c| c.borrow_mut().push(key));
        Completing(key)
    }
}

impl Drop for Completing {
    fn drop(&mut self) {
        COMPLETING.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(i) = c.iter().rposition(|&k| k == self.0) {
                c.remove(i);
            }
        });
    }
}

/// How many of the node's (by key) completions run on the calling thread's stack, or
/// wait behind one in the same bottom half. A drain from inside one of them
/// must not wait for those: they end only after the drain returns.
pub(super) fn completing_here(key: usize) -> i64 {
    COMPLETING.with(|c| c.borrow().iter().filter(|&&k| k == key).count() as i64)
}
