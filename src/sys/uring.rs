//! An io_uring whose requests own their buffers until their completion is
//! reaped, so that safe code cannot free (or reuse) memory the kernel still
//! reads or writes: [`Uring::push`] takes the [`IoBuf`] by value and
//! [`Uring::reap`] gives it back with the result.
//!
//! Any thread may push (one that is not the ring's home never enters the
//! ring: see [`Submit`]); one lock serialises the submission queue, the
//! completion queue and the table of requests in flight (`user_data` is the
//! request's slot in that table). A request on the submission queue is the
//! kernel's from then on: it is never handed back, only completed. A short
//! read or write is resubmitted for the rest here, as `pread_full` retries,
//! so a completion is the whole transfer (fewer bytes only at end of file,
//! or an error).
//!
//! The ring's memory is not inherited by a `fork()`'s child (`MADV_DONTFORK`):
//! a child must not touch it, and the owner of a `Uring` stops using it there.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::*};

use io_uring::{opcode, types, IoUring, Probe};
use parking_lot::Mutex;

use super::file::IoBuf;

/// Submission queue size: a guest's queue depth (32) several times over; a
/// full queue is submitted and pushed again, so this only bounds batching.
const ENTRIES: u32 = 128;
/// At most this many bytes per operation (the SQE's length is 32-bit); a
/// larger buffer continues as a short transfer, in aligned steps.
const MAX_CHUNK: usize = 1 << 30;

/// When [`Uring::push`] hands a request to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submit {
    /// Now: the caller is the ring's home thread.
    Now,
    /// At the next [`Uring::submit_pending`] (a batch): the caller is the
    /// home thread, which may still enter the ring if the queue is full.
    Later,
    /// At the next [`Uring::submit_pending`], which the home thread makes:
    /// the caller is another thread and never enters the ring (a full
    /// queue fails the push instead).
    Elsewhere,
}

/// How many times in a row [`Uring::wait_idle`] retries a submission the
/// kernel refuses for want of memory (1 ms apart) before it gives up.
const REFUSALS_MAX: u32 = 1000;

/// A request the kernel answers `EAGAIN` is queued again at once, at most
/// this many times, then completes with the error: the files are blocking
/// (the node's driver clears `O_NONBLOCK`), so it should not happen, and
/// it must not spin for ever if it does.
const EAGAIN_MAX: u8 = 16;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reads into the buffer.
    Read,
    /// Writes the buffer out.
    Write,
    /// `fdatasync` (the buffer is ignored).
    Sync,
}

/// A finished request: bytes transferred or the error, its buffer, its tag.
pub struct Completion<T> {
    pub result: io::Result<usize>,
    pub buf: IoBuf,
    pub tag: T,
}

struct Slot<T> {
    op: Op,
    fd: RawFd,
    buf: IoBuf,
    offset: u64,
    /// Bytes transferred by earlier (short) completions.
    done: usize,
    /// `EAGAIN` results so far (see `EAGAIN_MAX`).
    eagains: u8,
    tag: T,
}

struct Table<T> {
    slots: Vec<Option<Slot<T>>>,
    free: Vec<u32>,
    in_flight: usize,
    /// Pushed but not yet handed to the kernel (a deferred submission).
    unsubmitted: bool,
    /// Takes no request and touches no queue (see [`Uring::pause`]).
    paused: bool,
}

/// One io_uring; `T` travels with each request and comes back with it.
pub struct Uring<T> {
    /// Not dropped in a `fork()`'s child: its unmapping could hit memory
    /// the child has mapped at the same addresses since.
    ring: ManuallyDrop<IoUring>,
    table: Mutex<Table<T>>,
    /// In a `fork()`'s child, where the queues' memory is not mapped, and
    /// the table's lock may be held by a thread that is not there: nothing
    /// touches either any more. Outside the table for that reason.
    abandoned: AtomicBool,
}

