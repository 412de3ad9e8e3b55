//! IOThreads: named OS threads that each run one context's loop.

use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::context::{describe_cycle, find_cycle, Context, Hop, IOTHREAD_DEFAULT_MAX_NS};
use crate::diag::{log, Level};
use crate::error::{invalid, Error, Result};
use crate::wait::{WaitOptions, Waiter};

/// A thread that is home of its own context and polls it until freed.
pub struct IoThread {
    ctx: Arc<Context>,
    stopping: Arc<AtomicBool>,
    /// Set by the thread once its loop has ended.
    exited: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The thread's token, to refuse a stop from the thread itself.
    token: u64,
}

/// The start-up handshake: the thread's claim result and token. (A mutex
/// and condvar rather than a channel: std's channel parks through
/// `thread::current()`, which leaks a handle for C threads.)
#[derive(Default)]
struct Started {
    outcome: Mutex<Option<Result<u64>>>,
    ready: Condvar,
}

impl IoThread {
    /// Starts a thread named `name` (truncated to 15 bytes by the kernel, as
    /// `top -H` and gdb show it) whose context has the same name.
    pub fn new(name: &str) -> Result<IoThread> {
        if name.is_empty() {
            return Err(invalid(
                "IOThread name is empty: name it (it shows in top -H and gdb)",
            ));
        }
        let ctx = Context::new(name)?;
        // Polling on by default: an IOThread is where the latency matters.
        ctx.set_poll_params(IOTHREAD_DEFAULT_MAX_NS, 0, 0)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let exited = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Started::default());
        let (c, s, st, e) = (
            ctx.clone(),
            stopping.clone(),
            started.clone(),
            exited.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Also when a callback unwinds (a Rust caller's panic), or
                // stop() would wait for the thread for ever.
                let _leaving = Leaving(c.clone(), e);
                // Claimed before new() returns, so no other thread can poll it.
                let claimed = c.claim().map(|()| crate::thread::unique());
                let ok = claimed.is_ok();
                *st.outcome.lock() = Some(claimed);
                st.ready.notify_one();
                while ok && !s.load(Acquire) {
                    // A poll only fails on epoll errors, which do not heal.
                    if c.poll(true).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::from_io(&format!("IOThread '{name}': cannot start thread"), e))?;
        let mut outcome = started.outcome.lock();
        while outcome.is_none() {
            started.ready.wait(&mut outcome);
        }
        let token = outcome
            .take()
            .unwrap_or_else(|| Err(invalid("unreachable")))?;
        Ok(IoThread {
            ctx,
            stopping,
            exited,
            thread: Some(thread),
            token,
        })
    }

    /// The IOThread's context (its thread is the home thread).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Stops the thread after it has run the BHs already scheduled and
    /// waited for the I/O it has in flight (whose completions then run as
    /// BHs of the context, wherever it is polled next), and joins
    /// it (in a `fork()`'s child, where the thread does not exist, only
    /// forgets it). Fails with `EDEADLK`, leaving the thread running, when called from
    /// the IOThread itself or while the caller holds its context (the thread
    /// could then never run the stop request).
    ///
    /// A caller that runs an event loop waits by polling it, as a
    /// `poll_while` with `release_held`: if a BH still queued on the IOThread
    /// blocks acquiring a context the caller holds (a main-loop callback
    /// freeing the IOThread), the caller lends it that context and the stop
    /// completes instead of hanging.
    pub fn stop(&mut self) -> Result<()> {
        if self.thread.is_none() {
            return Ok(());
        }
        if self.token == crate::thread::unique() {
            return Err(Error::new(
                libc::EDEADLK,
                format!(
                    "IOThread '{}' cannot free itself: free it from another thread",
                    self.ctx.name()
                ),
            ));
        }
        if !crate::thread::alive(self.token) {
            // A fork()'s child: the thread stayed in the parent. Joining its
            // handle here would wait for nothing forever; it only has to be
            // forgotten (its context is already without a home).
            std::mem::forget(self.thread.take());
            self.ctx.disown();
            return Ok(());
        }
        let depth = self.ctx.lock().depth();
        if depth > 0 {
            return Err(Error::new(
                libc::EDEADLK,
                format!(
                    "IOThread '{}': the caller holds its context {depth} time(s), so the thread \
                     could never stop; release the context before freeing the IOThread",
                    self.ctx.name()
                ),
            ));
        }
        let s = self.stopping.clone();
        // FIFO order: every BH scheduled before this one runs first.
        self.ctx.schedule_once(move || s.store(true, Release));
        let mut lent = Vec::new();
        if Context::current_if_any().is_some() {
            let opts = WaitOptions {
                release_held: true,
                ..WaitOptions::default()
            };
            let exited = &self.exited;
            Waiter::new(&self.ctx, opts)?.wait_while(&mut || !exited.load(Acquire))?;
        } else if !crate::context::held_by_caller().is_empty() {
            lent = self.wait_lending();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.ctx.disown();
        // The thread is gone, and what it was lent with it; a thread that
        // took a lent context meanwhile may wait for another the caller holds.
        Waiter::take_back_lent(&self.ctx, lent)
    }

    /// Waits, from a thread that runs no event loop but holds contexts, for
    /// the thread's loop to end. Its last BHs may block acquiring one of
    /// those (directly, or through other threads): that one is lent, released
    /// until the thread has exited, as a loop caller's wait lends it (the
    /// caller then restores it). Returns what was lent, and at what depth.
    fn wait_lending(&self) -> Vec<(Arc<Context>, u32)> {
        let me = crate::thread::current();
        let mut lent: Vec<(Arc<Context>, u32)> = Vec::new();
        while !self.exited.load(Acquire) {
            let first = Hop::Waits {
                thread: me,
                ctx: self.ctx.clone(),
                runner: self.token,
            };
            let is_lent = |c: &Arc<Context>| lent.iter().any(|(l, _)| Arc::ptr_eq(l, c));
            if let Some(path) = find_cycle(me, first, is_lent) {
                // The cycle's last hop waits for a context the caller holds.
                if let Some(needed) = path.last().map(Hop::context).cloned() {
                    log(
                        Level::Info,
                        &format!(
                            "freeing IOThread '{}': {}; lending context '{}' until the thread has \
                             exited",
                            self.ctx.name(),
                            describe_cycle(&path),
                            needed.name()
                        ),
                    );
                    let depth = needed.lock().release_all();
                    lent.push((needed, depth));
                }
            }
            std::thread::sleep(std::time::Duration::from_micros(LEND_LOOK_EVERY_US));
        }
        lent
    }
}

/// How often a loop-less caller of [`IoThread::stop`] that holds contexts
/// looks whether the thread blocks on one of them.
const LEND_LOOK_EVERY_US: u64 = 500;

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What an IOThread does last, dropped as its thread ends: finish the I/O
/// it submitted that is still running (the kernel would fail it once the
/// thread is gone), then say it exited.
struct Leaving(Arc<Context>, Arc<AtomicBool>);

impl Drop for Leaving {
    fn drop(&mut self) {
        crate::context::home_leaving(&self.0);
        self.1.store(true, Release);
        self.0.wake_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::poll_while;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn runs_bhs_on_its_thread_and_stops_after_pending_ones() {
        let mut it = IoThread::new("io-test").unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let r = ran.clone();
            it.context().schedule_once(move || {
                assert_eq!(std::thread::current().name(), Some("io-test"));
                r.fetch_add(1, SeqCst);
            });
        }
        it.stop().unwrap();
        assert_eq!(ran.load(SeqCst), 100);
    }

    #[test]
    fn stop_returns_after_a_callback_panicked_in_the_thread() {
        // The thread ends with the panic; a stop from a thread that runs a
        // loop waits for it to say so.
        let mut it = IoThread::new("io-panic").unwrap();
        it.context()
            .schedule_once(|| panic!("a callback panics in an IOThread"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let main = Context::new("stopper").unwrap();
            main.claim().unwrap();
            tx.send(it.stop().is_ok()).unwrap();
        });
        let stopped = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(stopped, Ok(true), "stop() never returned");
    }

    #[test]
    fn stop_refused_while_context_held() {
        let mut it = IoThread::new("io-held").unwrap();
        it.context().lock().acquire().unwrap();
        assert_eq!(it.stop().unwrap_err().errno(), libc::EDEADLK);
        it.context().lock().release().unwrap();
        it.stop().unwrap();
    }

    #[test]
    fn double_hold_refused_set_hold_completes() {
        let main = Context::new("wait-main").unwrap();
        main.claim().unwrap();
        let it = IoThread::new("io-wait").unwrap();
        let ctx = it.context().clone();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        ctx.lock().acquire().unwrap();
        ctx.lock().acquire().unwrap();
        ctx.schedule_once(move || d.store(true, SeqCst));
        let err = poll_while(&ctx, &mut || !done.load(SeqCst), WaitOptions::default()).unwrap_err();
        assert_eq!(err.errno(), libc::EDEADLK);
        assert_eq!(ctx.lock().depth(), 2);
        ctx.lock().release().unwrap();
        poll_while(&ctx, &mut || !done.load(SeqCst), WaitOptions::default()).unwrap();
        assert_eq!(ctx.lock().depth(), 1);
        ctx.lock().release().unwrap();
    }
}
