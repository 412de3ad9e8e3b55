//! The raw-file driver's write path: one worker at a time writes an image,
//! taking the queued writes in batches, and each batch completes with one
//! bottom half.
//!
//! Why batches: a buffered write holds the file's inode lock, so writes from
//! several workers to one image only queue up in the kernel, and each of them
//! would cost a worker wake-up and a wake-up of the node's home thread. One
//! writer that takes what is queued pays those two wake-ups once per batch.
//! At queue depth 1 a batch is one write: the same path as a single request.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use parking_lot::Mutex;

use super::node::Node;
use super::pool;
use super::request::{io_error, IoDone};
use super::sections;
use crate::context::Context;
use crate::error::Result;
use crate::sys::file::{pwrite_full, IoBuf};

/// At most this many writes per batch: a guest's usual queue depth, so one
/// batch takes what a queue holds (measured better than 8 or 16 in
/// `benches/file-io`), while the first write's completion waits behind no
/// more than 31 others.
const MAX_BATCH: usize = 32;

struct Write {
    buf: IoBuf,
    offset: u64,
    done: IoDone,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Write>,
    /// A worker is writing this image; it takes `pending` before it stops.
    writing: bool,
}

/// The writes of one image waiting for, or being run by, its writer.
#[derive(Default)]
pub(super) struct WriteQueue {
    queue: Mutex<Queue>,
}

impl WriteQueue {
    /// Queues a write of `buf` at `offset`; `done` runs in the node's context.
    /// Starts a writer on the pool if none is running.
    pub(super) fn push(
        self: &Arc<Self>,
        file: &Arc<File>,
        node: &Arc<Node>,
        path: &Arc<str>,
        (buf, offset, done): (IoBuf, u64, IoDone),
    ) {
        let mut q = self.queue.lock();
        q.pending.push_back(Write { buf, offset, done });
        if q.writing {
            return;
        }
        q.writing = true;
        drop(q);
        let (queue, file, node, path) = (self.clone(), file.clone(), node.clone(), path.clone());
        pool::submit(move || queue.write_batch(file, node, path));
    }

    /// Takes the next batch; a writer runs only while writes are pending.
    fn take_batch(&self) -> Vec<Write> {
        let mut q = self.queue.lock();
        let take = q.pending.len().min(MAX_BATCH);
        q.pending.drain(..take).collect()
    }

    /// Whether the writer is done: nothing pending, and then no writer any more.
    fn finished(&self) -> bool {
        let mut q = self.queue.lock();
        q.writing = !q.pending.is_empty();
        !q.writing
    }

    /// The writer: one batch, then back to the end of the pool's queue if
    /// more is pending, rather than a loop that would keep its worker from
    /// other images' writes and from reads for as long as writes come in.
    fn write_batch(self: Arc<Self>, file: Arc<File>, node: Arc<Node>, path: Arc<str>) {
        let key = node.completion_key();
        let results: Vec<_> = self
            .take_batch()
            .into_iter()
            .map(|mut w| {
                let r =
                    pwrite_full(file.as_fd(), &mut w.buf, w.offset).map_err(|e| io_error(&path, e));
                (key, r, w.buf, w.done)
            })
            .collect();
        let ctx = node.context().clone();
        // Decide before completing: a completion may submit more writes.
        if self.finished() {
            // Let go of the file and node first, as `FileDriver::offload`
            // does, so a caller that frees the graph after this completion
            // finds the image closed.
            drop(file);
            drop(node);
        } else {
            pool::submit(move || self.write_batch(file, node, path));
        }
        complete(&ctx, results);
    }
}

/// A write's completion: its node's key (see `sections::Completing`), the
/// outcome, the buffer back and the caller's callback.
type Written = (usize, Result<usize>, IoBuf, IoDone);

/// Runs a batch's completions in one bottom half (see
/// `sections::run_completions`).
fn complete(ctx: &Arc<Context>, batch: Vec<Written>) {
    let c = ctx.clone();
    ctx.schedule_once(move || {
        sections::run_completions(&c, batch, |w| w.0, |(_, r, buf, done)| done(r, buf))
    });
}