/// Whether this process may use an io_uring as [`Uring`] does: the kernel
/// has it, no sysctl or seccomp policy forbids it, and it has what `Uring`
/// relies on (see [`missing_features`]). `Err` says what is missing.
///
/// Call it (and [`Uring::new`]) from a thread that lives no longer than it
/// must: the kernel counts a ring's creator among its users, and when the
/// ring is closed it interrupts each user still alive (task work), which
/// makes a blocking call with a timeout (`SO_RCVTIMEO`) fail with `EINTR`.
pub fn available() -> Result<(), String> {
    let ring = IoUring::new(2).map_err(|e| {
        format!(
            "cannot create an io_uring ({e}: the kernel, the kernel.io_uring_disabled sysctl \
             or a seccomp policy)"
        )
    })?;
    let mut probe = Probe::new();
    let probed = ring.submitter().register_probe(&mut probe).is_ok();
    let missing = missing_features(ring.params().is_feature_nodrop(), |code| {
        probed && probe.is_supported(code)
    });
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the kernel's io_uring lacks {}",
            missing.join(", ")
        ))
    }
}

/// What `Uring` needs and the kernel lacks: the operations it submits
/// (`supported`: from `IORING_REGISTER_PROBE`, itself Linux 5.6 like READ
/// and WRITE; without them every request fails with `EINVAL`), and
/// `IORING_FEAT_NODROP` (Linux 5.5; without it a full completion queue
/// drops completions, whose requests then never end).
fn missing_features(nodrop: bool, supported: impl Fn(u8) -> bool) -> Vec<&'static str> {
    let ops = [
        (opcode::Read::CODE, "IORING_OP_READ"),
        (opcode::Write::CODE, "IORING_OP_WRITE"),
        (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
    ];
    let mut missing: Vec<_> = ops
        .into_iter()
        .filter(|&(code, _)| !supported(code))
        .map(|(_, name)| name)
        .collect();
    if !nodrop {
        missing.push("IORING_FEAT_NODROP");
    }
    missing
}

impl<T> Uring<T> {
    /// A new ring, its memory excluded from `fork()`'s children.
    ///
    /// Not with `COOP_TASKRUN`: the kernel posts a completion from the
    /// submitting thread (task work), and without the flag it wakes that
    /// thread from an interruptible sleep to do so, which a submitter that
    /// sleeps in anything but the ring's own poll needs.
    pub fn new() -> io::Result<Uring<T>> {
        let ring = IoUring::builder().dontfork().build(ENTRIES)?;
        Ok(Uring {
            ring: ManuallyDrop::new(ring),
            table: Mutex::new(Table::empty()),
            abandoned: AtomicBool::new(false),
        })
    }

    /// The ring's descriptor: readable (poll/epoll) while completions wait.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Starts `op` on `fd` at `offset` with `buf`, handed to the kernel as
    /// `submit` says. `Ok(true)`: the kernel may not have it yet (deferred,
    /// or the submission failed): the caller must make sure a
    /// [`submit_pending`](Self::submit_pending) follows, in the home thread.
    /// `Err` gives the buffer and tag back untouched, which happens only
    /// before the request is on the submission queue: once there, the
    /// kernel may read it at any later submission, so the request is never
    /// given back, only completed.
    ///
    /// `fd` must stay open until the completion is reaped (the tag usually
    /// keeps its file alive): the kernel resolves it at submission.
    pub fn push(
        &self,
        op: Op,
        fd: BorrowedFd<'_>,
        (buf, offset, tag): (IoBuf, u64, T),
        submit: Submit,
    ) -> Result<bool, (io::Error, IoBuf, T)> {
        if self.is_abandoned() {
            return Err((io::Error::from_raw_os_error(libc::EBUSY), buf, tag));
        }
        let mut t = self.table.lock();
        if t.paused {
            return Err((io::Error::from_raw_os_error(libc::EBUSY), buf, tag));
        }
        let slot = Slot {
            op,
            fd: fd.as_raw_fd(),
            buf,
            offset,
            done: 0,
            eagains: 0,
            tag,
        };
        let index = match t.free.pop() {
            Some(i) => i,
            None => {
                t.slots.push(None);
                (t.slots.len() - 1) as u32
            }
        };
        t.slots[index as usize] = Some(slot);
        t.in_flight += 1;
        if let Err(e) = self.queue(&mut t, index, submit != Submit::Elsewhere) {
            // Not on the queue: the kernel never sees this one.
            let slot = t.take(index).expect("a slot just filled");
            return Err((e, slot.buf, slot.tag));
        }
        if submit == Submit::Now {
            // A failure leaves it queued and `unsubmitted` set: the caller
            // submits again (a request on the queue cannot be taken back).
            let _ = self.submit_locked(&mut t, 0);
        } else {
            t.unsubmitted = true;
        }
        Ok(t.unsubmitted)
    }

