//! The one error type: a negative-errno-compatible code plus a message that
//! names the object involved and says how to fix the call.

use std::fmt;

/// An error with a POSIX errno (positive) and a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    message: String,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with errno `errno` (positive, e.g. `libc::EPERM`).
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Error {
            errno,
            message: message.into(),
        }
    }

    /// The positive errno value.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The explanation, naming the object and the fix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error from a failed system call, prefixed with what was being done.
    pub fn from_io(what: &str, err: std::io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        Error::new(errno, format!("{what}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for Error {}

/// Shorthand constructors for the errors the library returns most.
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(libc::EINVAL, message)
}

pub(crate) fn not_permitted(message: impl Into<String>) -> Error {
    Error::new(libc::EPERM, message)
}

pub(crate) fn busy(message: impl Into<String>) -> Error {
    Error::new(libc::EBUSY, message)
}
