//! Human-readable durations (`15s`, `1m30s`, `500ms`, `2h`) and byte sizes (`64MiB`, `1GB`,
//! `1048576`) in configuration, parsed and printed back.
//!
//! Owns only the syntax; it never decides what a sensible value is (that is validation's job).
//! The `serialize_*` functions are the `#[serde(serialize_with = …)]` of the typed config, so the
//! printed effective config uses the units the file takes.

use std::time::Duration;

use serde::Serializer;

/// Parses a duration such as `15s`, `500ms`, `1m30s`, `2h` or `1d`. A bare number is rejected:
/// a unit is required so `15` can never be mistaken for milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}` needs a unit (ms, s, m, h or d)"))?;
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration like 15s, 500ms or 1m30s"
            ));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` has a malformed number"))?;
        let after = &rest[digits..];
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let seconds = match &after[..unit_len] {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            "d" => number * 86_400.0,
            unit => {
                return Err(format!(
                    "`{text}` has unknown unit `{unit}` (use ms, s, m, h or d)"
                ));
            }
        };
        total += Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("`{text}` is out of range"))?;
        rest = &after[unit_len..];
    }
    Ok(total)
}

/// Prints a duration the way `parse_duration` reads it back (`1m30s`, `500ms`, `0s`).
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let mut secs = duration.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&(secs / size).to_string());
            out.push_str(unit);
            secs %= size;
        }
    }
    out
}

/// Parses a byte size: a plain integer (bytes) or a number with `B`, `KB`, `MB`, `GB` (powers of
/// 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    if split == 0 {
        return Err(format!("`{text}` is not a size like 64MiB or 1048576"));
    }
    let number: f64 = text[..split]
        .parse()
        .map_err(|_| format!("`{text}` has a malformed number"))?;
    let factor: f64 = match text[split..].trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" | "Ki" => 1024.0,
        "MiB" | "Mi" => 1024.0 * 1024.0,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        unit => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}` (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let bytes = (number * factor).round();
    if !(0.0..=9.0e18).contains(&bytes) {
        return Err(format!("`{text}` is out of range"));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "range checked just above"
    )]
    Ok(bytes as u64)
}

/// Prints a byte size in the largest binary unit that divides it exactly.
#[must_use]
pub fn format_bytes(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Serializes a duration as [`format_duration`] prints it (`15s`, `1m30s`, `500ms`).
pub fn serialize_duration<S: Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*value))
}

/// Serializes a byte size as [`format_bytes`] prints it (`64MiB`, or a plain number of bytes).
pub fn serialize_bytes<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_bytes(*value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_round_trip() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for text in ["1m30s", "500ms", "2h", "1d2h", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn durations_without_a_known_unit_are_rejected() {
        assert!(parse_duration("15").unwrap_err().contains("unit"));
        assert!(parse_duration("15x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("4KiB").unwrap(), 4096);
        assert!(parse_bytes("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("MiB").is_err());
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(1000), "1000");
    }
}
