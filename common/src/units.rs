//! Human-readable durations and sizes, as written in plan files and shown in output.
//!
//! Durations use [`humantime`] syntax (`200ms`, `10s`, `30m`, `1h 30m`, `7d`). Sizes use
//! Kubernetes-style quantities: plain bytes (`1024`), binary suffixes (`Ki`, `Mi`, `Gi`,
//! `Ti`, `Pi`, optionally followed by `B`) and decimal suffixes (`k`/`K`, `M`, `G`, `T`,
//! `P`, optionally followed by `B`). A fraction is allowed with a suffix (`1.5Gi`) and is
//! rounded up to a whole byte.
//!
//! The parsers return a plain `String` error that says what was expected; callers wrap it
//! in their own typed error together with the field and the offending value. Everything
//! here is pure and allocation-light.

use std::time::Duration;

/// What a duration must look like, appended to every duration error.
const DURATION_EXPECTED: &str = "expected a duration like 200ms, 10s, 30m, 1h 30m or 7d";
/// What a size must look like, appended to every size error.
const SIZE_EXPECTED: &str = "expected a size like 1024, 512Mi, 1.5Gi or 2G";

/// Parses a duration such as `200ms`, `30m`, `1h 30m` or `7d`.
///
/// Rejects empty input, negative values, numbers without a unit and anything else
/// [`humantime::parse_duration`] does not accept.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {DURATION_EXPECTED}"));
    }
    if text.starts_with('-') {
        return Err(format!(
            "a duration cannot be negative; {DURATION_EXPECTED}"
        ));
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("missing unit; {DURATION_EXPECTED}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e}; {DURATION_EXPECTED}"))
}

/// Multiplier of a size suffix, or `None` for an unknown suffix.
fn size_multiplier(suffix: &str) -> Option<u64> {
    const KI: u64 = 1024;
    let mult = match suffix {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1000,
        "M" | "MB" => 1000_u64.pow(2),
        "G" | "GB" => 1000_u64.pow(3),
        "T" | "TB" => 1000_u64.pow(4),
        "P" | "PB" => 1000_u64.pow(5),
        "Ki" | "KiB" => KI,
        "Mi" | "MiB" => KI.pow(2),
        "Gi" | "GiB" => KI.pow(3),
        "Ti" | "TiB" => KI.pow(4),
        "Pi" | "PiB" => KI.pow(5),
        _ => return None,
    };
    Some(mult)
}

/// Parses a size in bytes such as `1024`, `512Mi`, `1.5Gi`, `2G` or `64MiB`.
///
/// Rejects empty input, negative values, unknown suffixes, a fraction of a byte and
/// values that do not fit in a `u64`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty size; {SIZE_EXPECTED}"));
    }
    if text.starts_with('-') {
        return Err(format!("a size cannot be negative; {SIZE_EXPECTED}"));
    }
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let suffix = suffix.trim_start();
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty()
        || frac_part.contains('.')
        || (number.contains('.') && frac_part.is_empty())
    {
        return Err(format!(
            "{text:?} does not start with a number; {SIZE_EXPECTED}"
        ));
    }
    let Some(mult) = size_multiplier(suffix) else {
        return Err(format!(
            "unknown unit {suffix:?}; use Ki, Mi, Gi, Ti (1024-based) or k, M, G, T (1000-based); {SIZE_EXPECTED}"
        ));
    };
    let overflow = || format!("{text:?} is too large; the maximum is {}", u64::MAX);
    let int: u128 = int_part.parse().map_err(|_| overflow())?;
    let mut total = int.checked_mul(u128::from(mult)).ok_or_else(overflow)?;
    if !frac_part.is_empty() {
        if mult == 1 {
            return Err(format!(
                "a size in bytes must be a whole number; {SIZE_EXPECTED}"
            ));
        }
        // At most 18 fractional digits matter: the largest multiplier is below 10^18.
        let digits = &frac_part[..frac_part.len().min(18)];
        let scale = 10_u128.pow(digits.len() as u32);
        let frac: u128 = digits.parse().map_err(|_| overflow())?;
        total = total
            .checked_add((frac * u128::from(mult)).div_ceil(scale))
            .ok_or_else(overflow)?;
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// Formats a size with the largest binary unit that keeps it at least 1: `256Mi`,
/// `1.5Gi`, `512B`. Whole multiples are shown without a fraction, others with one
/// decimal.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit {
            if bytes.is_multiple_of(unit) {
                return format!("{}{name}", bytes / unit);
            }
            // Tenths, rounded to nearest, in integer arithmetic.
            let tenths = (u128::from(bytes) * 10 + u128::from(unit) / 2) / u128::from(unit);
            return format!("{}.{}{name}", tenths / 10, tenths % 10);
        }
    }
    format!("{bytes}B")
}

