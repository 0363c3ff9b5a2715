//! Time as stored (integer milliseconds since the Unix epoch) and as shown (RFC 3339, spec §0.3).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// A duration in whole milliseconds, for arithmetic with stored times.
pub fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `2026-01-01T09:30:00.000Z`.
pub fn format_ms(ms: i64) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

/// Accepts any RFC 3339 timestamp and returns milliseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A moment as the API shows it: stored as milliseconds since the epoch, written and read as
/// RFC 3339 with milliseconds in UTC (spec §0.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self(now_ms())
    }

    pub fn ms(self) -> i64 {
        self.0
    }
}

impl From<i64> for Timestamp {
    fn from(ms: i64) -> Self {
        Self(ms)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ms(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        parse_rfc3339(&text)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("invalid timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(format_ms(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_767_225_600_042), "2026-01-01T00:00:00.042Z");
        assert_eq!(parse_rfc3339("2026-01-01T01:00:00+01:00"), Some(1_767_225_600_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn timestamps_round_trip_through_json() {
        let t = Timestamp(1_767_225_600_042);
        let text = serde_json::to_string(&t).unwrap_or_default();
        assert_eq!(text, "\"2026-01-01T00:00:00.042Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&text).ok(), Some(t));
        assert!(serde_json::from_str::<Timestamp>("\"soon\"").is_err());
        assert_eq!(serde_json::to_string(&None::<Timestamp>).unwrap_or_default(), "null");
    }
}
