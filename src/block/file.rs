//! The built-in raw-file driver: reads, writes and `fdatasync` on the
//! context's io_uring (see `ring`) or on the worker pool, completions in the
//! node's context either way, optionally `O_DIRECT`, and an image write lock
//! shared with other processes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::sync::Arc;

use once_cell::sync::{Lazy, OnceCell};

use super::image_lock::{self, reopen, ImageLock};
use super::node::{Driver, Node};
use super::pool;
use super::request::{io_error, IoDone, OpDone, RequestKind};
use super::ring::{self, Ring, SyncDone};
use super::writer::WriteQueue;
use crate::context::Context;
use crate::diag::{log, Level};
use crate::error::{invalid, Error, Result};
use crate::sys::file::{
    direct_alignment, pread_cached, pread_full, pwrite_full, set_blocking, IoBuf,
};
use crate::sys::uring::Op;

/// Which backend runs a raw file's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring where this process can use it, else the worker pool
    /// (`AIOCTX_IO_BACKEND` changes the default).
    #[default]
    Auto,
    /// The worker pool.
    Threads,
    /// The context's io_uring; opening fails with `ENOTSUP` without one.
    IoUring,
}

/// How to open an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open for writing and take the image write lock.
    pub rdwr: bool,
    /// Incoming migration: start inactive, without the lock, until activate_all.
    pub inactive: bool,
    /// `O_DIRECT`: bypass the page cache; requests must be aligned.
    pub direct: bool,
    /// Who runs the requests.
    pub backend: Backend,
}

/// A raw image file.
pub struct FileDriver {
    file: Arc<File>,
    path: Arc<str>,
    /// The image write lock (`None`: a read-only node, which never locks).
    lock: Option<Arc<ImageLock>>,
    /// The errno of a failed fdatasync (0: none). Sticky: the kernel reports
    /// a writeback error to fdatasync once, so a retry would "succeed" with
    /// acknowledged writes lost. Every later flush fails with it.
    flush_error: Arc<AtomicI32>,
    writes: Arc<WriteQueue>,
    /// The context's ring, when requests run there.
    ring: Option<RingFile>,
    /// `O_DIRECT`'s alignment for addresses, offsets and lengths (bytes;
    /// 1 without `O_DIRECT`).
    align: usize,
}

/// Whether buffered writes go to the ring too (else to the batching writer,
/// which takes a queue's writes in one worker wake-up: measured faster for
/// page-cache writes in `benches/file-io`). Direct writes always go to the
/// ring: there the device, not the inode lock, is what they wait for.
const BUFFERED_WRITES_ON_RING: bool = false;

