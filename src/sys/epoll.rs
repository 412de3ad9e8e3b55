//! An epoll instance with nanosecond-precision waits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Readiness interest for [`Epoll::add`] and [`Epoll::modify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

/// One ready descriptor reported by [`Epoll::wait`].
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub key: u64,
    /// Readable, or hung up / in error (a read handler must look).
    pub read: bool,
    /// Writable, or in error.
    pub write: bool,
}

pub struct Epoll(OwnedFd);

/// Set once epoll_pwait2 answered ENOSYS (kernels before 5.11, valgrind),
/// so that later waits do not retry it.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

impl Interest {
    fn bits(self) -> u32 {
        let mut bits = 0;
        if self.read {
            bits |= libc::EPOLLIN | libc::EPOLLRDHUP;
        }
        if self.write {
            bits |= libc::EPOLLOUT;
        }
        bits as u32
    }
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Replaces the instance with an empty one under the same descriptor
    /// number (after `fork()`, the parent's instance is shared).
    pub fn renew(&self) -> io::Result<()> {
        super::replace_fd(self.raw(), Epoll::new()?.0)
    }

    pub fn add(&self, fd: RawFd, key: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, key, interest)
    }

    pub fn modify(&self, fd: RawFd, key: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, key, interest)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_DEL,
            fd,
            0,
            Interest {
                read: false,
                write: false,
            },
        )
    }

    fn ctl(&self, op: i32, fd: RawFd, key: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: key,
        };
        // SAFETY: `ev` is a valid epoll_event; the kernel validates `fd`.
        let rc = unsafe { libc::epoll_ctl(self.raw(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until a descriptor is ready or `timeout_ns` passes (negative:
    /// forever, 0: just look). Appends what is ready to `out`.
    pub fn wait(&self, timeout_ns: i64, out: &mut Vec<Ready>) -> io::Result<()> {
        const MAX: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let rc = self.wait_raw(&mut events, timeout_ns);
        let n = if rc >= 0 {
            rc as usize
        } else {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            // EINTR: report no events; callers recompute their deadline.
            0
        };
        out.extend(events[..n].iter().map(|ev| {
            let bits = ev.events as i32;
            let err = bits & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
            Ready {
                key: ev.u64,
                read: err || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0,
                write: err || bits & libc::EPOLLOUT != 0,
            }
        }));
        Ok(())
    }

    fn wait_raw(&self, events: &mut [libc::epoll_event], timeout_ns: i64) -> i64 {
        let ts = libc::timespec {
            tv_sec: timeout_ns.max(0) / 1_000_000_000,
            tv_nsec: timeout_ns.max(0) % 1_000_000_000,
        };
        let ts_ptr = if timeout_ns < 0 {
            std::ptr::null()
        } else {
            &ts as *const libc::timespec
        };
        if !NO_PWAIT2.load(Relaxed) {
            // SAFETY: `events` is a writable array of `len` epoll_events and
            // `ts_ptr` is NULL or a live timespec. epoll_pwait2 gives ns precision.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.raw(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    ts_ptr,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return n;
            }
            NO_PWAIT2.store(true, Relaxed);
        }
        // Older kernels: round up to whole milliseconds so we never wake early.
        let ms = if timeout_ns < 0 {
            -1
        } else {
            ((timeout_ns + 999_999) / 1_000_000).min(i32::MAX as i64) as i32
        };
        // SAFETY: as above.
        unsafe { libc::epoll_wait(self.raw(), events.as_mut_ptr(), events.len() as i32, ms) as i64 }
    }
}
