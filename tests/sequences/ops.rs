//! An interpreter of random operation sequences over aioctx's Rust API, with
//! a shadow model that predicts every result and the state after each step.
//!
//! Shared by `tests/sequences.rs` (a short, fixed-seed run in every
//! `cargo test`) and `fuzz/fuzz_targets/sequences.rs` (cargo-fuzz). Both
//! include this file with `#[path]`; it is not part of the library.
//!
//! Bytes decode into [`Op`]s by hand (one opcode byte, then one byte per
//! argument; missing bytes read as 0), so every input is a valid sequence.
//! Arguments select among the objects alive at that step (modulo their count).
//!
//! What runs: one thread (the caller) that is home of every context it
//! creates, plus at most one [`IoThread`] at a time. The caller's current
//! context is a hidden one (`W`) that the operations never touch, so the
//! polls a wait makes while an IOThread works are invisible to the model.
//! Everything the IOThread runs is uncertain in time only: the checker takes
//! its context's lock (so no dispatch is in progress), observes what ran,
//! and verifies that it is a FIFO prefix of what the model had queued.
//!
//! After every step the checker compares: lock depths of every context for
//! this thread, home threads, liveness of every object (via `Weak`s: no leak,
//! no early free), BH run counts and pending flags, timer fire counts and
//! deadlines, chained-BH schedule results, node in-flight counts and
//! inactive flags, the graph's node list and handover order, and the exact
//! log of driver calls.
//!
//! Liveness is checked exactly, so nothing else in the process may briefly
//! upgrade these objects: run sequences from one thread only (`diag::dump()`,
//! which a `poll_while` timeout embeds in its error, upgrades every context
//! and node of the process for a moment).
//!
//! Checks of library bugs found by this interpreter are switched by
//! [`Config`]. Every check is on by default, and both users run the
//! default: the two bugs they cover are fixed, and their regression tests in
//! `tests/sequences.rs` run. While a newly found bug waits for its fix, its
//! check can be turned off in `random_config()` (tests/sequences.rs) and the
//! fuzz target's `config()`, so the rest stays tested, with an ignored
//! regression test for the bug itself.
#![allow(dead_code)]

// Each area of the API in its own file: its operations (`exec_*`), the
// model helpers only it needs, and its checks (`check_*`). To add an
// operation: a variant of `Op` with its opcode in `decode`/`encode`, a
// route in `Run::exec`, an arm in the area's `exec_*`, and what it changes
// in the model checked by the area's `check_*`.
#[path = "bh.rs"]
mod bh;
#[path = "context.rs"]
mod context;
#[path = "graph.rs"]
mod graph;
#[path = "set.rs"]
mod set;
#[path = "timer.rs"]
mod timer;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use aioctx::block::OpDone;
use aioctx::{
    poll_while, Bh, Blocking, Context, ContextSet, Driver, Graph, IoBuf, IoThread, Node,
    NullDriver, RequestKind, Timer, WaitOptions, Waiter,
};

/// At most this many operations are decoded from one input.
pub const MAX_OPS: usize = 256;

const MAX_LIVE_CTXS: usize = 6;
const MAX_CTXS_CREATED: usize = 12;
const MAX_LIVE_SETS: usize = 3;
const MAX_BHS: usize = 16;
const MAX_TIMERS: usize = 8;
const MAX_LIVE_GRAPHS: usize = 2;
const MAX_GRAPHS_CREATED: usize = 4;
const MAX_LIVE_NODES: usize = 8;
const MAX_IOTHREADS: usize = 2;

/// Timer deadlines: those at or below this are in the past (fire at the next
/// poll); the others are centuries away (never fire during a run).
const PAST_LIMIT: i64 = 1;

/// Which checks are on. Checks of library bugs that are known and reported
/// can be turned off so that fuzzing goes on finding other things.
#[derive(Clone, Debug)]
pub struct Config {
    /// Check that a failed `inactivate_all` leaves every node either fully
    /// handed over and inactive, or active and not handed over (the
    /// handover module's documented promise).
    pub check_handover_consistency: bool,
    /// Check that a wait through `Waiter::releasing(set)` returns with every
    /// lock depth as on entry even when the set is not held by the caller
    /// (or a member was released behind its back).
    pub check_waiter_set_depths: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            check_handover_consistency: true,
            check_waiter_set_depths: true,
        }
    }
}

// ---------------------------------------------------------------- decoding

