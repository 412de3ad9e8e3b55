//! The one panic-and-pointer boundary every export goes through.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::context::{Callback, PollCallback};
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

/// How C holds the objects behind one opaque type's pointers. Declared once
/// per type ([`opaque!`]), so a helper for the wrong kind (freeing an
/// Arc-owned pointer as a Box, adopting a borrowed node's reference) does not
/// compile.
pub(crate) trait Ownership {}
/// C owns the object outright: `_new` boxes it, `_free` drops the box.
pub(crate) enum BoxOwned {}
/// C owns one reference of an `Arc`: `_new`/`_ref` hand one out, `_unref`
/// or `_free` give it back.
pub(crate) enum ArcOwned {}
/// The object lives in an `Arc` someone else keeps (a node, owned by its
/// graph): C's pointers are borrowed, never owned.
pub(crate) enum ArcLent {}
impl Ownership for BoxOwned {}
impl Ownership for ArcOwned {}
impl Ownership for ArcLent {}
/// The kinds whose object lives in an `Arc`.
pub(crate) trait InArc: Ownership {}
impl InArc for ArcOwned {}
impl InArc for ArcLent {}

/// A C type whose pointers carry a Rust object.
pub(crate) trait Opaque {
    type Rust;
    /// How C holds it.
    type Ownership: Ownership;
    /// What the C type is called in messages, e.g. "ctx".
    const WHAT: &'static str;
}

/// Declares how a C type carries its Rust object, in one line:
/// `opaque!(AioctxContext => Context, ArcOwned, "ctx");`.
macro_rules! opaque {
    ($c:ty => $rust:ty, $ownership:ident, $what:literal) => {
        impl $crate::capi::boundary::Opaque for $c {
            type Rust = $rust;
            type Ownership = $crate::capi::boundary::$ownership;
            const WHAT: &'static str = $what;
        }
    };
}
pub(crate) use opaque;

fn null_error<C: Opaque>() -> Error {
    invalid(format!("{} is NULL: pass a valid pointer", C::WHAT))
}

/// Borrows the object behind a pointer handed out by this library.
pub(crate) fn borrow<'a, C: Opaque>(ptr: *const C) -> Result<&'a C::Rust> {
    // SAFETY: a non-NULL pointer of type C was created by `into_arc_ptr`,
    // `borrowed_arc_ptr` or `into_box_ptr` and, per the C API contract, not
    // yet freed.
    unsafe { ptr.cast::<C::Rust>().as_ref() }.ok_or_else(null_error::<C>)
}

/// Mutably borrows a Box-owned object.
pub(crate) fn borrow_mut<'a, C: Opaque<Ownership = BoxOwned>>(
    ptr: *mut C,
) -> Result<&'a mut C::Rust> {
    // SAFETY: as in `borrow`; Box-owned objects are used by one thread at a
    // time per the C API contract, and nothing else holds a reference.
    unsafe { ptr.cast::<C::Rust>().as_mut() }.ok_or_else(null_error::<C>)
}

/// Hands a reference-counted object to C, with one reference C owns.
pub(crate) fn into_arc_ptr<C: Opaque<Ownership = ArcOwned>>(obj: Arc<C::Rust>) -> *mut C {
    Arc::into_raw(obj) as *mut C
}

/// A pointer C may use without owning a reference (kept alive elsewhere).
pub(crate) fn borrowed_arc_ptr<C: Opaque>(obj: &Arc<C::Rust>) -> *mut C
where
    C::Ownership: InArc,
{
    Arc::as_ptr(obj) as *mut C
}

/// A new strong reference to the object behind a C pointer.
pub(crate) fn clone_arc<C: Opaque>(ptr: *const C) -> Result<Arc<C::Rust>>
where
    C::Ownership: InArc,
{
    if ptr.is_null() {
        return Err(null_error::<C>());
    }
    // SAFETY: the type lives in an Arc (`InArc`): the pointer came from
    // `into_arc_ptr`/`borrowed_arc_ptr` and its object is alive, so bumping
    // the count and adopting that count is sound.
    unsafe {
        Arc::increment_strong_count(ptr.cast::<C::Rust>());
        Ok(Arc::from_raw(ptr.cast::<C::Rust>()))
    }
}

/// The `Arc` behind a C pointer, without touching its count: for calls that
/// need `&Arc` only for their duration (cloning it only if they keep it).
pub(crate) fn borrow_arc<C: Opaque>(ptr: *const C) -> Result<std::mem::ManuallyDrop<Arc<C::Rust>>>
where
    C::Ownership: InArc,
{
    if ptr.is_null() {
        return Err(null_error::<C>());
    }
    // SAFETY: the type lives in an Arc (`InArc`) and its object is alive;
    // ManuallyDrop never gives the borrowed count back.
    Ok(std::mem::ManuallyDrop::new(unsafe {
        Arc::from_raw(ptr.cast::<C::Rust>())
    }))
}

/// Takes back the reference C owned (NULL: nothing).
pub(crate) fn take_arc<C: Opaque<Ownership = ArcOwned>>(ptr: *const C) -> Option<Arc<C::Rust>> {
    // SAFETY: the pointer came from `into_arc_ptr` (the only maker of an
    // ArcOwned pointer C owns), and C gives up its reference.
    (!ptr.is_null()).then(|| unsafe { Arc::from_raw(ptr.cast::<C::Rust>()) })
}

