//! Context sets: creation, adding members, acquiring and releasing.
//!
//! Part of the sequence interpreter (`ops.rs`): this area's operations,
//! the model's helpers only they use, and the checks of its objects after
//! every step.

use super::*;

impl Run<'_> {
    /// Runs one set operation (others are not routed here).
    pub(super) fn exec_set(&mut self, op: Op) {
        match op {
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
            _ => unreachable!("not a set operation: {op:?}"),
        }
    }

    /// Membership (ascending ids once acquired) and held state of every set.
    pub(super) fn check_sets(&mut self) {
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
    }

    /// An acquire sorts the members by id.
    pub(super) fn sort_set(&mut self, s: usize) {
        let mut members: Vec<(u64, usize)> = self.sets[s]
            .members
            .iter()
            .map(|&m| (self.ctx_arc(m).id(), m))
            .collect();
        members.sort_unstable();
        self.sets[s].members = members.into_iter().map(|(_, m)| m).collect();
    }

    pub(super) fn sim_set_release(&mut self, s: usize) -> Result<(), i32> {
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

    /// A set held by this thread whose members it all holds (a set released
    /// behind its back is not handed to `Waiter::releasing`).
    pub(super) fn held_set(&self) -> Option<usize> {
        self.live_sets().into_iter().find(|&s| {
            self.sets[s].held && self.sets[s].members.iter().all(|&m| self.ctxs[m].depth > 0)
        })
    }
}
