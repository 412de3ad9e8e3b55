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
//! [`Config`]; the fuzz target and the short test turn them off (they have
//! ignored regression tests in `tests/sequences.rs`), so the rest stays tested.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use aioctx::block::OpDone;
use aioctx::{
    poll_while, Bh, Context, ContextSet, Driver, Graph, IoBuf, IoThread, Node, NullDriver,
    RequestKind, Timer, Wait, WaitOptions, Waiter,
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

    /// `Bh::schedule`: 0, or the errno.
    fn sim_schedule(&mut self, b: usize) -> i32 {
        let c = self.bhs[b].ctx;
        if !self.ctxs[c].alive {
            return libc::ENODEV;
        }
        if self.bhs[b].deleted {
            return libc::EINVAL;
        }
        if self.bhs[b].ticket == 0 {
            let t = self.push(c, Item::Bh(b));
            self.bhs[b].ticket = t;
        }
        0
    }

    fn sim_cancel(&mut self, b: usize) -> bool {
        let c = self.bhs[b].ctx;
        if !self.ctxs[c].alive {
            return false;
        }
        let ticket = std::mem::replace(&mut self.bhs[b].ticket, 0);
        if ticket != 0 {
            self.ctxs[c].queue.retain(|(t, _)| *t != ticket);
        }
        ticket != 0
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

    fn top_down(&self, g: usize) -> Vec<usize> {
        let all = &self.graphs[g].nodes;
        let mut parents: HashMap<usize, usize> = all.iter().map(|&n| (n, 0)).collect();
        for &n in all {
            for &ch in &self.nodes[n].children {
                *parents.get_mut(&ch).unwrap() += 1;
            }
        }
        let mut ready: VecDeque<usize> = all.iter().copied().filter(|n| parents[n] == 0).collect();
        let mut order = Vec::new();
        while let Some(n) = ready.pop_front() {
            for &ch in &self.nodes[n].children {
                let p = parents.get_mut(&ch).unwrap();
                *p -= 1;
                if *p == 0 {
                    ready.push_back(ch);
                }
            }
            order.push(n);
        }
        order
    }

    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut stack = vec![from];
        let mut seen = Vec::new();
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if !seen.contains(&n) {
                seen.push(n);
                stack.extend(self.nodes[n].children.iter().copied());
            }
        }
        false
    }

    fn note(&mut self, n: usize, op: &str) {
        if self.nodes[n].recording {
            let name = self.nodes[n].name.clone();
            self.expected_log.push(format!("{op}:{name}"));
        }
    }

    fn fails(&self, n: usize, which: usize) -> bool {
        self.nodes[n].recording && self.nodes[n].fails[which].load(SeqCst)
    }

    fn members_of(&self, order: &[usize]) -> Vec<usize> {
        let mut m: Vec<usize> = order.iter().map(|&n| self.nodes[n].ctx).collect();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Model of `Graph::inactivate_all`: the result and the failing node.
    fn sim_inactivate_all(&mut self, g: usize) -> (Result<(), i32>, Option<usize>) {
        let order: Vec<usize> = self
            .top_down(g)
            .into_iter()
            .filter(|&n| !self.nodes[n].inactive)
            .collect();
        if let Some(refused) = self.sim_refuse_held(&order) {
            return refused;
        }
        let members = self.members_of(&order);
        members.iter().for_each(|&m| self.ctxs[m].depth += 1);
        let result = self.sim_inactivate_held(&order, &members);
        members.iter().for_each(|&m| self.ctxs[m].depth -= 1);
        result
    }

    /// Model of the handover's up-front refusal: a node context the caller
    /// already holds while an IOThread runs it gives EDEADLK, naming that node.
    fn sim_refuse_held(&self, order: &[usize]) -> Option<(Result<(), i32>, Option<usize>)> {
        order.iter().find_map(|&n| {
            let c = self.nodes[n].ctx;
            (self.ctxs[c].depth > 0 && self.ctxs[c].io_running)
                .then_some((Err(libc::EDEADLK), Some(n)))
        })
    }

    fn sim_inactivate_held(
        &mut self,
        order: &[usize],
        members: &[usize],
    ) -> (Result<(), i32>, Option<usize>) {
        for &n in order {
            let c = self.nodes[n].ctx;
            if let Err(e) = self.waiter_check(c, Some(members), false) {
                return (Err(e), Some(n));
            }
            if self.nodes[n].in_flight > 0 {
                self.sim_wait_poll(c);
            }
        }
        for (i, &n) in order.iter().enumerate() {
            let c = self.nodes[n].ctx;
            self.sim_run_in_home(c);
            self.note(n, "flush");
            let mut err = self.fails(n, F_FLUSH).then_some(FAIL_ERRNO[F_FLUSH]);
            if err.is_none() {
                self.sim_run_in_home(c);
                self.note(n, "inactivate");
                if self.fails(n, F_INACTIVATE) {
                    err = Some(FAIL_ERRNO[F_INACTIVATE]);
                } else {
                    self.nodes[n].handed_over = true;
                }
            }
            if let Some(e) = err {
                // Every node already handed over is marked, whatever the
                // permission drops say; the handover error is the one returned.
                for &m in &order[..i] {
                    let _ = self.sim_mark_inactive(m);
                }
                return (Err(e), Some(n));
            }
        }
        // Every node is marked; the first permission-drop failure is returned.
        let mut first = (Ok(()), None);
        for &n in order {
            if let Err(e) = self.sim_mark_inactive(n) {
                if first.0.is_ok() {
                    first = (Err(e), Some(n));
                }
            }
        }
        first
    }

    fn sim_mark_inactive(&mut self, n: usize) -> Result<(), i32> {
        self.nodes[n].inactive = true;
        self.note(n, "perm0");
        if self.fails(n, F_DROP) {
            Err(FAIL_ERRNO[F_DROP])
        } else {
            Ok(())
        }
    }

    /// Model of `Graph::activate_all`.
    fn sim_activate_all(&mut self, g: usize) -> (Result<(), i32>, Option<usize>) {
        let mut order: Vec<usize> = self
            .top_down(g)
            .into_iter()
            .filter(|&n| self.nodes[n].inactive)
            .collect();
        order.reverse();
        if let Some(refused) = self.sim_refuse_held(&order) {
            return refused;
        }
        let members = self.members_of(&order);
        members.iter().for_each(|&m| self.ctxs[m].depth += 1);
        let mut result = (Ok(()), None);
        for &n in &order {
            self.note(n, "perm1");
            if self.fails(n, F_TAKE) {
                result = (Err(FAIL_ERRNO[F_TAKE]), Some(n));
                break;
            }
            let c = self.nodes[n].ctx;
            if let Err(e) = self.waiter_check(c, Some(&members), false) {
                self.note(n, "perm0");
                result = (Err(e), Some(n));
                break;
            }
            self.sim_run_in_home(c);
            self.note(n, "activate");
            if self.fails(n, F_ACTIVATE) {
                self.note(n, "perm0");
                result = (Err(FAIL_ERRNO[F_ACTIVATE]), Some(n));
                break;
            }
            self.nodes[n].inactive = false;
            self.nodes[n].handed_over = false;
        }
        members.iter().for_each(|&m| self.ctxs[m].depth -= 1);
        result
    }

    // ------------------------------------------------ actions

    /// Queues a BH on the node's context that ends one of its requests.
    fn schedule_completion(&mut self, n: usize) {
        let node = self.nodes[n].handle.clone().unwrap();
        let weak = Arc::downgrade(&node);
        let (done, errors) = (
            self.nodes[n].completed.clone(),
            self.nodes[n].completion_errors.clone(),
        );
        node.context().schedule_once(move || {
            if let Some(node) = weak.upgrade() {
                match node.end_request() {
                    Ok(()) => {
                        done.fetch_add(1, SeqCst);
                    }
                    Err(_) => {
                        errors.fetch_add(1, SeqCst);
                    }
                }
            }
        });
        drop(node);
        self.nodes[n].reserved += 1;
        let c = self.nodes[n].ctx;
        self.push(c, Item::Completion(n));
    }

    fn complete_all_free(&mut self, n: usize) {
        while self.nodes[n].in_flight > self.nodes[n].reserved {
            self.schedule_completion(n);
        }
    }

    /// Schedules a oneshot that sets a new flag; returns the flag's index.
    fn schedule_flag(&mut self, c: usize) -> usize {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        self.ctx_arc(c).schedule_once(move || f.store(true, SeqCst));
        self.flags.push(MFlag {
            ctx: c,
            flag,
            done: false,
        });
        let id = self.flags.len() - 1;
        self.push(c, Item::Oneshot(id));
        id
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

    fn exec(&mut self, op: Op) {
        match op {
            Op::NewCtx { name } => {
                if self.ctxs_with_handle().len() >= MAX_LIVE_CTXS
                    || self.ctxs.len() >= MAX_CTXS_CREATED
                {
                    return;
                }
                let (name, want) = match name % 8 {
                    0 => (String::new(), Err(libc::EINVAL)),
                    1 => ("a\0b".to_string(), Err(libc::EINVAL)),
                    _ => (format!("c{}", self.ctxs.len()), Ok(())),
                };
                if let Some(ctx) = self.expect("Context::new", Context::new(&name), want) {
                    if ctx.name() != name || ctx.c_name().to_str() != Ok(name.as_str()) {
                        self.fail("context name differs");
                    }
                    self.add_ctx(ctx, false, false);
                }
            }
            Op::DropCtx { c } => {
                let cands: Vec<usize> = self
                    .ctxs_with_handle()
                    .into_iter()
                    .filter(|&c| c != 0)
                    .collect();
                if let Some(c) = pick(&cands, c) {
                    self.ctxs[c].handle = None;
                }
            }
            Op::Acquire { c } => {
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    let r = self.ctx_arc(c).acquire();
                    self.expect("acquire", r, Ok(()));
                    self.ctxs[c].depth += 1;
                }
            }
            Op::TryAcquire { c } => {
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    let r = self.ctx_arc(c).try_acquire();
                    if self.ctxs[c].io_running && self.ctxs[c].depth == 0 {
                        // The IOThread may be dispatching: either is right.
                        match r {
                            Ok(()) => self.ctxs[c].depth += 1,
                            Err(e) if e.errno() == libc::EBUSY => {}
                            Err(e) => self.fail(format!("try_acquire on the IOThread: {e}")),
                        }
                    } else {
                        self.expect("try_acquire", r, Ok(()));
                        self.ctxs[c].depth += 1;
                    }
                }
            }
            Op::Release { c } => {
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    let r = self.ctx_arc(c).release();
                    if self.ctxs[c].depth == 0 {
                        self.expect("release", r, Err(libc::EPERM));
                    } else {
                        self.expect("release", r, Ok(()));
                        self.ctxs[c].depth -= 1;
                    }
                }
            }
            Op::ReleaseAll { c } => {
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    let got = self.ctx_arc(c).lock().release_all();
                    if got != self.ctxs[c].depth {
                        self.fail(format!(
                            "release_all returned {got}, model depth {}",
                            self.ctxs[c].depth
                        ));
                    }
                    self.ctxs[c].saved.push(got);
                    self.ctxs[c].depth = 0;
                }
            }
            Op::Restore { c, n } => {
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    let k = if n & 1 == 1 && !self.ctxs[c].saved.is_empty() {
                        self.ctxs[c].saved.pop().unwrap()
                    } else {
                        (n as u32 / 2) % 3
                    };
                    self.ctx_arc(c).lock().restore(k);
                    self.ctxs[c].depth += k;
                }
            }
            Op::Poll { c, mode } => {
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    let ctx = self.ctx_arc(c);
                    if self.ctxs[c].io_running {
                        self.expect(
                            "poll of an IOThread's context",
                            ctx.poll(false),
                            Err(libc::EPERM),
                        );
                        return;
                    }
                    let got = match mode % 3 {
                        0 => ctx.poll(false),
                        1 => ctx.poll_wait(Wait::Until(0)),
                        _ if self.has_work(c) => ctx.poll(true),
                        _ => ctx.poll(false),
                    };
                    drop(ctx);
                    let want = self.sim_poll(c);
                    if let Some(ran) = self.expect("poll", got, Ok(())) {
                        if ran != want {
                            self.fail(format!("poll returned {ran}, model {want}"));
                        }
                    }
                }
            }
            Op::NewSet => {
                if self.live_sets().len() < MAX_LIVE_SETS {
                    self.sets.push(MSet {
                        handle: Some(ContextSet::new()),
                        members: Vec::new(),
                        held: false,
                    });
                }
            }
            Op::DropSet { s } => {
                if let Some(s) = pick(&self.live_sets(), s) {
                    self.sets[s].handle = None;
                }
            }
            Op::SetAdd { s, c: sel_c } => {
                let (Some(s), Some(c)) = (
                    pick(&self.live_sets(), s),
                    pick(&self.ctxs_with_handle(), sel_c),
                ) else {
                    return;
                };
                let ctx = self.ctx_arc(c);
                let set = self.sets[s].handle.as_mut().unwrap();
                // Selectors >= 128 go through add_all with the context twice.
                let r = if sel_c >= 128 {
                    set.add_all([&ctx, &ctx]).map(|n| n == 1)
                } else {
                    set.add(&ctx)
                };
                drop(ctx);
                if self.sets[s].held {
                    self.expect("set add while held", r, Err(libc::EBUSY));
                } else if let Some(added) = self.expect("set add", r, Ok(())) {
                    let want = !self.sets[s].members.contains(&c);
                    if added != want {
                        self.fail(format!("set add returned {added}, model {want}"));
                    }
                    if want {
                        self.sets[s].members.push(c);
                    }
                }
            }
            Op::SetAcquire { s } => {
                if let Some(s) = pick(&self.live_sets(), s) {
                    let r = self.sets[s].handle.as_mut().unwrap().acquire();
                    if self.sets[s].held {
                        self.expect("set acquire while held", r, Err(libc::EBUSY));
                    } else {
                        self.expect("set acquire", r, Ok(()));
                        self.sets[s].held = true;
                        self.sort_set(s);
                        for m in self.sets[s].members.clone() {
                            self.ctxs[m].depth += 1;
                        }
                    }
                }
            }
            Op::SetRelease { s } => {
                if let Some(s) = pick(&self.live_sets(), s) {
                    let r = self.sets[s].handle.as_mut().unwrap().release();
                    let want = self.sim_set_release(s);
                    self.expect("set release", r, want);
                }
            }
            Op::NewBh { c, chain } => {
                if self.bhs.len() >= MAX_BHS {
                    return;
                }
                let Some(c) = pick(&self.ctxs_with_handle(), c) else {
                    return;
                };
                let new_id = self.bhs.len();
                let mut target = if chain % 3 == 0 {
                    None
                } else {
                    Some((chain as usize / 3) % (new_id + 1))
                };
                // Nothing the IOThread runs may change other objects' state,
                // and nothing this thread runs may race with it.
                if self.ctxs[c].io_running
                    || target.is_some_and(|t| t < new_id && self.ctxs[self.bhs[t].ctx].io_running)
                {
                    target = None;
                }
                let count = Arc::new(AtomicU64::new(0));
                let chain_log: Arc<Mutex<Vec<i32>>> = Arc::default();
                let slot: Arc<OnceLock<Weak<Bh>>> = Arc::default();
                let (n, log, sl) = (count.clone(), chain_log.clone(), slot.clone());
                let chained = target.is_some();
                let cb = Arc::new(move || {
                    n.fetch_add(1, SeqCst);
                    if chained {
                        let r = match sl.get().and_then(Weak::upgrade) {
                            Some(t) => t.schedule().err().map_or(0, |e| e.errno()),
                            None => -1,
                        };
                        log.lock().unwrap().push(r);
                    }
                });
                let bh = Bh::new(&self.ctx_arc(c), cb);
                if bh.is_pending() {
                    self.fail("a new BH is pending");
                }
                self.bhs.push(MBh {
                    ctx: c,
                    weak: Arc::downgrade(&bh),
                    handle: Some(bh),
                    count,
                    runs: 0,
                    ticket: 0,
                    deleted: false,
                    chain: target,
                    chain_log,
                    expect_chain_log: Vec::new(),
                });
                if let Some(t) = target {
                    let _ = slot.set(self.bhs[t].weak.clone());
                }
            }
            Op::BhSchedule { b } => {
                if let Some(b) = pick(&self.bhs_with_handle(), b) {
                    let c = self.bhs[b].ctx;
                    self.frozen(c, |run| {
                        let r = run.bhs[b].handle.as_ref().unwrap().schedule();
                        let want = run.sim_schedule(b);
                        run.expect("bh schedule", r, if want == 0 { Ok(()) } else { Err(want) });
                    });
                }
            }
            Op::BhCancel { b } => {
                if let Some(b) = pick(&self.bhs_with_handle(), b) {
                    let c = self.bhs[b].ctx;
                    self.frozen(c, |run| {
                        let got = run.bhs[b].handle.as_ref().unwrap().cancel();
                        let want = run.sim_cancel(b);
                        if got != want {
                            run.fail(format!("bh cancel returned {got}, model {want}"));
                        }
                    });
                }
            }
            Op::BhDelete { b } => {
                if let Some(b) = pick(&self.bhs_with_handle(), b) {
                    let c = self.bhs[b].ctx;
                    self.frozen(c, |run| {
                        run.bhs[b].handle.as_ref().unwrap().delete();
                        run.bhs[b].deleted = true;
                        run.sim_cancel(b);
                    });
                }
            }
            Op::BhDrop { b } => {
                if let Some(b) = pick(&self.bhs_with_handle(), b) {
                    let c = self.bhs[b].ctx;
                    self.frozen(c, |run| run.bhs[b].handle = None);
                }
            }
            Op::NewTimer { c } => {
                if self.timers.len() >= MAX_TIMERS {
                    return;
                }
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    let count = Arc::new(AtomicU64::new(0));
                    let n = count.clone();
                    let timer = Timer::new(
                        &self.ctx_arc(c),
                        Arc::new(move || {
                            n.fetch_add(1, SeqCst);
                        }),
                    );
                    self.timers.push(MTimer {
                        ctx: c,
                        weak: Arc::downgrade(&timer),
                        handle: Some(timer),
                        count,
                        fires: 0,
                        expire: None,
                    });
                }
            }
            Op::TimerMod { t, when } => {
                if let Some(t) = pick(&self.timers_with_handle(), t) {
                    let value = [-1, 0, 1, i64::MAX / 2, i64::MAX][when as usize % 5];
                    let c = self.timers[t].ctx;
                    self.frozen(c, |run| {
                        let r = run.timers[t].handle.as_ref().unwrap().modify(value);
                        let want = if value < 0 {
                            Err(libc::EINVAL)
                        } else if !run.ctxs[c].alive {
                            Err(libc::ENODEV)
                        } else {
                            run.timers[t].expire = Some(value);
                            Ok(())
                        };
                        run.expect("timer modify", r, want);
                    });
                }
            }
            Op::TimerDel { t } => {
                if let Some(t) = pick(&self.timers_with_handle(), t) {
                    let c = self.timers[t].ctx;
                    self.frozen(c, |run| {
                        let got = run.timers[t].handle.as_ref().unwrap().del();
                        let want = run.ctxs[c].alive && run.timers[t].expire.is_some();
                        if run.ctxs[c].alive {
                            run.timers[t].expire = None;
                        }
                        if got != want {
                            run.fail(format!("timer del returned {got}, model {want}"));
                        }
                    });
                }
            }
            Op::TimerDrop { t } => {
                if let Some(t) = pick(&self.timers_with_handle(), t) {
                    let c = self.timers[t].ctx;
                    self.frozen(c, |run| run.timers[t].handle = None);
                }
            }
            Op::PollWhile { c, mode } => {
                if let Some(c) = pick(&self.ctxs_with_handle(), c) {
                    self.exec_poll_while(c, mode % 6);
                }
            }
            Op::StartIo => {
                if self.io.is_some() || self.io_created >= MAX_IOTHREADS {
                    return;
                }
                let name = format!("fz-io{}", self.io_created);
                self.io_created += 1;
                let it = self
                    .expect("IoThread::new", IoThread::new(&name), Ok(()))
                    .unwrap();
                let ctx = it.context().clone();
                if ctx.is_home() || !ctx.has_home() {
                    self.fail("the IOThread is not its context's home");
                }
                let c = self.add_ctx(ctx, true, false);
                self.io = Some(MIo {
                    handle: Some(it),
                    ctx: c,
                    running: true,
                });
            }
            Op::StopIo => self.exec_stop_io(false),
            Op::DropIo => self.exec_stop_io(true),
            Op::NewGraph => {
                if self.live_graphs().len() >= MAX_LIVE_GRAPHS
                    || self.graphs.len() >= MAX_GRAPHS_CREATED
                {
                    return;
                }
                let graph = Graph::new(self.ctx_arc(0));
                if !graph.is_empty() || !Arc::ptr_eq(graph.main_context(), &self.ctx_arc(0)) {
                    self.fail("a new graph is not empty or has the wrong main context");
                }
                self.graphs.push(MGraph {
                    handle: Some(graph),
                    nodes: Vec::new(),
                });
            }
            Op::DropGraph { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    let graph = self.graphs[g].handle.take();
                    self.close_graph_nodes(g);
                    drop(graph);
                }
            }
            Op::CloseAll { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    self.graphs[g].handle.as_ref().unwrap().close_all();
                    self.close_graph_nodes(g);
                }
            }
            Op::AddNode { g, c, driver, name } => {
                if self.live_nodes().len() >= MAX_LIVE_NODES {
                    return;
                }
                let (Some(g), Some(c)) = (
                    pick(&self.live_graphs(), g),
                    pick(&self.ctxs_with_handle(), c),
                ) else {
                    return;
                };
                let existing: Vec<usize> = self.graphs[g].nodes.clone();
                let fresh = format!("n{}", self.nodes.len());
                let (name, want) = match name % 4 {
                    0 => (String::new(), Err(libc::EINVAL)),
                    1 if !existing.is_empty() => (
                        self.nodes[existing[name as usize / 4 % existing.len()]]
                            .name
                            .clone(),
                        Err(libc::EEXIST),
                    ),
                    2 => ("x\0y".to_string(), Err(libc::EINVAL)),
                    _ => (fresh, Ok(())),
                };
                let recording = driver % 2 == 1;
                let fails: Arc<[AtomicBool; 5]> = Arc::default();
                let drv: Box<dyn Driver> = if recording {
                    Box::new(Recorder {
                        log: self.log.clone(),
                        fails: fails.clone(),
                    })
                } else {
                    Box::new(NullDriver)
                };
                let ctx = self.ctx_arc(c);
                let r = self.graphs[g]
                    .handle
                    .as_ref()
                    .unwrap()
                    .add_node(&name, &ctx, drv);
                drop(ctx);
                if let Some(node) = self.expect("add_node", r, want) {
                    if node.name() != name
                        || node.in_flight() != 0
                        || node.is_inactive()
                        || !node.is_writable()
                    {
                        self.fail(format!("new node has the wrong state: {node:?}"));
                    }
                    self.nodes.push(MNode {
                        graph: g,
                        ctx: c,
                        name,
                        recording,
                        fails,
                        weak: Arc::downgrade(&node),
                        handle: Some(node),
                        in_flight: 0,
                        reserved: 0,
                        inactive: false,
                        handed_over: false,
                        children: Vec::new(),
                        completed: Arc::default(),
                        completed_model: 0,
                        completion_errors: Arc::default(),
                    });
                    let n = self.nodes.len() - 1;
                    self.graphs[g].nodes.push(n);
                }
            }
            Op::Attach { p, q } => {
                let live = self.live_nodes();
                let (Some(p), Some(q)) = (pick(&live, p), pick(&live, q)) else {
                    return;
                };
                let (pn, qn) = (
                    self.nodes[p].handle.clone().unwrap(),
                    self.nodes[q].handle.clone().unwrap(),
                );
                let g = self.nodes[p].graph;
                let r = self.graphs[g].handle.as_ref().unwrap().attach(&pn, &qn);
                let want = if self.nodes[q].graph != g {
                    Err(libc::EINVAL)
                } else if p == q || self.reaches(q, p) {
                    Err(libc::ELOOP)
                } else {
                    if !self.nodes[p].children.contains(&q) {
                        self.nodes[p].children.push(q);
                    }
                    Ok(())
                };
                self.expect("attach", r, want);
            }
            Op::StartReq { n, write } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let kind = if write {
                        RequestKind::Write
                    } else {
                        RequestKind::Read
                    };
                    let r = self.nodes[n].handle.as_ref().unwrap().start_request(kind);
                    let want = if write && self.nodes[n].inactive {
                        Err(libc::EPERM)
                    } else {
                        self.nodes[n].in_flight += 1;
                        Ok(())
                    };
                    self.expect_named("start_request", r, want, Some(n));
                }
            }
            Op::EndReq { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let node = &self.nodes[n];
                    if node.in_flight > node.reserved {
                        let r = node.handle.as_ref().unwrap().end_request();
                        self.expect("end_request", r, Ok(()));
                        self.nodes[n].in_flight -= 1;
                    } else if node.in_flight == 0 {
                        let r = node.handle.as_ref().unwrap().end_request();
                        self.expect_named(
                            "end_request with none in flight",
                            r,
                            Err(libc::EINVAL),
                            Some(n),
                        );
                    }
                }
            }
            Op::Complete { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    if self.nodes[n].in_flight > self.nodes[n].reserved {
                        self.schedule_completion(n);
                    }
                }
            }
            Op::Submit { n, write } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let kind = if write {
                        RequestKind::Write
                    } else {
                        RequestKind::Read
                    };
                    let r = self.nodes[n].handle.as_ref().unwrap().submit(
                        kind,
                        IoBuf::from(vec![0u8; 512]),
                        0,
                        Box::new(|_, _| panic!("a refused submit must not complete")),
                    );
                    let want = if write && self.nodes[n].inactive {
                        libc::EPERM
                    } else {
                        libc::ENOTSUP
                    };
                    self.expect_named("submit", r, Err(want), Some(n));
                }
            }
            Op::Drain { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    self.complete_all_free(n);
                    let c = self.nodes[n].ctx;
                    let want = self.waiter_check(c, None, false);
                    let r = self.nodes[n].handle.as_ref().unwrap().drain();
                    if want.is_ok() && self.nodes[n].in_flight > 0 {
                        self.sim_wait_poll(c);
                    }
                    self.expect_named("drain", r, want, Some(n));
                    if want.is_ok() && self.nodes[n].handle.as_ref().unwrap().in_flight() != 0 {
                        self.fail("drain returned with requests in flight");
                    }
                }
            }
            Op::Flush { n } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let c = self.nodes[n].ctx;
                    let mut want = self.waiter_check(c, None, false);
                    let r = self.nodes[n].handle.as_ref().unwrap().flush();
                    if want.is_ok() {
                        self.sim_run_in_home(c);
                        self.note(n, "flush");
                        if self.fails(n, F_FLUSH) {
                            want = Err(FAIL_ERRNO[F_FLUSH]);
                        }
                    }
                    self.expect_named("flush", r, want, Some(n));
                }
            }
            Op::InactivateAll { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    for n in self.graphs[g].nodes.clone() {
                        if !self.nodes[n].inactive {
                            self.complete_all_free(n);
                        }
                    }
                    let r = self.graphs[g].handle.as_ref().unwrap().inactivate_all();
                    let (want, node) = self.sim_inactivate_all(g);
                    let failed = want.is_err();
                    self.expect_named("inactivate_all", r, want, node);
                    if failed {
                        self.check_handover_consistency(g);
                    }
                }
            }
            Op::ActivateAll { g } => {
                if let Some(g) = pick(&self.live_graphs(), g) {
                    let r = self.graphs[g].handle.as_ref().unwrap().activate_all();
                    let (want, node) = self.sim_activate_all(g);
                    self.expect_named("activate_all", r, want, node);
                }
            }
            Op::Dump => {
                let dump = aioctx::diag::dump();
                for m in self.ctxs.iter().filter(|m| m.alive) {
                    if !dump.contains(&format!("context '{}'", m.name)) {
                        self.fail(format!(
                            "diag::dump() does not list context '{}':\n{dump}",
                            m.name
                        ));
                    }
                }
                for m in self.nodes.iter().filter(|m| m.handle.is_some()) {
                    if !dump.contains(&format!("node '{}'", m.name)) {
                        self.fail(format!(
                            "diag::dump() does not list node '{}':\n{dump}",
                            m.name
                        ));
                    }
                }
                stat("diag::dump");
            }
            Op::SetFail { n, which } => {
                if let Some(n) = pick(&self.live_nodes(), n) {
                    let flag = &self.nodes[n].fails[which as usize % 5];
                    flag.fetch_xor(true, SeqCst);
                }
            }
        }
    }

    /// The documented promise of a failed handover: each node is either
    /// fully handed over and inactive, or active and not handed over.
    fn check_handover_consistency(&self, g: usize) {
        for &n in &self.graphs[g].nodes {
            let node = &self.nodes[n];
            if node.handed_over && !node.inactive {
                stat("LIBRARY: handed over but active after a failed inactivate_all");
                if !self.cfg.check_handover_consistency {
                    continue;
                }
                self.fail(format!(
                    "LIBRARY: after a failed inactivate_all, node '{}' was inactivated by its \
                     driver but is still marked active (activate_all will skip it)",
                    node.name
                ));
            }
        }
    }

    /// An acquire sorts the members by id.
    fn sort_set(&mut self, s: usize) {
        let mut members: Vec<(u64, usize)> = self.sets[s]
            .members
            .iter()
            .map(|&m| (self.ctx_arc(m).id(), m))
            .collect();
        members.sort_unstable();
        self.sets[s].members = members.into_iter().map(|(_, m)| m).collect();
    }

    fn sim_set_release(&mut self, s: usize) -> Result<(), i32> {
        if !self.sets[s].held {
            return Err(libc::EPERM);
        }
        self.sets[s].held = false;
        let mut first = Ok(());
        for m in self.sets[s].members.clone().into_iter().rev() {
            if self.ctxs[m].depth == 0 {
                if first.is_ok() {
                    first = Err(libc::EPERM);
                }
            } else {
                self.ctxs[m].depth -= 1;
            }
        }
        first
    }

    fn exec_poll_while(&mut self, c: usize, mode: u8) {
        let io = self.ctxs[c].io_running;
        let ctx = self.ctx_arc(c);
        match mode {
            // A condition already false: no poll at all.
            4 => {
                let want = self.waiter_check(c, None, false);
                let r = poll_while(&ctx, &mut || false, WaitOptions::default());
                self.expect("poll_while(false)", r, want);
            }
            // A zero timeout on a condition that stays true.
            2 => {
                let want = self.waiter_check(c, None, false).and(Err(libc::ETIMEDOUT));
                let opts = WaitOptions {
                    timeout_ns: Some(0),
                    ..Default::default()
                };
                let r = poll_while(&ctx, &mut || true, opts);
                self.expect("poll_while(timeout 0)", r, want);
            }
            3 => {
                let opts = WaitOptions {
                    timeout_ns: Some(-1),
                    ..Default::default()
                };
                let r = poll_while(&ctx, &mut || true, opts);
                self.expect("poll_while(negative timeout)", r, Err(libc::EINVAL));
            }
            5 if !self.live_sets().is_empty() => {
                // A set held with all its members, or else any set: the
                // caller's misuse, which must still leave depths alone.
                let s = self.held_set().unwrap_or(self.live_sets()[0]);
                let members = self.sets[s].members.clone();
                let not_held: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&m| self.ctxs[m].depth == 0)
                    .collect();
                // Waiter::new's checks, then releasing's: the set must be
                // held, each member at depth 1 (the poll context may be deeper).
                let want = self.waiter_check(c, None, false).and_then(|()| {
                    if !self.sets[s].held {
                        return Err(libc::EPERM);
                    }
                    for &m in &members {
                        let depth = self.ctxs[m].depth;
                        if depth == 0 {
                            return Err(libc::EPERM);
                        }
                        if self.held_deeper_and_run_elsewhere(m) {
                            return Err(libc::EDEADLK);
                        }
                    }
                    Ok(())
                });
                let waiter = Waiter::with_set(
                    &ctx,
                    WaitOptions::default(),
                    self.sets[s].handle.as_ref().unwrap(),
                );
                let Some(waiter) = self.expect("Waiter::new(..).releasing(set)", waiter, want)
                else {
                    return;
                };
                let f = self.schedule_flag(c);
                let flag = self.flags[f].flag.clone();
                let r = waiter.wait_while(&mut || !flag.load(SeqCst));
                if !io {
                    self.sim_poll(c);
                }
                self.expect("wait_while", r, Ok(()));
                for m in not_held {
                    let depth = self.ctx_arc(m).lock().depth();
                    if depth == 0 {
                        continue;
                    }
                    stat("LIBRARY: Waiter::releasing left a context held that was not");
                    if self.cfg.check_waiter_set_depths {
                        self.fail(format!(
                            "LIBRARY: Waiter::releasing(set {s}, held by the caller: {}) returned with \
                             context '{}' held at depth {depth}; it was not held on entry",
                            self.sets[s].held,
                            self.ctxs[m].name
                        ));
                    }
                    self.ctxs[m].depth = depth;
                }
            }
            _ => {
                let release_all = mode == 1;
                let f = self.schedule_flag(c);
                let flag = self.flags[f].flag.clone();
                let want = self.waiter_check(c, None, release_all);
                let opts = WaitOptions {
                    release_all,
                    ..WaitOptions::default()
                };
                let r = poll_while(&ctx, &mut || !flag.load(SeqCst), opts);
                if want.is_ok() && !io {
                    self.sim_poll(c);
                }
                self.expect("poll_while", r, want);
                if want.is_ok() && !flag.load(SeqCst) {
                    self.fail("poll_while returned before its condition turned false");
                }
            }
        }
    }

    /// A set held by this thread whose members it all holds (a set released
    /// behind its back is not handed to `Waiter::releasing`).
    fn held_set(&self) -> Option<usize> {
        self.live_sets().into_iter().find(|&s| {
            self.sets[s].held && self.sets[s].members.iter().all(|&m| self.ctxs[m].depth > 0)
        })
    }

    fn exec_stop_io(&mut self, drop_it: bool) {
        let Some(io) = self.io.as_ref() else { return };
        let c = io.ctx;
        if io.running && self.ctxs[c].depth > 0 {
            if drop_it {
                // Dropping would leave the thread running for ever.
                return;
            }
            let r = self.io.as_mut().unwrap().handle.as_mut().unwrap().stop();
            self.expect(
                "IoThread::stop while holding its context",
                r,
                Err(libc::EDEADLK),
            );
            return;
        }
        let r = self.io.as_mut().unwrap().handle.as_mut().unwrap().stop();
        self.expect("IoThread::stop", r, Ok(()));
        if self.io.as_ref().unwrap().running {
            self.sim_run_all(c);
            self.io.as_mut().unwrap().running = false;
            self.ctxs[c].io_running = false;
            self.ctxs[c].homed = false;
        }
        if drop_it {
            let io = self.io.take().unwrap();
            drop(io.handle);
        }
    }

    /// A graph closed: its recording drivers were each closed once, in
    /// creation order, and this run lets go of its nodes.
    fn close_graph_nodes(&mut self, g: usize) {
        for n in std::mem::take(&mut self.graphs[g].nodes) {
            self.note(n, "close");
            self.nodes[n].handle = None;
        }
    }

    // ------------------------------------------------ checks

    /// Observes what the running IOThread ran since the last look, with its
    /// context held (so no dispatch is half done), and checks that it is a
    /// FIFO prefix of the model's queue.
    fn resync_io(&mut self) {
        let Some(c) = self.io_ctx() else { return };
        let queue: Vec<(u64, Item)> = self.ctxs[c].queue.iter().copied().collect();
        let mut consumed: HashMap<usize, u64> = HashMap::new();
        // Some(true): ran; Some(false): not yet; None: cannot tell.
        let observed: Vec<Option<bool>> = queue
            .iter()
            .map(|&(_, item)| match item {
                Item::Bh(b) => {
                    let got = self.bhs[b].count.load(SeqCst);
                    let runs = self.bhs[b].runs;
                    if got != runs && got != runs + 1 {
                        self.fail(format!(
                            "BH {b} on the IOThread ran {got} times, model {runs} (+1 pending)"
                        ));
                    }
                    Some(got == runs + 1)
                }
                Item::Oneshot(f) => Some(self.flags[f].flag.load(SeqCst)),
                Item::Completion(n) if self.nodes[n].handle.is_some() => {
                    let delta =
                        self.nodes[n].completed.load(SeqCst) - self.nodes[n].completed_model;
                    let k = consumed.entry(n).or_default();
                    *k += 1;
                    Some(*k <= delta)
                }
                Item::Completion(_) => None,
            })
            .collect();
        let last_ran = observed.iter().rposition(|o| *o == Some(true));
        for (i, o) in observed.iter().enumerate() {
            let should = last_ran.is_some_and(|l| i <= l);
            if o.is_some_and(|ran| ran != should) {
                self.fail(format!(
                    "the IOThread did not run its queue in FIFO order: model queue {queue:?}, ran {observed:?}"
                ));
            }
        }
        for (&n, &k) in &consumed {
            let delta = self.nodes[n].completed.load(SeqCst) - self.nodes[n].completed_model;
            if delta > k {
                self.fail(format!(
                    "node {n}: {delta} completions ran, only {k} were queued"
                ));
            }
        }
        let ran = last_ran.map_or(0, |l| l + 1);
        if ran > 0 {
            stat("IOThread ran queued items (observed)");
        }
        let mut rest = queue;
        let done: Vec<(u64, Item)> = rest.drain(..ran).collect();
        self.ctxs[c].queue = rest.into();
        for (t, item) in done {
            match item {
                Item::Bh(b) => {
                    if self.bhs[b].ticket == t {
                        self.bhs[b].ticket = 0;
                        self.bhs[b].runs += 1;
                    }
                }
                Item::Oneshot(f) => self.flags[f].done = true,
                Item::Completion(n) => self.complete_model(n),
            }
        }
        for t in 0..self.timers.len() {
            let tm = &self.timers[t];
            if tm.ctx == c && tm.expire.is_some_and(|e| e <= PAST_LIMIT) {
                let got = tm.count.load(SeqCst);
                if got == tm.fires + 1 {
                    let tm = &mut self.timers[t];
                    tm.fires += 1;
                    tm.expire = None;
                } else if got != tm.fires {
                    self.fail(format!(
                        "timer {t} on the IOThread fired {got} times, model {}",
                        tm.fires
                    ));
                }
            }
        }
    }

    fn check(&mut self) {
        // Lock depths first, before the checker takes the IOThread's lock.
        for c in 0..self.ctxs.len() {
            let alive = self.ctxs[c].weak.upgrade();
            if alive.is_some() != self.ctxs[c].alive {
                self.fail(format!(
                    "context '{}' is {}, model says {}",
                    self.ctxs[c].name,
                    if alive.is_some() { "alive" } else { "freed" },
                    if self.ctxs[c].alive {
                        "alive"
                    } else {
                        "freed (a leak)"
                    }
                ));
            }
            let Some(ctx) = alive else { continue };
            let m = &self.ctxs[c];
            let depth = ctx.lock().depth();
            if depth != m.depth {
                self.fail(format!(
                    "context '{}': this thread's depth is {depth}, model {}",
                    m.name, m.depth
                ));
            }
            if m.depth > 0 && ctx.lock().owner() == 0 {
                self.fail(format!(
                    "context '{}': held at depth {depth} but owner is 0",
                    m.name
                ));
            }
            if !m.io_running && m.depth == 0 && ctx.lock().owner() != 0 {
                self.fail(format!("context '{}': not held but has an owner", m.name));
            }
            if ctx.is_home() != m.homed || ctx.has_home() != (m.homed || m.io_running) {
                self.fail(format!(
                    "context '{}': is_home {} has_home {}, model homed {} io {}",
                    m.name,
                    ctx.is_home(),
                    ctx.has_home(),
                    m.homed,
                    m.io_running
                ));
            }
            let w = aioctx::wait::waiters_on(&ctx);
            if w != 0 {
                self.fail(format!(
                    "context '{}': {w} poll_while registrations left behind",
                    m.name
                ));
            }
        }
        let frozen = self.io_ctx().map(|c| self.ctx_arc(c));
        if let Some(ctx) = &frozen {
            ctx.lock().acquire().expect("freeze the IOThread");
            self.resync_io();
        }
        self.check_objects();
        if let Some(ctx) = frozen {
            ctx.lock().release().expect("unfreeze the IOThread");
        }
    }

    fn check_objects(&mut self) {
        for (s, set) in self.sets.iter().enumerate() {
            let Some(h) = &set.handle else { continue };
            if h.is_held() != set.held
                || h.len() != set.members.len()
                || h.is_empty() != set.members.is_empty()
            {
                self.fail(format!(
                    "set {s}: held {} len {}, model held {} members {:?}",
                    h.is_held(),
                    h.len(),
                    set.held,
                    set.members
                ));
            }
            let ids: Vec<u64> = h.iter().map(|c| c.id()).collect();
            let want: Vec<u64> = set.members.iter().map(|&m| self.ctx_arc(m).id()).collect();
            if ids != want || (set.held && ids.windows(2).any(|w| w[0] >= w[1])) {
                self.fail(format!(
                    "set {s}: members {ids:?}, model {want:?} (ascending ids once acquired)"
                ));
            }
        }
        for b in 0..self.bhs.len() {
            let bh = &self.bhs[b];
            let got = bh.count.load(SeqCst);
            if got != bh.runs {
                self.fail(format!("BH {b} ran {got} times, model {}", bh.runs));
            }
            let chain = bh.chain_log.lock().unwrap().clone();
            if chain != bh.expect_chain_log {
                self.fail(format!(
                    "BH {b}'s chained schedules returned {chain:?}, model {:?}",
                    bh.expect_chain_log
                ));
            }
            let alive = bh.weak.upgrade();
            if alive.is_some() != self.bh_alive(b) {
                self.fail(format!(
                    "BH {b} alive {}, model {}",
                    alive.is_some(),
                    self.bh_alive(b)
                ));
            }
            if let Some(h) = alive {
                if h.is_pending() != (bh.ticket != 0) {
                    self.fail(format!(
                        "BH {b} is_pending {}, model {}",
                        h.is_pending(),
                        bh.ticket != 0
                    ));
                }
            }
        }
        for t in 0..self.timers.len() {
            let tm = &self.timers[t];
            let got = tm.count.load(SeqCst);
            if got != tm.fires {
                self.fail(format!("timer {t} fired {got} times, model {}", tm.fires));
            }
            let alive = tm.weak.upgrade();
            if alive.is_some() != self.timer_alive(t) {
                self.fail(format!(
                    "timer {t} alive {}, model {}",
                    alive.is_some(),
                    self.timer_alive(t)
                ));
            }
            if let Some(h) = alive {
                if h.expire_ns() != tm.expire {
                    self.fail(format!(
                        "timer {t}: expire_ns {:?}, model {:?}",
                        h.expire_ns(),
                        tm.expire
                    ));
                }
            }
        }
        for (f, flag) in self.flags.iter().enumerate() {
            if flag.flag.load(SeqCst) != flag.done {
                self.fail(format!(
                    "oneshot {f} ran: {}, model {}",
                    flag.flag.load(SeqCst),
                    flag.done
                ));
            }
        }
        for n in 0..self.nodes.len() {
            let m = &self.nodes[n];
            let alive = m.weak.upgrade();
            if alive.is_some() != m.handle.is_some() {
                self.fail(format!(
                    "node '{}' alive {}, model {}",
                    m.name,
                    alive.is_some(),
                    m.handle.is_some()
                ));
            }
            let errors = m.completion_errors.load(SeqCst);
            if errors != 0 {
                self.fail(format!(
                    "node '{}': {errors} completions failed in end_request",
                    m.name
                ));
            }
            let Some(node) = alive else { continue };
            if node.in_flight() != m.in_flight || node.is_inactive() != m.inactive {
                self.fail(format!(
                    "node '{}': in_flight {} inactive {}, model {} {}",
                    m.name,
                    node.in_flight(),
                    node.is_inactive(),
                    m.in_flight,
                    m.inactive
                ));
            }
            if m.completed.load(SeqCst) != m.completed_model {
                self.fail(format!(
                    "node '{}': {} completions ran, model {}",
                    m.name,
                    m.completed.load(SeqCst),
                    m.completed_model
                ));
            }
            if !Arc::ptr_eq(node.context(), &self.ctx_arc(m.ctx)) {
                self.fail(format!("node '{}' has the wrong context", m.name));
            }
        }
        for g in 0..self.graphs.len() {
            let Some(graph) = &self.graphs[g].handle else {
                continue;
            };
            let names = |v: &[usize]| {
                v.iter()
                    .map(|&n| self.nodes[n].name.clone())
                    .collect::<Vec<_>>()
            };
            let got: Vec<String> = graph.nodes().iter().map(|n| n.name().to_string()).collect();
            let want = names(&self.graphs[g].nodes);
            if got != want || graph.len() != want.len() {
                self.fail(format!("graph {g}: nodes {got:?}, model {want:?}"));
            }
            let got: Vec<String> = graph
                .top_down()
                .iter()
                .map(|n| n.name().to_string())
                .collect();
            let want = names(&self.top_down(g));
            if got != want {
                self.fail(format!("graph {g}: top_down {got:?}, model {want:?}"));
            }
            for &n in &self.graphs[g].nodes {
                let found = graph.find(&self.nodes[n].name);
                if !found.is_some_and(|f| Arc::ptr_eq(&f, self.nodes[n].handle.as_ref().unwrap())) {
                    self.fail(format!(
                        "graph {g}: find('{}') is not the node",
                        self.nodes[n].name
                    ));
                }
            }
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        let want = std::mem::take(&mut self.expected_log);
        if log != want {
            self.fail(format!("driver calls {log:?}, model {want:?}"));
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
