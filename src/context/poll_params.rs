//! Adaptive-polling parameters (QEMU's `poll-max-ns`, `poll-grow`,
//! `poll-shrink`) and the arithmetic of the poll window: how long a blocking
//! poll busy-checks for work before it sleeps (the spin is in `spin.rs`).
//!
//! The window follows QEMU's rule, judged by when the work arrived after the
//! poll began (`waited`): work inside the window keeps it (the sweet spot);
//! work after it but within `max_ns` grows it (a longer window would have
//! caught it without sleeping); work later than `max_ns`, or none, shrinks it
//! (the spin only burnt CPU). An idle loop therefore stops spinning after one
//! idle poll with the default shrink, and costs nothing while idle.

use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;

use super::Context;
use crate::error::{invalid, Result};

/// A context's polling parameters, as last set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollParams {
    /// The longest busy-poll before sleeping, in ns; 0 disables polling.
    pub max_ns: i64,
    /// Factor the poll time grows by when polling found work (0: default).
    pub grow: i64,
    /// Divisor the poll time shrinks by when it did not (0: default).
    pub shrink: i64,
}

/// The first window when a poll's work arrived within `max_ns` of it
/// beginning while polling was closed (QEMU starts at 4 µs too).
pub(crate) const INITIAL_WINDOW_NS: i64 = 4_000;
/// The growth factor when `grow` is 0.
pub(crate) const DEFAULT_GROW: i64 = 2;
/// The `max_ns` an IOThread's context starts with: above the ~30 µs this
/// 2-vCPU VM takes to wake a sleeping thread on another CPU (benches/wakeup.c),
/// so that one side of a cross-thread exchange that is still sleeping does
/// not keep the other from ever starting to poll. See README's results.
pub const IOTHREAD_DEFAULT_MAX_NS: i64 = 64_000;

impl PollParams {
    /// The window after a poll that spun for up to `window` ns and whose
    /// work arrived `waited` ns after it began (`None`: nothing came).
    pub(crate) fn next_window(&self, window: i64, waited: Option<i64>) -> i64 {
        let max = self.max_ns;
        let window = window.min(max);
        match waited {
            Some(w) if w <= window => window,
            Some(w) if w <= max => {
                let grow = if self.grow == 0 {
                    DEFAULT_GROW
                } else {
                    self.grow
                };
                let grown = if window == 0 {
                    INITIAL_WINDOW_NS
                } else {
                    window.saturating_mul(grow)
                };
                grown.min(max)
            }
            // shrink 0 is QEMU's default: stop polling at once.
            _ if self.shrink == 0 => 0,
            _ => window / self.shrink,
        }
    }
}

/// Behind one lock, so a reader never sees half of an update.
#[derive(Default)]
pub(super) struct PollParamsCell(Mutex<PollParams>);

impl Context {
    /// Validates and stores the polling parameters; all three must be >= 0.
    /// A refused call changes nothing.
    pub fn set_poll_params(&self, max_ns: i64, grow: i64, shrink: i64) -> Result<()> {
        for (what, value) in [("max_ns", max_ns), ("grow", grow), ("shrink", shrink)] {
            if value < 0 {
                return Err(invalid(format!(
                    "context '{}' (id {}): poll {what} {value} is negative: pass 0 \
                     (max_ns: polling off; grow/shrink: the default) or a positive value",
                    self.name, self.id
                )));
            }
        }
        *self.poll_params.0.lock() = PollParams {
            max_ns,
            grow,
            shrink,
        };
        // A lower maximum applies at once (the home thread's next
        // adjustment clamps again, should it race with this).
        self.poll_ns.fetch_min(max_ns, Relaxed);
        Ok(())
    }

