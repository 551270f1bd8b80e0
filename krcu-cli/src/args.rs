//! Shared argument parsing: durations like `20s` or `500ms`, counts
//! between 1 and a stated limit, and the error type that separates bad input (status 2) from a
//! failed run (status 1).

use std::time::Duration;

/// Why a subcommand stopped.
#[derive(Debug)]
pub enum CliError {
    /// Impossible settings: one line on stderr, status 2.
    Usage(String),
    /// The run itself failed (a torture error, a build failure): status 1.
    Failed(String),
}

impl From<krcu::BuildError> for CliError {
    fn from(e: krcu::BuildError) -> Self {
        CliError::Usage(format!("impossible settings: {e}"))
    }
}

/// What a subcommand returns.
pub type CmdResult = Result<(), CliError>;

/// The units a duration takes, as help and errors name them.
pub const DURATION_UNITS: &str = "ns, us, ms, s, m or h";

/// A duration: a number with a unit (`ns`, `us`, `ms`, `s`, `m`, `h`),
/// above zero. A bare number is refused: `5` could mean seconds or
/// milliseconds, so the error names the units instead of guessing.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!(
            "'{s}' is not a duration: a number with a unit ({DURATION_UNITS}), e.g. 20s or 500ms"
        )
    })?;
    let scale = match unit.trim() {
        "" => {
            return Err(format!(
                "no unit (write {s}s, {s}ms, ...: the units are {DURATION_UNITS})"
            ));
        }
        "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => {
            return Err(format!(
                "unknown unit '{u}' in '{s}' (use {DURATION_UNITS})"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 7.0 * 86400.0 {
        return Err(format!("'{s}' is too long (at most 7 days)"));
    }
    let d = Duration::from_secs_f64(secs);
    if d.is_zero() {
        return Err("the duration must be above zero".into());
    }
    Ok(d)
}

/// A whole number in `1..=max`, underscores allowed (`2_000_000`). The
/// error says which bound was crossed: a negative number or zero is below
/// 1, a number too long for any integer type is above `max`.
pub fn count(s: &str, max: usize) -> Result<usize, String> {
    let digits = s.trim().replace('_', "");
    let (negative, magnitude) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.strip_prefix('+').unwrap_or(&digits)),
    };
    if magnitude.is_empty() || !magnitude.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a whole number"));
    }
    let is_zero = magnitude.bytes().all(|b| b == b'0');
    if negative || is_zero {
        return Err("must be at least 1".into());
    }
    match magnitude.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("too large (at most {})", group(max))),
    }
}

/// `n` with `_` between thousands, as the command line accepts it.
pub fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(c);
    }
    out
}

/// The most threads any command runs.
pub const MAX_THREADS: usize = 256;

/// Objects per loop of `krcu scale`: 1250 times the default.
pub const MAX_SCALE_OBJECTS: usize = 10_000_000;
/// Loops per thread of `krcu scale`: 1000 times the default.
pub const MAX_LOOPS: usize = 100_000;
/// Objects per thread per run of `krcu compare`: 10 times the default
/// (about 10 minutes for the whole comparison on two cores).
pub const MAX_COMPARE_OBJECTS: usize = 20_000_000;
/// Rounds of `krcu compare`.
pub const MAX_ROUNDS: usize = 100;
/// Objects one signal handler run of `krcu flood` retires.
pub const MAX_BURST: usize = 4096;

/// `krcu torture --fail-every`: 0 (no fault injection) or a period.
pub fn fail_every(s: &str) -> Result<u64, String> {
    if s.trim().replace('_', "").bytes().all(|b| b == b'0') && !s.trim().is_empty() {
        return Ok(0);
    }
    count(s, 1_000_000_000)
        .map(|n| n as u64)
        .map_err(|e| e.replace("at least 1", "0 (no faults) or more"))
}

/// `krcu scale --objects`.
pub fn scale_objects(s: &str) -> Result<usize, String> {
    count(s, MAX_SCALE_OBJECTS)
}

/// `krcu scale --loops`.
pub fn loops(s: &str) -> Result<usize, String> {
    count(s, MAX_LOOPS)
}

/// `krcu compare --objects`.
pub fn compare_objects(s: &str) -> Result<usize, String> {
    count(s, MAX_COMPARE_OBJECTS)
}

/// `krcu compare --rounds`.
pub fn rounds(s: &str) -> Result<usize, String> {
    count(s, MAX_ROUNDS)
}

/// `krcu flood --burst`.
pub fn burst(s: &str) -> Result<usize, String> {
    count(s, MAX_BURST)
}

/// A thread count: at least 1, at most [`MAX_THREADS`].
pub fn threads(s: &str) -> Result<usize, String> {
    count(s, MAX_THREADS).map_err(|e| {
        if e.starts_with("must") {
            "threads must be at least 1".into()
        } else {
            e
        }
    })
}

/// The CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A duration for tables: `1.50 s`, `250 ms`.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

/// Bytes for tables: `512 KiB`, `3.2 MiB`.
pub fn show_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// Nanoseconds for tables: `85 ns`, `12.3 µs`, `4.1 ms`.
pub fn show_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", f / 1e3)
    } else {
        format!("{:.1} ms", f / 1e6)
    }
}

/// A rate in millions, two decimals (the tables' "M calls/s").
pub fn show_millions(per_s: f64) -> String {
    format!("{:.2}", per_s / 1e6)
}

/// A switch as the tables show it.
pub fn show_on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("10us"), Ok(Duration::from_micros(10)));
        for bad in ["0", "0s", "", "s", "10 parsecs", "-1s", "1e9h", "2", "5"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(loops("2_000"), Ok(2000));
        assert!(loops("0").is_err());
        assert!(loops("x").is_err());
        assert!(threads("1000").unwrap_err().contains("at most 256"));
        assert_eq!(threads("-1").unwrap_err(), "threads must be at least 1");
        assert!(rounds("-1").unwrap_err().contains("at least 1"));
        let huge = scale_objects("99999999999999999999").unwrap_err();
        assert!(huge.contains("too large"), "{huge}");
        assert_eq!(count("1_000", 1000), Ok(1000));
        assert!(count("1001", 1000).unwrap_err().contains("at most 1_000"));
        assert!(duration("5").unwrap_err().contains("no unit"));
        assert_eq!(fail_every("0"), Ok(0));
        assert_eq!(fail_every("7"), Ok(7));
        assert!(
            fail_every("-1")
                .unwrap_err()
                .contains("0 (no faults) or more")
        );
    }
}
