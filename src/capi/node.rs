//! `AioctxNode`: block nodes, their requests, and C drivers.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;

use super::boundary::{
    borrow, borrow_arc, borrowed_arc_ptr, clone_arc, ffi, opaque, optional, str_arg, CFn,
};
use super::context::AioctxContext;
use super::graph::AioctxGraph;
use crate::block::{Backend, Driver, IoDone, Node, OpDone, OpenFlags, RequestKind};
use crate::error::{invalid, Error, Result};
use crate::sys::file::IoBuf;

/// `aioctx_node_open_file` flag: open for writing and take the image write lock.
pub const AIOCTX_OPEN_RDWR: c_uint = 1;
/// `aioctx_node_open_file` flag: incoming migration; the node starts inactive,
/// without the write lock, until `aioctx_graph_activate_all`.
pub const AIOCTX_OPEN_INACTIVE: c_uint = 2;
/// `aioctx_node_open_file` flag: `O_DIRECT`, bypassing the page cache. Every
/// request's buffer address, offset and length must then be multiples of
/// `aioctx_node_alignment` (else -EINVAL). Since: 0.2
pub const AIOCTX_OPEN_DIRECT: c_uint = 4;
/// `aioctx_node_open_file` flag: run the node's I/O on the worker pool.
/// Since: 0.2
pub const AIOCTX_OPEN_AIO_THREADS: c_uint = 8;
/// `aioctx_node_open_file` flag: run the node's I/O on its context's
/// io_uring (-ENOTSUP where this process cannot use io_uring). Since: 0.2
pub const AIOCTX_OPEN_AIO_IO_URING: c_uint = 16;

const OPEN_FLAGS: c_uint = AIOCTX_OPEN_RDWR
    | AIOCTX_OPEN_INACTIVE
    | AIOCTX_OPEN_DIRECT
    | AIOCTX_OPEN_AIO_THREADS
    | AIOCTX_OPEN_AIO_IO_URING;

/// A node of a block graph, owned by the graph: pointers are borrowed and
/// valid until `aioctx_graph_free`.
pub struct AioctxNode {
    _private: [u8; 0],
}

opaque!(AioctxNode => Node, ArcLent, "node");

/// `void (*)(void *opaque, int64_t ret)`: completion of `aioctx_node_pread`
/// and `aioctx_node_pwrite`; `ret` is the byte count (short only at end of
/// file, for reads) or a negative errno.
pub type AioctxIoDone = Option<unsafe extern "C" fn(opaque: *mut c_void, ret: i64)>;

/// A node driver: optional callbacks, each called with the driver's opaque
/// pointer in the node's home thread with its context held (`close`: see
/// `aioctx_graph_free`). Return 0 or a negative errno; NULL callbacks succeed
/// without doing anything.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AioctxDriver {
    /// Make written data durable (called by `aioctx_node_flush` and
    /// `aioctx_graph_inactivate_all`).
    pub flush: Option<unsafe extern "C" fn(node: *mut AioctxNode, opaque: *mut c_void) -> c_int>,
    /// Stop using the image: the node is migrating away (after its flush).
    pub inactivate:
        Option<unsafe extern "C" fn(node: *mut AioctxNode, opaque: *mut c_void) -> c_int>,
    /// Resume using the image: the node is taken over (after write permission is back).
    pub activate: Option<unsafe extern "C" fn(node: *mut AioctxNode, opaque: *mut c_void) -> c_int>,
    /// The graph is being freed: release what `opaque` holds for this node.
    pub close: Option<unsafe extern "C" fn(node: *mut AioctxNode, opaque: *mut c_void)>,
}

type DriverFn = unsafe extern "C" fn(*mut AioctxNode, *mut c_void) -> c_int;

/// A C driver table and its opaque pointer.
struct CDriver {
    table: AioctxDriver,
    opaque: *mut c_void,
}

// SAFETY: the C API documents that driver callbacks run in the node's home
// thread; aioctx only passes `opaque` back, never dereferences it.
unsafe impl Send for CDriver {}
// SAFETY: as above.
unsafe impl Sync for CDriver {}

