//! The command line: help, the demo, and bad input (one line, status 2).

use std::process::{Command, Output};

fn krcu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krcu"))
        .args(args)
        .output()
        .expect("run krcu")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let o = krcu(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("demo"), "{}", stdout(&o));
}

#[test]
fn bad_flags_are_one_line_and_status_2() {
    for args in [
        &["--no-such-flag"][..],
        &["no-such-command"],
        &["demo", "--bogus"],
    ] {
        let o = krcu(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("krcu: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn no_arguments_runs_the_demo() {
    let o = krcu(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // Every preempt model, nesting proof on and off.
    for model in ["none", "voluntary", "full", "rt"] {
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with(&format!("{model} ")))
                .count(),
            2,
            "{out}"
        );
    }
    let row = |model: &str, np: &str| {
        out.lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(model) && w.next() == Some(np)
            })
            .unwrap_or_else(|| panic!("no row {model} {np} in {out}"))
            .to_string()
    };
    assert!(row("full", "on").contains("FLAGGED"));
    assert!(!row("full", "off").contains("FLAGGED"));
    assert!(row("rt", "off").contains("FLAGGED"), "rt spinlock_t sleeps");
    assert!(row("rt", "on").contains("scheduling while atomic"));
    assert!(
        out.lines().filter(|l| l.ends_with(" ok")).count() == 8,
        "trylocks: {out}"
    );
    assert!(out.contains("[ BUG: Invalid wait context ]"));
    assert!(out.contains("(&zone->lock){....}-{3:3}"));
    assert!(out.contains(" #0: ") && out.contains("(&krcp->lock)"));
}