    /// The polling parameters as last set (all 0 until then, except for an
    /// IOThread's context: `max_ns` [`IOTHREAD_DEFAULT_MAX_NS`]).
    pub fn poll_params(&self) -> PollParams {
        *self.poll_params.0.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_valid_values_and_refuses_negative_ones_unchanged() {
        let ctx = Context::new("poll-params").unwrap();
        assert_eq!(ctx.poll_params(), PollParams::default());
        ctx.set_poll_params(32_768, 2, 4).unwrap();
        let set = PollParams {
            max_ns: 32_768,
            grow: 2,
            shrink: 4,
        };
        assert_eq!(ctx.poll_params(), set);
        for (args, what) in [
            ((-1, 0, 0), "max_ns -1"),
            ((0, -2, 0), "grow -2"),
            ((0, 0, i64::MIN), "shrink -9223372036854775808"),
        ] {
            let e = ctx.set_poll_params(args.0, args.1, args.2).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
            assert!(e.message().contains("'poll-params'"), "{}", e.message());
            assert!(e.message().contains(what), "{}", e.message());
            assert_eq!(ctx.poll_params(), set, "a refused call changes nothing");
        }
        ctx.set_poll_params(0, 0, 0).unwrap();
        assert_eq!(ctx.poll_params(), PollParams::default());
    }

    fn params(max_ns: i64, grow: i64, shrink: i64) -> PollParams {
        PollParams {
            max_ns,
            grow,
            shrink,
        }
    }

    #[test]
    fn window_opens_at_the_initial_size_and_grows_up_to_the_maximum() {
        let p = params(32_000, 0, 0);
        // Closed: work that came within max_ns opens it.
        assert_eq!(p.next_window(0, Some(20_000)), INITIAL_WINDOW_NS);
        // Work after the window but within max_ns: grow by the default factor.
        assert_eq!(p.next_window(4_000, Some(5_000)), 8_000);
        assert_eq!(p.next_window(8_000, Some(9_000)), 16_000);
        assert_eq!(
            p.next_window(16_000, Some(32_000)),
            32_000,
            "max_ns is inclusive"
        );
        assert_eq!(
            p.next_window(30_000, Some(31_000)),
            32_000,
            "capped at max_ns"
        );
        // An explicit factor.
        assert_eq!(
            params(1_000_000, 3, 0).next_window(4_000, Some(5_000)),
            12_000
        );
        assert_eq!(
            params(i64::MAX, 4, 0).next_window(i64::MAX / 2, Some(i64::MAX / 2 + 1)),
            i64::MAX,
            "no overflow"
        );
    }

    #[test]
    fn window_is_kept_while_work_comes_inside_it() {
        let p = params(32_000, 2, 2);
        assert_eq!(p.next_window(8_000, Some(0)), 8_000);
        assert_eq!(p.next_window(8_000, Some(8_000)), 8_000);
        // A maximum lowered since: the window is clamped, not kept.
        assert_eq!(params(4_000, 2, 2).next_window(8_000, Some(1_000)), 4_000);
    }

    #[test]
    fn window_shrinks_when_work_came_after_the_maximum_or_not_at_all() {
        // shrink 0 (QEMU's default): closed at once.
        let p = params(32_000, 0, 0);
        assert_eq!(p.next_window(32_000, Some(32_001)), 0);
        assert_eq!(p.next_window(32_000, None), 0);
        // A divisor: halves per idle poll, down to 0.
        let p = params(32_000, 0, 2);
        let mut w = 32_000;
        let mut idle_polls = 0;
        while w > 0 {
            w = p.next_window(w, None);
            idle_polls += 1;
            assert!(idle_polls < 64, "an idle loop must stop spinning");
        }
        assert_eq!(idle_polls, 15);
        assert_eq!(p.next_window(32_000, Some(1_000_000)), 16_000);
    }

    #[test]
    fn polling_off_keeps_the_window_closed() {
        let p = params(0, 0, 0);
        for waited in [None, Some(0), Some(1), Some(1_000_000)] {
            assert_eq!(p.next_window(0, waited), 0);
            assert_eq!(p.next_window(8_000, waited), 0);
        }
    }
}