impl FileDriver {
    /// Opens `path` for a node of `ctx`; with `rdwr` and not `inactive`,
    /// takes the write lock (`EAGAIN` if another process holds it).
    pub fn open(path: &str, flags: OpenFlags, ctx: &Arc<Context>) -> Result<FileDriver> {
        // Before any ring exists: a fork() must find its hooks for every
        // ring (a child that kept one would read its unmapped queues).
        watch_fork();
        let ring = ring_for(flags.backend, ctx)?;
        // O_NONBLOCK: opening a FIFO must not wait for a writer. It does not
        // change I/O on regular files or block devices, the only kinds accepted.
        let direct = if flags.direct { libc::O_DIRECT } else { 0 };
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(flags.rdwr)
            .custom_flags(libc::O_NONBLOCK | direct);
        let file = options
            .open(path)
            .map_err(|e| {
                if flags.direct && e.raw_os_error() == Some(libc::EINVAL) {
                    return Error::new(
                        libc::EINVAL,
                        format!("image '{path}': its file system does not support O_DIRECT; open it without AIOCTX_OPEN_DIRECT"),
                    );
                }
                Error::from_io(&format!("cannot open image '{path}'"), e)
            })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::from_io(&format!("cannot stat image '{path}'"), e))?;
        if meta.is_dir() {
            return Err(Error::new(
                libc::EISDIR,
                format!("image '{path}' is a directory: pass a file"),
            ));
        }
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(Error::new(
                libc::ENXIO,
                format!("image '{path}' is not a regular file or a block device"),
            ));
        }
        // Only the open needed O_NONBLOCK: with it, io_uring fails a
        // request that would wait (EAGAIN) instead of waiting on its workers.
        set_blocking(file.as_fd())
            .map_err(|e| Error::from_io(&format!("image '{path}': fcntl(F_SETFL)"), e))?;
        let align = if flags.direct {
            direct_alignment(file.as_fd())
                .map_err(|e| Error::from_io(&format!("image '{path}': O_DIRECT alignment"), e))?
        } else {
            1
        };
        let ring = ring.map(|ring| RingFile {
            ring,
            options: flags.rdwr.then(|| options.clone()),
            own: OnceCell::new(),
        });
        let (file, path): (Arc<File>, Arc<str>) = (Arc::new(file), path.into());
        let lock = flags
            .rdwr
            .then(|| ImageLock::new(file.clone(), options, path.clone()));
        let driver = FileDriver {
            file,
            path,
            lock,
            flush_error: Arc::default(),
            writes: Arc::default(),
            ring,
            align,
        };
        if flags.rdwr && !flags.inactive {
            driver.set_lock(true)?;
        }
        Ok(driver)
    }

    /// The image's path, as given to [`FileDriver::open`].
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The worker pool's way to run a read or write.
    fn submit_threads(
        &self,
        node: &Arc<Node>,
        kind: RequestKind,
        mut buf: IoBuf,
        offset: u64,
        done: IoDone,
    ) {
        let direct = self.align > 1;
        if kind == RequestKind::Write && !direct {
            self.writes
                .push(&self.file, node, &self.path, (buf, offset, done));
            return;
        }
        // Misses of the page cache (see `submit`) go to the pool, where
        // reads of one image run in parallel. Direct writes of one image run in parallel too: no inode lock
        // serialises them, the device takes them as a queue.
        let path = self.path.clone();
        self.offload(
            node,
            move |file| {
                let r = match kind {
                    RequestKind::Read => pread_full(file.as_fd(), &mut buf, offset),
                    RequestKind::Write => pwrite_full(file.as_fd(), &mut buf, offset),
                };
                (r, buf)
            },
            move |(r, buf)| done(r.map_err(|e| io_error(&path, e)), buf),
        );
    }

    /// Takes (`exclusive`) or gives up the image write lock.
    fn set_lock(&self, exclusive: bool) -> Result<()> {
        match &self.lock {
            Some(lock) => lock.set(exclusive),
            None => Ok(()),
        }
    }

    /// Runs `work` on the worker pool and `finish` with its result as a
    /// bottom half in the node's context.
    fn offload<T: Send + 'static>(
        &self,
        node: &Arc<Node>,
        work: impl FnOnce(&File) -> T + Send + 'static,
        finish: impl FnOnce(T) + Send + 'static,
    ) {
        let (file, node) = (self.file.clone(), node.clone());
        pool::submit(move || {
            let result = work(&file);
            // Let go of the file and node before the completion can run: once
            // the caller has seen it and freed the graph, the image must be
            // closed (and its lock gone), not held by this worker a bit longer.
            drop(file);
            let ctx = node.context().clone();
            drop(node);
            ctx.schedule_once(move || finish(result));
        });
    }
}

impl Driver for FileDriver {
    fn flush(&self, node: &Arc<Node>, done: OpDone) {
        let earlier = self.flush_error.load(Relaxed);
        if earlier != 0 {
            return done(Err(Error::new(
                earlier,
                format!(
                    "fdatasync '{}' failed earlier ({}): written data may not be on disk, \
                     so the image stays failed until it is reopened",
                    self.path,
                    std::io::Error::from_raw_os_error(earlier)
                ),
            )));
        }
        let (path, sticky) = (self.path.clone(), self.flush_error.clone());
        let finish: SyncDone = Box::new(move |r| {
            if let Err(e) = &r {
                sticky.store(e.raw_os_error().unwrap_or(libc::EIO), Relaxed);
            }
            done(r.map_err(|e| Error::from_io(&format!("fdatasync '{path}'"), e)))
        });
        let on_ring = self
            .ring
            .as_ref()
            .and_then(|r| Some((&r.ring, r.file(&self.file)?)));
        let finish = match on_ring {
            Some((ring, file)) => match ring.sync(file, node, finish) {
                Ok(()) => return,
                Err(finish) => finish,
            },
            None => finish,
        };
        self.offload(node, |file| file.sync_data(), finish);
    }

    fn alignment(&self) -> usize {
        self.align
    }

