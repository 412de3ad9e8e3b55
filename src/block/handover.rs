//! The migration handover: `inactivate_all` on the source, `activate_all` on
//! the destination.
//!
//! Both acquire every node's context exactly once through a set, so the
//! waits inside (drain, driver calls in the home threads) can release each
//! context once and let its IOThread run. On the first error they stop,
//! release every context exactly once, and leave each node either fully
//! active or fully inactive, so the other call (or a retry) recovers. The
//! same holds when a call unwinds (a panic, caught at the C boundary): the
//! held set, the quiesce flags, the nodes handed over and the running flag
//! are guards, undone on the way out.

use std::sync::Arc;

use super::graph::Graph;
use super::node::Node;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use crate::diag;
use crate::error::{busy, Error, Result};
use crate::set::ContextSet;

impl Graph {
    /// Quiesces and drains every node, flushes and inactivates them top-down
    /// through their drivers, then marks them inactive and gives up write
    /// permission (the raw-file driver drops its image lock). Nodes already
    /// inactive are skipped, so a second call is a no-op.
    pub fn inactivate_all(&self) -> Result<()> {
        let _running = self.begin_handover("inactivate_all")?;
        let order: Vec<_> = self
            .top_down()
            .into_iter()
            .filter(|n| !n.is_inactive())
            .collect();
        refuse_held_contexts(&order, "inactivate_all")?;
        let mut set = self.context_set(&order)?;
        let held = set.guard()?;
        diag::test_panic_point("inactivate_all:acquired");
        let result = inactivate(&order, held.set());
        held.release()?;
        result
    }

    /// Bottom-up (children before parents): takes write permission back (the
    /// raw-file driver's image lock: `EAGAIN` while another process holds
    /// it), calls the driver's `activate`, and clears the inactive flag.
    /// Nodes already active are skipped; nodes not reached after an error stay
    /// inactive, so a later call finishes the job.
    pub fn activate_all(&self) -> Result<()> {
        let _running = self.begin_handover("activate_all")?;
        let mut order: Vec<_> = self
            .top_down()
            .into_iter()
            .filter(|n| n.is_inactive())
            .collect();
        order.reverse();
        refuse_held_contexts(&order, "activate_all")?;
        let mut set = self.context_set(&order)?;
        let held = set.guard()?;
        diag::test_panic_point("activate_all:acquired");
        let result = order.iter().try_for_each(|n| activate(n, held.set()));
        held.release()?;
        result
    }

    /// The common entry of both handover calls: from the main context's home
    /// thread, and not re-entered (a driver callback calling it).
    fn begin_handover(&self, what: &str) -> Result<HandoverRunning<'_>> {
        self.main_context().claim()?;
        let flag = &self.shared().handover;
        if flag.swap(true, SeqCst) {
            return Err(busy(format!(
                "{what}: a handover of this graph is already running (called from a driver callback?)"
            )));
        }
        let running = HandoverRunning(flag);
        Ok(running)
    }

    fn context_set(&self, nodes: &[Arc<Node>]) -> Result<ContextSet> {
        let mut set = ContextSet::new();
        for node in nodes {
            set.add(node.context())?;
        }
        Ok(set)
    }
}

