//! Byte sizes as operators write them in the config: `200GiB`, `500MiB`, `10G`.
//!
//! `KiB`/`MiB`/`GiB`/`TiB` and the bare `K`/`M`/`G`/`T` are powers of 1024 (as `df -h`
//! and Docker read them); `KB`/`MB`/`GB`/`TB` are powers of 1000. Units are
//! case-insensitive, a space may precede them, a plain number is bytes, and the number
//! may have a fractional part (`1.5GiB`).

use std::fmt;

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size like 200GiB, 500MiB or 10G")]
    Malformed(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Parses a size into bytes (rounded down).
pub fn parse(text: &str) -> Result<u64, SizeError> {
    let malformed = || SizeError::Malformed(text.chars().take(100).collect());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(malformed()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(malformed());
    }
    let too_large = || SizeError::TooLarge(text.chars().take(100).collect());
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    // The fractional part in exact integer arithmetic: digits × multiplier / 10^n.
    if !fraction.is_empty() {
        let digits = &fraction[..fraction.len().min(12)];
        let scale = 10u128.pow(digits.len() as u32);
        let frac: u128 = digits.parse().map_err(|_| malformed())?;
        bytes = bytes
            .checked_add((frac * multiplier as u128 / scale) as u64)
            .ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// A size for people: `1.5 GiB`, `512 MiB`, `300 B`.
pub struct Human(pub u64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else if value.fract() == 0.0 {
            write!(f, "{value} {}", UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_bare_units() {
        assert_eq!(parse("200GiB").unwrap(), 200 << 30);
        assert_eq!(parse("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse("10G").unwrap(), 10 << 30);
        assert_eq!(parse("10 gb").unwrap(), 10_000_000_000);
        assert_eq!(parse("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse("4096").unwrap(), 4096);
        assert_eq!(parse("6MiB").unwrap(), 6 << 20);
        assert_eq!(parse("1k").unwrap(), 1024);
        for bad in [
            "", "GiB", "-1GiB", "1.GiB", ".5G", "1..5G", "10 XB", "ten", "1 2G",
        ] {
            assert!(
                matches!(parse(bad), Err(SizeError::Malformed(_))),
                "{bad:?} parsed"
            );
        }
        assert!(matches!(
            parse("99999999999TiB"),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn prints_for_people() {
        assert_eq!(Human(300).to_string(), "300 B");
        assert_eq!(Human(512 << 20).to_string(), "512 MiB");
        assert_eq!(Human(3 << 29).to_string(), "1.5 GiB");
    }
}
