//! Shared argument parsing: durations like `20s` or `500ms`, counts above
//! zero, and the error type that separates bad input (status 2) from a
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

/// A duration: a number with a unit (`ns`, `us`, `ms`, `s`, `m`), or bare
/// seconds; above zero.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 20s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => {
            return Err(format!(
                "unknown unit '{u}' in '{s}' (use ns, us, ms, s, m or h)"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 7.0 * 86400.0 {
        return Err(format!("'{s}' is too long"));
    }
    let d = Duration::from_secs_f64(secs);
    if d.is_zero() {
        return Err("the duration must be above zero".into());
    }
    Ok(d)
}

/// A count above zero (underscores allowed: `2_000_000`).
pub fn positive(s: &str) -> Result<usize, String> {
    let n: usize = s
        .replace('_', "")
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A thread count: above zero, at most 256.
pub fn threads(s: &str) -> Result<usize, String> {
    let n = positive(s)?;
    if n > 256 {
        return Err(format!(
            "{n} threads is more than this tool runs (at most 256)"
        ));
    }
    Ok(n)
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
        assert_eq!(duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("10us"), Ok(Duration::from_micros(10)));
        for bad in ["0", "0s", "", "s", "10 parsecs", "-1s", "1e9h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(positive("2_000"), Ok(2000));
        assert!(positive("0").is_err());
        assert!(positive("x").is_err());
        assert!(threads("1000").is_err());
    }
}