/// Formats a duration compactly: `850ms`, `1.2s`, `2m03s`, `1h05m`, `2d03h`.
/// Sub-millisecond durations are shown in microseconds (`0ms` for zero).
pub fn format_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros == 0 {
        return "0ms".to_owned();
    }
    if micros < 1000 {
        return format!("{micros}µs");
    }
    let millis = (micros + 500) / 1000;
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let tenths = (millis + 50) / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = (millis + 500) / 1000;
    if secs < 3600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    let mins = (secs + 30) / 60;
    if mins < 24 * 60 {
        return format!("{}h{:02}m", mins / 60, mins % 60);
    }
    let hours = (mins + 30) / 60;
    format!("{}d{:02}h", hours / 24, hours % 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accepted() {
        let cases = [
            ("200ms", Duration::from_millis(200)),
            ("10s", Duration::from_secs(10)),
            ("30m", Duration::from_secs(1800)),
            ("1h 30m", Duration::from_secs(5400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            (" 1.5s ", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_rejected_with_what_is_expected() {
        for text in ["", "  ", "-1s", "10", "abc", "10 parsecs", "1.5"] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains("expected a duration like"), "{text}: {err}");
        }
        assert!(
            parse_duration("-5m")
                .expect_err("must be rejected")
                .contains("negative")
        );
        assert!(
            parse_duration("30")
                .expect_err("must be rejected")
                .contains("missing unit")
        );
    }

    #[test]
    fn sizes_accepted() {
        let cases = [
            ("0", 0),
            ("1024", 1024),
            ("1Ki", 1024),
            ("512Mi", 512 << 20),
            ("2Gi", 2 << 30),
            ("1Ti", 1 << 40),
            ("1k", 1000),
            ("1K", 1000),
            ("3M", 3_000_000),
            ("2G", 2_000_000_000),
            ("1T", 1_000_000_000_000),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("4KiB", 4096),
            ("5MB", 5_000_000),
            ("1GB", 1_000_000_000),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("1.0001Ki", 1025),
            ("256 Mi", 256 << 20),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn sizes_rejected() {
        for text in [
            "", "-1", "-1Mi", "Mi", "1Xi", "1 2", "1.5", "1.", ".5Mi", "1..2Mi", "1.2.3Mi", "abc",
            "0x10", "1e3",
        ] {
            let err = parse_size(text).expect_err(text);
            assert!(!err.is_empty(), "{text}");
        }
        assert!(
            parse_size("18446744073709551616")
                .expect_err("must be rejected")
                .contains("too large")
        );
        assert!(
            parse_size("20000000Ti")
                .expect_err("must be rejected")
                .contains("too large")
        );
        assert!(parse_size("99999999999999999999999999999999999999999").is_err());
        assert!(
            parse_size("1Xi")
                .expect_err("must be rejected")
                .contains("unknown unit")
        );
    }

    #[test]
    fn size_formatting() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(1024), "1Ki");
        assert_eq!(format_size(256 << 20), "256Mi");
        assert_eq!(format_size(3 << 29), "1.5Gi");
        assert_eq!(format_size(5 << 40), "5Ti");
        assert_eq!(format_size(1 << 50), "1Pi");
        assert_eq!(format_size(u64::MAX), "16384.0Pi");
        for bytes in [1, 1024, 256 << 20, 3 << 29, 7 << 40] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{bytes}");
        }
    }

    #[test]
    fn duration_formatting() {
        let cases = [
            (Duration::ZERO, "0ms"),
            (Duration::from_micros(15), "15µs"),
            (Duration::from_millis(850), "850ms"),
            (Duration::from_micros(999_600), "1.0s"),
            (Duration::from_millis(1200), "1.2s"),
            (Duration::from_millis(59_940), "59.9s"),
            (Duration::from_millis(59_960), "1m00s"),
            (Duration::from_secs(123), "2m03s"),
            (Duration::from_secs(3599), "59m59s"),
            (Duration::from_secs(3600 + 5 * 60), "1h05m"),
            (Duration::from_secs(2 * 86_400 + 3 * 3600), "2d03h"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
        }
    }
}