/// `EDEADLK`, before anything changes, when the caller already holds the
/// context of a node it would wait for while another thread runs that
/// context: the handover acquires each node context once itself, and its
/// waits would release one level of two and hang. A context nobody runs is
/// polled by the caller itself, and its own context is fine.
fn refuse_held_contexts(nodes: &[Arc<Node>], what: &str) -> Result<()> {
    for node in nodes {
        let ctx = node.context();
        let depth = ctx.lock().depth();
        if depth > 0 && ctx.runs_elsewhere() {
            return Err(Error::new(
                libc::EDEADLK,
                format!(
                    "{what}: the caller already holds context '{}' of node '{}' ({depth} time(s)); \
                     the handover acquires each node context once itself, and waiting with it \
                     held twice would hang: release it before the call",
                    ctx.name(),
                    node.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Clears the graph's handover flag when the call ends, however it ends.
struct HandoverRunning<'a>(&'a AtomicBool);

impl Drop for HandoverRunning<'_> {
    fn drop(&mut self) {
        self.0.store(false, SeqCst);
    }
}

fn inactivate(order: &[Arc<Node>], held: &ContextSet) -> Result<()> {
    let _quiesced = Quiesced::new(order);
    diag::test_panic_point("inactivate_all:quiesced");
    inactivate_quiesced(order, held)
}

/// Refuses new requests on `nodes` until dropped, however the call ends:
/// a call that unwinds must not leave every request `EBUSY` forever.
struct Quiesced<'a>(&'a [Arc<Node>]);

impl<'a> Quiesced<'a> {
    fn new(nodes: &'a [Arc<Node>]) -> Self {
        nodes.iter().for_each(|n| n.quiesce());
        Quiesced(nodes)
    }
}

impl Drop for Quiesced<'_> {
    fn drop(&mut self) {
        self.0.iter().for_each(|n| n.unquiesce());
    }
}

fn inactivate_quiesced(order: &[Arc<Node>], held: &ContextSet) -> Result<()> {
    for node in order {
        node.wait_idle_holding(held)?;
    }
    diag::test_panic_point("inactivate_all:drained");
    // Pass 1, top-down: flush then driver inactivate. On failure (or an
    // unwind), the nodes already handed over are marked inactive too, so
    // each node is in one consistent state and activate_all brings them back.
    let mut handed = HandedOver {
        nodes: order,
        done: 0,
    };
    for node in order {
        hand_over(node, held)?;
        handed.done += 1;
    }
    diag::test_panic_point("inactivate_all:handed-over");
    handed.done = 0;
    // Pass 2: every node inactive, write permission dropped.
    mark_all_inactive(order)
}

/// The first `done` nodes of `nodes` were handed over to their drivers:
/// marked inactive when dropped, unless the caller set `done` back to 0.
struct HandedOver<'a> {
    nodes: &'a [Arc<Node>],
    done: usize,
}

impl Drop for HandedOver<'_> {
    fn drop(&mut self) {
        // The handover's error (or panic) comes first; a permission error
        // here is secondary.
        let _ = mark_all_inactive(&self.nodes[..self.done]);
    }
}

/// Marks every node of `nodes` inactive and drops its write permission,
/// even after one drop fails: every node was handed over to its driver, so
/// each must be marked, or activate_all would skip it. Returns the first
/// failure (that node keeps its lock until activate_all takes it again).
fn mark_all_inactive(nodes: &[Arc<Node>]) -> Result<()> {
    let mut first_error = None;
    for node in nodes {
        if let Err(e) = mark_inactive(node) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn hand_over(node: &Arc<Node>, held: &ContextSet) -> Result<()> {
    node.flush_holding(held)?;
    node.run_in_home(Some(held), |node, done| done(node.driver.inactivate(node)))
        .map_err(|e| node.named("inactivate", e))
}

fn mark_inactive(node: &Arc<Node>) -> Result<()> {
    node.set_inactive(true);
    node.driver
        .set_write_permission(node, false)
        .map_err(|e| node.named("dropping write permission", e))
}

fn activate(node: &Arc<Node>, held: &ContextSet) -> Result<()> {
    if node.is_writable() {
        node.driver
            .set_write_permission(node, true)
            .map_err(|e| node.named("taking write permission", e))?;
    }
    let activated = node.run_in_home(Some(held), |node, done| done(node.driver.activate(node)));
    if let Err(e) = activated {
        // Stay inactive, and without the lock, until a retry succeeds.
        let _ = node.driver.set_write_permission(node, false);
        return Err(node.named("activate", e));
    }
    node.set_inactive(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Driver, RequestKind};
    use crate::context::Context;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Panics in its first `inactivate`.
    struct PanicsOnce(AtomicBool);

    impl Driver for PanicsOnce {
        fn inactivate(&self, _node: &Arc<Node>) -> Result<()> {
            if !self.0.swap(true, SeqCst) {
                panic!("driver bug");
            }
            Ok(())
        }
    }

    #[test]
    fn a_panic_mid_handover_gives_everything_back() {
        let main = Context::new("unwind-main").unwrap();
        main.claim().unwrap();
        let other = Context::new("unwind-other").unwrap();
        let graph = Graph::new(main.clone());
        let top = graph
            .add_node("top", &main, Box::new(PanicsOnce(AtomicBool::new(false))))
            .unwrap();
        let below = graph
            .add_node("below", &other, Box::new(crate::block::NullDriver))
            .unwrap();
        graph.attach(&top, &below).unwrap();
        let unwound = catch_unwind(AssertUnwindSafe(|| graph.inactivate_all()));
        assert!(unwound.is_err(), "the driver's panic reaches the caller");
        assert_eq!(main.lock().depth(), 0, "the set was released");
        assert_eq!(other.lock().depth(), 0);
        assert!(
            !top.is_inactive() && !below.is_inactive(),
            "nothing was handed over"
        );
        below.start_request(RequestKind::Write).unwrap();
        below.end_request().unwrap();
        assert!(
            !graph.shared().handover.load(SeqCst),
            "no handover is running"
        );
        graph.inactivate_all().unwrap();
        assert!(top.is_inactive() && below.is_inactive());
        graph.activate_all().unwrap();
    }
}
