//! A block node: name, context, in-flight requests, state flags, children.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use super::request::{IoDone, OpDone, RequestKind};
use super::sections::{Completing, Queued, Sections};
use crate::context::Context;
use crate::error::{busy, invalid, not_permitted, Error, Result};
use crate::set::ContextSet;
use crate::sys::file::IoBuf;
use crate::wait::{WaitOptions, Waiter};

/// What nodes need of their graph (nodes do not keep the graph alive).
pub(super) struct GraphShared {
    pub(super) main: Arc<Context>,
    /// Serialises edge changes, so a cycle check and its insert agree.
    pub(super) edges: Mutex<()>,
    /// An inactivate_all or activate_all is running (refuses re-entry).
    pub(super) handover: std::sync::atomic::AtomicBool,
}

impl GraphShared {
    /// Claims the main context for the caller: graph-wide calls run there.
    pub(super) fn claim_main(&self) -> Result<()> {
        self.main.claim()
    }
}

/// What a node does. Every method runs in the node's home thread with its
/// context held; the defaults do nothing and succeed (I/O: `ENOTSUP`).
/// Every method gets the node as `&Arc<Node>`, so a driver that finishes
/// later (on a worker, in a BH) can keep it alive by cloning.
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
    fn set_write_permission(&self, _node: &Arc<Node>, _write: bool) -> Result<()> {
        Ok(())
    }

    /// Called once when the graph is freed.
    fn close(&self, _node: &Arc<Node>) {}

    /// Whether [`submit`](Self::submit) does I/O. Requests to a node whose
    /// driver does not are refused with `ENOTSUP` at once, also in a drained
    /// section, where other requests wait in a queue.
    fn does_io(&self) -> bool {
        false
    }

    /// Refuses a request [`submit`](Self::submit) could never start (such as
    /// misaligned `O_DIRECT`). Asked before the request is queued by a
    /// drained section, so the caller hears of it at once there too.
    fn check(&self, _buf: &IoBuf, _offset: u64) -> Result<()> {
        Ok(())
    }

    /// The alignment requests need (buffer address, offset, length), in
    /// bytes: 1 for none.
    fn alignment(&self) -> usize {
        1
    }

    /// Which backend runs requests ("io_uring", "threads"); `None` for a
    /// driver that does no I/O of its own.
    fn io_backend(&self) -> Option<&'static str> {
        None
    }

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
        Err(no_io(node))
    }
}

/// The refusal of I/O on a node whose driver does none.
fn no_io(node: &Node) -> Error {
    Error::new(
        libc::ENOTSUP,
        format!(
            "node '{}' has no I/O driver: open the image with the raw-file driver",
            node.name()
        ),
    )
}

/// A driver with no behaviour: a node that only tracks requests and state.
pub struct NullDriver;

impl Driver for NullDriver {}

/// A node of a block graph. Shared: `Arc<Node>`.
pub struct Node {
    /// Unique in the process, for the registry of live nodes.
    serial: u64,
    name: String,
    c_name: CString,
    ctx: Arc<Context>,
    /// The graph's shared part: edges never cross graphs.
    pub(super) graph: Arc<GraphShared>,
    /// Creation order within the graph: ties in the handover order.
    pub(super) index: usize,
    in_flight: AtomicI64,
    inactive: AtomicBool,
    /// Refuses new requests while `inactivate_all` drains and hands over.
    quiesced: AtomicBool,
    /// Drained sections, and the requests they hold back.
    pub(super) sections: Mutex<Sections>,
    /// `sections.holds()`, read without the lock on every request.
    pub(super) held: AtomicBool,
    /// Signalled when the last drained section ends.
    pub(super) resumed: Condvar,
    /// Whether the node may write at all (a raw file opened read-only may not).
    writable: bool,
    pub(super) children: Mutex<Vec<Arc<Node>>>,
    pub(super) driver: Box<dyn Driver>,
}

/// What a new node is, as its graph's caller describes it.
pub(super) struct NodeSpec<'a> {
    /// Unique in the graph.
    pub name: &'a str,
    /// Where its driver's callbacks run.
    pub ctx: Arc<Context>,
    pub driver: Box<dyn Driver>,
    /// Requests may write (the image was opened for writing).
    pub writable: bool,
    /// Starts inactive (an incoming migration's image).
    pub inactive: bool,
}

