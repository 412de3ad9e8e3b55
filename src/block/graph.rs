//! The graph: unique node names, parent → child edges without cycles, and
//! the handover order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::file::{FileDriver, OpenFlags};
use super::node::{Driver, GraphShared, Node, NodeSpec};
use crate::context::Context;
use crate::error::{invalid, Error, Result};

#[derive(Default)]
struct Nodes {
    by_name: HashMap<String, Arc<Node>>,
    /// Creation order.
    all: Vec<Arc<Node>>,
    /// Open `drain_all` sections: a node added meanwhile starts drained too.
    drain_all: u32,
    /// `close_all` calls running: a node added meanwhile (from a `close`
    /// callback) would never be closed, so none is. (Once they returned,
    /// the emptied graph takes nodes again.)
    closing: u32,
}

/// A block graph whose graph-wide calls run from `main`'s home thread.
pub struct Graph {
    shared: Arc<GraphShared>,
    nodes: Mutex<Nodes>,
}

impl Graph {
    /// A graph whose graph-wide calls (inactivate, activate, drain_all) are
    /// made from the home thread of `main`; a node's drain and flush from
    /// there or from the home thread of the node's context.
    pub fn new(main: Arc<Context>) -> Graph {
        Graph {
            shared: Arc::new(GraphShared {
                main,
                edges: Mutex::new(()),
                handover: Default::default(),
            }),
            nodes: Mutex::default(),
        }
    }

    pub(super) fn shared(&self) -> &GraphShared {
        &self.shared
    }

    /// The context whose home thread makes the graph-wide calls (drain,
    /// flush, inactivate_all / activate_all).
    pub fn main_context(&self) -> &Arc<Context> {
        &self.shared.main
    }

    /// Adds a node driven by `driver` (active and writable).
    pub fn add_node(
        &self,
        name: &str,
        ctx: &Arc<Context>,
        driver: Box<dyn Driver>,
    ) -> Result<Arc<Node>> {
        self.insert(name, || {
            Ok(NodeSpec {
                name,
                ctx: ctx.clone(),
                driver,
                writable: true,
                inactive: false,
            })
        })
    }

    /// Adds a node backed by the raw-file driver on `path`.
    pub fn open_file(
        &self,
        name: &str,
        ctx: &Arc<Context>,
        path: &str,
        flags: OpenFlags,
    ) -> Result<Arc<Node>> {
        self.insert(name, || {
            Ok(NodeSpec {
                name,
                ctx: ctx.clone(),
                driver: Box::new(FileDriver::open(path, flags, ctx)?),
                writable: flags.rdwr,
                inactive: flags.inactive,
            })
        })
    }

