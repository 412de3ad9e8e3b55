//! The built-in raw-file driver: real `preadv`/`pwritev`/`fdatasync` on the
//! worker pool, completions as bottom halves in the node's context, and an
//! image write lock shared with other processes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

use super::node::{Driver, Node};
use super::pool;
use super::request::{io_error, IoDone, OpDone, RequestKind};
use super::writer::WriteQueue;
use crate::error::{Error, Result};
use crate::sys::file::{pread_cached, pread_full, set_write_lock, IoBuf};

/// How to open an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open for writing and take the image write lock.
    pub rdwr: bool,
    /// Incoming migration: start inactive, without the lock, until activate_all.
    pub inactive: bool,
}

/// A raw image file.
pub struct FileDriver {
    file: Arc<File>,
    path: Arc<str>,
    /// Whether this open file holds the image write lock.
    locked: Mutex<bool>,
    /// The errno of a failed fdatasync (0: none). Sticky: the kernel reports
    /// a writeback error to fdatasync once, so a retry would "succeed" with
    /// acknowledged writes lost. Every later flush fails with it.
    flush_error: Arc<AtomicI32>,
    writes: Arc<WriteQueue>,
}

impl FileDriver {
    /// Opens `path`; with `rdwr` and not `inactive`, takes the write lock
    /// (`EAGAIN` if another process holds it).
    pub fn open(path: &str, flags: OpenFlags) -> Result<FileDriver> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer. It does not
        // change I/O on regular files or block devices, the only kinds accepted.
        let file = OpenOptions::new()
            .read(true)
            .write(flags.rdwr)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::from_io(&format!("cannot open image '{path}'"), e))?;
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
        let driver = FileDriver {
            file: Arc::new(file),
            path: path.into(),
            locked: Mutex::new(false),
            flush_error: Arc::default(),
            writes: Arc::default(),
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

    fn set_lock(&self, exclusive: bool) -> Result<()> {
        let mut locked = self.locked.lock();
        if *locked == exclusive {
            return Ok(());
        }
        set_write_lock(self.file.as_fd(), exclusive).map_err(|e| {
            if e.raw_os_error() == Some(libc::EAGAIN) {
                Error::new(
                    libc::EAGAIN,
                    format!(
                        "image '{}' is locked by another process that writes it; \
                         open it with AIOCTX_OPEN_INACTIVE and activate after that process inactivates",
                        self.path
                    ),
                )
            } else {
                Error::from_io(&format!("image '{}': write lock", self.path), e)
            }
        })?;
        *locked = exclusive;
        Ok(())
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
        self.offload(
            node,
            |file| file.sync_data(),
            move |r| {
                if let Err(e) = &r {
                    sticky.store(e.raw_os_error().unwrap_or(libc::EIO), Relaxed);
                }
                done(r.map_err(|e| Error::from_io(&format!("fdatasync '{path}'"), e)))
            },
        );
    }

    fn does_io(&self) -> bool {
        true
    }

    fn set_write_permission(&self, _node: &Arc<Node>, write: bool) -> Result<()> {
        self.set_lock(write)
    }

    fn submit(
        &self,
        node: &Arc<Node>,
        kind: RequestKind,
        mut buf: IoBuf,
        offset: u64,
        done: IoDone,
    ) -> Result<()> {
        if kind == RequestKind::Write {
            self.writes
                .push(&self.file, node, &self.path, (buf, offset, done));
            return Ok(());
        }
        // Page-cache hits need no worker: read now, complete as a BH (the
        // completion contract is unchanged). Misses go to the pool, where
        // reads of one image run in parallel.
        if let Some(n) = pread_cached(self.file.as_fd(), &mut buf, offset) {
            node.context().schedule_once(move || done(Ok(n), buf));
            return Ok(());
        }
        let path = self.path.clone();
        self.offload(
            node,
            move |file| (pread_full(file.as_fd(), &mut buf, offset), buf),
            move |(r, buf)| done(r.map_err(|e| io_error(&path, e)), buf),
        );
        Ok(())
    }
}
