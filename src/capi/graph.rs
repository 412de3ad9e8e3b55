//! `AioctxGraph`: the block graph and its migration handover.

use std::ffi::c_int;

use super::boundary::{borrow, clone_arc, ffi, into_box_ptr, opaque, take_box};
use super::context::AioctxContext;
use crate::block::Graph;
use crate::context::Context;

/// A graph of block nodes. Owned by the caller; `aioctx_graph_free` closes
/// every node. Graph-wide calls (`aioctx_graph_inactivate_all`,
/// `aioctx_graph_activate_all`, `aioctx_graph_drain_all_begin`) are made
/// from the home thread of the graph's main context (the first such call
/// claims it); from any other thread they fail with -EPERM. Waits on one
/// node (`aioctx_node_drain`, `aioctx_node_drained_begin`,
/// `aioctx_node_flush`) are made from there or from the home thread of the
/// node's context. Each function's comment says which threads may call it.
pub struct AioctxGraph {
    _private: [u8; 0],
}

opaque!(AioctxGraph => Graph, BoxOwned, "graph");

/// Creates an empty graph whose graph-wide calls run from `main_ctx`'s home
/// thread (NULL: `aioctx_main_context()`). Any thread. NULL on failure.
#[no_mangle]
pub extern "C" fn aioctx_graph_new(main_ctx: *mut AioctxContext) -> *mut AioctxGraph {
    ffi("aioctx_graph_new", || {
        let main = if main_ctx.is_null() {
            Context::main()?
        } else {
            clone_arc(main_ctx)?
        };
        Ok(into_box_ptr(Graph::new(main)))
    })
}

/// Closes every node once (its driver's `close`, called in the caller's
/// thread with the node's context held) and frees the graph; node pointers
/// become invalid. Drain or inactivate first: a request still in flight keeps
/// its node's resources until it completes; a request queued by a drained
/// section completes with -ECANCELED in its node's home thread (unless the
/// graph held the last reference to that context: a freed context runs no
/// callback, see `aioctx_context_unref`, so keep a context referenced, and
/// run, while its nodes' requests may complete). Any thread
/// (normally the main loop's): it acquires each node's context in turn, so it
/// waits for a callback running there. NULL is a no-op.
#[no_mangle]
pub extern "C" fn aioctx_graph_free(g: *mut AioctxGraph) {
    ffi("aioctx_graph_free", || {
        drop(take_box(g));
        Ok(())
    })
}

/// Hands the graph over to a migration destination. From the main context's
/// home thread:
/// 1. acquire the contexts of all active nodes, each exactly once (a set);
/// 2. refuse new requests (-EBUSY) and drain every node;
/// 3. top-down (parents before children, a shared child once): flush, then the
///    driver's `inactivate`, each run in the node's home thread;
/// 4. mark every node inactive and drop write permission (the raw-file driver
///    releases its image write lock);
/// 5. release every context exactly once.
///
/// Nodes already inactive are skipped: a second call is a no-op.
/// Returns 0; the first error stops it (the message names the node and the
/// step): every context is still released once, nodes already handed over are
/// inactive and the rest active, and `aioctx_graph_activate_all` recovers.
/// -EDEADLK when the caller already holds the context of a node that another
/// thread (an IOThread) runs: another acquire would make the waits hang, so
/// nothing is changed and the caller's lock depths are as before (holding the
/// main context, or a context nobody runs, is fine). -EBUSY when called again
/// from inside a handover (a driver callback). -EPERM from a thread other
/// than the main context's home.
#[no_mangle]
pub extern "C" fn aioctx_graph_inactivate_all(g: *mut AioctxGraph) -> c_int {
    ffi("aioctx_graph_inactivate_all", || {
        borrow(g)?.inactivate_all()?;
        Ok(0)
    })
}

/// Takes the graph over (migration destination, or recovery after a failed
/// inactivate). From the main context's home thread, with every inactive
/// node's context acquired once, bottom-up (children before parents): take
/// write permission back (the raw-file driver's image write lock), call the
/// driver's `activate` in the node's home thread, clear the inactive flag.
/// Returns 0; -EAGAIN with "locked by another process" when an image is still
/// written by another process (the nodes not reached stay inactive: call it
/// again later); the driver's error naming the node; -EDEADLK and -EBUSY as
/// for `aioctx_graph_inactivate_all`; -EPERM from a thread other than the main
/// context's home.
#[no_mangle]
pub extern "C" fn aioctx_graph_activate_all(g: *mut AioctxGraph) -> c_int {
    ffi("aioctx_graph_activate_all", || {
        borrow(g)?.activate_all()?;
        Ok(0)
    })
}

/// Begins a drained section on every node of `g` (QEMU's
/// `bdrv_drain_all_begin`): first every node holds new requests back, as
/// `aioctx_node_drained_begin` describes, then the call waits until no node
/// has a request in flight. Nodes added before the matching
/// `aioctx_graph_drain_all_end` start drained. Sections nest. From the main
/// context's home thread only (the main loop); it polls that loop while it
/// waits. Returns 0 with the section open. Errors leave no section open:
/// -EPERM from another thread; -EDEADLK as `aioctx_node_drained_begin`, for
/// any node; -EINVAL if `g` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_graph_drain_all_begin(g: *mut AioctxGraph) -> c_int {
    ffi("aioctx_graph_drain_all_begin", || {
        borrow(g)?.drain_all_begin()?;
        Ok(0)
    })
}

/// Ends an `aioctx_graph_drain_all_begin` section on every node it covers;
/// each node's last end starts its queued requests, in order. Any thread; it
/// never waits. Returns 0; -EINVAL without an open drain_all section (nothing
/// changes) or if `g` is NULL; -EINVAL naming a node whose section was already
/// ended with `aioctx_node_drained_end` (every other node is still ended).
#[no_mangle]
pub extern "C" fn aioctx_graph_drain_all_end(g: *mut AioctxGraph) -> c_int {
    ffi("aioctx_graph_drain_all_end", || {
        borrow(g)?.drain_all_end()?;
        Ok(0)
    })
}