    fn io_backend(&self) -> Option<&'static str> {
        Some(if self.ring.is_some() {
            "io_uring"
        } else {
            "threads"
        })
    }

    fn does_io(&self) -> bool {
        true
    }

    /// Refuses a request `O_DIRECT` cannot do (`EINVAL`, naming the alignment).
    fn check(&self, buf: &IoBuf, offset: u64) -> Result<()> {
        let a = self.align;
        if buf.addr() % a == 0 && buf.len() % a == 0 && offset % a as u64 == 0 {
            return Ok(());
        }
        Err(invalid(format!(
            "image '{}' is open with O_DIRECT: buffer address ({:#x}), offset ({offset}) and \
             length ({}) must be multiples of {a} bytes (aioctx_node_alignment)",
            self.path,
            buf.addr(),
            buf.len()
        )))
    }

    fn set_write_permission(&self, _node: &Arc<Node>, write: bool) -> Result<()> {
        self.set_lock(write)
    }

    fn submit(
        &self,
        node: &Arc<Node>,
        kind: RequestKind,
        buf: IoBuf,
        offset: u64,
        done: IoDone,
    ) -> Result<()> {
        let direct = self.align > 1;
        // Page-cache hits need neither a worker nor the ring: read now, in
        // the submitting thread, and complete as a BH (the completion
        // contract is unchanged). A submitter in another thread than the
        // node's (a completion of another IOThread) thus does the copy
        // itself, in parallel, where the ring would hand it to the home
        // thread: 2x the ring's throughput with two IOThreads on two CPUs
        // in `benches/file-io`, the same on one CPU. (Not with O_DIRECT:
        // its "non-blocking" read would wait for the device right here.)
        let mut buf = buf;
        if kind == RequestKind::Read && !direct {
            if let Some(n) = pread_cached(self.file.as_fd(), &mut buf, offset) {
                node.context().schedule_once(move || done(Ok(n), buf));
                return Ok(());
            }
        }
        let on_ring = kind == RequestKind::Read || direct || BUFFERED_WRITES_ON_RING;
        let ring = self.ring.as_ref().filter(|_| on_ring);
        let ring = ring.and_then(|r| Some((&r.ring, r.file(&self.file)?)));
        let (buf, done) = match ring {
            Some((ring, file)) => {
                let op = match kind {
                    RequestKind::Read => Op::Read,
                    RequestKind::Write => Op::Write,
                };
                match ring.submit_io((op, file, &self.path), node, (buf, offset, done)) {
                    Ok(()) => return Ok(()),
                    Err(back) => back,
                }
            }
            _ => (buf, done),
        };
        self.submit_threads(node, kind, buf, offset, done);
        Ok(())
    }
}

/// A node's ring, and the open file of the image it uses.
///
/// A node that may take the image lock gives the ring an open file of its
/// own, without the lock: a killed process's ring lets go of its files only
/// some time after the process is reaped, and the lock must be gone by then
/// (the destination of a migration takes it right away). Opened at the
/// first request on the ring, not at open: a node never used costs one
/// descriptor. Opened from the node's own open file, never by path again.
struct RingFile {
    ring: Arc<Ring>,
    /// How to open the ring's own file; `None`: the node never locks, the
    /// ring shares its open file.
    options: Option<OpenOptions>,
    /// The ring's own file; `None` inside if it could not be opened (out of
    /// descriptors): the worker pool then runs the requests.
    own: OnceCell<Option<File>>,
}

impl RingFile {
    /// The file the ring reads and writes for this node, if any.
    fn file<'a>(&'a self, shared: &'a File) -> Option<&'a File> {
        match &self.options {
            None => Some(shared),
            Some(options) => self
                .own
                .get_or_init(|| {
                    let file = reopen(shared, options)?;
                    // Blocking, as the node's file (see `FileDriver::open`).
                    set_blocking(file.as_fd()).ok().map(|()| file)
                })
                .as_ref(),
        }
    }
}

/// The ring requests of a node of `ctx` run on, opened with `backend`
/// (`None`: the worker pool).
fn ring_for(backend: Backend, ctx: &Arc<Context>) -> Result<Option<Arc<Ring>>> {
    match backend {
        Backend::Threads => Ok(None),
        Backend::IoUring if !ring::available() => Err(Error::new(
            libc::ENOTSUP,
            format!(
                "io_uring is not usable by this process ({}): open without \
                 AIOCTX_OPEN_AIO_IO_URING",
                ring::availability().unwrap_err()
            ),
        )),
        Backend::IoUring => Ring::of(ctx).map(Some),
        Backend::Auto if !*DEFAULT_IS_URING => Ok(None),
        // A ring that cannot be set up now (out of memory, a limit on
        // locked memory) leaves this node on the pool, as io_uring absent would.
        Backend::Auto => Ok(Ring::of(ctx).ok()),
    }
}

/// Whether nodes opened without a backend flag use io_uring: where it is
/// available, unless `AIOCTX_IO_BACKEND=threads`. Said once in the log when
/// it is not available.
static DEFAULT_IS_URING: Lazy<bool> = Lazy::new(|| {
    let wanted = std::env::var("AIOCTX_IO_BACKEND").ok();
    if wanted.as_deref() == Some("threads") {
        return false;
    }
    let available = ring::availability();
    if let Err(why) = available {
        log(
            Level::Info,
            &format!("io_uring is not usable by this process ({why}): raw-file I/O runs on the worker pool"),
        );
    }
    available.is_ok()
});

/// Registers the `fork()` handlers of the rings and the worker pool (once,
/// at the first open: no ring or job exists before one).
fn watch_fork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        crate::thread::on_fork(crate::sys::thread::ForkHandlers {
            prepare: || {
                image_lock::before_fork();
                ring::before_fork();
                pool::before_fork();
            },
            parent: || {
                pool::after_fork_in_parent();
                ring::after_fork(false);
                image_lock::after_fork(false);
            },
            child: || {
                pool::after_fork_in_child();
                ring::after_fork(true);
                image_lock::after_fork(true);
            },
        })
    });
}
