//! Timers: creation, arming, deleting and dropping.
//!
//! Part of the sequence interpreter (`ops.rs`): this area's operations,
//! the model's helpers only they use, and the checks of its objects after
//! every step.

use super::*;

impl Run<'_> {
    /// Runs one timer operation (others are not routed here).
    pub(super) fn exec_timer(&mut self, op: Op) {
        match op {
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
            _ => unreachable!("not a timer operation: {op:?}"),
        }
    }

    /// Fire counts, deadlines and liveness of every timer.
    pub(super) fn check_timers(&mut self) {
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
    }
}