/// One operation. Fields are raw selector bytes, resolved at run time
/// against the objects alive then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    NewCtx {
        name: u8,
    },
    DropCtx {
        c: u8,
    },
    Acquire {
        c: u8,
    },
    TryAcquire {
        c: u8,
    },
    Release {
        c: u8,
    },
    ReleaseAll {
        c: u8,
    },
    Restore {
        c: u8,
        n: u8,
    },
    /// mode % 3: 0 poll(false), 1 poll_wait(Until(0)), 2 poll(true) when the
    /// model predicts work (else poll(false)).
    Poll {
        c: u8,
        mode: u8,
    },
    NewSet,
    DropSet {
        s: u8,
    },
    SetAdd {
        s: u8,
        c: u8,
    },
    SetAcquire {
        s: u8,
    },
    SetRelease {
        s: u8,
    },
    /// chain % 3 == 0: a counting BH; otherwise it also schedules BH
    /// `chain / 3` (modulo the BHs then existing, itself included) when run.
    NewBh {
        c: u8,
        chain: u8,
    },
    BhSchedule {
        b: u8,
    },
    BhCancel {
        b: u8,
    },
    BhDelete {
        b: u8,
    },
    BhDrop {
        b: u8,
    },
    NewTimer {
        c: u8,
    },
    /// when % 5: -1, 0, 1, i64::MAX / 2, i64::MAX.
    TimerMod {
        t: u8,
        when: u8,
    },
    TimerDel {
        t: u8,
    },
    TimerDrop {
        t: u8,
    },
    /// mode % 6: 0 poll_while until a oneshot BH ran; 1 the same with
    /// release_all; 2 timeout 0 on a condition that stays true; 3 negative
    /// timeout; 4 a condition already false; 5 a Waiter releasing a held set.
    PollWhile {
        c: u8,
        mode: u8,
    },
    StartIo,
    StopIo,
    DropIo,
    NewGraph,
    DropGraph {
        g: u8,
    },
    CloseAll {
        g: u8,
    },
    /// driver % 2: 0 NullDriver, 1 recording driver. name % 4: 0 "", 1 an
    /// existing name, 2 a name with a NUL byte, 3 a fresh name.
    AddNode {
        g: u8,
        c: u8,
        driver: u8,
        name: u8,
    },
    Attach {
        p: u8,
        q: u8,
    },
    StartReq {
        n: u8,
        write: bool,
    },
    EndReq {
        n: u8,
    },
    /// Completes one request of the node as a BH in its context.
    Complete {
        n: u8,
    },
    Submit {
        n: u8,
        write: bool,
    },
    Drain {
        n: u8,
    },
    Flush {
        n: u8,
    },
    InactivateAll {
        g: u8,
    },
    ActivateAll {
        g: u8,
    },
    /// Toggles an injected failure of a recording driver: which % 5 is
    /// flush, inactivate, activate, taking and dropping write permission.
    SetFail {
        n: u8,
        which: u8,
    },
    /// `diag::dump()` names every live context and node.
    Dump,
}

const N_OPCODES: u8 = 41;

