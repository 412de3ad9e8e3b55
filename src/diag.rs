//! Diagnostics: a dump of every context and node, and the log handler that
//! slow waits report through, so a handover that stalls is visible instead
//! of silent.

use std::collections::BTreeMap;
use std::sync::Arc;

use once_cell::sync::Lazy;
use parking_lot::RwLock;

/// Severity of a log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Information (`AIOCTX_LOG_INFO`).
    Info = 0,
    /// Something is wrong or slow (`AIOCTX_LOG_WARNING`).
    Warning = 1,
}

pub(crate) type Handler = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// None: messages go to stderr.
static HANDLER: RwLock<Option<Handler>> = RwLock::new(None);

/// Routes log messages to `handler` (None: back to stderr).
pub fn set_log_handler(handler: Option<Handler>) {
    *HANDLER.write() = handler;
}

/// Logs `message` through the installed handler, or to stderr. Never
/// fails and never panics on its own: a log line that cannot be written
/// (stderr on a full disk, a closed pipe) is lost, and the call that logged
/// goes on.
pub fn log(level: Level, message: &str) {
    let handler = HANDLER.read().clone();
    match handler {
        Some(h) => h(level, message),
        None => crate::sys::thread::write_stderr(format!("aioctx: {message}\n").as_bytes()),
    }
}

/// The parts of the dump, in the order they are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    /// Every live context (registered by the context layer).
    Contexts,
    /// Every live node (registered by the block layer).
    Nodes,
}

/// Who describes each section. Diagnostics sit below the layers they
/// describe (waits log through them), so those layers register a describer
/// when they first make something worth describing, instead of being named
/// here.
static DESCRIBERS: RwLock<BTreeMap<Section, fn() -> String>> = RwLock::new(BTreeMap::new());

/// Registers `describe` for `section`; later calls for it change nothing.
pub(crate) fn add_describer(section: Section, describe: fn() -> String) {
    if DESCRIBERS.read().contains_key(&section) {
        return;
    }
    DESCRIBERS.write().entry(section).or_insert(describe);
}

/// Every live context and every node, one line each.
pub fn dump() -> String {
    let describers: Vec<_> = DESCRIBERS.read().values().copied().collect();
    describers
        .into_iter()
        .map(|describe| describe())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// After how long a `poll_while` still waiting logs the dump, once
/// (`AIOCTX_WAIT_WARN_MS`; unset or invalid: never).
pub fn wait_warning_ns() -> Option<i64> {
    static NS: Lazy<Option<i64>> = Lazy::new(|| {
        std::env::var("AIOCTX_WAIT_WARN_MS")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|&ms| ms >= 0)
            .map(|ms| ms.saturating_mul(1_000_000))
    });
    *NS
}

/// A test hook: panics at the named point of a call when the environment
/// variable `AIOCTX_TEST_PANIC_AT` (read once) names it, the first time the
/// point is reached, so tests can check that a call that unwinds gives back
/// what it took. Debug builds only: a release build never reads the variable.
#[cfg(debug_assertions)]
pub(crate) fn test_panic_point(point: &str) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static AT: Lazy<Option<String>> = Lazy::new(|| std::env::var("AIOCTX_TEST_PANIC_AT").ok());
    static FIRED: AtomicBool = AtomicBool::new(false);
    if AT.as_deref() == Some(point) && !FIRED.swap(true, Relaxed) {
        panic!("AIOCTX_TEST_PANIC_AT={point}");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn test_panic_point(_point: &str) {}