impl CDriver {
    fn call(&self, f: Option<DriverFn>, node: &Node, what: &str) -> Result<()> {
        let Some(f) = f else { return Ok(()) };
        // SAFETY: the C caller registered `f` for `opaque`; the node pointer is
        // the one C knows the node by (`Arc::as_ptr`).
        let rc = unsafe { f(node_ptr(node), self.opaque) };
        if rc >= 0 {
            return Ok(());
        }
        Err(match rc.checked_neg() {
            Some(errno) => Error::new(
                errno,
                format!(
                    "driver {what} callback returned {rc} ({})",
                    std::io::Error::from_raw_os_error(errno)
                ),
            ),
            None => Error::new(
                libc::EIO,
                format!(
                    "driver {what} callback returned {rc}, not a negative errno: reported as EIO"
                ),
            ),
        })
    }
}

impl Driver for CDriver {
    fn flush(&self, node: &Arc<Node>, done: OpDone) {
        done(self.call(self.table.flush, node, "flush"))
    }

    fn inactivate(&self, node: &Arc<Node>) -> Result<()> {
        self.call(self.table.inactivate, node, "inactivate")
    }

    fn activate(&self, node: &Arc<Node>) -> Result<()> {
        self.call(self.table.activate, node, "activate")
    }

    fn close(&self, node: &Arc<Node>) {
        if let Some(close) = self.table.close {
            // SAFETY: as in `call`.
            unsafe { close(node_ptr(node), self.opaque) }
        }
    }
}

fn node_ptr(node: &Node) -> *mut AioctxNode {
    (node as *const Node).cast_mut().cast()
}

/// The node named `name`, borrowed (valid until the graph is freed), or NULL
/// (no such node: ENOENT; NULL argument: EINVAL). Any thread.
#[no_mangle]
pub extern "C" fn aioctx_graph_find(g: *mut AioctxGraph, name: *const c_char) -> *mut AioctxNode {
    ffi("aioctx_graph_find", || {
        let name = str_arg(name, "name")?;
        let node = borrow(g)?.find(name).ok_or_else(|| {
            crate::Error::new(
                libc::ENOENT,
                format!("no node named '{name}' in this graph"),
            )
        })?;
        Ok(borrowed_arc_ptr(&node))
    })
}

/// Adds a node named `name` (unique, non-empty) whose callbacks run in `ctx`'s
/// home thread, driven by `drv` (copied; NULL: no callbacks) with `opaque`.
/// The node starts active and writable (and drained while an
/// `aioctx_graph_drain_all_begin` section is open). Any thread. Returns the
/// node (borrowed, owned by the graph), or NULL: EINVAL (NULL `g`/`name`/`ctx`,
/// empty name), EEXIST (name taken), ENODEV (the graph is being freed: called
/// from a `close` callback).
#[no_mangle]
pub extern "C" fn aioctx_node_new(
    g: *mut AioctxGraph,
    name: *const c_char,
    ctx: *mut AioctxContext,
    drv: *const AioctxDriver,
    opaque: *mut c_void,
) -> *mut AioctxNode {
    ffi("aioctx_node_new", || {
        let (graph, name, ctx) = (borrow(g)?, str_arg(name, "name")?, borrow_arc(ctx)?);
        let table = optional(drv).copied().unwrap_or(AioctxDriver {
            flush: None,
            inactivate: None,
            activate: None,
            close: None,
        });
        let node = graph.add_node(name, &ctx, Box::new(CDriver { table, opaque }))?;
        Ok(borrowed_arc_ptr(&node))
    })
}

/// Adds a node backed by the raw-file driver on the image at `path`.
/// `flags`: `AIOCTX_OPEN_RDWR` opens for writing and takes the image write
/// lock (an open-file-description lock: no other process can then write or
/// activate the image); with `AIOCTX_OPEN_INACTIVE` too (incoming migration)
/// the node starts inactive and takes the lock in `aioctx_graph_activate_all`.
/// `AIOCTX_OPEN_DIRECT` opens with `O_DIRECT` (EINVAL where the file system
/// has none). Requests run on the io_uring of `ctx` (one per context, its
/// completions handled in `ctx`'s home thread) where this process can use
/// io_uring, else on the worker pool (said once in the log);
/// `AIOCTX_OPEN_AIO_THREADS` or `AIOCTX_OPEN_AIO_IO_URING` choose (ENOTSUP:
/// no io_uring). Completions run in `ctx`'s home thread either way.
/// Any thread (the open runs in the caller's thread). Returns the node, or NULL: ENOENT/EACCES/EISDIR/... naming the path,
/// EAGAIN ("locked by another process"), EEXIST (name taken), EINVAL
/// (unknown flags, or both backend flags), ENODEV (the graph is being freed).
#[no_mangle]
pub extern "C" fn aioctx_node_open_file(
    g: *mut AioctxGraph,
    name: *const c_char,
    ctx: *mut AioctxContext,
    path: *const c_char,
    flags: c_uint,
) -> *mut AioctxNode {
    ffi("aioctx_node_open_file", || {
        let (graph, name, ctx, path) = (
            borrow(g)?,
            str_arg(name, "name")?,
            borrow_arc(ctx)?,
            str_arg(path, "path")?,
        );
        let flags = open_flags(flags)?;
        Ok(borrowed_arc_ptr(&graph.open_file(name, &ctx, path, flags)?))
    })
}