thread_local! {
    static STATS: std::cell::RefCell<Option<std::collections::BTreeMap<String, u64>>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts counting events on this thread for [`take_stats`] (off by
/// default: the fuzz target does not pay for it).
pub fn enable_stats() {
    STATS.with(|s| s.borrow_mut().get_or_insert_with(Default::default).clear());
}

/// Counts an event (what the sequences reached), if enabled.
fn stat(event: impl Into<String>) {
    STATS.with(|s| {
        if let Some(map) = s.borrow_mut().as_mut() {
            *map.entry(event.into()).or_default() += 1;
        }
    });
}

/// The events counted on this thread since the last call, as
/// "count event" lines: which operations ran and which results they had.
pub fn take_stats() -> String {
    STATS.with(|s| {
        s.borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{v:8} {k}\n"))
            .collect()
    })
}

/// Decodes bytes into operations (never fails).
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut it = data.iter().copied();
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(code) = it.next() else { break };
        let mut a = || it.next().unwrap_or(0);
        let op = match code % N_OPCODES {
            0 => Op::NewCtx { name: a() },
            1 => Op::DropCtx { c: a() },
            2 => Op::Acquire { c: a() },
            3 => Op::TryAcquire { c: a() },
            4 => Op::Release { c: a() },
            5 => Op::ReleaseAll { c: a() },
            6 => Op::Restore { c: a(), n: a() },
            7 => Op::Poll { c: a(), mode: a() },
            8 => Op::NewSet,
            9 => Op::DropSet { s: a() },
            10 => Op::SetAdd { s: a(), c: a() },
            11 => Op::SetAcquire { s: a() },
            12 => Op::SetRelease { s: a() },
            13 => Op::NewBh { c: a(), chain: a() },
            14 => Op::BhSchedule { b: a() },
            15 => Op::BhCancel { b: a() },
            16 => Op::BhDelete { b: a() },
            17 => Op::BhDrop { b: a() },
            18 => Op::NewTimer { c: a() },
            19 => Op::TimerMod { t: a(), when: a() },
            20 => Op::TimerDel { t: a() },
            21 => Op::TimerDrop { t: a() },
            22 => Op::PollWhile { c: a(), mode: a() },
            23 => Op::StartIo,
            24 => Op::StopIo,
            25 => Op::DropIo,
            26 => Op::NewGraph,
            27 => Op::DropGraph { g: a() },
            28 => Op::CloseAll { g: a() },
            29 => Op::AddNode {
                g: a(),
                c: a(),
                driver: a(),
                name: a(),
            },
            30 => Op::Attach { p: a(), q: a() },
            31 => Op::StartReq {
                n: a(),
                write: a() & 1 == 1,
            },
            32 => Op::EndReq { n: a() },
            33 => Op::Complete { n: a() },
            34 => Op::Submit {
                n: a(),
                write: a() & 1 == 1,
            },
            35 => Op::Drain { n: a() },
            36 => Op::Flush { n: a() },
            37 => Op::InactivateAll { g: a() },
            38 => Op::ActivateAll { g: a() },
            39 => Op::SetFail { n: a(), which: a() },
            _ => Op::Dump,
        };
        ops.push(op);
    }
    ops
}

/// The bytes that [`decode`] turns into `ops` (for seeding a corpus).
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        let (code, args): (u8, Vec<u8>) = match *op {
            Op::NewCtx { name } => (0, vec![name]),
            Op::DropCtx { c } => (1, vec![c]),
            Op::Acquire { c } => (2, vec![c]),
            Op::TryAcquire { c } => (3, vec![c]),
            Op::Release { c } => (4, vec![c]),
            Op::ReleaseAll { c } => (5, vec![c]),
            Op::Restore { c, n } => (6, vec![c, n]),
            Op::Poll { c, mode } => (7, vec![c, mode]),
            Op::NewSet => (8, vec![]),
            Op::DropSet { s } => (9, vec![s]),
            Op::SetAdd { s, c } => (10, vec![s, c]),
            Op::SetAcquire { s } => (11, vec![s]),
            Op::SetRelease { s } => (12, vec![s]),
            Op::NewBh { c, chain } => (13, vec![c, chain]),
            Op::BhSchedule { b } => (14, vec![b]),
            Op::BhCancel { b } => (15, vec![b]),
            Op::BhDelete { b } => (16, vec![b]),
            Op::BhDrop { b } => (17, vec![b]),
            Op::NewTimer { c } => (18, vec![c]),
            Op::TimerMod { t, when } => (19, vec![t, when]),
            Op::TimerDel { t } => (20, vec![t]),
            Op::TimerDrop { t } => (21, vec![t]),
            Op::PollWhile { c, mode } => (22, vec![c, mode]),
            Op::StartIo => (23, vec![]),
            Op::StopIo => (24, vec![]),
            Op::DropIo => (25, vec![]),
            Op::NewGraph => (26, vec![]),
            Op::DropGraph { g } => (27, vec![g]),
            Op::CloseAll { g } => (28, vec![g]),
            Op::AddNode { g, c, driver, name } => (29, vec![g, c, driver, name]),
            Op::Attach { p, q } => (30, vec![p, q]),
            Op::StartReq { n, write } => (31, vec![n, write as u8]),
            Op::EndReq { n } => (32, vec![n]),
            Op::Complete { n } => (33, vec![n]),
            Op::Submit { n, write } => (34, vec![n, write as u8]),
            Op::Drain { n } => (35, vec![n]),
            Op::Flush { n } => (36, vec![n]),
            Op::InactivateAll { g } => (37, vec![g]),
            Op::ActivateAll { g } => (38, vec![g]),
            Op::SetFail { n, which } => (39, vec![n, which]),
            Op::Dump => (40, vec![]),
        };
        out.push(code);
        out.extend(args);
    }
    out
}

