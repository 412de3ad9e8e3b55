//! Random operation sequences over the Rust API, checked step by step
//! against a shadow model (see `sequences/ops.rs`, which the cargo-fuzz
//! target `fuzz/fuzz_targets/sequences.rs` runs too).
//!
//! Reproduce a fuzzer artifact with the debug build:
//!   AIOCTX_SEQ_FILE=fuzz/artifacts/sequences/crash-... \
//!     cargo test --test sequences replay_file -- --nocapture

#[path = "sequences/ops.rs"]
mod ops;

use ops::{Config, Op};

/// xorshift64*: the same sequences on every run and machine.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }
}

/// Every check on. (A check of a known, reported library bug can be turned
/// off here while its ignored regression test waits for the fix, so that
/// the random sequences keep testing the rest.)
fn random_config() -> Config {
    Config::default()
}

/// One test runs every sequence, one after the other: the checks see exact
/// liveness (`Weak` counts), and a `poll_while` timeout on another test
/// thread would briefly upgrade every context and node of the process (its
/// error message embeds `diag::dump()`), making objects look leaked.
#[test]
fn sequences() {
    ops::enable_stats();
    random_sequences();
    handover_sequences();
}

fn random_sequences() {
    let mut rng = XorShift(0x5EED_A10C_7E57_0001);
    for _ in 0..300 {
        let len = (rng.next() % 480) as usize;
        let data = rng.bytes(len);
        let ops = ops::decode(&data);
        assert_eq!(
            ops::decode(&ops::encode(&ops)),
            ops,
            "encode is decode's inverse"
        );
        ops::run_ops(&ops, &random_config());
    }
    eprintln!("what the random sequences reached:\n{}", ops::take_stats());
}

/// Sequences heavy in graph and IOThread operations: random arguments
/// over a fixed skeleton, so every run exercises the handover paths.
fn handover_sequences() {
    for ops in handover_skeletons() {
        ops::run_ops(&ops, &random_config());
    }
    eprintln!(
        "what the handover sequences reached:\n{}",
        ops::take_stats()
    );
}

fn handover_skeletons() -> Vec<Vec<Op>> {
    let mut rng = XorShift(0x5EED_A10C_7E57_0002);
    let mut all = Vec::new();
    for _ in 0..60 {
        let mut ops = vec![Op::StartIo, Op::NewGraph, Op::NewCtx { name: 2 }];
        for _ in 0..6 {
            let r = rng.bytes(4);
            ops.push(Op::AddNode {
                g: 0,
                c: r[0],
                driver: r[1],
                name: 3,
            });
        }
        for _ in 0..40 {
            let r = rng.bytes(4);
            ops.push(match r[0] % 12 {
                0 => Op::Attach { p: r[1], q: r[2] },
                1 => Op::StartReq {
                    n: r[1],
                    write: r[2] & 1 == 1,
                },
                2 => Op::Complete { n: r[1] },
                3 => Op::InactivateAll { g: 0 },
                4 => Op::ActivateAll { g: 0 },
                5 => Op::SetFail {
                    n: r[1],
                    which: r[2],
                },
                6 => Op::Acquire { c: r[1] },
                7 => Op::Release { c: r[1] },
                8 => Op::Drain { n: r[1] },
                9 => Op::Flush { n: r[1] },
                10 => Op::PollWhile {
                    c: r[1],
                    mode: r[2],
                },
                _ => Op::EndReq { n: r[1] },
            });
        }
        all.push(ops);
    }
    all
}

/// Writes the handover sequences as fuzzer inputs into `AIOCTX_SEED_DIR`
/// (tools/fuzz.sh seeds an empty corpus so); does nothing when it is unset.
#[test]
fn write_seeds() {
    let Ok(dir) = std::env::var("AIOCTX_SEED_DIR") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (i, ops) in handover_skeletons().iter().enumerate() {
        let bytes = ops::encode(ops);
        assert_eq!(&ops::decode(&bytes), ops);
        std::fs::write(format!("{dir}/seed-handover-{i:02}"), bytes).unwrap();
    }
}

/// Replays the bytes of `AIOCTX_SEQ_FILE` (a fuzzer input or artifact) with
/// every check on; does nothing when it is unset.
#[test]
fn replay_file() {
    let Ok(path) = std::env::var("AIOCTX_SEQ_FILE") else {
        return;
    };
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ops = ops::decode(&data);
    for (i, op) in ops.iter().enumerate() {
        eprintln!("{i:3}: {op:?}");
    }
    ops::run_ops(&ops, &Config::default());
}

/// Regression (found by these sequences, fixed in 9f37614): when
/// `inactivate_all` failed while dropping a node's write permission, the
/// nodes after it in the handover order had been flushed and inactivated by
/// their drivers but stayed marked active, so `activate_all` skipped them.
/// Now every handed-over node is marked inactive and the first error is
/// returned.
#[test]
fn regression_handover_perm_drop_failure_marks_every_handed_over_node() {
    let ops = [
        Op::NewGraph,
        Op::AddNode {
            g: 0,
            c: 0,
            driver: 1,
            name: 3,
        }, // n0, recording
        Op::AddNode {
            g: 0,
            c: 0,
            driver: 1,
            name: 3,
        }, // n1, recording
        Op::SetFail { n: 0, which: 4 }, // n0: dropping write permission fails
        Op::InactivateAll { g: 0 },     // EACCES naming n0; n0 and n1 both inactive
        Op::ActivateAll { g: 0 },       // activates both (the driver log says so)
    ];
    ops::run_ops(&ops, &Config::default());
}

/// Regression (found by these sequences, fixed in 9f37614):
/// `Waiter::releasing(set)` accepted a set that the caller does not hold (or
/// whose member it released behind the set's back); each wait round then
/// gave that member "back" (an ignored EPERM) and acquired it, so the wait
/// returned holding a context it did not hold on entry. Now `EPERM`.
#[test]
fn regression_waiter_releasing_unheld_set_is_refused() {
    let ops = [
        Op::NewCtx { name: 2 },          // c1
        Op::NewSet,                      // not acquired
        Op::SetAdd { s: 0, c: 1 },       // c1 joins the set
        Op::PollWhile { c: 0, mode: 5 }, // Waiter on main, releasing the unheld set: EPERM
        Op::SetAcquire { s: 0 },
        Op::Release { c: 1 },            // c1 released behind the set's back
        Op::PollWhile { c: 0, mode: 5 }, // the set is not used (a member is not held)
    ];
    ops::run_ops(&ops, &Config::default());
}
