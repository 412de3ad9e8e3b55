//! The one panic-and-pointer boundary every export goes through.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::context::Callback;
use crate::error::{invalid, Error, Result};

/// Room for the longest message (a hang dump of many contexts is cut here).
const LAST_ERROR_CAPACITY: usize = 8192;

thread_local! {
    /// Fixed storage, so the pointer `aioctx_last_error()` returned stays
    /// valid for the thread's lifetime; only the text changes. Const
    /// initialised plain data, with no destructor: usable from `atexit()`
    /// handlers and pthread-key destructors, after Rust's thread-locals
    /// with destructors are gone.
    static LAST_ERROR: RefCell<[u8; LAST_ERROR_CAPACITY]> =
        const { RefCell::new([0; LAST_ERROR_CAPACITY]) };
    static LAST_ERRNO: Cell<c_int> = const { Cell::new(0) };
}

/// The calling thread's last error message ("" when none).
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.as_ptr().cast::<c_char>().cast_const())
}

/// The calling thread's last failure as a negative errno (0 when none).
pub(crate) fn last_errno() -> c_int {
    LAST_ERRNO.get()
}

fn set_last_error(function: &str, e: &Error) {
    LAST_ERRNO.set(-e.errno());
    // Like fopen(): a constructor's NULL comes with errno set.
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e.errno() };
    let text = format!("{function}: {}", e.message());
    LAST_ERROR.with(|slot| {
        // Busy only if formatting the message re-entered here: keep the first.
        let Ok(mut slot) = slot.try_borrow_mut() else {
            return;
        };
        let mut len = text.len().min(LAST_ERROR_CAPACITY - 1);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        slot[..len].copy_from_slice(&text.as_bytes()[..len]);
        // Interior NULs would cut the message short; show them as spaces.
        slot[..len]
            .iter_mut()
            .filter(|b| **b == 0)
            .for_each(|b| *b = b' ');
        slot[len] = 0;
    });
}

/// How a C return type says "failed".
pub(crate) trait CReturn {
    fn failed(e: &Error) -> Self;
}

impl CReturn for c_int {
    fn failed(e: &Error) -> Self {
        -e.errno()
    }
}

impl CReturn for i64 {
    fn failed(e: &Error) -> Self {
        -(e.errno() as i64)
    }
}

impl CReturn for u64 {
    fn failed(_: &Error) -> Self {
        0
    }
}

impl CReturn for usize {
    fn failed(_: &Error) -> Self {
        0
    }
}

impl CReturn for bool {
    fn failed(_: &Error) -> Self {
        false
    }
}

impl CReturn for () {
    fn failed(_: &Error) -> Self {}
}

impl<T> CReturn for *mut T {
    fn failed(_: &Error) -> Self {
        std::ptr::null_mut()
    }
}

impl<T> CReturn for *const T {
    fn failed(_: &Error) -> Self {
        std::ptr::null()
    }
}

/// Runs an export's body: a panic becomes `ENOTRECOVERABLE`, an error sets
/// `aioctx_last_error()` (prefixed with `function`) and the C failure value.
/// Inlined, with the failure handling out of line, so that a successful call
/// costs what its body costs.
#[inline(always)]
pub(crate) fn ffi<R: CReturn>(function: &str, body: impl FnOnce() -> Result<R>) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => failed(function, e),
        Err(panic) => failed(function, panic_error(panic)),
    }
}

#[cold]
#[inline(never)]
fn failed<R: CReturn>(function: &str, error: Error) -> R {
    set_last_error(function, &error);
    R::failed(&error)
}

#[cold]
fn panic_error(panic: Box<dyn std::any::Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    Error::new(
        libc::ENOTRECOVERABLE,
        format!("internal error (panic: {what}); please report it"),
    )
}

/// A C type whose pointers carry a Rust object.
pub(crate) trait Opaque {
    type Rust;
    /// What the C type is called in messages, e.g. "ctx".
    const WHAT: &'static str;
}

fn null_error<C: Opaque>() -> Error {
    invalid(format!("{} is NULL: pass a valid pointer", C::WHAT))
}

/// Borrows the object behind a pointer handed out by this library.
pub(crate) fn borrow<'a, C: Opaque>(ptr: *const C) -> Result<&'a C::Rust> {
    // SAFETY: a non-NULL pointer of type C was created by `into_arc_ptr` or
    // `into_box_ptr` and, per the C API contract, not yet freed.
    unsafe { ptr.cast::<C::Rust>().as_ref() }.ok_or_else(null_error::<C>)
}

