//! Wall-clock time as the host stores it: unix milliseconds, and RFC 3339 text
//! the way WorkOS writes it (`2025-01-01T00:00:00.000Z`).
//!
//! Owns: reading the clock and converting times. Must not: hold state.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Parses an RFC 3339 time into unix milliseconds (sub-millisecond digits are dropped).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Formats unix milliseconds as WorkOS does: UTC, three fractional digits, `Z`.
pub fn format_ms(ms: i64) -> String {
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    let at = at.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workos_times_round_trip_through_milliseconds() {
        let ms = parse_rfc3339_ms("2023-07-18T02:07:19.911Z").unwrap();
        assert_eq!(ms, 1_689_646_039_911);
        assert_eq!(format_ms(ms), "2023-07-18T02:07:19.911Z");
        assert_eq!(parse_rfc3339_ms("2023-07-18T04:07:19.911+02:00"), Some(ms));
        assert_eq!(parse_rfc3339_ms("2023-07-18T02:07:19Z"), Some(1_689_646_039_000));
        assert_eq!(parse_rfc3339_ms("18 July 2023"), None);
    }
}
