//! Durations as a pipeline file writes them: a whole number and a unit,
//! `500ms`, `90s`, `10m`, `1h`.

use std::time::Duration;

/// The units, longest suffix first so that `ms` is not read as `m`.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Parses `text` as a whole number of `ms`, `s`, `m` or `h`. Zero is accepted
/// here; whether it makes sense is for the caller to say.
///
/// # Errors
/// A phrase to follow the key's name (`must be …`, `is too long …`).
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "must be a whole number and a unit (ms, s, m or h) such as \"500ms\", \"90s\", \"10m\" or \"1h\", not {text:?}"
        )
    };
    let (digits, millis_per_unit) = UNITS
        .iter()
        .find_map(|&(unit, millis)| text.strip_suffix(unit).map(|digits| (digits, millis)))
        .ok_or_else(bad)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("is too long: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_reads_as_its_length() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn anything_else_is_refused_with_the_text() {
        for bad in [
            "", "10", "m", "1.5s", "-1s", "10 m", " 10m", "10min", "1d", "+3s",
        ] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(
                error.starts_with("must be a whole number and a unit")
                    && error.contains(&format!("{bad:?}")),
                "{bad:?}: {error}"
            );
        }
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err("is too long: \"99999999999999999999h\"".to_owned())
        );
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err("is too long: \"18446744073709551615h\"".to_owned())
        );
    }
}
