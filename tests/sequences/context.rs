//! Contexts: creation, the lock (acquire, try, release, release-all and
//! restore), polls, `poll_while` waits, the IOThread and the dump.
//!
//! Part of the sequence interpreter (`ops.rs`): this area's operations,
//! the model's helpers only they use, and the checks of its objects after
//! every step.

use super::*;

impl Run<'_> {
    /// Runs one context operation (others are not routed here).
    pub(super) fn exec_context(&mut self, op: Op) {
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
                        1 => ctx.poll_wait(Blocking::Until(0)),
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
            _ => unreachable!("not a context operation: {op:?}"),
        }
    }

    /// Lock depths, owners and home threads of every context, and that no
    /// wait left a registration behind; contexts freed exactly when the model
    /// says.
    pub(super) fn check_contexts(&mut self) {
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
    }

    pub(super) fn exec_poll_while(&mut self, c: usize, mode: u8) {
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

    pub(super) fn exec_stop_io(&mut self, drop_it: bool) {
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

    /// Observes what the running IOThread ran since the last look, with its
    /// context held (so no dispatch is half done), and checks that it is a
    /// FIFO prefix of the model's queue.
    pub(super) fn resync_io(&mut self) {
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
}
