//! Drained sections: QEMU's `bdrv_drained_begin` / `bdrv_drained_end`.
//!
//! A section first stops new requests from starting, then waits until the
//! requests already in flight are done. Stopping them first is what makes a
//! drain end: a completion that submits the next request (a guest's queue
//! refilling itself) would otherwise keep the count above zero forever.
//! Asynchronous requests submitted meanwhile are queued, in order, and
//! started when the last section ends; see [`Node::start_request`] for the
//! counting API.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use parking_lot::Mutex;

use super::node::Node;
use super::request::IoDone;
use super::sections::{completing_here, Queued};
use crate::context::{held_by_caller, Context};
use crate::error::{busy, invalid, not_permitted, Error, Result};
use crate::sys::file::IoBuf;

impl Node {
    /// Begins a drained section: new requests are held (see
    /// [`submit`](Self::submit) and [`start_request`](Self::start_request))
    /// until the matching [`drained_end`](Self::drained_end), then waits until
    /// no request is in flight. Sections nest. From the graph's main context's
    /// home thread, or the node's own home thread (which then polls its
    /// context while it waits, running other callbacks). On failure no
    /// section is left open.
    pub fn drained_begin(self: &Arc<Self>) -> Result<()> {
        self.may_wait("drained_begin")?;
        let waiter = self
            .waiter(None)
            .map_err(|e| self.named("drained_begin", e))?;
        self.enter_section();
        if let Err(e) = self.wait_quiet(waiter) {
            // Cannot fail: the section just opened is still open.
            let _ = self.drained_end();
            return Err(self.named("drained_begin", e));
        }
        Ok(())
    }

    /// Ends a drained section; any thread. The last end starts the requests
    /// queued during the sections, in the order they were submitted.
    /// `EINVAL` without an open section.
    pub fn drained_end(self: &Arc<Self>) -> Result<()> {
        let mut s = self.sections.lock();
        if s.open == 0 {
            return Err(invalid(format!(
                "node '{}' has no drained section to end: drained_end without drained_begin",
                self.name()
            )));
        }
        s.open -= 1;
        if s.open > 0 {
            return Ok(());
        }
        self.resumed.notify_all();
        if s.restarting {
            // Another end is starting the queue; it sees this one's zero.
            return Ok(());
        }
        s.restarting = true;
        // Batches, so a submission made meanwhile (by a completion of the
        // batch, say) queues behind it instead of overtaking it. A section
        // that begins meanwhile stops the restart after the current batch:
        // those requests were submitted before it, so it waits for them.
        while s.open == 0 && !s.queued.is_empty() {
            let batch = std::mem::take(&mut s.queued);
            drop(s);
            batch.into_iter().for_each(|q| self.restart(q));
            s = self.sections.lock();
        }
        s.restarting = false;
        self.held.store(s.holds(), SeqCst);
        Ok(())
    }

    /// Begins a drain; with [`drained_end`](Self::drained_end) right after,
    /// that is [`drain`](Self::drain). The graph's `drain_all_begin` opens
    /// one on every node before it waits for any.
    pub(super) fn enter_section(&self) {
        let mut s = self.sections.lock();
        s.open += 1;
        // Set before the drain reads the in-flight count: pairs with the
        // count-then-check in `submit` and `start_request`.
        self.held.store(true, SeqCst);
    }

    /// Waits (polling as `waiter` does) until no request is in flight, but
    /// for the completions running on the caller's own stack.
    pub(super) fn wait_quiet(&self, waiter: crate::wait::Waiter) -> Result<()> {
        waiter.wait_while(&mut || self.in_flight() > completing_here(self.completion_key()))
    }

    /// `EPERM` unless the caller may wait for this node: the graph's main
    /// context's home thread (the first such call claims it) or the node's
    /// own home thread.
    pub(super) fn may_wait(&self, what: &str) -> Result<()> {
        if self.context().is_home() {
            return Ok(());
        }
        self.graph.claim_main().map_err(|e| {
            not_permitted(format!(
                "node '{}': {what} from this thread is refused ({}): call it from the graph's \
                 main loop thread or from the home thread of the node's context '{}'",
                self.name(),
                e.message(),
                self.context().name()
            ))
        })
    }

