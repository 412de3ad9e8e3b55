//! Bottom halves: creation (plain, chained), schedule, cancel, delete and
//! drop; and the one-shot BHs other operations schedule.
//!
//! Part of the sequence interpreter (`ops.rs`): this area's operations,
//! the model's helpers only they use, and the checks of its objects after
//! every step.

use super::*;

impl Run<'_> {
    /// Runs one bh operation (others are not routed here).
    pub(super) fn exec_bh(&mut self, op: Op) {
        match op {
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
            _ => unreachable!("not a bh operation: {op:?}"),
        }
    }

    /// Run counts, pending flags, chained-schedule results and liveness of
    /// every BH, and which one-shot BHs ran.
    pub(super) fn check_bhs(&mut self) {
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
        for (f, flag) in self.flags.iter().enumerate() {
            if flag.flag.load(SeqCst) != flag.done {
                self.fail(format!(
                    "oneshot {f} ran: {}, model {}",
                    flag.flag.load(SeqCst),
                    flag.done
                ));
            }
        }
    }

    /// `Bh::schedule`: 0, or the errno.
    pub(super) fn sim_schedule(&mut self, b: usize) -> i32 {
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

    pub(super) fn sim_cancel(&mut self, b: usize) -> bool {
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

    /// Schedules a oneshot that sets a new flag; returns the flag's index.
    pub(super) fn schedule_flag(&mut self, c: usize) -> usize {
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
}