/// Hands a uniquely owned object to C.
pub(crate) fn into_box_ptr<C: Opaque<Ownership = BoxOwned>>(obj: C::Rust) -> *mut C {
    Box::into_raw(Box::new(obj)) as *mut C
}

/// Takes back an object C owned (NULL: nothing).
pub(crate) fn take_box<C: Opaque<Ownership = BoxOwned>>(ptr: *mut C) -> Option<Box<C::Rust>> {
    // SAFETY: the pointer came from `into_box_ptr`, and C gives up ownership.
    (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr.cast::<C::Rust>()) })
}

/// An out parameter: where a call writes its result. NULL is `EINVAL`
/// naming `what`.
pub(crate) fn out_param<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: the C caller passes writable storage for a `T`, or NULL.
    unsafe { ptr.as_mut() }
        .ok_or_else(|| invalid(format!("{what} is NULL: pass where to store the result")))
}

/// An optional out-parameter (NULL: `None`: the caller does not want it).
pub(crate) fn optional_out<'a, T>(ptr: *mut T) -> Option<&'a mut T> {
    // SAFETY: the C caller passes writable storage for a `T`, or NULL.
    unsafe { ptr.as_mut() }
}

/// An optional input (NULL: `None`), read for the duration of the call.
pub(crate) fn optional<'a, T>(ptr: *const T) -> Option<&'a T> {
    // SAFETY: the C caller passes a valid `T` for the call, or NULL.
    unsafe { ptr.as_ref() }
}

/// An array argument of `n` elements (`n == 0`: empty, the pointer unread).
/// NULL with `n > 0`, or an `n` no array can have, is `EINVAL` naming `what`.
pub(crate) fn slice_arg<'a, T>(ptr: *const T, n: usize, what: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid(format!(
            "{what} is NULL: pass an array of {n} elements"
        )));
    }
    // A slice may not span more than isize::MAX bytes; no array that large exists.
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(invalid(format!(
            "n = {n} is larger than any array of {what}: pass the array's length"
        )));
    }
    // SAFETY: the caller lends an array of `n` elements at `ptr` for the
    // call, and its size fits in isize (checked above).
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// An output buffer of `size` bytes, `None` for NULL with size 0 (a call
/// that only asks for the length). NULL with `size > 0` is `EINVAL`.
pub(crate) fn out_bytes<'a>(
    ptr: *mut c_char,
    size: usize,
    what: &str,
) -> Result<Option<&'a mut [u8]>> {
    if ptr.is_null() {
        return if size == 0 {
            Ok(None)
        } else {
            Err(invalid(format!("{what} is NULL but size is not 0")))
        };
    }
    // SAFETY: the caller lends `size` writable bytes at `ptr` for the call.
    Ok(Some(unsafe {
        std::slice::from_raw_parts_mut(ptr.cast::<u8>(), size)
    }))
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

/// `bool (*)(void *opaque)`: an fd handler's poll callback
/// (`aioctx_set_fd_handler_full`): true when there is work for its `io_read`.
pub type AioctxPollFn = Option<unsafe extern "C" fn(opaque: *mut c_void) -> bool>;

impl CFn<unsafe extern "C" fn(*mut c_void) -> bool> {
    fn call_poll(&self) -> bool {
        // SAFETY: the C caller registered `f` for `opaque`.
        unsafe { (self.f)(self.opaque) }
    }
}

/// Wraps a C poll callback as a Rust one (None for NULL).
pub(crate) fn poll_callback(f: AioctxPollFn, opaque: *mut c_void) -> Option<PollCallback> {
    let c = CFn { f: f?, opaque };
    Some(Arc::new(move || c.call_poll()))
}

/// Like [`callback`], but NULL is an error naming the argument.
pub(crate) fn required_callback(
    f: AioctxCallback,
    opaque: *mut c_void,
    what: &str,
) -> Result<Callback> {
    callback(f, opaque).ok_or_else(|| invalid(format!("{what} is NULL: pass a function")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_helpers_refuse_null_and_impossible_lengths() {
        let none: *const u64 = std::ptr::null();
        assert_eq!(slice_arg(none, 0, "xs").unwrap(), &[] as &[u64]);
        let e = slice_arg(none, 3, "xs").unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.message().contains("xs is NULL"), "{}", e.message());
        let xs = [1u64, 2, 3];
        assert_eq!(slice_arg(xs.as_ptr(), 2, "xs").unwrap(), &[1, 2]);
        let e = slice_arg(xs.as_ptr(), usize::MAX / 2, "xs").unwrap_err();
        assert!(
            e.message().contains("larger than any array"),
            "{}",
            e.message()
        );

        assert!(out_param::<u32>(std::ptr::null_mut(), "out").is_err());
        let mut v = 0u32;
        *out_param(&mut v, "out").unwrap() = 7;
        assert_eq!(v, 7);

        assert!(out_bytes(std::ptr::null_mut(), 0, "buf").unwrap().is_none());
        assert!(out_bytes(std::ptr::null_mut(), 4, "buf").is_err());
        let mut buf = [0 as c_char; 4];
        assert_eq!(
            out_bytes(buf.as_mut_ptr(), 4, "buf")
                .unwrap()
                .unwrap()
                .len(),
            4
        );

        assert!(optional::<u8>(std::ptr::null()).is_none());
        assert_eq!(optional(&5u8), Some(&5));
    }
}
