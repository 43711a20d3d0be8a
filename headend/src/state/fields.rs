//! The request fields that need more than their JSON type to be valid
//! (names, dates, 32-byte keys in hex), and dates as answers show them.
//! Each refusal names its field ([`StateError::Invalid`]).

use super::{Result, StateError};

/// Longest product or channel name.
const MAX_NAME: usize = 64;

/// Unix seconds of Unix milliseconds.
pub(super) fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// RFC 3339 text for Unix seconds.
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Parses `YYYY-MM-DD` (start or end of that UTC day) or RFC 3339.
pub fn parse_date(s: &str, end_of_day: bool, field: &'static str) -> Result<u64> {
    let s = s.trim();
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let t = if let Ok(d) = time::Date::parse(s, &fmt) {
        let t = if end_of_day {
            d.with_hms(23, 59, 59)
        } else {
            d.with_hms(0, 0, 0)
        };
        t.map(|t| t.assume_utc())
            .map_err(|_| StateError::invalid(field, format!("{s:?} is not a valid date")))?
    } else {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(
            |_| {
                StateError::invalid(
                    field,
                    format!("{s:?} is neither YYYY-MM-DD nor an RFC 3339 date-time"),
                )
            },
        )?
    };
    u64::try_from(t.unix_timestamp())
        .map_err(|_| StateError::invalid(field, format!("{s:?} is before 1970")))
}

/// 32 bytes in hex: a card's or a receiver's X25519 public key.
pub(super) fn parse_key32(s: &str, field: &'static str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out)
        .map_err(|_| StateError::invalid(field, "expected 64 hex digits (32 bytes)"))?;
    Ok(out)
}

/// A product's or a channel's name: printable, not too long, and not a
/// number (numbers name products and channels by id).
pub(super) fn check_name(name: &str, what: &'static str) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(StateError::invalid(
            what,
            format!("must be 1 to {MAX_NAME} printable characters"),
        ));
    }
    if name.parse::<u64>().is_ok() {
        return Err(StateError::invalid(
            what,
            "must not be a number (numbers name products by id)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("2026-12-01", false, "x").unwrap(), 1_796_083_200);
        assert_eq!(
            parse_date("2026-12-01", true, "x").unwrap(),
            1_796_083_200 + 86_399
        );
        assert_eq!(
            parse_date("2026-12-01T01:00:00+01:00", true, "x").unwrap(),
            1_796_083_200
        );
        for bad in [
            "2026-02-30",
            "tomorrow",
            "",
            "2026-12-01T25:00:00Z",
            "1969-12-31",
        ] {
            assert!(parse_date(bad, true, "until").is_err(), "{bad}");
        }
        assert_eq!(rfc3339(1_796_083_200), "2026-12-01T00:00:00Z");
    }
}
