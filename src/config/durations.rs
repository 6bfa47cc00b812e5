//! How durations are spelled in the file: a `*_secs` key is a whole number of seconds, a `*_ms` key of
//! milliseconds, and a list entry carries its unit (`500ms`, `5s`, `5m`, `2h`, `1d`). In the program
//! they are all [`Duration`]s; the serde helpers below convert, and the `positive_*` ones refuse 0.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// `500ms`, `0s`, `5s`, `5m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 5s, 5m or 2h"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}` is not a duration like 5s, 5m or 2h (units: ms, s, m, h, d)")),
    };
    number.checked_mul(millis).map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too long"))
}

/// The inverse of [`parse_duration`], in the largest unit that divides the duration.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// The number of a `*_secs` / `*_ms` key; with `positive`, 0 is refused.
fn number<'de, D: Deserializer<'de>>(deserializer: D, positive: bool) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if positive && value == 0 {
        return Err(D::Error::custom(super::ABOVE_ZERO));
    }
    Ok(value)
}

fn millis_u64(duration: &Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A `*_secs` key.
pub mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        number(deserializer, false).map(Duration::from_secs)
    }
}

/// A `*_secs` key that must be above 0.
pub mod positive_secs {
    use super::*;

    pub use super::secs::serialize;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        number(deserializer, true).map(Duration::from_secs)
    }
}

/// A `*_ms` key.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(millis_u64(duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        number(deserializer, false).map(Duration::from_millis)
    }
}

/// A `*_ms` key that must be above 0.
pub mod positive_millis {
    use super::*;

    pub use super::millis::serialize;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        number(deserializer, true).map(Duration::from_millis)
    }
}

/// An optional `*_ms` key (absent: `None`).
pub mod option_millis {
    use super::*;

    pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => serializer.serialize_some(&millis_u64(duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(|millis| millis.map(Duration::from_millis))
    }
}

/// A list of durations with units, from TOML (`["0s", "5s"]`) or an environment variable (`0s,5s`);
/// it must not be empty.
pub mod list {
    use super::*;

    pub fn serialize<S: Serializer>(items: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(items.iter().map(|d| format_duration(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
        let items = super::super::lists::deserialize(deserializer, parse_duration)?;
        if items.is_empty() {
            return Err(D::Error::custom("needs at least one entry (the first attempt, e.g. 0s)"));
        }
        Ok(items)
    }
}