    /// A counting request found the node drained: `EBUSY` for a thread that
    /// runs an event loop or holds a context (waiting there could stall the
    /// very work the drain waits for, or the drained section's owner
    /// itself), otherwise blocks until the last section ends.
    pub(super) fn wait_for_drained_end(&self) -> Result<()> {
        if Context::current_if_any().is_some() || !held_by_caller().is_empty() {
            return Err(busy(format!(
                "node '{}' is in a drained section: a request started from a thread that runs an \
                 event loop or holds a context (a callback) cannot wait for aioctx_node_drained_end \
                 without stalling the drain. Start it after the section ends, or submit it with \
                 aioctx_node_pread/pwrite, which queue it until then.",
                self.name()
            )));
        }
        let mut s = self.sections.lock();
        while s.open > 0 && !s.closed {
            self.resumed.wait(&mut s);
        }
        if s.closed {
            return Err(Error::new(
                libc::ENODEV,
                format!(
                    "node '{}': the graph was freed while this request waited for a drained \
                     section to end",
                    self.name()
                ),
            ));
        }
        Ok(())
    }

    /// Starts a request queued during a drained section. A refusal now (the
    /// node became inactive, a handover runs) completes it with the error,
    /// in the node's home thread like any completion: its submitter was
    /// told it was accepted.
    fn restart(self: &Arc<Self>, q: Queued) {
        let slot = Arc::new(Mutex::new(Some(q.done)));
        let inner = slot.clone();
        let done: IoDone = Box::new(move |r, buf| {
            if let Some(done) = inner.lock().take() {
                done(r, buf)
            }
        });
        let started = self
            .count(q.kind)
            .and_then(|()| self.start_counted(q.kind, q.buf, q.offset, done));
        if let Err(e) = started {
            if let Some(done) = slot.lock().take() {
                self.fail_later(done, e);
            }
        }
    }

    /// Completes a queued request that will never start with `e`.
    fn fail_later(&self, done: IoDone, e: Error) {
        self.context()
            .schedule_once(move || done(Err(e), IoBuf::from(Vec::new())));
    }

