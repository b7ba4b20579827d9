//! The textual units policies use: durations (`"250ms"`, `"5s"`, `"2min"`, `"1h"`),
//! sizes (`"512KiB"`, `"64MiB"`, `"1GB"`) and rates (`"60/min"`, `"10/s"`).
//!
//! Parsers are strict — an integer followed by a unit, nothing else — and return a short
//! reason on failure; the caller adds the value and its location.

use std::fmt;
use std::time::Duration;

/// A call rate: at most `calls` calls per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// How many calls the window admits (at least 1).
    pub calls: u32,
    /// The window: one second, minute, hour or day.
    pub per: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            86_400 => "day",
            _ => return write!(f, "{}/{}", self.calls, DisplayDuration(self.per)),
        };
        write!(f, "{}/{unit}", self.calls)
    }
}

/// Splits `"64MiB"` into `(64, "MiB")`; a single space before the unit is tolerated.
fn split_number(input: &str) -> Result<(u64, &str), String> {
    let digits = input.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("expected a whole number followed by a unit".to_owned());
    }
    let number = input[..digits].parse::<u64>().map_err(|_| "number is too large".to_owned())?;
    let unit = &input[digits..];
    Ok((number, unit.strip_prefix(' ').unwrap_or(unit)))
}

/// Parses `"250ms"`, `"5s"`, `"2min"` (or `"2m"`), `"1h"`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(input)?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "" => return Err("missing unit: use ms, s, min or h".to_owned()),
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, min or h")),
    };
    number.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(|| "number is too large".to_owned())
}

/// Parses `"100B"`, `"512KiB"`, `"64MiB"`, `"4GiB"` (binary) or `"1KB"`, `"1MB"`, `"1GB"`
/// (decimal).
pub fn parse_size(input: &str) -> Result<u64, String> {
    let (number, unit) = split_number(input)?;
    let bytes_per_unit: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "" => return Err("missing unit: use B, KiB, MiB, GiB, KB, MB or GB".to_owned()),
        _ => {
            return Err(format!("unknown unit {unit:?}: use B, KiB, MiB, GiB, KB, MB or GB"));
        }
    };
    number.checked_mul(bytes_per_unit).ok_or_else(|| "number is too large".to_owned())
}

/// Parses `"10/s"`, `"60/min"`, `"1000/h"`, `"10000/day"`.
pub(crate) fn parse_rate(input: &str) -> Result<Rate, String> {
    let Some((count, unit)) = input.split_once('/') else {
        return Err("expected calls per unit, like \"60/min\"".to_owned());
    };
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number of calls before `/`".to_owned());
    }
    let calls: u32 = count.parse().map_err(|_| "number of calls is too large".to_owned())?;
    if calls == 0 {
        return Err("the number of calls must be at least 1".to_owned());
    }
    let secs = match unit {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => return Err(format!("unknown unit {unit:?}: use s, min, h or day")),
    };
    Ok(Rate { calls, per: Duration::from_secs(secs) })
}

/// Renders a duration in the largest unit that divides it (`"5s"`, `"250ms"`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DisplayDuration(pub(crate) Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0ms"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}min", ms / 60_000),
            _ if ms.is_multiple_of(1_000) => write!(f, "{}s", ms / 1_000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// Renders a byte count in the largest binary unit that divides it (`"64MiB"`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DisplaySize(pub(crate) u64);

impl fmt::Display for DisplaySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if b != 0 && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10 s"), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "5", "s", "-5s", "1.5s", "5 sec", "5S", "5s ", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_sizes_binary_and_decimal() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("100B"), Ok(100));
        assert!(parse_size("64mb").is_err());
        assert!(parse_size("64").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("60/min"), Ok(Rate { calls: 60, per: Duration::from_secs(60) }));
        assert_eq!(parse_rate("10/s").map(|r| r.to_string()), Ok("10/s".into()));
        for bad in ["60", "0/s", "/s", "60/week", "-1/s", "1.5/s"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn renders_in_the_largest_exact_unit() {
        assert_eq!(DisplayDuration(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(DisplayDuration(Duration::from_secs(600)).to_string(), "10min");
        assert_eq!(DisplaySize(64 << 20).to_string(), "64MiB");
        assert_eq!(DisplaySize(1_000_000).to_string(), "1000000B");
        assert_eq!(DisplaySize(0).to_string(), "0B");
    }
}
