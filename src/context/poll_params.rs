//! Adaptive-polling parameters (QEMU's `poll-max-ns`, `poll-grow`,
//! `poll-shrink`): validated and stored per context. The poll loop does not
//! busy-poll yet; keeping the values now lets VMMs port the configuration
//! call unchanged, and the later adaptive poll reads them from here.

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
        Ok(())
    }

    /// The polling parameters as last set (all 0 until then).
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
}