/// Decodes and runs `data`, panicking on the first mismatch.
pub fn run_bytes(data: &[u8], cfg: &Config) {
    run_ops(&decode(data), cfg);
}

/// Runs `ops`, checking every step; tears everything down at the end and
/// checks that nothing leaked.
pub fn run_ops(ops: &[Op], cfg: &Config) {
    let _dump = DumpOnPanic(ops);
    let mut run = Run::new(cfg);
    run.check();
    for (i, op) in ops.iter().enumerate() {
        run.step = i;
        run.op = Some(*op);
        run.exec(*op);
        run.update_liveness();
        run.check();
    }
    run.step = ops.len();
    run.op = None;
    run.teardown();
}

/// Prints the whole sequence when a step panics, for reproduction.
struct DumpOnPanic<'a>(&'a [Op]);

impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sequence of {} ops that failed:", self.0.len());
            for (i, op) in self.0.iter().enumerate() {
                eprintln!("  {i:3}: {op:?}");
            }
        }
    }
}

// ---------------------------------------------------------------- drivers

const F_FLUSH: usize = 0;
const F_INACTIVATE: usize = 1;
const F_ACTIVATE: usize = 2;
const F_TAKE: usize = 3;
const F_DROP: usize = 4;
const FAIL_ERRNO: [i32; 5] = [
    libc::EIO,
    libc::ENOSPC,
    libc::EROFS,
    libc::EAGAIN,
    libc::EACCES,
];

/// Logs every call as "op:node" and fails the ones whose flag is set.
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    fails: Arc<[AtomicBool; 5]>,
}

impl Recorder {
    fn note(&self, op: &str, node: &str, which: usize) -> aioctx::Result<()> {
        self.log.lock().unwrap().push(format!("{op}:{node}"));
        if self.fails[which].load(SeqCst) {
            Err(aioctx::Error::new(
                FAIL_ERRNO[which],
                format!("injected {op} failure"),
            ))
        } else {
            Ok(())
        }
    }
}

impl Driver for Recorder {
    fn flush(&self, node: &Arc<Node>, done: OpDone) {
        done(self.note("flush", node.name(), F_FLUSH))
    }
    fn inactivate(&self, node: &Arc<Node>) -> aioctx::Result<()> {
        self.note("inactivate", node.name(), F_INACTIVATE)
    }
    fn activate(&self, node: &Arc<Node>) -> aioctx::Result<()> {
        self.note("activate", node.name(), F_ACTIVATE)
    }
    fn set_write_permission(&self, node: &Arc<Node>, write: bool) -> aioctx::Result<()> {
        if write {
            self.note("perm1", node.name(), F_TAKE)
        } else {
            self.note("perm0", node.name(), F_DROP)
        }
    }
    fn close(&self, node: &Arc<Node>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("close:{}", node.name()));
    }
}

// ---------------------------------------------------------------- model

/// What a context's queue holds, in ticket order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Bh(usize),
    /// A oneshot BH setting flag N.
    Oneshot(usize),
    /// A oneshot BH ending one request of node N.
    Completion(usize),
}

struct MCtx {
    name: String,
    handle: Option<Arc<Context>>,
    weak: Weak<Context>,
    alive: bool,
    /// This thread's lock depth.
    depth: u32,
    /// Home is the running IOThread.
    io_running: bool,
    /// Home is this thread.
    homed: bool,
    queue: VecDeque<(u64, Item)>,
    next_ticket: u64,
    saved: Vec<u32>,
}

struct MSet {
    handle: Option<ContextSet>,
    /// In the set's iteration order: insertion order, sorted by id when
    /// acquired (until the next add).
    members: Vec<usize>,
    held: bool,
}

struct MBh {
    ctx: usize,
    handle: Option<Arc<Bh>>,
    weak: Weak<Bh>,
    count: Arc<AtomicU64>,
    runs: u64,
    ticket: u64,
    deleted: bool,
    chain: Option<usize>,
    chain_log: Arc<Mutex<Vec<i32>>>,
    expect_chain_log: Vec<i32>,
}

struct MTimer {
    ctx: usize,
    handle: Option<Arc<Timer>>,
    weak: Weak<Timer>,
    count: Arc<AtomicU64>,
    fires: u64,
    expire: Option<i64>,
}

