//! The Rust API in one program (the C version is `examples-c/iothreads.c`):
//! a main loop and an IOThread running two "drives", work handed to the
//! IOThread and waited for with `poll_while`, the double hold that hangs
//! QEMU refused with `EDEADLK`, the same wait done right with a context set,
//! and RAII guards that release what they took on every path.
//!
//!     cargo run --example iothreads
//!
//! It also runs as a test (`cargo test --example iothreads`, and so
//! `cargo test --all-targets`): it panics if the library misbehaves.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use aioctx::{kick, poll_while, Bh, Context, ContextSet, IoThread, WaitOptions, Waiter};

const REQUESTS: usize = 100;

/// Hands `REQUESTS` requests to `io_ctx`'s home thread; each completes by
/// counting in `done` and kicking the waiters.
fn submit(io_ctx: &Context, done: &Arc<AtomicUsize>) {
    for _ in 0..REQUESTS {
        let done = done.clone();
        io_ctx.schedule_once(move || {
            done.fetch_add(1, SeqCst);
            kick();
        });
    }
}

fn main() -> aioctx::Result<()> {
    // This thread runs the main loop: it is the main context's home.
    let main_ctx = Context::main()?;
    main_ctx.claim()?;

    // One IOThread, and two drives on it: the topology that hung.
    let io = IoThread::new("rs-iothread")?;
    let io_ctx = io.context().clone();
    let drives = [io_ctx.clone(), io_ctx.clone()];
    println!("IOThread '{}' runs {} drives", io_ctx.name(), drives.len());

    // A BH on the main loop, run by polling it here.
    let ticks = Arc::new(AtomicUsize::new(0));
    let counter = ticks.clone();
    let bh = Bh::new(
        &main_ctx,
        Arc::new(move || {
            counter.fetch_add(1, SeqCst);
        }),
    );
    bh.schedule()?;
    while ticks.load(SeqCst) == 0 {
        main_ctx.poll(true)?;
    }
    println!("main-loop BH ran {} time(s)", ticks.load(SeqCst));

    // Wrong: one acquire per drive holds the IOThread's context twice.
    // Releasing it once around the wait would leave it held and the wait
    // would never end; aioctx refuses instead. The guards release on drop.
    {
        let _drive0 = drives[0].lock().guard();
        let _drive1 = drives[1].lock().guard();
        let err = poll_while(&io_ctx, &mut || true, WaitOptions::default())
            .expect_err("a wait on a context held twice must be refused");
        assert_eq!(err.errno(), libc::EDEADLK);
        println!("held twice: refused ({err})");
    }
    assert_eq!(io_ctx.lock().depth(), 0, "the guards released both levels");

    // Right: a set holds each distinct context once, in one global order.
    let mut set = ContextSet::new();
    for ctx in &drives {
        set.add(ctx)?;
    }
    assert_eq!(set.len(), 1, "two drives, one context");
    let done = Arc::new(AtomicUsize::new(0));
    {
        let held = set.guard()?;
        // Start the work with the context held (nothing runs it yet), then
        // wait: the waiter gives the set back while it polls, so the
        // IOThread can run the requests, and takes it back before each check.
        let waiter = Waiter::with_set(&io_ctx, WaitOptions::default(), &held)?;
        submit(&io_ctx, &done);
        waiter.wait_while(&mut || done.load(SeqCst) < REQUESTS)?;
        assert_eq!(io_ctx.lock().depth(), 1, "held once again after the wait");
        drop(held);
    }
    assert_eq!(done.load(SeqCst), REQUESTS);
    println!("{REQUESTS} requests completed by the IOThread while the set was held");

    // A wait that cannot end gives up at its timeout instead of hanging.
    let err = poll_while(
        &io_ctx,
        &mut || true,
        WaitOptions {
            timeout_ns: Some(20_000_000),
            ..WaitOptions::default()
        },
    )
    .expect_err("a condition that never turns false times out");
    assert_eq!(err.errno(), libc::ETIMEDOUT);
    println!("a stuck wait: {err}");

    bh.delete();
    drop(io); // stops and joins the IOThread after its pending BHs
    println!("ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_runs() {
        super::main().expect("the example runs");
    }
}
