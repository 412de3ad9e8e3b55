//! What every part of the block layer speaks: a request's direction, the
//! completion callbacks, and the error of a failed image access. A leaf:
//! it knows no node, so every other file of the layer may use it.

use crate::error::{Error, Result};
use crate::sys::file::IoBuf;

/// Direction of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Reads from the image (allowed on an inactive node).
    Read,
    /// Writes to the image (refused on an inactive or read-only node).
    Write,
}

/// Completion of an asynchronous read or write: bytes transferred or an
/// error, and the buffer back.
pub type IoDone = Box<dyn FnOnce(Result<usize>, IoBuf) + Send>;

/// Called once with the outcome of an asynchronous driver operation.
pub type OpDone = Box<dyn FnOnce(Result<()>) + Send>;

/// A failed read or write of the image at `path`.
pub(super) fn io_error(path: &str, e: std::io::Error) -> Error {
    Error::from_io(&format!("I/O on '{path}'"), e)
}
