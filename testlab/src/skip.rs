//! Visible skips. A test that cannot run here must say so and be counted as
//! skipped, never pass silently.
//!
//! [`skip`] writes `SKIPPED: <reason>` straight to the process's stderr (libtest
//! does not capture direct writes, so the line shows even for a "passing" test),
//! and, when `CALINET_SKIP_LOG` names a file, appends the test's name and the
//! reason to it. `scripts/test.sh` sets that variable and subtracts the logged
//! skips from libtest's passed count, so the run ends with
//! `N passed, N failed, N skipped`.

use std::io::Write;

/// Environment variable naming the file that collects skips.
pub const SKIP_LOG_ENV: &str = "CALINET_SKIP_LOG";

/// Records a skip of the current test. Prefer the [`skip!`](crate::skip!),
/// [`require_root!`](crate::require_root!) and [`require!`](crate::require!)
/// macros, which also return from the test.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason} [{test}]");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // O_APPEND writes of one short line are atomic enough across the
        // parallel test threads and processes that share the log.
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{test}\t{reason}");
        }
    }
}

/// Whether this process runs as root (needed for network namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What a skipped test returns: `()` or `Ok(())`. The skip itself is counted by
/// the log, not by the return value.
pub trait Skipped {
    /// The value a skipped test returns.
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// Skips the current test with a reason, and returns from it.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {{
        $crate::skip::skip(&format!($($reason)+));
        return $crate::skip::Skipped::skipped();
    }};
}

/// Skips (and returns from) the current test unless it runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::skip::is_root() {
            $crate::skip!("needs root (network namespaces)");
        }
    };
}

/// Skips (and returns from) the current test unless every listed
/// [`Feature`](crate::Feature) is available; implies [`require_root!`].
#[macro_export]
macro_rules! require {
    ($($feature:expr),+ $(,)?) => {
        $crate::require_root!();
        $(
            if let Err(reason) = $crate::Feature::check($feature) {
                $crate::skip!("{reason}");
            }
        )+
    };
}
