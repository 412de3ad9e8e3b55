//! Positioned I/O on caller-provided buffers, and open-file-description locks.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A buffer an I/O request reads into or writes from: owned by Rust, or
/// lent by a C caller for the duration of the request.
///
/// Opaque: safe code makes one only from a `Vec<u8>`, so it cannot point
/// the kernel at memory it does not own. A lent buffer is made by the
/// `unsafe` [`IoBuf::lent`], whose caller promises the memory lives.
///
/// ```
/// let buf = aioctx::IoBuf::from(vec![0u8; 512]);
/// assert_eq!(buf.len(), 512);
/// assert_eq!(buf.into_vec().map(|v| v.len()), Some(512));
/// ```
///
/// Safe code cannot name a lent buffer's parts (this would let `preadv`
/// write anywhere):
///
/// ```compile_fail
/// let wild = aioctx::IoBuf::Lent { ptr: 0x1000 as *mut u8, len: 4096 };
/// ```
///
/// nor build the struct around them:
///
/// ```compile_fail
/// let wild = aioctx::IoBuf { ptr: 0x1000 as *mut u8, len: 4096 };
/// ```
///
/// nor match one out of a buffer it was given:
///
/// ```compile_fail
/// fn peek(buf: aioctx::IoBuf) -> usize {
///     match buf {
///         aioctx::IoBuf::Owned(v) => v.len(),
///         _ => 0,
///     }
/// }
/// ```
pub struct IoBuf(Memory);

enum Memory {
    Owned(Vec<u8>),
    Lent { ptr: *mut u8, len: usize },
}

// SAFETY: a lent buffer is, per the C API contract, valid and untouched by
// the caller until the request's completion callback; only one worker uses it.
unsafe impl Send for IoBuf {}

impl From<Vec<u8>> for IoBuf {
    fn from(v: Vec<u8>) -> IoBuf {
        IoBuf(Memory::Owned(v))
    }
}

impl IoBuf {
    /// A buffer lent by C code.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes, and not be used
    /// by anyone else, until the request that takes this buffer completes.
    pub unsafe fn lent(ptr: *mut u8, len: usize) -> IoBuf {
        IoBuf(Memory::Lent { ptr, len })
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            Memory::Owned(v) => v.len(),
            Memory::Lent { len, .. } => *len,
        }
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Rust buffer back (with what a read put there); `None` for a lent
    /// one, which stays the lender's.
    pub fn into_vec(self) -> Option<Vec<u8>> {
        match self.0 {
            Memory::Owned(v) => Some(v),
            Memory::Lent { .. } => None,
        }
    }

    /// The buffer's address, for alignment checks (`O_DIRECT`).
    pub(crate) fn addr(&self) -> usize {
        match &self.0 {
            Memory::Owned(v) => v.as_ptr() as usize,
            Memory::Lent { ptr, .. } => *ptr as usize,
        }
    }

    /// The part of the buffer after its first `skip` bytes.
    pub(crate) fn as_iovec(&mut self, skip: usize) -> libc::iovec {
        let (ptr, len) = match &mut self.0 {
            Memory::Owned(v) => (v.as_mut_ptr(), v.len()),
            Memory::Lent { ptr, len } => (*ptr, *len),
        };
        let skip = skip.min(len);
        // SAFETY: `skip <= len`, so the pointer stays within (or one past) the buffer.
        libc::iovec {
            iov_base: unsafe { ptr.add(skip) }.cast(),
            iov_len: len - skip,
        }
    }
}

/// Reads into all of `buf` from `offset`, retrying short reads; stops early
/// only at end of file. Returns the bytes read.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut IoBuf, offset: u64) -> io::Result<usize> {
    transfer(buf, offset, |iov, off| {
        // SAFETY: `iov` describes live memory of the buffer (see IoBuf).
        unsafe { libc::preadv(fd.as_raw_fd(), iov, 1, off) }
    })
}

