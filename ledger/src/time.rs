//! Times at the edge: RFC 3339 UTC strings outside, Unix milliseconds inside.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A time that could not be read. Reported as `invalid_input` (or `invalid_time`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(String);

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_time(field: &str, s: &str) -> Result<i64, TimeError> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| TimeError(format!("{field}: {s:?} is not an RFC 3339 time: {e}")))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| TimeError(format!("{field} is out of range")))
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-11-22T18:00:00Z`).
pub fn format_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let ms = parse_time("at", "2026-11-22T18:00:00Z").unwrap();
        assert_eq!(ms, 1_795_370_400_000);
        assert_eq!(format_time(ms), "2026-11-22T18:00:00Z");
        assert_eq!(format_time(ms + 250), "2026-11-22T18:00:00.25Z");
        assert!(parse_time("at", "yesterday").is_err());
    }
}
