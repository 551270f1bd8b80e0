//! Tests whose failure may be a hang or an abort run their work in a child
//! process and wait for it with a time limit, so that the failure fails
//! the test instead of taking the harness down: a forked child, or this
//! test binary run again for one test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Waits for the forked child `pid` until `deadline`; after it, kills and
/// reaps it. Returns its wait status, or `None` when it had to be killed.
pub fn wait_pid_until(pid: libc::pid_t, deadline: Instant) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            return Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Forks; the child runs `work` and ends with `_exit` and its code (101 if
/// it panicked). Returns the child's exit code; panics, naming `what`, if
/// it hung past `limit` (it is killed) or died of a signal.
pub fn fork_run(what: &str, limit: Duration, work: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork has no preconditions; the child runs `work` and ends
    // with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or the harness's teardown, which belong to the parent.
        unsafe { libc::_exit(r.unwrap_or(101)) }
    }
    let Some(status) = wait_pid_until(pid, Instant::now() + limit) else {
        panic!("{what}: the child hung (killed after {limit:?})");
    };
    assert!(
        libc::WIFEXITED(status),
        "{what}: the child died: status {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

/// How a run of this test binary in a child process ended.
#[derive(Debug)]
pub enum SelfRun {
    /// It exited; whether it passed, and what it printed.
    Exited { passed: bool, output: String },
    /// It did not finish within the limit and was killed.
    Hung,
}

/// Runs this test binary's test `name` alone in a child process, with the
/// `extra` arguments (e.g. `--ignored`) and the variable `env` set (when
/// given), capturing its output; kills it after `limit`.
pub fn run_self(name: &str, extra: &[&str], env: Option<&str>, limit: Duration) -> SelfRun {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(var) = env {
        cmd.env(var, "1");
    }
    let mut child = cmd.spawn().unwrap();
    // Drain the pipes on their own threads: a chatty child must not block
    // on a full pipe while this one waits for it to exit.
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = format!(
                "{status}\n{}{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
            return SelfRun::Exited {
                passed: status.success(),
                output,
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return SelfRun::Hung;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs this test binary's test `name` alone in a child process with the
/// variable `env` set (the test does its work when it sees it, so that an
/// abort or a hang there fails the test here instead of killing the
/// harness). Returns whether it passed within `limit` (a hang is killed
/// and counts as failed) and its output.
pub fn run_with_env(env: &str, name: &str, limit: Duration) -> (bool, String) {
    match run_self(name, &[], Some(env), limit) {
        SelfRun::Exited { passed, output } => (passed, output),
        SelfRun::Hung => (false, "hung".to_owned()),
    }
}

/// Runs this test binary's ignored test `inner` in a child process and
/// fails unless it passes there within `timeout` (a hang is killed).
pub fn assert_passes_in_child(inner: &str, timeout: Duration) {
    match run_self(inner, &["--ignored"], None, timeout) {
        SelfRun::Exited { passed, output } => {
            assert!(passed, "{inner}: failed in the child: {output}");
        }
        SelfRun::Hung => panic!("{inner}: hung (killed after {timeout:?})"),
    }
}

/// For a test that does its work in a child process: this test binary run
/// again for the test `name` alone, with the variable `env` set, so that an
/// abort or a hang there fails the test instead of taking the harness down.
/// In the child, returns `true`: the caller does its work. In the parent,
/// runs the child and fails unless it ran the test and passed within
/// `limit` (a hang is killed), then returns `false`.
pub fn in_child_else_run(env: &str, name: &str, limit: Duration) -> bool {
    if std::env::var_os(env).is_some() {
        return true;
    }
    // With --include-ignored: an ignored test (run with --ignored here) runs
    // in the child too.
    let (passed, output) = match run_self(name, &["--include-ignored"], Some(env), limit) {
        SelfRun::Exited { passed, output } => (passed, output),
        SelfRun::Hung => panic!("{name}: hung in the child (killed after {limit:?})"),
    };
    assert!(passed, "{name}: failed in the child: {output}");
    // A misspelt name runs no test, and passes.
    assert!(
        output.contains(" 1 passed;"),
        "{name}: the child ran no such test: {output}"
    );
    false
}