    /// Adds the node `make` describes, once `name` is known to be free (so
    /// a taken name opens no file).
    fn insert<'a>(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<NodeSpec<'a>>,
    ) -> Result<Arc<Node>> {
        if name.is_empty() {
            return Err(invalid("node name is empty: name every node uniquely"));
        }
        let mut nodes = self.nodes.lock();
        if nodes.closing > 0 {
            return Err(Error::new(
                libc::ENODEV,
                format!("cannot add node '{name}': its graph is being freed"),
            ));
        }
        if nodes.by_name.contains_key(name) {
            return Err(Error::new(
                libc::EEXIST,
                format!("a node named '{name}' already exists: names are unique"),
            ));
        }
        let index = nodes.all.len();
        let node = Arc::new(Node::new(make()?, self.shared.clone(), index)?);
        (0..nodes.drain_all).for_each(|_| node.enter_section());
        super::node::register(&node);
        nodes.by_name.insert(name.to_string(), node.clone());
        nodes.all.push(node.clone());
        Ok(node)
    }

    /// The node called `name`, if any.
    pub fn find(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.lock().by_name.get(name).cloned()
    }

    /// How many nodes the graph has.
    pub fn len(&self) -> usize {
        self.nodes.lock().all.len()
    }

    /// True when the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every node, in creation order.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.lock().all.clone()
    }

    /// Adds the edge `parent → child`; see [`attach`].
    pub fn attach(&self, parent: &Arc<Node>, child: &Arc<Node>) -> Result<()> {
        attach(parent, child)
    }

    /// Every node once, parents before children (Kahn's algorithm; ties in
    /// creation order). O(nodes + edges).
    pub fn top_down(&self) -> Vec<Arc<Node>> {
        let all = self.nodes();
        let mut parents = vec![0usize; all.len()];
        for node in &all {
            for child in node.children.lock().iter() {
                parents[child.index] += 1;
            }
        }
        let mut ready: VecDeque<_> = all
            .iter()
            .filter(|n| parents[n.index] == 0)
            .cloned()
            .collect();
        let mut order = Vec::with_capacity(all.len());
        while let Some(node) = ready.pop_front() {
            for child in node.children.lock().iter() {
                parents[child.index] -= 1;
                if parents[child.index] == 0 {
                    ready.push_back(child.clone());
                }
            }
            order.push(node);
        }
        order
    }

    /// Begins a drained section on every node (QEMU's
    /// `bdrv_drain_all_begin`): all of them hold new requests back first,
    /// then the call waits until none has a request in flight. Nodes added
    /// before the matching [`drain_all_end`](Self::drain_all_end) start
    /// drained. From the main context's home thread; on failure no section
    /// is left open.
    pub fn drain_all_begin(&self) -> Result<()> {
        self.shared.claim_main().map_err(|e| {
            Error::new(
                e.errno(),
                format!(
                    "drain_all_begin: {}: call it from the graph's main loop thread",
                    e.message()
                ),
            )
        })?;
        let all = {
            let mut nodes = self.nodes.lock();
            nodes.drain_all += 1;
            nodes.all.iter().for_each(|n| n.enter_section());
            nodes.all.clone()
        };
        // All held first, then waited for one by one: a node that reached
        // zero stays there while the others drain.
        let waited = all.iter().try_for_each(|node| {
            node.waiter(None)
                .and_then(|w| node.wait_quiet(w))
                .map_err(|e| node.named("drain_all_begin", e))
        });
        if let Err(e) = waited {
            // Cannot fail: the sections just opened are still open.
            let _ = self.drain_all_end();
            return Err(e);
        }
        Ok(())
    }

    /// Ends a [`drain_all_begin`](Self::drain_all_begin) section on every
    /// node it covers; any thread. `EINVAL` without one. Each node's last
    /// end starts its queued requests.
    pub fn drain_all_end(&self) -> Result<()> {
        let all = {
            let mut nodes = self.nodes.lock();
            if nodes.drain_all == 0 {
                return Err(invalid(
                    "drain_all_end without drain_all_begin: the graph has no drain_all section",
                ));
            }
            nodes.drain_all -= 1;
            nodes.all.clone()
        };
        // Every node, even after an error: a node whose section was ended
        // behind the graph's back must not keep the others drained.
        let mut first_error = None;
        for node in &all {
            if let Err(e) = node.drained_end() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Closes every node once (driver `close`, in the caller's thread with the
    /// node's context held) and empties the graph.
    pub fn close_all(&self) {
        let all = {
            let mut nodes = self.nodes.lock();
            let closing = nodes.closing + 1;
            std::mem::replace(
                &mut *nodes,
                Nodes {
                    closing,
                    ..Nodes::default()
                },
            )
        };
        // Also if a close unwinds (a Rust driver's panic).
        struct Closed<'a>(&'a Mutex<Nodes>);
        impl Drop for Closed<'_> {
            fn drop(&mut self) {
                self.0.lock().closing -= 1;
            }
        }
        let _closed = Closed(&self.nodes);
        for node in all.all.iter() {
            let _held = node.context().lock().guard();
            node.cancel_queued();
            node.driver.close(node);
            node.children.lock().clear();
        }
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Adds the edge `parent → child`. A no-op if it exists; `ELOOP` if it
/// would close a cycle (a self-edge included); `EINVAL` across graphs.
pub fn attach(parent: &Arc<Node>, child: &Arc<Node>) -> Result<()> {
    if !Arc::ptr_eq(&parent.graph, &child.graph) {
        return Err(invalid(format!(
            "nodes '{}' and '{}' belong to different graphs",
            parent.name(),
            child.name()
        )));
    }
    let _edges = parent.graph.edges.lock();
    if Arc::ptr_eq(parent, child) || reaches(child, parent) {
        return Err(Error::new(
            libc::ELOOP,
            format!(
                "attaching '{}' under '{}' would create a cycle: '{}' already reaches '{}'",
                child.name(),
                parent.name(),
                child.name(),
                parent.name()
            ),
        ));
    }
    let mut children = parent.children.lock();
    if !children.iter().any(|c| Arc::ptr_eq(c, child)) {
        children.push(child.clone());
    }
    Ok(())
}

/// Whether `to` is reachable from `from` along child edges.
fn reaches(from: &Arc<Node>, to: &Arc<Node>) -> bool {
    let mut stack = vec![from.clone()];
    let mut seen = std::collections::HashSet::new();
    while let Some(node) = stack.pop() {
        if Arc::ptr_eq(&node, to) {
            return true;
        }
        if seen.insert(node.index) {
            stack.extend(node.children.lock().iter().cloned());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::node::{registered, NullDriver};
    use super::*;

    /// Registering walks no list: a node leaves the registry of live nodes
    /// when it is dropped, not when a later node is registered.
    #[test]
    fn a_dropped_node_leaves_the_registry() {
        let ctx = Context::new("registry").unwrap();
        let graph = Graph::new(ctx.clone());
        let node = graph.add_node("probe", &ctx, Box::new(NullDriver)).unwrap();
        let serial = node.serial();
        assert!(registered(serial));
        drop(node);
        graph.close_all();
        drop(graph);
        assert!(!registered(serial), "the dropped node is still listed");
    }
}