    /// The graph is closing: queued requests complete with `ECANCELED`, and
    /// threads waiting to start one return `ENODEV`.
    pub(super) fn cancel_queued(&self) {
        let queued = {
            let mut s = self.sections.lock();
            s.closed = true;
            self.resumed.notify_all();
            std::mem::take(&mut s.queued)
        };
        for q in queued {
            let e = Error::new(
                libc::ECANCELED,
                format!(
                    "node '{}': the graph was freed while this request waited for a drained \
                     section to end",
                    self.name()
                ),
            );
            self.fail_later(q.done, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Duration;

    use super::*;
    use crate::block::RequestKind;
    use crate::block::{Driver, Graph, NullDriver, OpDone};
    use crate::iothread::IoThread;
    use crate::wait::{poll_while, WaitOptions};

    /// Completes every request as a bottom half, logging offsets as they start.
    #[derive(Default)]
    struct Loopback {
        started: Arc<Mutex<Vec<u64>>>,
        flushed_in: Arc<Mutex<Option<std::thread::ThreadId>>>,
    }

    impl Driver for Loopback {
        fn submit(
            &self,
            node: &Arc<Node>,
            _kind: RequestKind,
            buf: IoBuf,
            offset: u64,
            done: IoDone,
        ) -> Result<()> {
            self.started.lock().push(offset);
            node.context()
                .schedule_once(move || done(Ok(buf.len()), buf));
            Ok(())
        }

        fn flush(&self, _node: &Arc<Node>, done: OpDone) {
            *self.flushed_in.lock() = Some(std::thread::current().id());
            done(Ok(()))
        }

        fn does_io(&self) -> bool {
            true
        }
    }

    fn setup(ctx: Option<&Arc<Context>>) -> (Graph, Arc<Node>, Arc<Mutex<Vec<u64>>>) {
        let main = Context::new("drain-main").unwrap();
        main.claim().unwrap();
        let graph = Graph::new(main.clone());
        let driver = Loopback::default();
        let started = driver.started.clone();
        let node = graph
            .add_node("n", ctx.unwrap_or(&main), Box::new(driver))
            .unwrap();
        (graph, node, started)
    }

    fn write(node: &Arc<Node>, offset: u64, done: IoDone) -> Result<()> {
        node.submit(RequestKind::Write, IoBuf::from(vec![0; 8]), offset, done)
    }

    fn count_into(c: &Arc<AtomicUsize>) -> IoDone {
        let c = c.clone();
        Box::new(move |_, _| {
            c.fetch_add(1, SeqCst);
        })
    }

    fn wait_for(ctx: &Arc<Context>, mut cond: impl FnMut() -> bool) {
        let opts = WaitOptions {
            timeout_ns: Some(10_000_000_000),
            ..Default::default()
        };
        poll_while(ctx, &mut || !cond(), opts).unwrap();
    }

    #[test]
    fn requests_queue_in_a_section_and_start_in_order_after_the_last_end() {
        let (graph, node, started) = setup(None);
        let main = graph.main_context().clone();
        let done = Arc::new(AtomicUsize::new(0));
        node.drained_begin().unwrap();
        node.drained_begin().unwrap();
        for offset in [3, 1, 2] {
            write(&node, offset, count_into(&done)).unwrap();
        }
        assert_eq!((node.queued(), node.in_flight()), (3, 0));
        while main.poll(false).unwrap() {}
        node.drained_end().unwrap();
        assert_eq!(node.queued(), 3, "one section is still open");
        assert!(started.lock().is_empty());
        node.drained_end().unwrap();
        assert_eq!(node.queued(), 0);
        assert_eq!(*started.lock(), [3, 1, 2], "submission order");
        node.drain().unwrap();
        assert_eq!(done.load(SeqCst), 3);
    }

    #[test]
    fn an_end_without_a_begin_is_refused() {
        let (graph, node, _) = setup(None);
        let e = node.drained_end().unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.message().contains("'n'"), "{}", e.message());
        assert_eq!(graph.drain_all_end().unwrap_err().errno(), libc::EINVAL);
        node.drain().unwrap();
        assert_eq!(node.drained_end().unwrap_err().errno(), libc::EINVAL);
    }

    /// Each completion submits the next write, until `stop`.
    fn chain(node: &Arc<Node>, done: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
        let next = node.clone();
        let cb: IoDone = Box::new(move |_, _| {
            done.fetch_add(1, SeqCst);
            if !stop.load(SeqCst) {
                chain(&next, done, stop);
            }
        });
        // No unwrap: a panic here would take the IOThread down.
        let _ = write(node, 0, cb);
    }

    #[test]
    fn drain_ends_while_completions_resubmit() {
        let io = IoThread::new("drain-resubmit").unwrap();
        let (graph, node, _) = setup(Some(io.context()));
        let (done, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        for _ in 0..4 {
            chain(&node, done.clone(), stop.clone());
        }
        let main = graph.main_context().clone();
        wait_for(&main, || done.load(SeqCst) > 1000);
        node.drain().unwrap();
        let at_drain = done.load(SeqCst);
        wait_for(&main, || done.load(SeqCst) > at_drain + 1000);
        stop.store(true, SeqCst);
        // A completion that read `stop` just before it was set resubmits
        // into this drain's section, and the drain's end starts it: one
        // more drain waits for it, and its completion sees `stop`.
        node.drain().unwrap();
        node.drain().unwrap();
        assert_eq!(node.in_flight(), 0);
    }

    #[test]
    fn counting_requests_in_a_section_wait_or_are_refused() {
        let (_graph, node, _) = setup(None);
        node.drained_begin().unwrap();
        // This thread runs the main loop: waiting here could stall the drain.
        let e = node.start_request(RequestKind::Read).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert_eq!(node.in_flight(), 0);
        let entered = Arc::new(AtomicBool::new(false));
        let plain = {
            let (node, entered) = (node.clone(), entered.clone());
            std::thread::spawn(move || {
                let r = node.start_request(RequestKind::Write);
                entered.store(true, SeqCst);
                r
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !entered.load(SeqCst),
            "a plain thread waits for drained_end"
        );
        node.drained_end().unwrap();
        plain.join().unwrap().unwrap();
        assert_eq!(node.in_flight(), 1);
        node.end_request().unwrap();
    }

    #[test]
    fn drain_inside_its_own_completion_does_not_wait_for_it() {
        let (graph, node, _) = setup(None);
        let result = Arc::new(Mutex::new(None));
        let (n, r) = (node.clone(), result.clone());
        write(
            &node,
            0,
            Box::new(move |_, _| *r.lock() = Some(n.drain().map(|()| n.in_flight()))),
        )
        .unwrap();
        let main = graph.main_context().clone();
        wait_for(&main, || result.lock().is_some());
        assert_eq!(result.lock().take().unwrap().unwrap(), 1, "itself");
        assert_eq!(node.in_flight(), 0);
    }

    #[test]
    fn drain_inside_a_raw_file_completion_does_not_wait_for_its_batch() {
        // Writes queued together complete in one bottom half: a drain in the
        // first completion must not wait for the ones behind it.
        const WRITES: u64 = 32;
        let dir = std::env::temp_dir().join(format!("aioctx-drain-cb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0u8; 512 * WRITES as usize]).unwrap();
        let (graph, _, _) = setup(None);
        let main = graph.main_context().clone();
        let rw = crate::block::OpenFlags {
            rdwr: true,
            ..Default::default()
        };
        let node = graph
            .open_file("disk", &main, path.to_str().unwrap(), rw)
            .unwrap();
        let drained = Arc::new(AtomicUsize::new(0));
        for w in 0..WRITES {
            let (n, d) = (node.clone(), drained.clone());
            let done: IoDone = Box::new(move |r, _| {
                if r.is_ok() && n.drain().is_ok() {
                    d.fetch_add(1, SeqCst);
                }
            });
            node.submit(RequestKind::Write, IoBuf::from(vec![1; 512]), w * 512, done)
                .unwrap();
        }
        wait_for(&main, || drained.load(SeqCst) == WRITES as usize);
        assert_eq!(node.in_flight(), 0);
        drop(graph);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drain_in_a_bh_runs_the_completion_taken_in_the_same_poll() {
        // One poll takes [the draining BH, the completion] together: the
        // drain's own polls must run the completion, or it waits forever.
        let (graph, node, _) = setup(None);
        let main = graph.main_context().clone();
        let drained = Arc::new(Mutex::new(None));
        let (n, d) = (node.clone(), drained.clone());
        main.schedule_once(move || *d.lock() = Some(n.drain().map(|()| n.in_flight())));
        let done = Arc::new(AtomicUsize::new(0));
        write(&node, 0, count_into(&done)).unwrap();
        main.poll(false).unwrap();
        assert_eq!(drained.lock().take().unwrap().unwrap(), 0);
        assert_eq!(done.load(SeqCst), 1);
    }

    #[test]
    fn drain_and_flush_from_the_home_thread() {
        let io = IoThread::new("drain-home").unwrap();
        let main = Context::new("drain-home-main").unwrap();
        main.claim().unwrap();
        let graph = Graph::new(main.clone());
        let driver = Loopback::default();
        let flushed_in = driver.flushed_in.clone();
        let node = graph
            .add_node("home", io.context(), Box::new(driver))
            .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let outcome = Arc::new(Mutex::new(None));
        let (n, d, o) = (node.clone(), done.clone(), outcome.clone());
        io.context().schedule_once(move || {
            let wrote = write(&n, 0, count_into(&d));
            let drained = n.drain().map(|()| d.load(SeqCst));
            let flushed = n.flush();
            let thread = std::thread::current().id();
            *o.lock() = Some((wrote, drained, flushed, thread));
        });
        wait_for(&main, || outcome.lock().is_some());
        let (wrote, drained, flushed, thread) = outcome.lock().take().unwrap();
        wrote.unwrap();
        assert_eq!(drained.unwrap(), 1, "the drain saw the completion");
        flushed.unwrap();
        assert_eq!(
            *flushed_in.lock(),
            Some(thread),
            "flushed in the home thread"
        );
        // Neither the main thread nor the home thread: refused.
        let other = std::thread::spawn(move || node.drain().unwrap_err().errno());
        assert_eq!(other.join().unwrap(), libc::EPERM);
    }

    #[test]
    fn drain_all_holds_every_node_and_nodes_added_meanwhile() {
        let io = IoThread::new("drain-all").unwrap();
        let (graph, a, _) = setup(None);
        let b = graph
            .add_node("b", io.context(), Box::new(Loopback::default()))
            .unwrap();
        graph.drain_all_begin().unwrap();
        let c = graph
            .add_node("c", io.context(), Box::new(Loopback::default()))
            .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        for node in [&a, &b, &c] {
            write(node, 0, count_into(&done)).unwrap();
            assert_eq!(node.queued(), 1, "{}", node.name());
        }
        graph.drain_all_begin().unwrap();
        graph.drain_all_end().unwrap();
        assert_eq!(a.queued() + b.queued() + c.queued(), 3, "still nested");
        graph.drain_all_end().unwrap();
        let main = graph.main_context().clone();
        wait_for(&main, || done.load(SeqCst) == 3);
        let null = graph.add_node("d", &main, Box::new(NullDriver)).unwrap();
        assert_eq!(null.queued(), 0, "drained only while the section is open");
        null.drained_begin().unwrap();
        let e = write(&null, 0, count_into(&done)).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP, "refused at once, not queued");
        null.drained_end().unwrap();
    }

    #[test]
    fn queued_requests_that_cannot_start_complete_with_the_error() {
        let (graph, node, _) = setup(None);
        node.drained_begin().unwrap();
        let result = Arc::new(Mutex::new(None));
        let r = result.clone();
        write(&node, 0, Box::new(move |res, _| *r.lock() = Some(res))).unwrap();
        graph.inactivate_all().unwrap();
        node.drained_end().unwrap();
        let main = graph.main_context().clone();
        wait_for(&main, || result.lock().is_some());
        let e = result.lock().take().unwrap().unwrap_err();
        assert_eq!(e.errno(), libc::EPERM);
    }
}