fn open_flags(flags: c_uint) -> Result<OpenFlags> {
    if flags & !OPEN_FLAGS != 0 {
        return Err(invalid(format!(
            "unknown flags {:#x}: use AIOCTX_OPEN_RDWR, _INACTIVE, _DIRECT, _AIO_THREADS or _AIO_IO_URING",
            flags & !OPEN_FLAGS
        )));
    }
    let backend =
        match (
            flags & AIOCTX_OPEN_AIO_THREADS != 0,
            flags & AIOCTX_OPEN_AIO_IO_URING != 0,
        ) {
            (false, false) => Backend::Auto,
            (true, false) => Backend::Threads,
            (false, true) => Backend::IoUring,
            (true, true) => return Err(invalid(
                "AIOCTX_OPEN_AIO_THREADS and AIOCTX_OPEN_AIO_IO_URING together: choose one backend",
            )),
        };
    Ok(OpenFlags {
        rdwr: flags & AIOCTX_OPEN_RDWR != 0,
        inactive: flags & AIOCTX_OPEN_INACTIVE != 0,
        direct: flags & AIOCTX_OPEN_DIRECT != 0,
        backend,
    })
}

/// The alignment, in bytes, that requests to `n` need for their buffer
/// address, offset and length: the device's logical block size (or what the
/// file system asks) for a node opened with `AIOCTX_OPEN_DIRECT`, 1 for any
/// other node. Any thread. 0 if `n` is NULL. Since: 0.2
#[no_mangle]
pub extern "C" fn aioctx_node_alignment(n: *const AioctxNode) -> usize {
    ffi("aioctx_node_alignment", || Ok(borrow(n)?.alignment()))
}

/// Which backend runs the requests of the raw-file node `n`: `"io_uring"`
/// or `"threads"` (static strings). Any thread. NULL for a node without the
/// raw-file driver (ENOTSUP) or a NULL `n` (EINVAL). Since: 0.2
#[no_mangle]
pub extern "C" fn aioctx_node_io_backend(n: *const AioctxNode) -> *const c_char {
    ffi("aioctx_node_io_backend", || {
        let node = borrow(n)?;
        match node.io_backend() {
            Some("io_uring") => Ok(c"io_uring".as_ptr()),
            Some(_) => Ok(c"threads".as_ptr()),
            None => Err(Error::new(
                libc::ENOTSUP,
                format!(
                    "node '{}' has no raw-file driver, so no I/O backend",
                    node.name()
                ),
            )),
        }
    })
}

/// The node's name (valid as long as the node). Any thread. NULL if `n` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_node_name(n: *const AioctxNode) -> *const c_char {
    ffi("aioctx_node_name", || Ok(borrow(n)?.c_name().as_ptr()))
}

/// The node's context, borrowed (the node holds a reference). Any thread.
/// NULL if `n` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_node_context(n: *const AioctxNode) -> *mut AioctxContext {
    ffi("aioctx_node_context", || {
        Ok(borrowed_arc_ptr(borrow(n)?.context()))
    })
}

/// Adds the edge `parent → child` (both in one graph). Any thread. Returns 0 (also if the
/// edge exists), -ELOOP if it would create a cycle (a self-edge included),
/// -EINVAL (NULL, or nodes of different graphs).
#[no_mangle]
pub extern "C" fn aioctx_node_attach_child(
    parent: *mut AioctxNode,
    child: *mut AioctxNode,
) -> c_int {
    ffi("aioctx_node_attach_child", || {
        let (parent, child) = (borrow_arc(parent)?, borrow_arc(child)?);
        crate::block::attach(&parent, &child)?;
        Ok(0)
    })
}

