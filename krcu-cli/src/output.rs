//! Output: every subcommand's result is a serializable struct, printed as
//! JSON with `--json` or as tables otherwise.

use serde::Serialize;

/// Prints `value` as pretty JSON, or `render(value)` as text.
pub fn emit<T: Serialize>(json: bool, value: &T, render: impl FnOnce(&T) -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("krcu: cannot serialize the result: {e}"),
        }
    } else {
        print!("{}", render(value));
    }
}

/// Rounds to `digits` decimals, for tidy JSON and tables.
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
