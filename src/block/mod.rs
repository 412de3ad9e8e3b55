//! The block layer: a graph of nodes with in-flight request tracking, drain,
//! and the migration handover pair `inactivate_all` / `activate_all`.
//!
//! Driver operations run in the node's home thread with its context held:
//! a caller in another thread schedules them as a bottom half and waits with
//! a [`Waiter`](crate::wait::Waiter), releasing the node's context once. That
//! is the pattern that hangs when a context is held twice, which is why the
//! graph-wide calls acquire contexts through a [`ContextSet`](crate::ContextSet).

// Inside the layer, files use each other one way only (checked by
// tools/check-imports.py): request and sections are leaves, node holds
// them, drain / file / writer / graph build on node, handover on graph,
// and this file only re-exports.
mod drain;
mod file;
mod graph;
mod handover;
mod image_lock;
mod node;
mod pool;
mod request;
mod ring;
mod sections;
mod writer;

pub use file::{Backend, FileDriver, OpenFlags};
pub use graph::{attach, Graph};
pub use node::{describe_all_nodes, Driver, Node, NullDriver};
pub use request::{IoDone, OpDone, RequestKind};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::file::Backend;
    use crate::context::Context;
    use crate::error::{Error, Result};
    use crate::iothread::IoThread;
    use crate::sys::file::IoBuf;
    use parking_lot::Mutex;
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;

    /// Records "op:node" for every callback, and fails `fail_on` if set.
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        fail_on: Option<&'static str>,
    }

    impl Recorder {
        fn note(&self, op: &str, node: &Node) -> Result<()> {
            self.log.lock().push(format!("{op}:{}", node.name()));
            match self.fail_on {
                Some(f) if f == format!("{op}:{}", node.name()) => {
                    Err(Error::new(libc::EIO, "injected"))
                }
                _ => Ok(()),
            }
        }
    }

    impl Driver for Recorder {
        fn flush(&self, node: &Arc<Node>, done: OpDone) {
            done(self.note("flush", node))
        }
        fn inactivate(&self, node: &Arc<Node>) -> Result<()> {
            self.note("inactivate", node)
        }
        fn activate(&self, node: &Arc<Node>) -> Result<()> {
            self.note("activate", node)
        }
    }

    fn diamond(fail_on: Option<&'static str>) -> (Graph, Arc<Mutex<Vec<String>>>, IoThread) {
        let main = Context::new("graph-main").unwrap();
        main.claim().unwrap();
        let io = IoThread::new("graph-io").unwrap();
        let graph = Graph::new(main.clone());
        let log = Arc::new(Mutex::new(Vec::new()));
        let add = |name: &str, ctx: &Arc<Context>| {
            graph
                .add_node(
                    name,
                    ctx,
                    Box::new(Recorder {
                        log: log.clone(),
                        fail_on,
                    }),
                )
                .unwrap()
        };
        let (leaf, left, right, top) = (
            add("leaf", &main),
            add("left", io.context()),
            add("right", io.context()),
            add("top", &main),
        );
        graph.attach(&top, &left).unwrap();
        graph.attach(&top, &right).unwrap();
        graph.attach(&left, &leaf).unwrap();
        graph.attach(&right, &leaf).unwrap();
        (graph, log, io)
    }

    #[test]
    fn cycles_are_refused() {
        let (graph, _log, _io) = diamond(None);
        let (top, leaf) = (graph.find("top").unwrap(), graph.find("leaf").unwrap());
        assert_eq!(graph.attach(&leaf, &top).unwrap_err().errno(), libc::ELOOP);
        assert_eq!(graph.attach(&top, &top).unwrap_err().errno(), libc::ELOOP);
        graph.attach(&top, &leaf).unwrap();
    }

    #[test]
    fn handover_order_and_idempotence() {
        let (graph, log, _io) = diamond(None);
        graph.inactivate_all().unwrap();
        assert_eq!(
            *log.lock(),
            [
                "flush:top",
                "inactivate:top",
                "flush:left",
                "inactivate:left",
                "flush:right",
                "inactivate:right",
                "flush:leaf",
                "inactivate:leaf"
            ]
        );
        assert!(graph.nodes().iter().all(|n| n.is_inactive()));
        let leaf = graph.find("leaf").unwrap();
        assert_eq!(
            leaf.start_request(RequestKind::Write).unwrap_err().errno(),
            libc::EPERM
        );
        log.lock().clear();
        graph.inactivate_all().unwrap();
        assert!(log.lock().is_empty(), "second inactivate_all is a no-op");
        graph.activate_all().unwrap();
        assert_eq!(
            *log.lock(),
            [
                "activate:leaf",
                "activate:right",
                "activate:left",
                "activate:top"
            ]
        );
        leaf.start_request(RequestKind::Write).unwrap();
        leaf.end_request().unwrap();
    }

    #[test]
    fn failure_leaves_consistent_state_and_activate_recovers() {
        let (graph, _log, io) = diamond(Some("flush:right"));
        let err = graph.inactivate_all().unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(err.message().contains("'right'"), "{}", err.message());
        assert_eq!(io.context().lock().owner(), 0, "no context left held");
        let inactive: Vec<_> = graph
            .nodes()
            .iter()
            .filter(|n| n.is_inactive())
            .map(|n| n.name().to_string())
            .collect();
        assert_eq!(inactive, ["left", "top"]);
        graph.activate_all().unwrap();
        assert!(graph.nodes().iter().all(|n| !n.is_inactive()));
    }

    #[test]
    fn double_hold_is_refused_not_hung() {
        let (graph, log, io) = diamond(None);
        io.context().acquire().unwrap();
        let err = graph.inactivate_all().unwrap_err();
        assert_eq!(err.errno(), libc::EDEADLK);
        assert_eq!(io.context().lock().depth(), 1);
        assert!(log.lock().is_empty(), "nothing changed");
        assert!(graph.nodes().iter().all(|n| !n.is_inactive()));
        io.context().release().unwrap();
        graph.inactivate_all().unwrap();
    }

    #[test]
    fn holding_the_callers_own_context_is_fine() {
        // The main thread runs the main context: holding it is no reason to
        // refuse, and waits on the IOThread's nodes must not hang on it.
        let (graph, log, io) = diamond(None);
        let main = graph.find("top").unwrap().context().clone();
        main.acquire().unwrap();
        graph.inactivate_all().unwrap();
        assert!(graph.nodes().iter().all(|n| n.is_inactive()));
        graph.activate_all().unwrap();
        assert_eq!(main.lock().depth(), 1, "the caller's hold is as it was");
        main.release().unwrap();
        assert!(!log.lock().is_empty());
        drop(io);
    }

    #[test]
    fn holding_a_context_nobody_runs_is_fine() {
        let (graph, _log, _io) = diamond(None);
        let free = Context::new("graph-free").unwrap();
        let extra = graph
            .add_node("extra", &free, Box::new(NullDriver))
            .unwrap();
        graph.attach(&graph.find("leaf").unwrap(), &extra).unwrap();
        free.acquire().unwrap();
        graph.inactivate_all().unwrap();
        graph.activate_all().unwrap();
        assert_eq!(free.lock().depth(), 1, "the caller's hold is as it was");
        free.release().unwrap();
    }

    #[test]
    fn raw_file_writes_in_flight_beyond_a_batch() {
        // More writes in flight than one writer batch, from two nodes: every
        // one completes once, with all its bytes, and lands where it should.
        const WRITES: usize = 200;
        let dir = std::env::temp_dir().join(format!("aioctx-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = Context::new("batch-main").unwrap();
        main.claim().unwrap();
        let graph = Graph::new(main.clone());
        let rw = OpenFlags {
            rdwr: true,
            ..Default::default()
        };
        let io = IoThread::new("batch-io").unwrap();
        let mut nodes = Vec::new();
        for (i, ctx) in [&main, io.context()].into_iter().enumerate() {
            let path = dir.join(format!("disk{i}.img"));
            std::fs::write(&path, vec![0u8; WRITES * 512]).unwrap();
            nodes.push((
                graph
                    .open_file(&format!("disk{i}"), ctx, path.to_str().unwrap(), rw)
                    .unwrap(),
                path,
            ));
        }
        let completed = Arc::new(Mutex::new(vec![0usize; 2 * WRITES]));
        for (n, (node, _)) in nodes.iter().enumerate() {
            for w in 0..WRITES {
                let c = completed.clone();
                let done = Box::new(move |r: Result<usize>, _| {
                    // No assert here: a panic would take the IOThread down.
                    c.lock()[n * WRITES + w] += usize::from(matches!(r, Ok(512)));
                });
                let block = IoBuf::from(vec![w as u8 ^ n as u8; 512]);
                node.submit(RequestKind::Write, block, (w * 512) as u64, done)
                    .unwrap();
            }
        }
        for (node, _) in &nodes {
            node.drain().unwrap();
        }
        assert!(completed.lock().iter().all(|&c| c == 1));
        for (n, (_, path)) in nodes.iter().enumerate() {
            let data = std::fs::read(path).unwrap();
            for w in 0..WRITES {
                assert!(data[w * 512..(w + 1) * 512]
                    .iter()
                    .all(|&b| b == w as u8 ^ n as u8));
            }
        }
        drop(graph);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The backends this process can run raw-file I/O on.
    fn backends() -> Vec<Backend> {
        let mut all = vec![Backend::Threads];
        if ring::available() {
            all.push(Backend::IoUring);
        }
        all
    }

    /// Reads of 1 MiB in flight for `stop_io_reads`, and their results.
    const READS: usize = 64;
    const READ_SIZE: usize = 1 << 20;
    type ReadResults = Arc<Mutex<Vec<(std::result::Result<usize, i32>, bool)>>>;

    /// A file of `READS` 1 MiB blocks of 7s, none of it in the page cache
    /// (the reads wait for the device).
    fn uncached_image(dir: &std::path::Path, name: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; READS * READ_SIZE]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        crate::sys::file::drop_cached_pages(std::os::fd::AsFd::as_fd(&f)).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Submits a read of each block of an `uncached_image`.
    fn read_all_blocks(node: &Arc<Node>, results: &ReadResults) {
        for b in 0..READS {
            let results = results.clone();
            let done = Box::new(move |r: Result<usize>, buf: IoBuf| {
                let all_7 = buf.into_vec().unwrap().iter().all(|&x| x == 7);
                results.lock().push((r.map_err(|e| e.errno()), all_7));
            });
            let buf = IoBuf::from(vec![0u8; READ_SIZE]);
            node.submit(RequestKind::Read, buf, (b * READ_SIZE) as u64, done)
                .unwrap();
        }
    }

    #[test]
    fn reads_in_flight_when_their_iothread_stops_complete() {
        // The kernel fails a ring's requests still running when the thread
        // that submitted them exits (EFAULT here in about half the runs):
        // the IOThread waits for them first.
        let dir = std::env::temp_dir().join(format!("aioctx-stop-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = Context::new("stop-io-main").unwrap();
        main.claim().unwrap();
        for backend in backends() {
            let path = uncached_image(&dir, &format!("{backend:?}.img"));
            let mut io = IoThread::new("stop-io").unwrap();
            let graph = Graph::new(main.clone());
            let flags = OpenFlags {
                backend,
                ..Default::default()
            };
            let node = graph.open_file("disk", io.context(), &path, flags).unwrap();
            let results = ReadResults::default();
            read_all_blocks(&node, &results);
            io.stop().unwrap();
            node.drain().unwrap();
            let results = results.lock().clone();
            assert_eq!(results, vec![(Ok(READ_SIZE), true); READS], "{backend:?}");
            drop(graph);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_in_flight_when_their_home_thread_ends_complete() {
        // As above, with a plain thread that submits and ends: its exit
        // hook waits for the ring.
        if !ring::available() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("aioctx-end-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = uncached_image(&dir, "img");
        let main = Context::new("end-io-main").unwrap();
        main.claim().unwrap();
        let home = Context::new("end-io-home").unwrap();
        let graph = Graph::new(main.clone());
        let flags = OpenFlags {
            backend: Backend::IoUring,
            ..Default::default()
        };
        let node = graph.open_file("disk", &home, &path, flags).unwrap();
        let results = ReadResults::default();
        // join(), not a scope: it waits for the thread's exit hooks too.
        let (h, n, r) = (home.clone(), node.clone(), results.clone());
        std::thread::spawn(move || {
            h.claim().unwrap();
            read_all_blocks(&n, &r);
        })
        .join()
        .unwrap();
        assert!(!home.has_home());
        node.drain().unwrap();
        let results = results.lock().clone();
        assert_eq!(results, vec![(Ok(READ_SIZE), true); READS]);
        drop(graph);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A node on io_uring over an `uncached_image` in a fresh directory
    /// (removed with it), homed in a context this thread claims, which is
    /// also its graph's main context. None where io_uring is unavailable.
    struct RingNode {
        home: Arc<Context>,
        node: Arc<Node>,
        _graph: Graph,
        dir: std::path::PathBuf,
    }

    impl Drop for RingNode {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn ring_node(tag: &str, rdwr: bool) -> Option<RingNode> {
        if !ring::available() {
            eprintln!("io_uring unavailable: skipped");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("aioctx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = uncached_image(&dir, "img");
        let home = Context::new(tag).unwrap();
        home.claim().unwrap();
        let graph = Graph::new(home.clone());
        let flags = OpenFlags {
            rdwr,
            backend: Backend::IoUring,
            ..Default::default()
        };
        let node = graph.open_file("disk", &home, &path, flags).unwrap();
        Some(RingNode {
            home,
            node,
            _graph: graph,
            dir,
        })
    }

    /// A completion that records its outcome, and where to read it.
    type Outcome = Arc<Mutex<Option<std::result::Result<usize, i32>>>>;
    fn recorded() -> (Outcome, IoDone) {
        let outcome = Outcome::default();
        let o = outcome.clone();
        let done =
            Box::new(move |n: Result<usize>, _: IoBuf| *o.lock() = Some(n.map_err(|e| e.errno())));
        (outcome, done)
    }

    /// Polls `ctx` (without blocking) until `done`; fails with `what` after
    /// 20 s. A completion callback's panic out of the poll is caught.
    fn poll_until(ctx: &Arc<Context>, what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            if let Ok(polled) = std::panic::catch_unwind(AssertUnwindSafe(|| ctx.poll(false))) {
                polled.unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn completions_that_panic_lose_nothing() {
        // A Rust completion callback that panics unwinds out of the poll.
        // The completions reaped with it still run (later), its request
        // still ends, and its thread is no longer marked as completing:
        // requests started by completions wait for one submission after
        // them, and a stale mark would hold back the thread's later ones
        // for good.
        let Some(RingNode { home, node, .. }) = &ring_node("panic-io", true) else {
            return;
        };
        // Many in flight at once, so that some complete together: reads
        // reaped from the ring in one batch, buffered writes done by the
        // image's writer in one batch. (The last read is of a page none of
        // these brought into the cache: it goes to the ring too.)
        for kind in [RequestKind::Read, RequestKind::Write] {
            let ran = Arc::new(Mutex::new(0));
            for b in 0..READS {
                let ran = ran.clone();
                let panics = Box::new(move |_: Result<usize>, _: IoBuf| {
                    *ran.lock() += 1;
                    panic!("a completion callback panics");
                });
                let buf = IoBuf::from(vec![7u8; 4096]);
                node.submit(kind, buf, (b * READ_SIZE) as u64, panics)
                    .unwrap();
            }
            poll_until(
                home,
                "a completion batched with a panicking one never ran",
                || *ran.lock() == READS,
            );
            assert_eq!(
                node.in_flight(),
                0,
                "a request whose completion panicked never ended"
            );
        }

        // A completion that starts a request (held back for the submission
        // after the round's callbacks) and then panics: the request still
        // goes to the kernel.
        let started = Arc::new(Mutex::new(None));
        let (st, n) = (started.clone(), node.clone());
        let starts_then_panics = Box::new(move |_: Result<usize>, _: IoBuf| {
            let done = Box::new(move |r: Result<usize>, _: IoBuf| *st.lock() = Some(r.is_ok()));
            let buf = IoBuf::from(vec![0u8; 4096]);
            n.submit(
                RequestKind::Read,
                buf,
                (2 * READ_SIZE + READ_SIZE / 4) as u64,
                done,
            )
            .unwrap();
            panic!("a completion callback panics after starting a request");
        });
        let buf = IoBuf::from(vec![0u8; 4096]);
        node.submit(
            RequestKind::Read,
            buf,
            (READ_SIZE + READ_SIZE / 4) as u64,
            starts_then_panics,
        )
        .unwrap();
        poll_until(
            home,
            "a request started by a completion that then panicked never completed",
            || started.lock().is_some(),
        );
        assert_eq!(*started.lock(), Some(true));

        let (result, done) = recorded();
        node.submit(
            RequestKind::Read,
            IoBuf::from(vec![0u8; 4096]),
            (READ_SIZE / 2) as u64,
            done,
        )
        .unwrap();
        poll_until(home, "a request after the panics never completed", || {
            result.lock().is_some()
        });
        assert_eq!(*result.lock(), Some(Ok(4096)));
    }

    #[test]
    fn a_ring_completing_inside_another_rings_completion_holds_back_nothing() {
        // Requests started while ring A's completions run wait for one
        // submission after them, and a poll from such a callback submits
        // them first. Here A's callback polls context B, whose dispatch
        // runs a BH that submits on A (held back), then ring B's
        // completion, whose callback waits for that request: ring B must
        // not take over the thread's mark with A's request still held.
        let (Some(ring_a), Some(ring_b)) = (ring_node("nest-a", false), ring_node("nest-b", false))
        else {
            return;
        };
        let (a, node_a) = (&ring_a.home, &ring_a.node);
        let (b, node_b) = (&ring_b.home, &ring_b.node);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let waiting = move |done: &dyn Fn() -> bool, ctx: &Arc<Context>| {
            while !done() && std::time::Instant::now() < deadline {
                ctx.poll(false).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        type Flag = Arc<Mutex<Option<bool>>>;
        let (x_done, b_waited, a_ran): (Flag, Flag, Flag) = Default::default();

        // B's completion waits (polling A) for request X on A.
        let (xd, bw, ctx_a) = (x_done.clone(), b_waited.clone(), a.clone());
        let wait_for_x = Box::new(move |_: Result<usize>, _: IoBuf| {
            waiting(&|| xd.lock().is_some(), &ctx_a);
            *bw.lock() = Some(xd.lock().is_some());
        });
        // A's completion has B submit X on A, then polls B until B's
        // completion ran.
        let (xd, bw, ar, ctx_b, na) = (
            x_done.clone(),
            b_waited.clone(),
            a_ran.clone(),
            b.clone(),
            node_a.clone(),
        );
        let via_b = Box::new(move |_: Result<usize>, _: IoBuf| {
            ctx_b.schedule_once(move || {
                let done = Box::new(move |r: Result<usize>, _: IoBuf| *xd.lock() = Some(r.is_ok()));
                let buf = IoBuf::from(vec![0u8; 4096]);
                na.submit(RequestKind::Read, buf, (READ_SIZE / 2) as u64, done)
                    .unwrap();
            });
            waiting(&|| bw.lock().is_some(), &ctx_b);
            *ar.lock() = Some(true);
        });
        let buf = IoBuf::from(vec![0u8; 4096]);
        node_b
            .submit(RequestKind::Read, buf, 0, wait_for_x)
            .unwrap();
        let buf = IoBuf::from(vec![0u8; 4096]);
        node_a.submit(RequestKind::Read, buf, 0, via_b).unwrap();
        // Both completed in their rings (posted at this thread's next
        // return from the kernel): B's dispatch will run the BH and then
        // B's completion in one go.
        std::thread::sleep(std::time::Duration::from_millis(200));
        waiting(&|| a_ran.lock().is_some(), a);
        assert_eq!(*a_ran.lock(), Some(true), "A's completion never ran");
        assert_eq!(
            *b_waited.lock(),
            Some(true),
            "the request A's completion started through B was never submitted"
        );
        assert_eq!(*x_done.lock(), Some(true));
    }

    #[test]
    fn a_submission_the_kernel_refuses_is_tried_again_after_a_wait() {
        // io_uring_enter fails with ENOMEM (or EAGAIN) when the kernel is
        // short of memory: the request stays queued and is submitted later,
        // after a wait that grows, not at every round of a loop that then
        // never sleeps.
        use crate::sys::uring::faults;
        let Some(RingNode { home, node, .. }) = &ring_node("retry-io", false) else {
            return;
        };
        const REFUSALS: u32 = 1000;
        faults::fail_next_submits_with(REFUSALS, libc::ENOMEM);
        let (result, done) = recorded();
        let buf = IoBuf::from(vec![0u8; 4096]);
        node.submit(RequestKind::Read, buf, (READ_SIZE / 4) as u64, done)
            .unwrap();
        let start = std::time::Instant::now();
        let mut polls = 0;
        while start.elapsed() < std::time::Duration::from_millis(20) {
            home.poll(false).unwrap();
            polls += 1;
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let tries = REFUSALS - faults::submit_failures_left();
        // Waits of 0.1, 0.2, 0.4 ... ms: about 8 tries in 20 ms.
        assert!(
            tries <= 15,
            "{tries} submissions in 20 ms ({polls} polls): no wait between tries"
        );
        assert!(result.lock().is_none());
        faults::fail_next_submits(0);
        poll_until(home, "the request was never submitted", || {
            result.lock().is_some()
        });
        assert_eq!(*result.lock(), Some(Ok(4096)));
    }

    /// `O_NONBLOCK` flags of this process's open files of `path`, from
    /// `/proc/self/fdinfo`.
    fn nonblocking_opens_of(path: &std::path::Path) -> Vec<bool> {
        let mut found = Vec::new();
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if std::fs::read_link(fd.path()).ok().as_deref() != Some(path) {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let Some(flags) = info.lines().find_map(|l| l.strip_prefix("flags:")) else {
                continue;
            };
            let flags = i32::from_str_radix(flags.trim(), 8).unwrap();
            found.push(flags & libc::O_NONBLOCK != 0);
        }
        found
    }

    #[test]
    fn image_files_are_blocking_after_open() {
        // io_uring fails a request on an O_NONBLOCK file with EAGAIN where
        // it would wait: only the open needs the flag (a FIFO).
        let dir = std::env::temp_dir().join(format!("aioctx-block-fl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![1u8; 4096]).unwrap();
        let main = Context::new("blocking-main").unwrap();
        main.claim().unwrap();
        for backend in backends() {
            let graph = Graph::new(main.clone());
            let flags = OpenFlags {
                rdwr: true,
                backend,
                ..Default::default()
            };
            let node = graph
                .open_file("disk", &main, path.to_str().unwrap(), flags)
                .unwrap();
            // Past the page cache (or on the ring, its own file opens).
            crate::sys::file::drop_cached_pages(std::os::fd::AsFd::as_fd(
                &std::fs::File::open(&path).unwrap(),
            ))
            .unwrap();
            let done = Arc::new(Mutex::new(None));
            let d = done.clone();
            let cb = Box::new(move |r: Result<usize>, _: IoBuf| *d.lock() = Some(r.is_ok()));
            node.submit(RequestKind::Read, IoBuf::from(vec![0; 4096]), 0, cb)
                .unwrap();
            node.drain().unwrap();
            assert_eq!(*done.lock(), Some(true));
            let opens = nonblocking_opens_of(&path);
            assert!(
                !opens.is_empty() && opens.iter().all(|nb| !nb),
                "{backend:?}: {opens:?}"
            );
            drop(graph);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn raw_file_io_on_each_backend() {
        // Writes then reads back through the node, on each backend: every
        // request completes once with its data, flush succeeds, the node
        // names its backend; O_DIRECT refuses a misaligned request at once.
        const BLOCKS: usize = 64;
        let dir = std::env::temp_dir().join(format!("aioctx-backends-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = Context::new("backends-main").unwrap();
        main.claim().unwrap();
        let io = IoThread::new("backends-io").unwrap();
        for backend in backends() {
            let graph = Graph::new(main.clone());
            let path = dir.join(format!("{backend:?}.img"));
            std::fs::write(&path, vec![0u8; BLOCKS * 512]).unwrap();
            let path = path.to_str().unwrap();
            let flags = OpenFlags {
                rdwr: true,
                backend,
                ..Default::default()
            };
            let node = graph.open_file("disk", io.context(), path, flags).unwrap();
            let want = if backend == Backend::IoUring {
                "io_uring"
            } else {
                "threads"
            };
            assert_eq!(node.io_backend(), Some(want));
            assert_eq!(node.alignment(), 1);
            let got = Arc::new(Mutex::new(vec![Vec::new(); BLOCKS]));
            for kind in [RequestKind::Write, RequestKind::Read] {
                for b in 0..BLOCKS {
                    let got = got.clone();
                    let done = Box::new(move |r: Result<usize>, buf: IoBuf| {
                        // No assert here: a panic would take the IOThread down.
                        if matches!(r, Ok(512)) {
                            got.lock()[b] = buf.into_vec().unwrap_or_default();
                        }
                    });
                    let fill = if kind == RequestKind::Write {
                        b as u8
                    } else {
                        0xff
                    };
                    node.submit(kind, IoBuf::from(vec![fill; 512]), (b * 512) as u64, done)
                        .unwrap();
                }
                node.drain().unwrap();
                for (b, data) in got.lock().drain(..).enumerate() {
                    assert_eq!(data, vec![b as u8; 512], "{backend:?} {kind:?} block {b}");
                }
                got.lock().resize(BLOCKS, Vec::new());
            }
            node.flush().unwrap();

            // Read-only: the first node holds the image's write lock.
            let direct = OpenFlags {
                direct: true,
                backend,
                ..Default::default()
            };
            match graph.open_file("direct", io.context(), path, direct) {
                Ok(d) => {
                    let a = d.alignment();
                    assert!(a >= 512 && a.is_power_of_two(), "alignment {a}");
                    let e = d
                        .submit(
                            RequestKind::Read,
                            IoBuf::from(vec![0; 100]),
                            0,
                            Box::new(|_, _| ()),
                        )
                        .unwrap_err();
                    assert_eq!(e.errno(), libc::EINVAL);
                    assert!(
                        e.message().contains(&format!("multiples of {a} bytes")),
                        "{}",
                        e.message()
                    );
                    assert_eq!(d.in_flight(), 0);
                }
                // A file system without O_DIRECT (tmpfs before 6.6).
                Err(e) => assert_eq!(e.errno(), libc::EINVAL, "{}", e.message()),
            }
        }
        drop(io);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn raw_file_write_read_and_lock() {
        let dir = std::env::temp_dir().join(format!("aioctx-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let path = path.to_str().unwrap();
        let main = Context::new("file-main").unwrap();
        main.claim().unwrap();
        let graph = Graph::new(main.clone());
        let rw = OpenFlags {
            rdwr: true,
            ..Default::default()
        };
        let node = graph.open_file("disk", &main, path, rw).unwrap();
        let second = graph.open_file("disk2", &main, path, rw).unwrap_err();
        assert_eq!(second.errno(), libc::EAGAIN);
        assert!(second.message().contains("locked by another process"));
        let done = Arc::new(Mutex::new(None));
        let d = done.clone();
        node.submit(
            RequestKind::Write,
            IoBuf::from(vec![7u8; 4096]),
            4096,
            Box::new(move |r, _| *d.lock() = Some(r)),
        )
        .unwrap();
        node.drain().unwrap();
        assert_eq!(done.lock().take().unwrap().unwrap(), 4096);
        assert_eq!(std::fs::read(path).unwrap()[4096..], [7u8; 4096]);
        graph.inactivate_all().unwrap();
        // The lock is gone: another open file can take it.
        let other = graph.open_file("disk3", &main, path, rw).unwrap();
        assert_eq!(graph.activate_all().unwrap_err().errno(), libc::EAGAIN);
        drop(other);
        let missing = graph
            .open_file("x", &main, "/nonexistent/img", rw)
            .unwrap_err();
        assert!(missing.message().contains("/nonexistent/img"));
        assert_eq!(
            graph
                .open_file("y", &main, dir.to_str().unwrap(), OpenFlags::default())
                .unwrap_err()
                .errno(),
            libc::EISDIR
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Drops the `done` of every flush without calling it.
    struct LosesDone;

    impl Driver for LosesDone {
        fn flush(&self, _node: &Arc<Node>, done: OpDone) {
            drop(done);
        }
    }

    /// A flush whose driver lost `done` fails with `EIO`, on the node's own
    /// thread and from another one (it waited for ever).
    #[test]
    fn a_flush_whose_driver_drops_done_fails_instead_of_hanging() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let main = Context::new("lost-done-main").unwrap();
            main.claim().unwrap();
            let io = IoThread::new("lost-done-io").unwrap();
            let graph = Graph::new(main.clone());
            let here = graph.add_node("here", &main, Box::new(LosesDone)).unwrap();
            let there = graph
                .add_node("there", io.context(), Box::new(LosesDone))
                .unwrap();
            let errno = |r: Result<()>| r.map_err(|e| e.errno()).err();
            let _ = tx.send((errno(here.flush()), errno(there.flush())));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(got, Ok((Some(libc::EIO), Some(libc::EIO))));
    }

    /// In its `close`, frees the graph again (nested), then adds a node.
    struct ClosesAgain {
        graph: std::sync::OnceLock<std::sync::Weak<Graph>>,
        added: Arc<Mutex<Option<i32>>>,
    }

    impl Driver for ClosesAgain {
        fn close(&self, node: &Arc<Node>) {
            let graph = self.graph.get().and_then(std::sync::Weak::upgrade).unwrap();
            graph.close_all();
            let added = graph.add_node("late", node.context(), Box::new(NullDriver));
            *self.added.lock() = Some(added.map(|_| 0).unwrap_or_else(|e| e.errno()));
        }
    }

    /// A node added while a close_all runs is refused, also after a nested
    /// close_all returned inside it; once the outer one returned, the
    /// emptied graph takes nodes again.
    #[test]
    fn nodes_added_while_the_graph_closes_are_refused() {
        let main = Context::new("closes-again").unwrap();
        main.claim().unwrap();
        let graph = Arc::new(Graph::new(main.clone()));
        let added = Arc::new(Mutex::new(None));
        let driver = ClosesAgain {
            graph: std::sync::OnceLock::new(),
            added: added.clone(),
        };
        driver.graph.set(Arc::downgrade(&graph)).unwrap();
        graph.add_node("first", &main, Box::new(driver)).unwrap();
        graph.close_all();
        assert_eq!(*added.lock(), Some(libc::ENODEV));
        assert!(graph.find("late").is_none());
        graph
            .add_node("after", &main, Box::new(NullDriver))
            .unwrap();
    }
}