    /// Waits until no request is in flight (as [`wait_idle`](Self::wait_idle))
    /// and then takes none, nor touches the queues, until [`resume`](Self::resume):
    /// a `fork()`'s prepare, after which neither side has a request running.
    pub fn pause(&self, out: &mut Vec<Completion<T>>) {
        if self.is_abandoned() {
            return;
        }
        // One hold of the lock: a push between the wait and the flag would
        // leave a request running across the fork.
        let mut t = self.table.lock();
        self.wait_idle_locked(&mut t, out);
        t.paused = true;
    }

    /// Takes requests again after [`pause`](Self::pause) (in a `fork()`'s parent).
    pub fn resume(&self) {
        self.table.lock().paused = false;
    }

    /// Never uses the ring again, nor unmaps it when dropped: in a `fork()`'s
    /// child (after [`pause`](Self::pause)), whose ring memory is not mapped.
    pub fn abandon(&self) {
        self.abandoned.store(true, Release);
    }

    fn is_abandoned(&self) -> bool {
        self.abandoned.load(Acquire)
    }

    /// Hands deferred requests to the kernel.
    pub fn submit_pending(&self) -> io::Result<()> {
        if self.is_abandoned() {
            return Ok(());
        }
        let mut t = self.table.lock();
        if !t.unsubmitted || t.paused {
            return Ok(());
        }
        self.submit_locked(&mut t, 0)
    }

    /// Whether completions wait to be reaped: two loads from the ring's
    /// shared memory, no system call, for a busy-polling loop's check.
    /// False when the table is busy (its holder reaps or submits: the
    /// next check sees what it left).
    pub fn has_completions(&self) -> bool {
        if self.is_abandoned() {
            return false;
        }
        let Some(t) = self.table.try_lock() else {
            return false;
        };
        // SAFETY: the completion queue is only read under the table lock
        // (as in `reap_locked`); reading it moves nothing.
        !t.paused && !unsafe { self.ring.completion_shared() }.is_empty()
    }

    /// Requests queued for the kernel and not yet handed to it.
    pub fn unsubmitted(&self) -> usize {
        if self.is_abandoned() {
            return 0;
        }
        let t = self.table.lock();
        if t.paused {
            return 0;
        }
        // SAFETY: the submission queue is only touched under the table lock.
        unsafe { self.ring.submission_shared() }.len()
    }

