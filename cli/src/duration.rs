//! Durations on the command line (`--ttl 1h`, `--since 10m`, `--wait 30s`): a number and a
//! unit, `ms`, `s`, `m`, `h` or `d`, possibly several (`1h30m`); a bare number is seconds.

use std::time::Duration;

/// Why a duration argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {value:?}: {why} (examples: 500ms, 30s, 10m, 1h30m, 7d)")]
pub struct DurationError {
    value: String,
    why: &'static str,
}

/// Parses `500ms`, `30s`, `10m`, `1h30m`, `7d` or `45` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        value: text.to_owned(),
        why,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(err("it is empty"));
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return trimmed
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| err("the number is too large"));
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() {
            return Err(err("expected a number before each unit"));
        }
        let number: u64 = number.parse().map_err(|_| err("the number is too large"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(err("a unit is missing (ms, s, m, h or d)")),
            _ => return Err(err("unknown unit (use ms, s, m, h or d)")),
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| err("it is too long"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| err("it is too long"))?;
        rest = next;
    }
    Ok(total)
}

/// `45s`, `12m`, `3h`, `2d`: an age for humans (whole units, rounded down).
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 2 * 3600 {
        format!("{}m", secs / 60)
    } else if secs < 2 * 86_400 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86_400)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn units_and_compounds() {
        let p = |s| parse_duration(s).unwrap();
        assert_eq!(p("45"), Duration::from_secs(45));
        assert_eq!(p("500ms"), Duration::from_millis(500));
        assert_eq!(p("30s"), Duration::from_secs(30));
        assert_eq!(p("10m"), Duration::from_secs(600));
        assert_eq!(p("1h"), Duration::from_secs(3600));
        assert_eq!(p("1h30m"), Duration::from_secs(5400));
        assert_eq!(p("7d"), Duration::from_secs(7 * 86_400));
        for bad in [
            "",
            "h",
            "10x",
            "1.5h",
            "-1s",
            "10 m",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
    }

    #[test]
    fn human_ages() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(119)), "119s");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human(Duration::from_secs(3 * 86_400)), "3d");
    }
}