/// Reads all of `buf` at `offset` only if the data is in the page cache
/// (`preadv2` with `RWF_NOWAIT`): never blocks on the device. `None` when
/// it would block, or cannot say at once (then use [`pread_full`]).
pub fn pread_cached(fd: BorrowedFd<'_>, buf: &mut IoBuf, offset: u64) -> Option<usize> {
    let iov = buf.as_iovec(0);
    let off = libc::off_t::try_from(offset).ok()?;
    // SAFETY: `iov` describes live memory of the buffer (see IoBuf).
    let n = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    // A short read may be end of file or a page not cached: let the pool decide.
    (n >= 0 && n as usize == buf.len()).then_some(n as usize)
}

/// Clears `O_NONBLOCK` on `fd`'s open file: io_uring fails a request on
/// such a file with `EAGAIN` where it would otherwise wait (on its workers).
pub fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the borrow keeps open.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops `fd`'s cached pages (clean ones), so that the next reads go to
/// the device: tests of requests that wait for it.
#[cfg(test)]
pub(crate) fn drop_cached_pages(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: only advice about a descriptor the borrow keeps open.
    let r = unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Writes all of `buf` at `offset`, retrying short writes. Returns the bytes written.
pub fn pwrite_full(fd: BorrowedFd<'_>, buf: &mut IoBuf, offset: u64) -> io::Result<usize> {
    transfer(buf, offset, |iov, off| {
        // SAFETY: as above; pwritev only reads the memory.
        unsafe { libc::pwritev(fd.as_raw_fd(), iov, 1, off) }
    })
}

fn transfer(
    buf: &mut IoBuf,
    offset: u64,
    mut op: impl FnMut(*const libc::iovec, libc::off_t) -> isize,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let iov = buf.as_iovec(done);
        let off = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        match op(&iov, off) {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(done)
}

/// `statx` mask bit for the `O_DIRECT` alignment fields (Linux 6.1).
const STATX_DIOALIGN: u32 = 0x2000;

/// The alignment `O_DIRECT` I/O on `fd` needs, in bytes, for buffer
/// addresses, offsets and lengths alike: what `statx` reports where the
/// kernel has it, else the logical block size of a block device, else
/// found by trying a 512-byte direct read (4096 when that fails or proves
/// nothing).
pub fn direct_alignment(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: an all-zero statx is a valid out-value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: "" with AT_EMPTY_PATH names `fd` itself; `stx` is a valid out-pointer.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if stx.stx_mask & STATX_DIOALIGN != 0 && stx.stx_dio_offset_align > 0 {
        return Ok(stx.stx_dio_offset_align.max(stx.stx_dio_mem_align) as usize);
    }
    if u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFBLK {
        let mut size: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKSSZGET, &mut size) } == 0 && size > 0 {
            return Ok(size as usize);
        }
    }
    Ok(if direct_read_works(fd, 512) {
        512
    } else {
        4096
    })
}

/// Whether a direct read of `len` bytes at 0 into a page-aligned buffer
/// returns data (a read past the end proves nothing).
fn direct_read_works(fd: BorrowedFd<'_>, len: usize) -> bool {
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("a valid layout");
    // SAFETY: a non-zero size; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return false;
    }
    // SAFETY: `buf` holds 4096 >= len writable bytes.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.cast(), len, 0) };
    // SAFETY: allocated above with `layout`.
    unsafe { std::alloc::dealloc(buf, layout) };
    n > 0
}

/// Byte of the image that stands for "someone writes it" (as in QEMU's
/// lock offsets, well past any header but meaningful for any file size).
const WRITE_LOCK_BYTE: i64 = 100;

/// Takes (`exclusive`) or drops the image write lock: an open-file-description
/// lock, so it belongs to this open file and is never silently shared with
/// another descriptor of the same process. Fails with `EAGAIN` when another
/// open file (another process, typically) holds it.
pub fn set_write_lock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    // SAFETY: an all-zero flock is a valid value; the fields are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_UNLCK
    } as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = WRITE_LOCK_BYTE;
    fl.l_len = 1;
    // SAFETY: `fl` is a valid flock; F_OFD_SETLK does not block.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) } < 0 {
        let err = io::Error::last_os_error();
        // POSIX allows EACCES for a conflicting lock; report one errno.
        if err.raw_os_error() == Some(libc::EACCES) {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        return Err(err);
    }
    Ok(())
}