/// Counts a request in flight on `n` (for drivers that do their own I/O).
/// Any thread. Returns 0; -EPERM for a write on an inactive or read-only node;
/// -EBUSY while `aioctx_graph_inactivate_all` runs; -EINVAL if `n` is NULL.
///
/// In a drained section (`aioctx_node_drained_begin`, `aioctx_node_drain`,
/// `aioctx_graph_drain_all_begin`) a request may not start, so that the drain
/// ends even while completions keep starting new ones:
/// - a thread that runs no aioctx event loop and holds no context (a vCPU
///   or worker thread) waits until the last section ends, then counts the
///   request and returns 0 (as a request entering a drained node waits in
///   QEMU), or -ENODEV if `aioctx_graph_free` frees the graph meanwhile. Such a thread must not have a request of `n` in flight that only
///   it will end: the drain would wait for it while it waits for the drain.
/// - any other thread (an IOThread, the main loop, a callback, a thread
///   holding a context) gets -EBUSY at once, nothing counted, because
///   blocking it could stall the drain itself: retry after the section, or
///   use `aioctx_node_pread`/`aioctx_node_pwrite`, which queue instead.
#[no_mangle]
pub extern "C" fn aioctx_node_start_request(n: *mut AioctxNode, write: bool) -> c_int {
    ffi("aioctx_node_start_request", || {
        let kind = if write {
            RequestKind::Write
        } else {
            RequestKind::Read
        };
        // Owned for the call: a wait for a drained section may outlast the
        // graph (aioctx_graph_free ends it with ENODEV).
        clone_arc(n)?.start_request(kind)?;
        Ok(0)
    })
}

/// Ends a request started with `aioctx_node_start_request`, after its
/// completion has been handled. Any thread (also inside a drained section);
/// wakes waiters (drain). Without a
/// request in flight, sets `aioctx_last_error()` and changes nothing.
#[no_mangle]
pub extern "C" fn aioctx_node_end_request(n: *mut AioctxNode) {
    ffi("aioctx_node_end_request", || borrow(n)?.end_request())
}

/// The number of requests in flight (not counting requests queued by a
/// drained section). Any thread. A request that a drained section or a
/// handover turns away is counted for a moment (counted first, then
/// checked, so no request can slip past a drain), so in a section this can
/// read non-zero briefly while other threads submit. -EINVAL if `n` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_node_in_flight(n: *const AioctxNode) -> i64 {
    ffi("aioctx_node_in_flight", || Ok(borrow(n)?.in_flight()))
}

/// Whether the node is inactive (migrated away, or opened for an incoming
/// migration and not yet activated). Any thread. False if `n` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_node_is_inactive(n: *const AioctxNode) -> bool {
    ffi("aioctx_node_is_inactive", || Ok(borrow(n)?.is_inactive()))
}

/// Waits until `n` has no request in flight: `aioctx_node_drained_begin`
/// then `aioctx_node_drained_end`. Requests submitted while it waits (by
/// completions too) do not keep it waiting: they start after it returns.
/// Threads: as `aioctx_node_drained_begin`. Returns 0, or its errors.
#[no_mangle]
pub extern "C" fn aioctx_node_drain(n: *mut AioctxNode) -> c_int {
    ffi("aioctx_node_drain", || {
        borrow_arc(n)?.drain()?;
        Ok(0)
    })
}

/// Begins a drained section of `n` (QEMU's `bdrv_drained_begin`): from now
/// until the matching `aioctx_node_drained_end`, new requests are held back
/// (`aioctx_node_pread`/`pwrite` queue theirs; `aioctx_node_start_request`
/// waits or gives -EBUSY), then the call waits until the requests already in
/// flight are done, including their completion callbacks. Sections nest (a
/// counter, shared with `aioctx_graph_drain_all_begin`); each needs its end.
///
/// Threads: the graph's main context's home thread (the first such call
/// claims it), which waits by polling its own loop and releasing `n`'s
/// context once if it holds it; or the home thread of `n`'s context (an
/// IOThread's BH or callback), which waits by polling that context, so other
/// callbacks of that context run meanwhile. Inside a completion callback of
/// `n` the call does not wait for that completion itself, nor for the ones
/// the same bottom half runs after it (they cannot run before it returns).
///
/// Returns 0 with the section open. Errors leave no section open: -EPERM from
/// any other thread; -EDEADLK if the caller holds `n`'s context more than
/// once, or on a wait-for cycle (as `aioctx_poll_while`); -EINVAL if `n` is
/// NULL.
#[no_mangle]
pub extern "C" fn aioctx_node_drained_begin(n: *mut AioctxNode) -> c_int {
    ffi("aioctx_node_drained_begin", || {
        borrow_arc(n)?.drained_begin()?;
        Ok(0)
    })
}

