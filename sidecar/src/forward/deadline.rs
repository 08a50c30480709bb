//! gRPC deadlines: the caller's `grpc-timeout`, capped by the upstream's own timeout,
//! re-encoded for the hop to the next sidecar so the callee sees what is left.
//!
//! Wire format (gRPC over HTTP/2): one to eight ASCII digits followed by a unit,
//! `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds,
//! `n` nanoseconds.

use std::time::Duration;

/// The largest value the header may carry: eight digits.
const MAX_VALUE: u64 = 99_999_999;

/// Units from finest to coarsest, with their length in nanoseconds.
const UNITS: [(char, u64); 6] = [
    ('n', 1),
    ('u', 1_000),
    ('m', 1_000_000),
    ('S', 1_000_000_000),
    ('M', 60 * 1_000_000_000),
    ('H', 3_600 * 1_000_000_000),
];

/// A `grpc-timeout` value, or None when it is malformed (the spec says to treat a
/// malformed deadline as an error; the caller decides how).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let count: u64 = digits.parse().ok()?;
    let duration = match unit {
        'H' => Duration::from_secs(count * 3_600),
        'M' => Duration::from_secs(count * 60),
        'S' => Duration::from_secs(count),
        'm' => Duration::from_millis(count),
        'u' => Duration::from_micros(count),
        'n' => Duration::from_nanos(count),
        _ => return None,
    };
    Some(duration)
}

/// `d` as a `grpc-timeout` value: the finest unit whose count fits in eight digits,
/// rounded down so the callee never gets longer than we have (a forwarded deadline
/// must not grow). The one exception is the minimum of one unit, `1n`, for zero.
pub fn format_grpc_timeout(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, length) in UNITS {
        let count = nanos / u128::from(length);
        if count <= u128::from(MAX_VALUE) {
            return format!("{}{unit}", count.max(1));
        }
    }
    // Longer than 99,999,999 hours (11,000 years): the longest the header can say.
    format!("{MAX_VALUE}H")
}

/// How long this call may take: the caller's deadline when it is sooner than the
/// upstream's configured timeout.
pub fn effective_timeout(caller: Option<Duration>, upstream: Duration) -> Duration {
    caller.map_or(upstream, |caller| caller.min(upstream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("1H", Duration::from_secs(3_600)),
            ("2M", Duration::from_secs(120)),
            ("30S", Duration::from_secs(30)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("00000005S", Duration::from_secs(5)),
            ("0m", Duration::ZERO),
            ("99999999H", Duration::from_secs(99_999_999 * 3_600)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_grpc_timeout(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn refuses_malformed_values() {
        for text in [
            "",
            "S",
            "5",
            "5s",
            "5x",
            "123456789S",
            "-5S",
            "+5S",
            " 5S",
            "5S ",
            "1.5S",
            "5é",
            "é",
        ] {
            assert_eq!(parse_grpc_timeout(text), None, "{text:?}");
        }
    }

    #[test]
    fn formats_in_the_finest_unit_that_fits_eight_digits() {
        let cases = [
            (Duration::from_nanos(1), "1n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_millis(100), "100000u"),
            (Duration::from_secs(2), "2000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(200_000), "200000S"),
            (Duration::from_secs(99_999_999 * 60 + 60), "1666666H"),
        ];
        for (duration, expected) in cases {
            assert_eq!(format_grpc_timeout(duration), expected, "{duration:?}");
        }
    }

    #[test]
    fn formatting_never_lengthens_the_deadline_and_round_trips_closely() {
        for nanos in [
            1u64,
            999,
            1_234_567_891,
            100_000_000_001,
            86_400_000_000_007,
            u64::MAX,
        ] {
            let d = Duration::from_nanos(nanos);
            let text = format_grpc_timeout(d);
            let back = parse_grpc_timeout(&text).expect("formatted values parse");
            assert!(back <= d, "{d:?} became {text} = {back:?}");
            // A coarser unit is chosen only when the finer count passed eight digits, so
            // the count is at least 99,999 and rounding down loses under 1/99,999 of it.
            assert!(d - back <= d / 99_999, "{d:?} -> {text}");
        }
    }

    #[test]
    fn zero_and_huge_durations_stay_within_the_format() {
        assert_eq!(format_grpc_timeout(Duration::ZERO), "1n");
        assert_eq!(format_grpc_timeout(Duration::MAX), "99999999H");
    }

    #[test]
    fn the_sooner_of_caller_and_upstream_wins() {
        let two = Duration::from_secs(2);
        assert_eq!(effective_timeout(None, two), two);
        assert_eq!(
            effective_timeout(Some(Duration::from_millis(300)), two),
            Duration::from_millis(300)
        );
        assert_eq!(effective_timeout(Some(Duration::from_secs(9)), two), two);
    }
}
