//! The block layer: a graph of nodes with in-flight request tracking, drain,
//! and the migration handover pair `inactivate_all` / `activate_all`.
//!
//! Driver operations run in the node's home thread with its context held:
//! the caller schedules them as a bottom half and waits with a
//! [`Waiter`](crate::wait::Waiter), releasing the node's context once. That
//! is the pattern that hangs when a context is held twice, which is why the
//! graph-wide calls acquire contexts through a [`ContextSet`](crate::ContextSet).
#![forbid(unsafe_code)]

mod file;
mod graph;
mod handover;
mod node;
mod pool;

pub use file::{FileDriver, OpenFlags};
pub use graph::{attach, Graph};
pub use node::{Node, RequestKind};

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::sys::file::IoBuf;

/// Completion of an asynchronous read or write: bytes transferred or an
/// error, and the buffer back.
pub type IoDone = Box<dyn FnOnce(Result<usize>, IoBuf) + Send>;

/// Called once with the outcome of an asynchronous driver operation.
pub type OpDone = Box<dyn FnOnce(Result<()>) + Send>;

/// What a node does. Every method runs in the node's home thread with its
/// context held; the defaults do nothing and succeed (I/O: `ENOTSUP`).
pub trait Driver: Send + Sync {
    /// Makes written data durable; calls `done` when finished (possibly later).
    fn flush(&self, _node: &Arc<Node>, done: OpDone) {
        done(Ok(()))
    }

    /// Called by `inactivate_all` after the node's flush, before it is marked
    /// inactive: stop caching, hand the image over.
    fn inactivate(&self, _node: &Arc<Node>) -> Result<()> {
        Ok(())
    }

    /// Called by `activate_all` after write permission is back.
    fn activate(&self, _node: &Arc<Node>) -> Result<()> {
        Ok(())
    }

    /// Takes (`true`) or gives up the right to write the image, e.g. a lock
    /// shared with other processes. May run in any thread; must not block.
    fn set_write_permission(&self, _node: &Node, _write: bool) -> Result<()> {
        Ok(())
    }

    /// Called once when the graph is freed.
    fn close(&self, _node: &Node) {}

    /// Starts an asynchronous read or write; `done` runs later in the node's
    /// home thread. Returns an error (and does not call `done`) if it cannot start.
    fn submit(
        &self,
        node: &Arc<Node>,
        _kind: RequestKind,
        _buf: IoBuf,
        _offset: u64,
        _done: IoDone,
    ) -> Result<()> {
        Err(Error::new(
            libc::ENOTSUP,
            format!(
                "node '{}' has no I/O driver: open the image with the raw-file driver",
                node.name()
            ),
        ))
    }
}

/// A driver with no behaviour: a node that only tracks requests and state.
pub struct NullDriver;

impl Driver for NullDriver {}