struct MFlag {
    ctx: usize,
    flag: Arc<AtomicBool>,
    done: bool,
}

struct MGraph {
    handle: Option<Graph>,
    /// Creation order.
    nodes: Vec<usize>,
}

struct MNode {
    graph: usize,
    ctx: usize,
    name: String,
    recording: bool,
    fails: Arc<[AtomicBool; 5]>,
    handle: Option<Arc<Node>>,
    weak: Weak<Node>,
    in_flight: i64,
    /// Requests whose completion BH is queued.
    reserved: i64,
    inactive: bool,
    /// Driver inactivated since its last activate (for the consistency check).
    handed_over: bool,
    children: Vec<usize>,
    completed: Arc<AtomicU64>,
    completed_model: u64,
    completion_errors: Arc<AtomicU64>,
}

struct MIo {
    handle: Option<IoThread>,
    ctx: usize,
    running: bool,
}

struct Run<'a> {
    cfg: &'a Config,
    step: usize,
    op: Option<Op>,
    /// The hidden current context of this thread.
    wait_ctx: Option<Arc<Context>>,
    wait_weak: Weak<Context>,
    ctxs: Vec<MCtx>,
    sets: Vec<MSet>,
    bhs: Vec<MBh>,
    timers: Vec<MTimer>,
    flags: Vec<MFlag>,
    graphs: Vec<MGraph>,
    nodes: Vec<MNode>,
    io: Option<MIo>,
    io_created: usize,
    log: Arc<Mutex<Vec<String>>>,
    expected_log: Vec<String>,
}

fn errno_name(e: i32) -> &'static str {
    match e {
        0 => "ok",
        -1 => "gone",
        libc::EPERM => "EPERM",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENODEV => "ENODEV",
        libc::EDEADLK => "EDEADLK",
        libc::ELOOP => "ELOOP",
        libc::EEXIST => "EEXIST",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOTSUP => "ENOTSUP",
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        _ => "E?",
    }
}

fn show(r: &Result<(), i32>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(e) => format!("Err({} {e})", errno_name(*e)),
    }
}

/// Selects `sel` modulo the length of `v`.
fn pick(v: &[usize], sel: u8) -> Option<usize> {
    (!v.is_empty()).then(|| v[sel as usize % v.len()])
}

impl<'a> Run<'a> {
    fn new(cfg: &'a Config) -> Run<'a> {
        let w = Context::new("fz-wait").expect("create the wait context");
        w.claim().expect("claim the wait context");
        let current = Context::current().expect("Context::current");
        assert!(
            Arc::ptr_eq(&current, &w),
            "this thread's current context is '{}', not the new wait context: a context of an \
             earlier sequence is still alive (leak)",
            current.name()
        );
        drop(current);
        let mut run = Run {
            cfg,
            step: 0,
            op: None,
            wait_weak: Arc::downgrade(&w),
            wait_ctx: Some(w),
            ctxs: Vec::new(),
            sets: Vec::new(),
            bhs: Vec::new(),
            timers: Vec::new(),
            flags: Vec::new(),
            graphs: Vec::new(),
            nodes: Vec::new(),
            io: None,
            io_created: 0,
            log: Arc::default(),
            expected_log: Vec::new(),
        };
        // Context 0: the graphs' main context, homed here.
        let main = Context::new("fz-main").expect("create main");
        main.claim().expect("claim main");
        run.add_ctx(main, false, true);
        run
    }

    fn fail(&self, msg: impl AsRef<str>) -> ! {
        panic!("step {} ({:?}): {}", self.step, self.op, msg.as_ref());
    }

    fn expect<T>(&self, what: &str, got: aioctx::Result<T>, want: Result<(), i32>) -> Option<T> {
        if STATS.with(|s| s.borrow().is_some()) {
            stat(format!("{what} -> {}", show(&want)));
        }
        match (&got, want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(w)) if e.errno() == w => {
                if e.message().is_empty() {
                    self.fail(format!("{what}: error {} has an empty message", e.errno()));
                }
            }
            _ => self.fail(format!(
                "{what}: expected {}, got {:?}",
                show(&want),
                got.as_ref().map(|_| ()).map_err(|e| format!(
                    "{} {} ({})",
                    errno_name(e.errno()),
                    e.errno(),
                    e.message()
                ))
            )),
        }
        got.ok()
    }