/// Ends a request in flight when dropped, after its completion ran or
/// unwound (declared before the completion's mark, so dropped after it).
struct EndsRequest<'a>(&'a Node);

impl Drop for EndsRequest<'_> {
    fn drop(&mut self) {
        self.0.end_request_unchecked();
    }
}

/// Hands a driver operation's outcome to the `run_in_home` waiting for it.
/// Dropped without one (a driver that lost its `done`, or the bottom half
/// running the operation unwound or was never run), it reports `EIO`: the
/// wait ends either way.
struct Report {
    slot: Arc<Mutex<Option<Result<()>>>>,
    ctx: Arc<Context>,
}

impl Report {
    fn with(self, result: Result<()>) {
        *self.slot.lock() = Some(result);
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.slot.lock().get_or_insert_with(|| Err(lost_result()));
        self.ctx.wake_waiters();
    }
}

fn lost_result() -> Error {
    Error::new(libc::EIO, "driver operation lost its result")
}

impl Node {
    /// The node `spec` describes, the `index`th of `graph`.
    pub(super) fn new(spec: NodeSpec<'_>, graph: Arc<GraphShared>, index: usize) -> Result<Node> {
        let NodeSpec {
            name,
            ctx,
            driver,
            writable,
            inactive,
        } = spec;
        let c_name = CString::new(name).map_err(|_| invalid("node name contains a NUL byte"))?;
        Ok(Node {
            serial: NEXT_SERIAL.fetch_add(1, Relaxed),
            name: name.to_string(),
            c_name,
            ctx,
            graph,
            index,
            in_flight: AtomicI64::new(0),
            inactive: AtomicBool::new(inactive),
            quiesced: AtomicBool::new(false),
            sections: Mutex::default(),
            held: AtomicBool::new(false),
            resumed: Condvar::new(),
            writable,
            children: Mutex::new(Vec::new()),
            driver,
        })
    }

    /// The node's name, unique in its graph.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a C string.
    pub fn c_name(&self) -> &CStr {
        &self.c_name
    }

