//! The state of a node's drained sections (see `drain.rs` for the calls
//! that open and close them): the count of open sections, the requests
//! queued meanwhile, and which nodes' completions run on this thread. Kept
//! apart from `Node` so the node can hold it without a circle.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use super::request::{IoDone, RequestKind};
use crate::context::Context;
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
    /// The graph freed the node: a thread waiting for the sections to end
    /// stops waiting (they never will).
    pub(super) closed: bool,
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

/// The most completions one thread's stack can be inside at once that a
/// drain there still tells apart (deeper nesting is not a real program).
const MAX_NESTED_COMPLETIONS: usize = 32;

/// The nodes (by key) whose completion callbacks run on a thread's stack:
/// each is still counted in flight until its callback returns. Plain data
/// with no destructor, so it works in calls made while the thread ends.
struct Stack {
    keys: [usize; MAX_NESTED_COMPLETIONS],
    len: usize,
    /// Entries beyond `keys`, not recorded.
    overflow: usize,
}

thread_local! {
    static COMPLETING: RefCell<Stack> = const {
        RefCell::new(Stack { keys: [0; MAX_NESTED_COMPLETIONS], len: 0, overflow: 0 })
    };
}

/// Marks a node's completion as running on this thread while it lives.
pub(super) struct Completing(usize);

impl Completing {
    /// For the node whose [`completion_key`](super::node::Node::completion_key) is `key`.
    pub(super) fn by_key(key: usize) -> Completing {
        COMPLETING.with(|c| {
            let mut c = c.borrow_mut();
            if c.len < MAX_NESTED_COMPLETIONS {
                let len = c.len;
                c.keys[len] = key;
                c.len += 1;
            } else {
                c.overflow += 1;
            }
        });
        Completing(key)
    }
}

impl Drop for Completing {
    fn drop(&mut self) {
        COMPLETING.with(|c| {
            let mut c = c.borrow_mut();
            if c.overflow > 0 {
                c.overflow -= 1;
                return;
            }
            let len = c.len;
            if let Some(i) = c.keys[..len].iter().rposition(|&k| k == self.0) {
                c.keys.copy_within(i + 1..len, i);
                c.len -= 1;
            }
        });
    }
}

/// How many of the node's (by key) completions run on the calling thread's stack, or
/// wait behind one in the same bottom half. A drain from inside one of them
/// must not wait for those: they end only after the drain returns.
pub(super) fn completing_here(key: usize) -> i64 {
    COMPLETING.with(|c| {
        let c = c.borrow();
        c.keys[..c.len].iter().filter(|&&k| k == key).count() as i64
    })
}

/// Runs a batch of completions in order (`key`: the node key of each, see
/// [`Completing`]). Those not yet run count as completing on this stack: a
/// drain from inside an earlier one would otherwise wait for them, and they
/// cannot run before it returns. If one unwinds (a Rust caller's panic),
/// the rest go to `ctx` as a bottom half: nothing would report them again,
/// and a drain would wait for them for ever.
pub(super) fn run_completions<T: Send + 'static>(
    ctx: &Arc<Context>,
    batch: Vec<T>,
    key: fn(&T) -> usize,
    run: fn(T),
) {
    let marks: Vec<_> = batch.iter().map(|c| Completing::by_key(key(c))).collect();
    let mut left = Left {
        ctx,
        batch: batch.into_iter().zip(marks),
        key,
        run,
    };
    while let Some((completion, mark)) = left.batch.next() {
        drop(mark);
        run(completion);
    }
}

/// What [`run_completions`] has not run yet.
struct Left<'a, T: Send + 'static> {
    ctx: &'a Arc<Context>,
    batch: std::iter::Zip<std::vec::IntoIter<T>, std::vec::IntoIter<Completing>>,
    key: fn(&T) -> usize,
    run: fn(T),
}

impl<T: Send + 'static> Drop for Left<'_, T> {
    fn drop(&mut self) {
        let rest: Vec<T> = self.batch.by_ref().map(|(c, _)| c).collect();
        if !rest.is_empty() {
            let (ctx, key, run) = (self.ctx.clone(), self.key, self.run);
            self.ctx
                .schedule_once(move || run_completions(&ctx, rest, key, run));
        }
    }
}