    /// Like `expect`, and an error must name `'node'`.
    fn expect_named<T>(
        &self,
        what: &str,
        got: aioctx::Result<T>,
        want: Result<(), i32>,
        node: Option<usize>,
    ) -> Option<T> {
        if let (Err(e), Some(n)) = (&got, node) {
            let name = format!("'{}'", self.nodes[n].name);
            if want.is_err() && !e.message().contains(&name) {
                self.fail(format!(
                    "{what}: error message does not name {name}: {}",
                    e.message()
                ));
            }
        }
        self.expect(what, got, want)
    }

    // ------------------------------------------------ object tables

    fn add_ctx(&mut self, ctx: Arc<Context>, io_running: bool, homed: bool) -> usize {
        self.ctxs.push(MCtx {
            name: ctx.name().to_string(),
            weak: Arc::downgrade(&ctx),
            handle: Some(ctx),
            alive: true,
            depth: 0,
            io_running,
            homed,
            queue: VecDeque::new(),
            next_ticket: 0,
            saved: Vec::new(),
        });
        self.ctxs.len() - 1
    }

    fn ctx_arc(&self, c: usize) -> Arc<Context> {
        self.ctxs[c].weak.upgrade().unwrap_or_else(|| {
            self.fail(format!("context '{}' should be alive", self.ctxs[c].name))
        })
    }

    fn ctxs_with_handle(&self) -> Vec<usize> {
        (0..self.ctxs.len())
            .filter(|&c| self.ctxs[c].handle.is_some())
            .collect()
    }

    fn live_sets(&self) -> Vec<usize> {
        (0..self.sets.len())
            .filter(|&s| self.sets[s].handle.is_some())
            .collect()
    }

    fn bhs_with_handle(&self) -> Vec<usize> {
        (0..self.bhs.len())
            .filter(|&b| self.bhs[b].handle.is_some())
            .collect()
    }

    fn timers_with_handle(&self) -> Vec<usize> {
        (0..self.timers.len())
            .filter(|&t| self.timers[t].handle.is_some())
            .collect()
    }