/// Mutably borrows a Box-owned object.
pub(crate) fn borrow_mut<'a, C: Opaque>(ptr: *mut C) -> Result<&'a mut C::Rust> {
    // SAFETY: as in `borrow`; Box-owned objects are used by one thread at a
    // time per the C API contract.
    unsafe { ptr.cast::<C::Rust>().as_mut() }.ok_or_else(null_error::<C>)
}

/// Hands a reference-counted object to C.
pub(crate) fn into_arc_ptr<C: Opaque>(obj: Arc<C::Rust>) -> *mut C {
    Arc::into_raw(obj) as *mut C
}

/// A pointer C may use without owning a reference (kept alive elsewhere).
pub(crate) fn borrowed_arc_ptr<C: Opaque>(obj: &Arc<C::Rust>) -> *mut C {
    Arc::as_ptr(obj) as *mut C
}

/// A new strong reference to the object behind a C pointer.
pub(crate) fn clone_arc<C: Opaque>(ptr: *const C) -> Result<Arc<C::Rust>> {
    if ptr.is_null() {
        return Err(null_error::<C>());
    }
    // SAFETY: the pointer came from `into_arc_ptr`/`borrowed_arc_ptr` and its
    // object is alive, so bumping the count and adopting that count is sound.
    unsafe {
        Arc::increment_strong_count(ptr.cast::<C::Rust>());
        Ok(Arc::from_raw(ptr.cast::<C::Rust>()))
    }
}

/// The `Arc` behind a C pointer, without touching its count: for calls that
/// need `&Arc` only for their duration (cloning it only if they keep it).
pub(crate) fn borrow_arc<C: Opaque>(ptr: *const C) -> Result<std::mem::ManuallyDrop<Arc<C::Rust>>> {
    if ptr.is_null() {
        return Err(null_error::<C>());
    }
    // SAFETY: the pointer came from `into_arc_ptr`/`borrowed_arc_ptr` and its
    // object is alive; ManuallyDrop never gives the borrowed count back.
    Ok(std::mem::ManuallyDrop::new(unsafe {
        Arc::from_raw(ptr.cast::<C::Rust>())
    }))
}

/// Takes back the reference C owned (NULL: nothing).
pub(crate) fn take_arc<C: Opaque>(ptr: *const C) -> Option<Arc<C::Rust>> {
    // SAFETY: the pointer came from `into_arc_ptr`, and C gives up its reference.
    (!ptr.is_null()).then(|| unsafe { Arc::from_raw(ptr.cast::<C::Rust>()) })
}

/// Hands a uniquely owned object to C.
pub(crate) fn into_box_ptr<C: Opaque>(obj: C::Rust) -> *mut C {
    Box::into_raw(Box::new(obj)) as *mut C
}

/// Takes back an object C owned (NULL: nothing).
pub(crate) fn take_box<C: Opaque>(ptr: *mut C) -> Option<Box<C::Rust>> {
    // SAFETY: the pointer came from `into_box_ptr`, and C gives up ownership.
    (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr.cast::<C::Rust>()) })
}

/// A C string argument as UTF-8.
pub(crate) fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(invalid(format!(
            "{what} is NULL: pass a NUL-terminated string"
        )));
    }
    // SAFETY: the C caller passes a NUL-terminated string valid for the call.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| invalid(format!("{what} is not valid UTF-8")))
}

/// A C function pointer and its opaque argument, callable from any thread.
#[derive(Clone, Copy)]
pub(crate) struct CFn<F> {
    pub f: F,
    pub opaque: *mut c_void,
}

// SAFETY: the C API documents that callbacks run in the context's home thread
// and that `opaque` must be usable there; aioctx never dereferences it.
unsafe impl<F> Send for CFn<F> {}
// SAFETY: as above; aioctx only copies the pointer.
unsafe impl<F> Sync for CFn<F> {}

impl CFn<unsafe extern "C" fn(*mut c_void)> {
    fn call(&self) {
        // SAFETY: the C caller registered `f` for `opaque`.
        unsafe { (self.f)(self.opaque) }
    }
}

/// `void (*)(void *opaque)`: bottom halves, timers and fd handlers. Runs in
/// the home thread of its context, with the context held.
pub type AioctxCallback = Option<unsafe extern "C" fn(opaque: *mut c_void)>;

/// Wraps a C callback as a Rust one (None for NULL).
pub(crate) fn callback(f: AioctxCallback, opaque: *mut c_void) -> Option<Callback> {
    let c = CFn { f: f?, opaque };
    Some(Arc::new(move || c.call()))
}

/// Like [`callback`], but NULL is an error naming the argument.
pub(crate) fn required_callback(
    f: AioctxCallback,
    opaque: *mut c_void,
    what: &str,
) -> Result<Callback> {
    callback(f, opaque).ok_or_else(|| invalid(format!("{what} is NULL: pass a function")))
}
