//! The migration handover: `inactivate_all` on the source, `activate_all` on
//! the destination.
//!
//! Both acquire every node's context exactly once through a set, so the
//! waits inside (drain, driver calls in the home threads) can release each
//! context once and let its IOThread run. On the first error they stop,
//! release every context exactly once, and leave each node either fully
//! active or fully inactive, so the other call (or a retry) recovers.
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::{Graph, Node};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

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
        set.acquire()?;
        let result = inactivate(&order, &set);
        set.release()?;
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
        set.acquire()?;
        let result = order.iter().try_for_each(|n| activate(n, &set));
        set.release()?;
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
    order.iter().for_each(|n| n.quiesce());
    let result = inactivate_quiesced(order, held);
    order.iter().for_each(|n| n.unquiesce());
    result
}

fn inactivate_quiesced(order: &[Arc<Node>], held: &ContextSet) -> Result<()> {
    for node in order {
        node.wait_idle_holding(held)?;
    }
    // Pass 1, top-down: flush then driver inactivate. On failure, the nodes
    // already handed over are marked inactive too, so each node is in one
    // consistent state and activate_all brings them back.
    for (done, node) in order.iter().enumerate() {
        if let Err(e) = hand_over(node, held) {
            // The handover error comes first; a permission error is secondary.
            let _ = mark_all_inactive(&order[..done]);
            return Err(e);
        }
    }
    // Pass 2: every node inactive, write permission dropped.
    mark_all_inactive(order)
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
