//! The config vocabulary every part shares: a validation issue names its TOML path (the binary
//! turns that into file:line:column), and durations are written as humans write them.

pub mod files;
pub mod issue;

pub use issue::{ConfigIssue, IntoSeg, PathSeg};

/// Durations written as `"10s"`, `"500ms"`, `"2m"`; use with `#[serde(with = "portico_config::duration")]`.
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: {e} (write e.g. \"10s\", \"500ms\", \"2m\")"
            ))
        })
    }
}
