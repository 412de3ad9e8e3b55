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
use crate::error::Result;
use crate::set::ContextSet;

impl Graph {
    /// Quiesces and drains every node, flushes and inactivates them top-down
    /// through their drivers, then marks them inactive and gives up write
    /// permission (the raw-file driver drops its image lock). Nodes already
    /// inactive are skipped, so a second call is a no-op.
    pub fn inactivate_all(&self) -> Result<()> {
        self.main_context().claim()?;
        let order: Vec<_> = self
            .top_down()
            .into_iter()
            .filter(|n| !n.is_inactive())
            .collect();
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
        self.main_context().claim()?;
        let mut order: Vec<_> = self
            .top_down()
            .into_iter()
            .filter(|n| n.is_inactive())
            .collect();
        order.reverse();
        let mut set = self.context_set(&order)?;
        set.acquire()?;
        let result = order.iter().try_for_each(|n| activate(n, &set));
        set.release()?;
        result
    }

    fn context_set(&self, nodes: &[Arc<Node>]) -> Result<ContextSet> {
        let mut set = ContextSet::new();
        for node in nodes {
            set.add(node.context())?;
        }
        Ok(set)
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
        node.drain_holding(Some(held))?;
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
    node.flush_holding(Some(held))?;
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
