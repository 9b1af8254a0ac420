//! Durations as people write them ("250ms", "5s", "1m"), bounded: a value
//! over [`MAX`] is refused when the file is read (serde then names its key),
//! because every duration here is added to a clock somewhere, and a clock
//! pushed past its range panics instead of waiting.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration any key takes: a year is already far past every
/// sensible timeout, interval or quarantine.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let value = humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "'{text}' is not a duration like \"250ms\", \"5s\" or \"1m\": {e}"
        ))
    })?;
    if value > MAX {
        return Err(serde::de::Error::custom(format!(
            "'{text}' is longer than a year, the most any duration here may be"
        )));
    }
    Ok(value)
}
