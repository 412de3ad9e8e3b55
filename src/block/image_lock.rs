//! The image write lock of a raw file: an open-file-description lock on
//! the node's open file, so that no other process writes the image.
//!
//! Such a lock belongs to the open file, and a `fork()`'s child shares its
//! parent's open files, so a lock on one is the parent's and the child's
//! alike. The child must neither release the parent's lock (it would be
//! released for the parent too), nor keep a share of it (the lock would
//! outlive the parent, and block the child's own graphs). So right after
//! the fork, every locked image of the child gets an open file of its own,
//! without the lock, under the same descriptor number; an image the parent
//! had not locked gets one the first time the child takes or gives up
//! write permission (the lock state notes the fork generation it is about).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use crate::error::{Error, Result};
use crate::sys::file::{set_blocking, set_write_lock};

/// The write lock of one open image.
pub(super) struct ImageLock {
    file: Arc<File>,
    /// How the file was opened: to open it again in a `fork()`'s child.
    options: OpenOptions,
    path: Arc<str>,
    state: Mutex<State>,
}

struct State {
    /// Whether `file` holds the lock.
    held: bool,
    /// The fork generation (`thread::fork_generation`) of the process
    /// `held` is about, whose own open file `file` is.
    generation: u64,
}

/// Every image lock, for the fork handlers.
static ALL: Mutex<Vec<Weak<ImageLock>>> = Mutex::new(Vec::new());

/// Taken shared by every change of a lock, and exclusively by a `fork()`
/// from its prepare to its end: the child finds no change half done.
static FORK_GATE: RwLock<()> = RwLock::new(());

type Held = (
    RwLockWriteGuard<'static, ()>,
    MutexGuard<'static, Vec<Weak<ImageLock>>>,
);

thread_local! {
    /// What the forking thread holds from the prepare until after the fork.
    static HELD_FOR_FORK: RefCell<Option<Held>> = const { RefCell::new(None) };
}

impl ImageLock {
    /// The lock of the image open as `file` (opened with `options`), not held.
    pub(super) fn new(file: Arc<File>, options: OpenOptions, path: Arc<str>) -> Arc<ImageLock> {
        let lock = Arc::new(ImageLock {
            file,
            options,
            path,
            state: Mutex::new(State {
                held: false,
                generation: crate::thread::fork_generation(),
            }),
        });
        let mut all = ALL.lock();
        all.retain(|l| l.strong_count() > 0);
        all.push(Arc::downgrade(&lock));
        lock
    }

    /// Takes (`exclusive`) or gives up the lock (`EAGAIN` if another
    /// process holds it).
    pub(super) fn set(&self, exclusive: bool) -> Result<()> {
        let _no_fork = FORK_GATE.read();
        let mut state = self.state.lock();
        self.own_file_if_forked(&mut state)?;
        if state.held == exclusive {
            return Ok(());
        }
        set_write_lock(self.file.as_fd(), exclusive).map_err(|e| {
            if e.raw_os_error() == Some(libc::EAGAIN) {
                Error::new(
                    libc::EAGAIN,
                    format!(
                        "image '{}' is locked by another process that writes it; \
                         open it with AIOCTX_OPEN_INACTIVE and activate after that process inactivates",
                        self.path
                    ),
                )
            } else {
                Error::from_io(&format!("image '{}': write lock", self.path), e)
            }
        })?;
        state.held = exclusive;
        Ok(())
    }

    /// In a process forked since `state` was written, puts an open file of
    /// the image of its own in place of the one it shares with its parent,
    /// under the same descriptor number (requests in flight go on).
    fn own_file_if_forked(&self, state: &mut State) -> Result<()> {
        let now = crate::thread::fork_generation();
        if state.generation == now {
            return Ok(());
        }
        let failed = |why: String| {
            Error::new(
                libc::EIO,
                format!(
                    "image '{}': cannot open it again in this forked process ({why}), \
                     where the open file it shares with its parent holds the parent's lock",
                    self.path
                ),
            )
        };
        let fresh = reopen(&self.file, &self.options)
            .ok_or_else(|| failed("through /proc/self/fd".into()))?;
        set_blocking(fresh.as_fd()).map_err(|e| failed(e.to_string()))?;
        crate::sys::replace_fd(self.file.as_raw_fd(), fresh.into())
            .map_err(|e| failed(e.to_string()))?;
        *state = State {
            held: false,
            generation: now,
        };
        Ok(())
    }
}

/// A new open file description of the file `shared` is open on (its own
/// locks), through `/proc/self/fd`: that names the open file, where the
/// path it was opened by may since name another file (renamed, or relative
/// to a directory the process has left). `None` without `/proc`, or if what
/// opened is not the same file.
pub(super) fn reopen(shared: &File, options: &OpenOptions) -> Option<File> {
    let file = options
        .open(format!("/proc/self/fd/{}", shared.as_raw_fd()))
        .ok()?;
    let (was, is) = (shared.metadata().ok()?, file.metadata().ok()?);
    (was.dev() == is.dev() && was.ino() == is.ino()).then_some(file)
}

/// `fork()` prepare: waits for changes of locks under way, and holds off
/// new ones and new locks until after the fork.
pub(super) fn before_fork() {
    let gate = FORK_GATE.write();
    let all = ALL.lock();
    let _ = HELD_FOR_FORK.try_with(|h| *h.borrow_mut() = Some((gate, all)));
}

/// After a `fork()`: in the child, every locked image gets an open file of
/// its own (the child's share of its parent's lock goes with the old one);
/// then the gate opens again.
pub(super) fn after_fork(child: bool) {
    let Some((gate, all)) = HELD_FOR_FORK
        .try_with(|h| h.borrow_mut().take())
        .ok()
        .flatten()
    else {
        return;
    };
    if child {
        for lock in all.iter().filter_map(Weak::upgrade) {
            let mut state = lock.state.lock();
            if state.held {
                // Failing that (no /proc), the child keeps its share: its
                // next handover step tries again and reports it.
                let _ = lock.own_file_if_forked(&mut state);
            }
        }
    }
    drop(all);
    drop(gate);
}
