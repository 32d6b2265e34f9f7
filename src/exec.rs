//! The one way the agent runs a command, for everything but job scripts (which have process groups
//! and cancellation of their own, in `jobs::scripts`): stdin from a buffer or nothing, stdout and
//! stderr drained on their own threads while the command runs, and a deadline after which it is
//! killed.
//!
//! Why drain while waiting: a pipe holds 64 KiB. A command that writes more blocks until someone
//! reads, so waiting for its exit before reading hangs it until the deadline, and then reports a
//! command that finished its work as "timed out" (issue 11).
//!
//! Every child gets `TMPDIR` pointing at the data disk's `data/tmp` once the agent has made it
//! ([`set_child_tmpdir`]), as the Go agent exports it into its own environment at boot: the root disk
//! is small, and `/tmp` is `noexec` on a VM with a data disk. The agent's own environment is not
//! changed (threads may be reading it), so the variable is set on each command instead.

use crate::error::Context as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// `TMPDIR` for every child, set once at boot.
static CHILD_TMPDIR: OnceLock<PathBuf> = OnceLock::new();

/// Makes `dir` the `TMPDIR` of every command started from now on (the first call wins). Called by
/// the agent's boot once bootstrap has made `data/tmp`; tests of the library never call it, so their
/// commands keep the test's own temp dir.
pub fn set_child_tmpdir(dir: PathBuf) {
    if CHILD_TMPDIR.set(dir.clone()).is_err() && CHILD_TMPDIR.get() != Some(&dir) {
        log::warn!("TMPDIR for children already set; keeping it");
    }
}

/// Sets what every child of the agent gets in its environment (`TMPDIR`, unless the command sets
/// its own); for commands started outside [`output`] (job scripts).
pub fn child_env(cmd: &mut Command) {
    if let Some(dir) = CHILD_TMPDIR.get() {
        if !cmd.get_envs().any(|(k, _)| k == "TMPDIR") {
            cmd.env("TMPDIR", dir);
        }
    }
}

/// How often a running command is checked for exit.
const POLL: Duration = Duration::from_millis(10);

/// What a finished command said.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// The exit code; `None` when it died from a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `cmd` with `input` on stdin (or none) and returns however it exited; it is killed once
/// `limit` has passed (`None`: no limit, for a transfer that takes as long as the data needs). Errors
/// are only a command that cannot start, that outlives its limit, or whose output outlives it.
pub fn output(cmd: &mut Command, input: Option<&[u8]>, limit: Option<Duration>) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let deadline = limit.map(|l| Instant::now() + l);
    let timed_out = || format!("{desc} timed out after {:?}", limit.unwrap_or_default());
    let stdin = if input.is_some() { Stdio::piped() } else { Stdio::null() };
    child_env(cmd);
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {desc}"))?;
    if let (Some(data), Some(mut pipe)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        // Dropping the pipe at the end closes the command's stdin.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out());
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    // A child the command left running may still hold the pipes open: wait for them only as long as
    // the deadline allows.
    let (Some(stdout), Some(stderr)) = (collect(stdout, deadline), collect(stderr, deadline)) else {
        return Err(timed_out());
    };
    Ok(Output { status, stdout, stderr })
}

/// Runs `cmd` with `input` on stdin (or none), killed after `limit`, and fails unless it exits 0;
/// the error names the command and carries its stderr. Returns its stdout.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let out = output(cmd, input, Some(limit))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{desc} failed ({}): {}", out.status, out.stderr.trim()))
    }
}

/// Reads a pipe to its end on its own thread; the bytes arrive on the returned channel.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// What a drain thread read, or `None` when the pipe is still open at `deadline`.
fn collect(rx: Receiver<Vec<u8>>, deadline: Option<Instant>) -> Option<String> {
    let bytes = match deadline {
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())).ok()?,
        None => rx.recv().ok()?,
    };
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_stdin_reports_codes_and_times_out() {
        let o = output(&mut Command::new("cat"), Some(b"hello"), Some(Duration::from_secs(5))).unwrap();
        assert_eq!((o.code(), o.stdout.as_str()), (Some(0), "hello"));
        let o =
            output(Command::new("sh").args(["-c", "echo e >&2; exit 2"]), None, Some(Duration::from_secs(5)))
                .unwrap();
        assert_eq!((o.code(), o.stderr.as_str()), (Some(2), "e\n"));
        let e = run(Command::new("sleep").arg("5"), None, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert_eq!(run(Command::new("echo").arg("hi"), None, Duration::from_secs(5)).unwrap(), "hi\n");
        let e = run(Command::new("sh").args(["-c", "echo why >&2; exit 3"]), None, Duration::from_secs(5))
            .unwrap_err();
        assert!(e.contains("failed (exit status: 3): why"), "{e}");
    }

    /// Issue 11: `platform::run_bounded` read the pipes only after the command exited, so a command
    /// printing more than a pipe holds (64 KiB) blocked and was reported "timed out after 3s".
    #[test]
    fn r11_a_megabyte_on_both_pipes_is_drained_while_the_command_runs() {
        let script = "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2";
        let started = Instant::now();
        let o = output(Command::new("sh").args(["-c", script]), None, Some(Duration::from_secs(30))).unwrap();
        assert_eq!((o.code(), o.stdout.len(), o.stderr.len()), (Some(0), 1 << 20, 1 << 20));
        let out =
            run(Command::new("head").args(["-c", "1048576", "/dev/zero"]), None, Duration::from_secs(30));
        assert_eq!(out.map(|s| s.len()), Ok(1 << 20));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