    /// Requests pushed and not yet reaped.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.table.lock().in_flight
    }

    /// Moves the finished requests to `out`; resubmits short transfers.
    pub fn reap(&self, out: &mut Vec<Completion<T>>) {
        if self.is_abandoned() {
            return;
        }
        let mut t = self.table.lock();
        self.reap_locked(&mut t, out);
    }

    /// Waits until no request is in flight, moving every completion to
    /// `out` (before a `fork()`, so that neither side inherits a request
    /// the ring still runs).
    pub fn wait_idle(&self, out: &mut Vec<Completion<T>>) {
        if self.is_abandoned() {
            return;
        }
        let mut t = self.table.lock();
        self.wait_idle_locked(&mut t, out);
    }

    fn wait_idle_locked(&self, t: &mut Table<T>, out: &mut Vec<Completion<T>>) {
        self.reap_locked(t, out);
        let mut refused = 0;
        while t.in_flight > 0 && !t.paused {
            match self.submit_locked(t, 1) {
                Ok(()) => refused = 0,
                // Out of memory for requests (EAGAIN), or completions to
                // reap first (EBUSY): passing, so wait a little and retry.
                Err(e) if transient(&e) && refused < REFUSALS_MAX => {
                    refused += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                // Nothing can complete what the kernel will not run.
                Err(_) => return,
            }
            self.reap_locked(t, out);
        }
    }

    fn reap_locked(&self, t: &mut Table<T>, out: &mut Vec<Completion<T>>) {
        if t.paused {
            return;
        }
        let mut again = false;
        // SAFETY: the completion queue is only read under the table lock
        // (the submission queue, which `queue` writes, is another ring).
        for c in unsafe { self.ring.completion_shared() } {
            let (index, res) = (c.user_data() as u32, c.result());
            let Some(slot) = t.slots.get_mut(index as usize).and_then(|s| s.as_mut()) else {
                continue;
            };
            let requeue = match res {
                e if e == -libc::EINTR => true,
                e if e == -libc::EAGAIN => {
                    slot.eagains += 1;
                    slot.eagains <= EAGAIN_MAX
                }
                n if n > 0 && slot.op != Op::Sync => {
                    slot.done += n as usize;
                    slot.done < slot.buf.len()
                }
                _ => false,
            };
            let mut result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(())
            };
            if requeue {
                match self.queue(t, index, true) {
                    Ok(()) => {
                        again = true;
                        continue;
                    }
                    // Left in its slot without an entry on the queue, it
                    // would never complete (a drain, a fork would hang).
                    Err(e) => result = Err(e),
                }
            }
            let slot = t.take(index).expect("a slot checked above");
            out.push(Completion {
                result: result.map(|()| slot.done),
                buf: slot.buf,
                tag: slot.tag,
            });
        }
        // Completions the kernel kept aside when the queue was full come
        // back with the next entry to it.
        // SAFETY: as above, under the table lock.
        let overflow = unsafe { self.ring.submission_shared() }.cq_overflow();
        if again || overflow || t.unsubmitted {
            // A failure keeps `unsubmitted` set for the owner's next try.
            let _ = self.submit_locked(t, 0);
        }
    }

    /// Puts the request in slot `index` (its remaining part) on the
    /// submission queue, submitting first if the queue is full.
    /// `may_enter`: whether the caller may enter the ring (its home thread).
    fn queue(&self, t: &mut Table<T>, index: u32, may_enter: bool) -> io::Result<()> {
        let slot = t.slots[index as usize].as_mut().expect("a live slot");
        let fd = types::Fd(slot.fd);
        let offset = slot.offset + slot.done as u64;
        let iov = slot.buf.as_iovec(slot.done);
        let len = iov.iov_len.min(MAX_CHUNK) as u32;
        let entry = match slot.op {
            Op::Read => opcode::Read::new(fd, iov.iov_base.cast(), len)
                .offset(offset)
                .build(),
            Op::Write => opcode::Write::new(fd, iov.iov_base.cast(), len)
                .offset(offset)
                .build(),
            Op::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(u64::from(index));
        for attempt in 0..2 {
            // SAFETY: the entry points into the slot's buffer, which the
            // table owns until this request's completion is reaped (a slot
            // is emptied only there, or by `push` on failure before the
            // kernel saw it); the queue is only written under the table lock.
            if unsafe { self.ring.submission_shared().push(&entry) }.is_ok() {
                return Ok(());
            }
            if attempt == 0 && may_enter {
                self.submit_locked(t, 0)?;
            }
        }
        // Still full: the kernel takes no more before completions are reaped.
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }

    /// Hands the queued requests to the kernel and waits for `want`
    /// completions; `unsubmitted` stays set unless it took them all, so a
    /// failure is retried by the next submission.
    fn submit_locked(&self, t: &mut Table<T>, want: usize) -> io::Result<()> {
        t.unsubmitted = true;
        let entered = self.enter(want);
        // SAFETY: the submission queue is only touched under the table lock.
        t.unsubmitted = !unsafe { self.ring.submission_shared() }.is_empty();
        entered
    }

    /// `io_uring_enter`: submits what is queued and waits for `want`
    /// completions. `EBUSY`: completions must be reaped first.
    fn enter(&self, want: usize) -> io::Result<()> {
        #[cfg(test)]
        if let Some(errno) = faults::take_submit_failure() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether the kernel may take the submission if asked again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EBUSY | libc::ENOMEM)
    )
}

/// Fault injection for tests: the calling thread's next submissions fail.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::Cell;

    thread_local! {
        static FAIL_SUBMITS: Cell<(u32, i32)> = const { Cell::new((0, 0)) };
    }

    /// This thread's next `n` entries to any ring fail with `EAGAIN`
    /// (what io_uring_enter(2) returns when it cannot allocate a request).
    pub(crate) fn fail_next_submits(n: u32) {
        fail_next_submits_with(n, libc::EAGAIN);
    }

    /// This thread's next `n` entries to any ring fail with `errno`.
    pub(crate) fn fail_next_submits_with(n: u32, errno: i32) {
        FAIL_SUBMITS.set((n, errno));
    }

    /// How many of them have not failed yet.
    pub(crate) fn submit_failures_left() -> u32 {
        FAIL_SUBMITS.get().0
    }

    pub(super) fn take_submit_failure() -> Option<i32> {
        let (n, errno) = FAIL_SUBMITS.get();
        FAIL_SUBMITS.set((n.saturating_sub(1), errno));
        (n > 0).then_some(errno)
    }
}

