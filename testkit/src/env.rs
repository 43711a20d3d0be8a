//! When a test's tool is missing: under `CI=true` the test fails, so that
//! a CI run never passes without pcscd or ffmpeg; elsewhere it is skipped,
//! with a note on stderr that says how to get the tool.

/// Whether this is a CI run (`CI=true`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `test` cannot run because `why` (a sentence that names the fix):
/// panics under `CI=true`, otherwise prints `SKIPPED test: why` and
/// returns `false`, for `if !available(..) { return; }`.
pub fn unavailable(test: &str, why: &str) -> bool {
    assert!(!ci(), "{test}: required under CI=true: {why}");
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// `true` when `missing` is empty; otherwise [`unavailable`] with every
/// reason joined.
pub fn available(test: &str, missing: &[String]) -> bool {
    missing.is_empty() || unavailable(test, &missing.join("; "))
}
