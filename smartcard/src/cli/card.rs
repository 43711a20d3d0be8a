//! What the card subcommands share: finding the reader and the card
//! through pcscd, with one-line errors that say what to do, and the
//! command-line error that exits 64.

use cardlink::pcsc::{list_readers, PcscTransport, ReaderChoice};
use cardlink::TransportError;
use std::ffi::CString;
use std::time::Duration;

/// A bad command line or configuration (exit 64), as against a failure
/// while running (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A failure with its own exit code from the shared table
/// ([`cli::exit`]): pcscd not running (69), no reader (4).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

/// Returns early with a [`Usage`] error.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::from($crate::cli::card::Usage(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// A transport error as one line that says what to do about it.
pub fn explain(e: TransportError) -> anyhow::Error {
    match e {
        TransportError::NoService(why) => Coded {
            code: ::cli::exit::UNAVAILABLE,
            message: format!("pcscd is not running ({why}); start it with scripts/ensure-pcscd.sh"),
        }
        .into(),
        TransportError::NoReader => Coded {
            code: ::cli::exit::NO_CARD,
            message: "no smartcard reader found (is pcscd running with a reader driver? see scripts/ensure-pcscd.sh)".into(),
        }
        .into(),
        other => other.into(),
    }
}

/// Checks, without waiting, that pcscd answers and that the reader the
/// user named exists: a typo must not look like a card that never comes.
pub fn check_reader(choice: &ReaderChoice) -> anyhow::Result<()> {
    let readers = list_readers().map_err(explain)?;
    if readers.is_empty() {
        return Err(explain(TransportError::NoReader));
    }
    if let ReaderChoice::Named(name) = choice {
        let names: Vec<CString> = readers
            .iter()
            .filter_map(|r| CString::new(r.name.as_str()).ok())
            .collect();
        if choice.candidates(&names).is_empty() {
            let known: Vec<&str> = readers.iter().map(|r| r.name.as_str()).collect();
            return Err(Coded {
                code: ::cli::exit::NO_CARD,
                message: format!(
                    "reader {name:?} not found; readers: {} (name one of them, or part of its name, with --reader)",
                    known.join(", ")
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// Where a card is looked for, for messages.
pub fn place(choice: &ReaderChoice) -> String {
    match choice {
        ReaderChoice::FirstWithCard => "any reader".to_string(),
        ReaderChoice::Named(n) => format!("reader {n:?}"),
    }
}

/// Connects to a card, waiting up to `timeout` for one to be inserted.
pub fn wait_for_card(choice: &ReaderChoice, timeout: Duration) -> anyhow::Result<PcscTransport> {
    match PcscTransport::wait_for_card(choice.clone(), timeout) {
        Ok(t) => Ok(t),
        Err(TransportError::Timeout | TransportError::NoCard) => Err(Coded {
            code: ::cli::exit::NO_CARD,
            message: format!(
                "no card in {} within {} (insert one, or wait longer with --timeout)",
                place(choice),
                seconds(timeout)
            ),
        }
        .into()),
        Err(e) => Err(explain(e)),
    }
}

/// A duration for people: "30 s", "1.5 s".
pub fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Parses `--timeout`: seconds, fractions allowed.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s} s is out of range (0 to 86400)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("NaN").is_err());
        assert!(parse_timeout("soon").is_err());
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn usage_errors_survive_context() {
        fn f() -> anyhow::Result<()> {
            usage!("bad {}", 1)
        }
        let e = anyhow::Context::context(f(), "while testing").unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some());
    }
}
