//! An io_uring whose requests own their buffers until their completion is
//! reaped, so that safe code cannot free (or reuse) memory the kernel still
//! reads or writes: [`Uring::push`] takes the [`IoBuf`] by value and
//! [`Uring::reap`] gives it back with the result.
//!
//! Any thread may push; one lock serialises the submission queue, the
//! completion queue and the table of requests in flight (`user_data` is the
//! request's slot in that table). A short read or write is resubmitted for
//! the rest here, as `pread_full` retries, so a completion is the whole
//! transfer (fewer bytes only at end of file, or an error).
//!
//! The ring's memory is not inherited by a `fork()`'s child (`MADV_DONTFORK`):
//! a child must not touch it, and the owner of a `Uring` stops using it there.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::*};

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;

use super::file::IoBuf;

/// Submission queue size: a guest's queue depth (32) several times over; a
/// full queue is submitted and pushed again, so this only bounds batching.
const ENTRIES: u32 = 128;
/// At most this many bytes per operation (the SQE's length is 32-bit); a
/// larger buffer continues as a short transfer, in aligned steps.
const MAX_CHUNK: usize = 1 << 30;

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

/// Whether this process may create an io_uring (the kernel has it and no
/// sysctl or seccomp policy forbids it).
///
/// Call it (and [`Uring::new`]) from a thread that lives no longer than it
/// must: the kernel counts a ring's creator among its users, and when the
/// ring is closed it interrupts each user still alive (task work), which
/// makes a blocking call with a timeout (`SO_RCVTIMEO`) fail with `EINTR`.
pub fn available() -> bool {
    IoUring::new(2).is_ok()
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

    /// Starts `op` on `fd` at `offset` with `buf`. With `defer`, the kernel
    /// sees it at the next [`submit_pending`](Self::submit_pending) (or any
    /// later push or reap that submits); the caller must make sure one comes.
    /// On failure, the buffer and tag come back untouched.
    ///
    /// `fd` must stay open until the completion is reaped (the tag usually
    /// keeps its file alive): the kernel resolves it at submission.
    pub fn push(
        &self,
        op: Op,
        fd: BorrowedFd<'_>,
        (buf, offset, tag): (IoBuf, u64, T),
        defer: bool,
    ) -> Result<(), (io::Error, IoBuf, T)> {
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
        let queued = self.queue(&mut t, index);
        let submitted = queued.and_then(|()| {
            if defer {
                t.unsubmitted = true;
                Ok(())
            } else {
                self.submit_locked(&mut t)
            }
        });
        submitted.map_err(|e| {
            let slot = t.take(index).expect("a slot just filled");
            (e, slot.buf, slot.tag)
        })
    }

    /// Waits until no request is in flight (as [`wait_idle`](Self::wait_idle))
    /// and then takes none, nor touches the queues, until [`resume`](Self::resume):
    /// a `fork()`'s prepare, after which neither side has a request running.
    pub fn pause(&self, out: &mut Vec<Completion<T>>) {
        self.wait_idle(out);
        self.table.lock().paused = true;
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
        self.submit_locked(&mut t)
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
        self.reap_locked(&mut t, out);
        while t.in_flight > 0 && !t.paused {
            t.unsubmitted = false;
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    // Nothing can complete what the kernel will not run.
                    return;
                }
            }
            self.reap_locked(&mut t, out);
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
            match res {
                e if e == -libc::EINTR || e == -libc::EAGAIN => {
                    again |= self.queue(t, index).is_ok();
                    continue;
                }
                n if n > 0 && slot.op != Op::Sync => {
                    slot.done += n as usize;
                    if slot.done < slot.buf.len() {
                        again |= self.queue(t, index).is_ok();
                        continue;
                    }
                }
                _ => {}
            }
            let slot = t.take(index).expect("a slot checked above");
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(slot.done)
            };
            out.push(Completion {
                result,
                buf: slot.buf,
                tag: slot.tag,
            });
        }
        // Completions the kernel kept aside when the queue was full come
        // back with the next entry to it.
        // SAFETY: as above, under the table lock.
        let overflow = unsafe { self.ring.submission_shared() }.cq_overflow();
        if again || overflow || t.unsubmitted {
            let _ = self.submit_locked(t);
        }
    }

    /// Puts the request in slot `index` (its remaining part) on the
    /// submission queue, submitting first if the queue is full.
    fn queue(&self, t: &mut Table<T>, index: u32) -> io::Result<()> {
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
            if attempt == 0 {
                self.submit_locked(t)?;
            }
        }
        // Still full: the kernel takes no more before completions are reaped.
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }

    fn submit_locked(&self, t: &mut Table<T>) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    t.unsubmitted = false;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completions must be reaped before more can be submitted:
                // the owner reaps when the ring's descriptor is readable.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
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
        let path = std::env::temp_dir().join(format!("aioctx-uring-{}", std::process::id()));
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
        if !available() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let file = temp_file(b"hello, ring");
        let ring = Uring::<u32>::new().unwrap();
        let buf = IoBuf::from(vec![0u8; 5]);
        ring.push(Op::Read, file.as_fd(), (buf, 7, 1), true)
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
        ring.push(Op::Write, file.as_fd(), (w, 0, 2), false)
            .map_err(|(e, ..)| e)
            .unwrap();
        assert_eq!(wait_one(&ring).result.unwrap(), 5);
        let s = IoBuf::from(Vec::new());
        ring.push(Op::Sync, file.as_fd(), (s, 0, 3), false)
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
        if !available() {
            eprintln!("io_uring unavailable: skipped");
            return;
        }
        let ring = Uring::<()>::new().unwrap();
        // SAFETY: a number far above any open descriptor; the kernel only
        // looks it up (and finds nothing).
        let closed = unsafe { BorrowedFd::borrow_raw(999_999) };
        ring.push(Op::Read, closed, (IoBuf::from(vec![0u8; 1]), 0, ()), false)
            .map_err(|(e, ..)| e)
            .unwrap();
        let mut out = Vec::new();
        ring.wait_idle(&mut out);
        assert_eq!(
            out.pop().unwrap().result.unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