impl<T> Table<T> {
    fn empty() -> Table<T> {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            unsubmitted: false,
            paused: false,
        }
    }

    fn take(&mut self, index: u32) -> Option<Slot<T>> {
        let slot = self.slots.get_mut(index as usize)?.take()?;
        self.free.push(index);
        self.in_flight -= 1;
        Some(slot)
    }
}

impl<T> Drop for Uring<T> {
    /// The buffers of requests still in flight are the kernel's until they
    /// complete: wait for them before the table (and the buffers) go.
    fn drop(&mut self) {
        if self.is_abandoned() {
            // The table (and what its requests hold) is leaked with the
            // ring: its lock may be held for ever.
            let table = std::mem::replace(&mut self.table, Mutex::new(Table::empty()));
            std::mem::forget(table);
            return;
        }
        let mut rest = Vec::new();
        self.wait_idle(&mut rest);
        if self.table.get_mut().in_flight > 0 {
            // The kernel refused to run them to the end: it may still
            // write into their buffers (or read their entries from the
            // queue), so those and the ring's memory are leaked, not freed.
            let table = std::mem::replace(&mut self.table, Mutex::new(Table::empty()));
            std::mem::forget(table);
            return;
        }
        // SAFETY: dropped once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    use super::*;

    fn temp_file(data: &[u8]) -> std::fs::File {
        // One name per call: tests run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Relaxed);
        let path = std::env::temp_dir().join(format!("aioctx-uring-{}-{n}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(data).unwrap();
        f
    }

    fn wait_one(ring: &Uring<u32>) -> Completion<u32> {
        let mut out = Vec::new();
        ring.wait_idle(&mut out);
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    #[test]
    fn reads_writes_and_syncs_through_the_ring() {
        if available().is_err() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let file = temp_file(b"hello, ring");
        let ring = Uring::<u32>::new().unwrap();
        let buf = IoBuf::from(vec![0u8; 5]);
        ring.push(Op::Read, file.as_fd(), (buf, 7, 1), Submit::Later)
            .map_err(|(e, ..)| e)
            .unwrap();
        assert_eq!(ring.in_flight(), 1);
        ring.submit_pending().unwrap();
        let c = wait_one(&ring);
        assert_eq!(
            (c.result.unwrap(), c.tag),
            (4, 1),
            "short only at end of file"
        );
        assert_eq!(&c.buf.into_vec().unwrap()[..4], b"ring");

        let w = IoBuf::from(b"HELLO".to_vec());
        ring.push(Op::Write, file.as_fd(), (w, 0, 2), Submit::Now)
            .map_err(|(e, ..)| e)
            .unwrap();
        assert_eq!(wait_one(&ring).result.unwrap(), 5);
        let s = IoBuf::from(Vec::new());
        ring.push(Op::Sync, file.as_fd(), (s, 0, 3), Submit::Now)
            .map_err(|(e, ..)| e)
            .unwrap();
        assert_eq!(wait_one(&ring).result.unwrap(), 0);
        let mut back = [0u8; 11];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0).unwrap();
        assert_eq!(&back, b"HELLO, ring");
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn a_bad_descriptor_completes_with_its_error() {
        if available().is_err() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let ring = Uring::<()>::new().unwrap();
        // SAFETY: a number far above any open descriptor; the kernel only
        // looks it up (and finds nothing).
        let closed = unsafe { BorrowedFd::borrow_raw(999_999) };
        ring.push(
            Op::Read,
            closed,
            (IoBuf::from(vec![0u8; 1]), 0, ()),
            Submit::Now,
        )
        .map_err(|(e, ..)| e)
        .unwrap();
        let mut out = Vec::new();
        ring.wait_idle(&mut out);
        assert_eq!(
            out.pop().unwrap().result.unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    fn page_at_0(tag: u32) -> (IoBuf, u64, u32) {
        (IoBuf::from(vec![0u8; 4096]), 0, tag)
    }

    /// A request whose submission fails stays in flight (its entry is on
    /// the queue, where the next submission hands it to the kernel): given
    /// back, its buffer would be written after its owner got it back, and
    /// its slot's next user would get its completion.
    #[test]
    fn a_failed_submission_keeps_the_request_in_flight() {
        if available().is_err() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let file = temp_file(&[0xAA; 4096]);
        let ring = Uring::<u32>::new().unwrap();
        faults::fail_next_submits(1);
        let pending = ring
            .push(Op::Read, file.as_fd(), page_at_0(1), Submit::Now)
            .map_err(|(e, ..)| e)
            .expect("a queued request is not given back");
        assert!(pending, "the caller is told to submit again");
        assert_eq!((ring.in_flight(), ring.unsubmitted()), (1, 1));
        ring.submit_pending().unwrap();
        assert_eq!(ring.unsubmitted(), 0);
        ring.push(Op::Read, file.as_fd(), page_at_0(2), Submit::Now)
            .map_err(|(e, ..)| e)
            .unwrap();
        let mut out = Vec::new();
        ring.wait_idle(&mut out);
        out.sort_by_key(|c| c.tag);
        let got: Vec<_> = out
            .into_iter()
            .map(|c| (c.tag, c.result.unwrap(), c.buf.into_vec().unwrap()[4095]))
            .collect();
        assert_eq!(got, [(1, 4096, 0xAA), (2, 4096, 0xAA)]);
    }

    /// A short transfer whose rest cannot be queued (queue full, the
    /// submission refused) completes with the error: left in its slot with
    /// no entry on the queue, nothing would ever complete it.
    #[test]
    fn a_rest_that_cannot_be_queued_completes_with_the_error() {
        if available().is_err() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let file = temp_file(&[0xAA; 4096]);
        let ring = Uring::<u32>::new().unwrap();
        // Short: 4096 of 8192 bytes, then the rest is queued again.
        let short = (IoBuf::from(vec![0u8; 8192]), 0, 0);
        ring.push(Op::Read, file.as_fd(), short, Submit::Now)
            .map_err(|(e, ..)| e)
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ring.has_completions() {
            assert!(std::time::Instant::now() < deadline, "no completion");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for tag in 1..=ENTRIES {
            ring.push(Op::Read, file.as_fd(), page_at_0(tag), Submit::Later)
                .map_err(|(e, ..)| e)
                .unwrap();
        }
        faults::fail_next_submits(1);
        let mut out = Vec::new();
        ring.reap(&mut out);
        let failed: Vec<_> = out
            .iter()
            .map(|c| (c.tag, c.result.as_ref().map_err(|e| e.raw_os_error())))
            .collect();
        assert_eq!(failed, [(0, Err(Some(libc::EAGAIN)))]);
        ring.wait_idle(&mut out);
        assert_eq!((out.len(), ring.in_flight()), (ENTRIES as usize + 1, 0));
        assert!(out[1..].iter().all(|c| *c.result.as_ref().unwrap() == 4096));
    }

    #[test]
    fn a_kernel_without_an_operation_or_nodrop_is_named_lacking() {
        assert!(missing_features(true, |_| true).is_empty());
        assert_eq!(
            missing_features(true, |code| code != opcode::Write::CODE),
            ["IORING_OP_WRITE"]
        );
        // No probe (before Linux 5.6): nothing counts as supported.
        assert_eq!(
            missing_features(false, |_| false),
            [
                "IORING_OP_READ",
                "IORING_OP_WRITE",
                "IORING_OP_FSYNC",
                "IORING_FEAT_NODROP"
            ]
        );
        if let Err(why) = available() {
            assert!(why.contains("io_uring"), "{why}");
        }
    }

    /// A ring dropped with a request the kernel would not finish keeps its
    /// memory (and the request's buffer) mapped: the kernel may still use
    /// them.
    #[test]
    fn a_ring_with_a_request_left_is_leaked_not_unmapped() {
        if available().is_err() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let file = temp_file(&[0xAA; 4096]);
        let ring = Uring::<u32>::new().unwrap();
        ring.push(Op::Read, file.as_fd(), page_at_0(1), Submit::Later)
            .map_err(|(e, ..)| e)
            .unwrap();
        let fd = ring.fd();
        // Not passing: wait_idle gives up at once (after its first reap).
        faults::fail_next_submits_with(2, libc::EINVAL);
        drop(ring);
        // SAFETY: only asks whether the descriptor is open.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        assert!(
            open,
            "the ring was closed (and unmapped) with a request left"
        );
    }
}