/// Ends a drained section of `n`. Any thread; it never waits. The last end
/// starts the requests queued meanwhile, in the order they were submitted
/// (a queued request that can no longer start, say a write to a node
/// inactivated meanwhile, completes with that error). Returns 0; -EINVAL
/// without an open section (nothing changes) or if `n` is NULL.
#[no_mangle]
pub extern "C" fn aioctx_node_drained_end(n: *mut AioctxNode) -> c_int {
    ffi("aioctx_node_drained_end", || {
        borrow_arc(n)?.drained_end()?;
        Ok(0)
    })
}

/// Flushes `n` through its driver (raw file: `fdatasync` on the node's
/// backend) and waits for the result. Threads: as
/// `aioctx_node_drained_begin`. From the node's home thread the driver's
/// flush is called right there (with the context held); from the main loop
/// thread it runs as a bottom half in the home thread while the caller waits
/// as in `aioctx_node_drain`. Returns 0 or the driver's negative errno (raw
/// file: a failed fdatasync, which stays failed for this open image, since the
/// kernel reports a lost write only once); -EDEADLK and -EPERM as
/// `aioctx_node_drained_begin`.
#[no_mangle]
pub extern "C" fn aioctx_node_flush(n: *mut AioctxNode) -> c_int {
    ffi("aioctx_node_flush", || {
        let node = borrow_arc(n)?;
        node.flush()?;
        Ok(0)
    })
}

/// Reads `len` bytes at `offset` into `buf` (raw-file nodes). Any thread.
/// Returns 0 once submitted; then the read runs (on the context's io_uring
/// or a worker thread, see `aioctx_node_open_file`) and
/// `cb(opaque, ret)` runs in the node's home thread with its context held
/// (`ret`: bytes read, fewer only at end of file, or -errno). `buf` must stay
/// valid until then; `cb` may be NULL (fire and forget). In a drained
/// section the request is queued instead (returns 0, not in flight) and
/// started when the last section ends, in submission order; a completion
/// may thus submit the next request without keeping a drain waiting.
/// Errors (no callback then): -EINVAL, -EBUSY (handover in progress),
/// -ENOTSUP (not a raw-file node). An offset beyond the file size limit
/// completes with -EINVAL; a request still queued when the graph is freed
/// completes with -ECANCELED.
#[no_mangle]
pub extern "C" fn aioctx_node_pread(
    n: *mut AioctxNode,
    buf: *mut c_void,
    len: usize,
    offset: u64,
    cb: AioctxIoDone,
    opaque: *mut c_void,
) -> c_int {
    ffi("aioctx_node_pread", || {
        submit(n, RequestKind::Read, buf, len, offset, cb, opaque)
    })
}

/// Writes `len` bytes from `buf` at `offset` (raw-file nodes). Any thread.
/// Like `aioctx_node_pread`; a write is acknowledged (on disk after a flush)
/// when `cb` reports `len`. Also -EPERM: the node is inactive or read-only.
#[no_mangle]
pub extern "C" fn aioctx_node_pwrite(
    n: *mut AioctxNode,
    buf: *const c_void,
    len: usize,
    offset: u64,
    cb: AioctxIoDone,
    opaque: *mut c_void,
) -> c_int {
    ffi("aioctx_node_pwrite", || {
        submit(
            n,
            RequestKind::Write,
            buf.cast_mut(),
            len,
            offset,
            cb,
            opaque,
        )
    })
}

fn submit(
    n: *mut AioctxNode,
    kind: RequestKind,
    buf: *mut c_void,
    len: usize,
    offset: u64,
    cb: AioctxIoDone,
    opaque: *mut c_void,
) -> Result<c_int> {
    let node = borrow_arc(n)?;
    if buf.is_null() && len > 0 {
        return Err(invalid("buf is NULL: pass a buffer of len bytes"));
    }
    // SAFETY: the C caller lends `len` bytes at `buf` until `cb` runs; a write
    // only reads them.
    let buf = unsafe { IoBuf::lent(buf.cast(), len) };
    let cb = cb.map(|f| CFn { f, opaque });
    let done: IoDone = Box::new(move |result, _buf| {
        if let Some(cb) = cb {
            let ret = result.map_or_else(|e| -(e.errno() as i64), |n| n as i64);
            // SAFETY: the caller registered `f` for `opaque`.
            unsafe { (cb.f)(cb.opaque, ret) }
        }
    });
    node.submit(kind, buf, offset, done)?;
    Ok(0)
}