    fn live_graphs(&self) -> Vec<usize> {
        (0..self.graphs.len())
            .filter(|&g| self.graphs[g].handle.is_some())
            .collect()
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].handle.is_some())
            .collect()
    }

    fn io_ctx(&self) -> Option<usize> {
        self.io.as_ref().filter(|io| io.running).map(|io| io.ctx)
    }

    fn bh_alive(&self, b: usize) -> bool {
        let bh = &self.bhs[b];
        bh.handle.is_some() || (bh.ticket != 0 && self.ctxs[bh.ctx].alive)
    }

    fn timer_alive(&self, t: usize) -> bool {
        let tm = &self.timers[t];
        tm.handle.is_some() || (tm.expire.is_some() && self.ctxs[tm.ctx].alive)
    }

    /// Marks contexts dead once nothing holds them (ours, a set, a node,
    /// the IOThread, a graph's shared part); their queues go with them.
    fn update_liveness(&mut self) {
        for c in 0..self.ctxs.len() {
            if !self.ctxs[c].alive {
                continue;
            }
            let held = self.ctxs[c].handle.is_some()
                || self
                    .sets
                    .iter()
                    .any(|s| s.handle.is_some() && s.members.contains(&c))
                || self.nodes.iter().any(|n| n.handle.is_some() && n.ctx == c)
                || self
                    .io
                    .as_ref()
                    .is_some_and(|io| io.handle.is_some() && io.ctx == c)
                || (c == 0
                    && (self.graphs.iter().any(|g| g.handle.is_some())
                        || self.nodes.iter().any(|n| n.handle.is_some())));
            if !held {
                let ctx = &mut self.ctxs[c];
                ctx.alive = false;
                ctx.queue.clear();
                ctx.depth = 0;
            }
        }
    }

    // ------------------------------------------------ simulation

    fn push(&mut self, c: usize, item: Item) -> u64 {
        let ctx = &mut self.ctxs[c];
        ctx.next_ticket += 1;
        ctx.queue.push_back((ctx.next_ticket, item));
        ctx.next_ticket
    }

    fn complete_model(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.handle.is_some() {
            node.in_flight -= 1;
            node.reserved -= 1;
            node.completed_model += 1;
        }
    }

    /// One dispatch of context `c` by this thread; returns whether a
    /// callback ran.
    fn sim_poll(&mut self, c: usize) -> bool {
        self.ctxs[c].homed = true;
        let batch = std::mem::take(&mut self.ctxs[c].queue);
        let mut ran = 0;
        for (t, item) in batch {
            match item {
                Item::Bh(b) => {
                    if self.bhs[b].ticket != t {
                        continue;
                    }
                    self.bhs[b].ticket = 0;
                    self.bhs[b].runs += 1;
                    ran += 1;
                    if let Some(target) = self.bhs[b].chain {
                        let r = if self.bh_alive(target) {
                            self.sim_schedule(target)
                        } else {
                            -1
                        };
                        stat(format!("chained schedule -> {}", errno_name(r)));
                        self.bhs[b].expect_chain_log.push(r);
                    }
                }
                Item::Oneshot(f) => {
                    self.flags[f].done = true;
                    ran += 1;
                }
                Item::Completion(n) => {
                    self.complete_model(n);
                    ran += 1;
                }
            }
        }
        let fired = self.fire_due(c);
        if fired > 0 {
            stat("timer fired in a poll");
        }
        ran += fired;
        ran > 0
    }

    /// Everything queued on `c` runs (an IOThread stopping), then due timers.
    fn sim_run_all(&mut self, c: usize) {
        let batch = std::mem::take(&mut self.ctxs[c].queue);
        for (t, item) in batch {
            match item {
                Item::Bh(b) => {
                    if self.bhs[b].ticket == t {
                        self.bhs[b].ticket = 0;
                        self.bhs[b].runs += 1;
                        assert!(self.bhs[b].chain.is_none(), "no chained BH on an IOThread");
                    }
                }
                Item::Oneshot(f) => self.flags[f].done = true,
                Item::Completion(n) => self.complete_model(n),
            }
        }
        self.fire_due(c);
    }

    fn fire_due(&mut self, c: usize) -> usize {
        let mut fired = 0;
        for t in 0..self.timers.len() {
            let tm = &mut self.timers[t];
            if tm.ctx == c && tm.expire.is_some_and(|e| e <= PAST_LIMIT) {
                tm.expire = None;
                tm.fires += 1;
                fired += 1;
            }
        }
        fired
    }

    fn has_work(&self, c: usize) -> bool {
        !self.ctxs[c].queue.is_empty()
            || self
                .timers
                .iter()
                .any(|t| t.ctx == c && t.expire.is_some_and(|e| e <= PAST_LIMIT))
    }

    /// A wait's poll for work on `c`: this thread polls `c` itself unless an
    /// IOThread runs it (then the IOThread does, observed later).
    fn sim_wait_poll(&mut self, c: usize) {
        if !self.ctxs[c].io_running {
            self.sim_poll(c);
        }
    }

    /// A driver operation run in the node's home thread and waited for: on
    /// this thread, when it is the home, right there (no poll, so no pending
    /// BH runs); otherwise as a BH the wait polls for.
    fn sim_run_in_home(&mut self, c: usize) {
        if !self.ctxs[c].homed {
            self.sim_wait_poll(c);
        }
    }

    /// The `Waiter::new(ctx).releasing(held)` checks: EDEADLK or fine.
    fn waiter_check(&self, c: usize, held: Option<&[usize]>, release_all: bool) -> Result<(), i32> {
        if self.ctxs[c].io_running && self.ctxs[c].depth > 1 && !release_all {
            return Err(libc::EDEADLK);
        }
        // Holding other contexts is allowed: the IOThread's BHs here never
        // acquire one, so no wait-for cycle can form.
        if let Some(members) = held {
            for &m in members {
                if self.held_deeper_and_run_elsewhere(m) {
                    return Err(libc::EDEADLK);
                }
            }
        }
        Ok(())
    }

    /// `releasing`'s refusal: a set member still held after the wait gives
    /// one level back matters only if an IOThread runs it (the poll
    /// context, the member's own unless an IOThread runs it, is this thread's).
    fn held_deeper_and_run_elsewhere(&self, m: usize) -> bool {
        self.ctxs[m].depth > 1 && self.ctxs[m].io_running
    }

    /// Runs `f` with the running IOThread's context held (if `c` is that
    /// context), so that nothing it runs changes what `f` observes.
    fn frozen<R>(&mut self, c: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        if self.ctxs[c].io_running {
            let ctx = self.ctx_arc(c);
            ctx.lock().acquire().expect("freeze the IOThread");
            self.resync_io();
            let r = f(self);
            ctx.lock().release().expect("unfreeze the IOThread");
            r
        } else {
            f(self)
        }
    }

    /// Runs one operation: each area of the API has its own file.
    fn exec(&mut self, op: Op) {
        match op {
            Op::NewCtx { .. }
            | Op::DropCtx { .. }
            | Op::Acquire { .. }
            | Op::TryAcquire { .. }
            | Op::Release { .. }
            | Op::ReleaseAll { .. }
            | Op::Restore { .. }
            | Op::Poll { .. }
            | Op::PollWhile { .. }
            | Op::StartIo
            | Op::StopIo
            | Op::DropIo
            | Op::Dump => self.exec_context(op),
            Op::NewSet
            | Op::DropSet { .. }
            | Op::SetAdd { .. }
            | Op::SetAcquire { .. }
            | Op::SetRelease { .. } => self.exec_set(op),
            Op::NewBh { .. }
            | Op::BhSchedule { .. }
            | Op::BhCancel { .. }
            | Op::BhDelete { .. }
            | Op::BhDrop { .. } => self.exec_bh(op),
            Op::NewTimer { .. }
            | Op::TimerMod { .. }
            | Op::TimerDel { .. }
            | Op::TimerDrop { .. } => self.exec_timer(op),
            Op::NewGraph
            | Op::DropGraph { .. }
            | Op::CloseAll { .. }
            | Op::AddNode { .. }
            | Op::Attach { .. }
            | Op::StartReq { .. }
            | Op::EndReq { .. }
            | Op::Complete { .. }
            | Op::Submit { .. }
            | Op::Drain { .. }
            | Op::Flush { .. }
            | Op::InactivateAll { .. }
            | Op::ActivateAll { .. }
            | Op::SetFail { .. } => self.exec_graph(op),
        }
    }

    /// After every step: each area's checks, with the IOThread frozen (its
    /// context held, what it ran accounted for) for all but the lock depths.
    fn check(&mut self) {
        // Lock depths first, before the checker takes the IOThread's lock.
        self.check_contexts();
        let frozen = self.io_ctx().map(|c| self.ctx_arc(c));
        if let Some(ctx) = &frozen {
            ctx.lock().acquire().expect("freeze the IOThread");
            self.resync_io();
        }
        self.check_sets();
        self.check_bhs();
        self.check_timers();
        self.check_graphs();
        if let Some(ctx) = frozen {
            ctx.lock().release().expect("unfreeze the IOThread");
        }
    }

    /// Lets go of everything and checks that all of it was freed.
    fn teardown(&mut self) {
        for s in self.live_sets() {
            if self.sets[s].held {
                let r = self.sets[s].handle.as_mut().unwrap().release();
                let want = self.sim_set_release(s);
                self.expect("teardown: set release", r, want);
            }
        }
        for c in 0..self.ctxs.len() {
            if self.ctxs[c].alive && self.ctxs[c].depth > 0 {
                let ctx = self.ctx_arc(c);
                while self.ctxs[c].depth > 0 {
                    self.expect("teardown: release", ctx.release(), Ok(()));
                    self.ctxs[c].depth -= 1;
                }
            }
        }
        self.check();
        for g in self.live_graphs() {
            let graph = self.graphs[g].handle.take();
            self.close_graph_nodes(g);
            drop(graph);
        }
        self.update_liveness();
        self.check();
        self.exec_stop_io(true);
        self.update_liveness();
        self.check();
        for s in &mut self.sets {
            s.handle = None;
        }
        for b in &mut self.bhs {
            b.handle = None;
        }
        for t in &mut self.timers {
            t.handle = None;
        }
        for c in &mut self.ctxs {
            c.handle = None;
        }
        self.update_liveness();
        self.check();
        for m in &self.ctxs {
            if m.alive {
                self.fail(format!("context '{}' outlives the run", m.name));
            }
        }
        for b in 0..self.bhs.len() {
            if self.bhs[b].weak.strong_count() != 0 {
                self.fail(format!("BH {b} outlives its context and handle"));
            }
        }
        for t in 0..self.timers.len() {
            if self.timers[t].weak.strong_count() != 0 {
                self.fail(format!("timer {t} outlives its context and handle"));
            }
        }
        drop(self.wait_ctx.take());
        if self.wait_weak.strong_count() != 0 {
            self.fail("the wait context outlives the run");
        }
    }
}