    /// The context whose home thread runs the node's callbacks.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Requests in flight; may count for a moment one being turned away.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(SeqCst)
    }

    /// True while the node is inactive (handed over, or not yet activated
    /// on an incoming migration): no writes, no image write lock.
    pub fn is_inactive(&self) -> bool {
        self.inactive.load(SeqCst)
    }

    /// The alignment its driver needs of requests (bytes; 1: none).
    pub fn alignment(&self) -> usize {
        self.driver.alignment()
    }

    /// The backend its driver runs requests on, if it does I/O.
    pub fn io_backend(&self) -> Option<&'static str> {
        self.driver.io_backend()
    }

    /// True if the node was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Counts a request in flight. Refuses writes on an inactive or read-only
    /// node (`EPERM`) and every request while a handover is in progress
    /// (`EBUSY`). In a drained section a thread that runs no event loop and
    /// holds no context waits until the last section ends, as a request
    /// entering a drained node waits in QEMU; any other thread gets `EBUSY`
    /// (it could be the one the drain waits for).
    pub fn start_request(&self, kind: RequestKind) -> Result<()> {
        loop {
            self.count(kind)?;
            if !self.held.load(SeqCst) || self.sections.lock().open() == 0 {
                return Ok(());
            }
            self.end_request_unchecked();
            self.wait_for_drained_end()?;
        }
    }

    /// Counts a request in flight unless it is refused outright.
    pub(super) fn count(&self, kind: RequestKind) -> Result<()> {
        // Counted first, checked second: pairs with `quiesce` and
        // `enter_section`, so either we see the flag or the drain sees our
        // request.
        self.in_flight.fetch_add(1, SeqCst);
        let refusal = if self.quiesced.load(SeqCst) {
            Some(busy(format!(
                "node '{}' is being inactivated for migration: retry after activate_all",
                self.name
            )))
        } else if kind == RequestKind::Write && self.is_inactive() {
            Some(not_permitted(format!(
                "node '{}' is inactive (migrated away or not yet activated): writes need activate_all",
                self.name
            )))
        } else if kind == RequestKind::Write && !self.writable {
            Some(not_permitted(format!(
                "node '{}' is read-only: open it with AIOCTX_OPEN_RDWR",
                self.name
            )))
        } else {
            None
        };
        match refusal {
            Some(e) => {
                self.end_request_unchecked();
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Ends a request started with `start_request`; any thread. Wakes waiters.
    pub fn end_request(&self) -> Result<()> {
        let mut n = self.in_flight.load(SeqCst);
        loop {
            if n <= 0 {
                return Err(invalid(format!(
                    "node '{}' has no request in flight: end_request without start_request",
                    self.name
                )));
            }
            match self.in_flight.compare_exchange(n, n - 1, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        // A drain of this node waits for its context's work.
        self.ctx.wake_waiters();
        Ok(())
    }

    fn end_request_unchecked(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
        self.ctx.wake_waiters();
    }

    /// Starts a read into, or a write from, `buf` at `offset` through the
    /// driver; `done` runs later in the home thread, and the request ends
    /// after it. Refused like [`start_request`](Self::start_request), except
    /// that in a drained section the request is queued (not in flight) and
    /// started, in submission order, when the last section ends.
    pub fn submit(
        self: &Arc<Self>,
        kind: RequestKind,
        buf: IoBuf,
        offset: u64,
        done: IoDone,
    ) -> Result<()> {
        self.count(kind)?;
        let refused = match self.driver.does_io() {
            false => Err(no_io(self)),
            true => self.driver.check(&buf, offset),
        };
        if let Err(e) = refused {
            self.end_request_unchecked();
            return Err(e);
        }
        if self.held.load(SeqCst) {
            let mut sections = self.sections.lock();
            if sections.holds() {
                sections.queue(Queued {
                    kind,
                    buf,
                    offset,
                    done,
                });
                drop(sections);
                self.end_request_unchecked();
                return Ok(());
            }
        }
        self.start_counted(kind, buf, offset, done)
    }

    /// Hands a request already counted in flight to the driver.
    pub(super) fn start_counted(
        self: &Arc<Self>,
        kind: RequestKind,
        buf: IoBuf,
        offset: u64,
        done: IoDone,
    ) -> Result<()> {
        let node = self.clone();
        // The request ends after the caller's completion has run, so a drain
        // that returns has seen every completion; also when it unwinds (a
        // Rust caller's panic), or the node would count it for ever.
        let done: IoDone = Box::new(move |result, buf| {
            let _ends = EndsRequest(&node);
            let _completing = Completing::by_key(node.completion_key());
            done(result, buf);
        });
        self.driver
            .submit(self, kind, buf, offset, done)
            .inspect_err(|_| self.end_request_unchecked())
    }

    /// Waits until no request is in flight, holding new ones back meanwhile
    /// (a drained section begun and ended): see
    /// [`drained_begin`](Self::drained_begin) for who may call it.
    pub fn drain(self: &Arc<Self>) -> Result<()> {
        self.drained_begin()?;
        self.drained_end()
    }

    /// Waits until no request is in flight, for a caller that holds `held`
    /// (see [`Waiter::releasing`]) and has refused new requests itself.
    pub(super) fn wait_idle_holding(&self, held: &ContextSet) -> Result<()> {
        self.waiter(Some(held))
            .and_then(|w| self.wait_quiet(w))
            .map_err(|e| self.named("drain", e))
    }

    pub(super) fn waiter(&self, held: Option<&ContextSet>) -> Result<Waiter> {
        match held {
            Some(set) => Waiter::with_set(&self.ctx, WaitOptions::default(), set),
            None => Waiter::new(&self.ctx, WaitOptions::default()),
        }
    }

    /// Flushes the node through its driver, in its home thread, from the
    /// graph's main context's home thread or the node's own home thread.
    pub fn flush(self: &Arc<Self>) -> Result<()> {
        self.may_wait("flush")?;
        self.run_in_home(None, |node, done| node.driver.flush(node, done))
            .map_err(|e| self.named("flush", e))
    }

    pub(super) fn flush_holding(self: &Arc<Self>, held: &ContextSet) -> Result<()> {
        self.run_in_home(Some(held), |node, done| node.driver.flush(node, done))
            .map_err(|e| self.named("flush", e))
    }

    /// Runs `op` in the node's home thread with its context held and waits
    /// for it to call `done`: right here when the caller is that thread, as
    /// a bottom half otherwise. Every check that could refuse the wait
    /// happens before `op` starts, so an error here means `op` never ran.
    pub(super) fn run_in_home(
        self: &Arc<Self>,
        held: Option<&ContextSet>,
        op: impl FnOnce(&Arc<Node>, OpDone) + Send + 'static,
    ) -> Result<()> {
        let waiter = self.waiter(held)?;
        let outcome: Arc<Mutex<Option<Result<()>>>> = Arc::default();
        let report = Report {
            slot: outcome.clone(),
            ctx: self.ctx.clone(),
        };
        let done: OpDone = Box::new(move |result| report.with(result));
        if self.ctx.is_home() {
            let _held = self.ctx.lock().guard();
            op(self, done);
        } else {
            let node = self.clone();
            self.ctx.schedule_once(move || op(&node, done));
        }
        waiter.wait_while(&mut || outcome.lock().is_none())?;
        let result = outcome.lock().take();
        result.unwrap_or_else(|| Err(lost_result()))
    }

    /// Stops new requests (`EBUSY`) until `unquiesce`.
    pub(super) fn quiesce(&self) {
        self.quiesced.store(true, SeqCst);
    }

    pub(super) fn unquiesce(&self) {
        self.quiesced.store(false, SeqCst);
    }

    pub(super) fn set_inactive(&self, inactive: bool) {
        self.inactive.store(inactive, SeqCst);
    }

    /// Prefixes an error with the node's name.
    pub(super) fn named(&self, what: &str, e: Error) -> Error {
        Error::new(
            e.errno(),
            format!("node '{}': {what} failed: {}", self.name, e.message()),
        )
    }
}

/// Every live node, for diagnostics, by serial (creation order). A node
/// takes its entry out when it is dropped, so adding one never scans the
/// others. A BTreeMap: memory checkers see its nodes as plainly reachable.
static NODES: Mutex<BTreeMap<u64, Weak<Node>>> = Mutex::new(BTreeMap::new());
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0);

pub(super) fn register(node: &Arc<Node>) {
    crate::diag::add_describer(crate::diag::Section::Nodes, describe_all_nodes);
    NODES.lock().insert(node.serial, Arc::downgrade(node));
}

/// Whether the registry still lists the node with `serial`.
#[cfg(test)]
pub(super) fn registered(serial: u64) -> bool {
    NODES.lock().contains_key(&serial)
}

impl Drop for Node {
    fn drop(&mut self) {
        NODES.lock().remove(&self.serial);
    }
}

/// Every live node, one line each ("" when there are none).
pub fn describe_all_nodes() -> String {
    let nodes: Vec<_> = NODES.lock().values().filter_map(Weak::upgrade).collect();
    nodes
        .iter()
        .map(|n| n.describe())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Node {
    /// One line describing the node, for hang diagnostics.
    pub fn describe(&self) -> String {
        let children: Vec<_> = self
            .children
            .lock()
            .iter()
            .map(|c| format!("'{}'", c.name()))
            .collect();
        format!(
            "node '{}': context '{}' (id {}), {} in flight, {}, {}{}{}{}",
            self.name,
            self.ctx.name(),
            self.ctx.id(),
            self.in_flight(),
            if self.is_inactive() {
                "inactive"
            } else {
                "active"
            },
            if self.writable {
                "writable"
            } else {
                "read-only"
            },
            if self.quiesced.load(SeqCst) {
                ", quiesced for handover"
            } else {
                ""
            },
            self.describe_sections(),
            if children.is_empty() {
                String::new()
            } else {
                format!(", children {}", children.join(", "))
            }
        )
    }
}

impl Node {
    /// Requests queued until the last drained section ends.
    pub fn queued(&self) -> usize {
        self.sections.lock().queued()
    }

    fn describe_sections(&self) -> String {
        let s = self.sections.lock();
        match (s.open(), s.queued()) {
            (0, 0) => String::new(),
            (open, queued) => format!(", {open} drained section(s), {queued} request(s) queued"),
        }
    }
}

impl Node {
    #[cfg(test)]
    pub(super) fn serial(&self) -> u64 {
        self.serial
    }

    /// The node's identity for [`Completing`]: its address, valid while it
    /// has a request in flight (every completion holds the node).
    pub(super) fn completion_key(&self) -> usize {
        self as *const Node as usize
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("context", &self.ctx.name())
            .field("in_flight", &self.in_flight())
            .field("inactive", &self.is_inactive())
            .finish()
    }
}
