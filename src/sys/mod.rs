//! The few system calls aioctx makes, wrapped so that the rest of the crate
//! stays free of `unsafe`. Every function here is a thin, checked wrapper:
//! it validates what the kernel cannot and turns `-1`/errno into `io::Error`.

pub mod epoll;
pub mod eventfd;
pub mod file;
pub mod thread;
pub mod uring;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Makes descriptor number `old` refer to `fresh`'s file (close-on-exec),
/// and closes `fresh`: for objects a `fork()`'s child shares with its parent
/// and must not, replaced in place so the number others know stays valid.
pub fn replace_fd(old: RawFd, fresh: OwnedFd) -> std::io::Result<()> {
    // SAFETY: both are open descriptors; dup3 closes `old`'s file atomically.
    if unsafe { libc::dup3(fresh.as_raw_fd(), old, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

use std::ffi::CStr;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of every timer deadline.
pub fn clock_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The kernel thread id of the caller, as `top -H` and gdb show it.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The kernel's name of the calling thread (what `top -H` shows).
pub fn thread_name() -> String {
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into `buf`.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    if rc != 0 {
        return "thread".to_string();
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The affinity mask of thread `tid` (0: the caller); None if it cannot be
/// read (the thread ended, or a mask larger than cpu_set_t: over 1024 CPUs).
fn affinity(tid: i32) -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at
    // most `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

fn count(set: &libc::cpu_set_t) -> usize {
    // SAFETY: a valid set.
    (unsafe { libc::CPU_COUNT(set) }).max(1) as usize
}

/// How many CPUs the calling thread may run on (its affinity mask), at
/// least 1 (2 when the mask cannot be read: plenty of CPUs).
pub fn usable_cpus() -> usize {
    affinity(0).map_or(2, |set| count(&set))
}

/// How many CPUs the process's threads may run on together (the union of
/// their affinity masks), at least 1. One system call per thread.
pub fn process_cpus() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return usable_cpus();
    };
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut union: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for tid in tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Some(set) = affinity(tid) else { continue };
        for cpu in 0..libc::CPU_SETSIZE as usize {
            // SAFETY: `cpu` is below CPU_SETSIZE; both sets are valid.
            unsafe {
                if libc::CPU_ISSET(cpu, &set) {
                    libc::CPU_SET(cpu, &mut union);
                }
            }
        }
    }
    count(&union)
}

/// The CPU the calling thread runs on (-1 if unknown). Cheap: glibc reads
/// it from the thread's rseq area or the vDSO, without a system call.
pub fn current_cpu() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::sched_getcpu() }
}

/// Gives the CPU to another runnable thread, if any (`sched_yield`).
pub fn yield_now() {
    // SAFETY: no arguments; it cannot fail on Linux.
    unsafe { libc::sched_yield() };
}

/// Pins the calling thread to the first CPU it may run on (tests of the
/// single-CPU rule).
#[cfg(test)]
pub fn pin_to_first_cpu() -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: reads of a filled set, index below CPU_SETSIZE.
    let first = (0..libc::CPU_SETSIZE as usize)
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .unwrap_or(0);
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `first` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(first, &mut one) };
    // SAFETY: `one` is a valid set of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
