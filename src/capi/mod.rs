//! The C ABI: every `extern "C"` function, one file per C type.
//!
//! Each export is a thin shell: [`boundary::ffi`] catches panics and turns a
//! `Result` into the C convention (negative errno / NULL, with the message in
//! `aioctx_last_error()`), and the pointer helpers of `boundary` are the only
//! place raw pointers become references. The semantics live in the safe
//! modules; nothing here decides behaviour.
//!
//! Conventions (also stated in the header): the object comes first; `const`
//! pointers are not mutated; `_free`/`_unref`/`_delete` accept NULL.

mod bh;
mod boundary;
mod context;
mod diag;
mod error;
mod graph;
mod iothread;
mod node;
mod set;
mod timer;
mod wait;
