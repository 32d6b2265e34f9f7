//! Running job scripts: lifecycle hooks (`pre-start`, `post-start`, `post-deploy`, `pre-stop`,
//! `post-stop`), drain scripts with their integer protocol, and errands. Every script runs in its own
//! process group so a cancel (SIGTERM, then SIGKILL after a grace period) reaches everything it started.

use crate::cancel::CancelToken;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::sync::lock;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The PATH scripts get, as on the Go agent.
pub const SCRIPT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a cancelled script gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// How much of an errand's stdout and stderr is kept (the tail): the whole `get_task` reply must fit
/// the director's 1 MiB NATS limit.
pub const ERRAND_OUTPUT_CAP: usize = 200 * 1024;

/// How a script ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Exit code; 128 + signal number when killed by a signal (143 after SIGTERM).
    pub exit_code: i32,
    /// Captured stdout (the tail when longer than the cap).
    pub stdout: String,
    /// Captured stderr (the tail when longer than the cap).
    pub stderr: String,
}

/// A base command for a job script: its own process group, the agent's environment (with `TMPDIR`,
/// see [`crate::exec::child_env`]) and the scripts' PATH plus `env`.
pub fn command(script: &Path, args: &[String], env: &BTreeMap<String, String>) -> Command {
    let mut cmd = Command::new(script);
    crate::exec::child_env(&mut cmd);
    cmd.args(args).env("PATH", SCRIPT_PATH).envs(env).stdin(Stdio::null()).process_group(0);
    if let Some(dir) = script.parent().and_then(Path::parent) {
        cmd.current_dir(dir);
    }
    cmd
}

/// Runs `cmd` capturing the tail of stdout and stderr, honouring `cancel`.
pub fn run_captured(
    mut cmd: Command,
    cancel: &CancelToken,
    cap: usize,
    grace: Duration,
) -> Result<Outcome, String> {
    let desc = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {desc}"))?;
    let out = tail_reader(child.stdout.take(), cap);
    let err = tail_reader(child.stderr.take(), cap);
    let status = wait(&mut child, cancel, grace).with_context(|| format!("waiting for {desc}"))?;
    Ok(Outcome { exit_code: exit_code(status), stdout: collect(out, cap), stderr: collect(err, cap) })
}

/// Runs `cmd` with stdout and stderr appended to log files (created 0640; their directory 0750 when
/// it is missing, while an existing one, a job's `root:vcap` 0770 log directory, is left as it is).
pub fn run_logged(
    mut cmd: Command,
    stdout_log: &Path,
    stderr_log: &Path,
    cancel: &CancelToken,
) -> Result<i32, String> {
    let open = |p: &Path| -> Result<File, String> {
        if let Some(dir) = p.parent() {
            crate::owner::ensure_dir(dir, 0o750)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))
    };
    let desc = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdout(open(stdout_log)?)
        .stderr(open(stderr_log)?)
        .spawn()
        .with_context(|| format!("starting {desc}"))?;
    let status = wait(&mut child, cancel, KILL_GRACE).with_context(|| format!("waiting for {desc}"))?;
    Ok(exit_code(status))
}

/// How often a running script's cancel token is checked; its exit is noticed at once regardless.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Waits for the child; on cancellation sends SIGTERM to its whole process group (the script and
/// whatever it runs in the foreground, so a trap in the script runs as soon as the child is gone),
/// then SIGKILL after `grace`. The exit is noticed the moment it happens ([`exit_notice`]), so a
/// script of a few milliseconds costs a few milliseconds.
fn wait(child: &mut Child, cancel: &CancelToken, grace: Duration) -> std::io::Result<ExitStatus> {
    let pgid = child.id() as i32;
    let exited = exit_notice(child.id());
    let mut terminated_at = None;
    loop {
        if cancel.is_cancelled() {
            match terminated_at {
                None => {
                    signal_group(pgid, libc::SIGTERM);
                    terminated_at = Some(std::time::Instant::now());
                }
                Some(t) if t.elapsed() >= grace => signal_group(pgid, libc::SIGKILL),
                Some(_) => {}
            }
        }
        match &exited {
            // The child is not reaped until `wait` below, so its process group id cannot be reused
            // by another process while the signals above may still be sent to it.
            Some(rx) => match rx.recv_timeout(CANCEL_CHECK) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return child.wait(),
            },
            None => {
                if let Some(status) = child.try_wait()? {
                    return Ok(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A channel that receives once when process `pid` (our child) has exited, from a thread blocked in
/// `waitid(WNOWAIT)`, which observes the exit without reaping the child. `None` when no thread could
/// be started; the caller then polls.
fn exit_notice(pid: u32) -> Option<Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    let watcher = move || {
        loop {
            // SAFETY: an all-zero siginfo_t is valid plain data for waitid to fill; the call only
            // observes our own child's exit (WNOWAIT leaves it to be reaped by `Child::wait`).
            let rc = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
            };
            if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        let _ = tx.send(());
    };
    std::thread::Builder::new().name("script-exit".into()).spawn(watcher).ok()?;
    Some(rx)
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) on the process group we created for this child; no memory is involved.
        unsafe { libc::kill(-pgid, sig) };
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

type Tail = Arc<Mutex<(Vec<u8>, bool)>>;

/// Reads a pipe to its end on a thread, keeping at most the last `cap` bytes.
fn tail_reader(
    pipe: Option<impl Read + Send + 'static>,
    cap: usize,
) -> Option<(std::thread::JoinHandle<()>, Tail)> {
    let mut pipe = pipe?;
    let tail: Tail = Arc::new(Mutex::new((Vec::new(), false)));
    let t = tail.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut g = lock(&t);
            g.0.extend_from_slice(&buf[..n]);
            if g.0.len() > cap * 2 {
                let cut = g.0.len() - cap;
                g.0.drain(..cut);
                g.1 = true;
            }
        }
    });
    Some((handle, tail))
}

fn collect(reader: Option<(std::thread::JoinHandle<()>, Tail)>, cap: usize) -> String {
    let Some((handle, tail)) = reader else { return String::new() };
    let _ = handle.join();
    let g = lock(&tail);
    let (bytes, mut truncated) = (&g.0, g.1);
    let cap_bytes = &bytes[bytes.len().saturating_sub(cap.max(1))..];
    truncated |= cap_bytes.len() < bytes.len();
    let text = String::from_utf8_lossy(cap_bytes).into_owned();
    if truncated {
        format!("[output truncated: only the last {} bytes kept]\n{text}", cap_bytes.len())
    } else {
        text
    }
}

/// The path of a job's script, if the job has it.
pub fn job_script(dirs: &Dirs, job: &str, script: &str) -> Option<PathBuf> {
    let p = dirs.job(job).join("bin").join(script);
    p.is_file().then_some(p)
}

/// Summarises per-job results the Go agent's way: `N of M <what> failed. Failed Jobs: a, b. Successful Jobs: c.`
pub fn summarize(what: &str, results: &[(String, Result<(), String>)]) -> Result<(), String> {
    let failed: Vec<&str> = results.iter().filter(|(_, r)| r.is_err()).map(|(j, _)| j.as_str()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let ok: Vec<&str> = results.iter().filter(|(_, r)| r.is_ok()).map(|(j, _)| j.as_str()).collect();
    let reasons: Vec<String> =
        results.iter().filter_map(|(j, r)| r.as_ref().err().map(|e| format!("{j}: {e}"))).collect();
    Err(format!(
        "{} of {} {what} failed. Failed Jobs: {}. Successful Jobs: {}. ({})",
        failed.len(),
        results.len(),
        failed.join(", "),
        ok.join(", "),
        reasons.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]).process_group(0);
        c
    }

    #[test]
    fn captures_output_and_exit_codes() {
        let o = run_captured(sh("echo out; echo err >&2; exit 3"), &CancelToken::default(), 1024, KILL_GRACE)
            .unwrap();
        assert_eq!(o, Outcome { exit_code: 3, stdout: "out\n".into(), stderr: "err\n".into() });
    }

    #[test]
    fn keeps_only_the_tail_of_long_output() {
        let script = format!("head -c {} /dev/zero | tr '\\0' a; echo END", ERRAND_OUTPUT_CAP * 3);
        let o = run_captured(sh(&script), &CancelToken::default(), ERRAND_OUTPUT_CAP, KILL_GRACE).unwrap();
        assert!(o.stdout.ends_with("aEND\n") && o.stdout.starts_with("[output truncated"));
        assert!(o.stdout.len() < ERRAND_OUTPUT_CAP + 100);
    }

    #[test]
    fn cancel_terminates_the_whole_group_then_kills() {
        let cancel = CancelToken::default();
        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c2.cancel();
        });
        let started = std::time::Instant::now();
        // The child ignores TERM, so the KILL after the grace period ends it.
        let o = run_captured(sh("trap '' TERM; sleep 30 & wait"), &cancel, 1024, Duration::from_millis(300))
            .unwrap();
        assert_eq!(o.exit_code, 128 + libc::SIGKILL);
        assert!(started.elapsed() < Duration::from_secs(10));
        let polite = CancelToken::default();
        polite.cancel();
        let o = run_captured(sh("sleep 30"), &polite, 1024, KILL_GRACE).unwrap();
        assert_eq!(o.exit_code, 143);
    }

    #[test]
    fn cancel_reaches_the_foreground_child_so_the_trap_runs_at_once() {
        let cancel = CancelToken::default();
        let dir = tempfile::tempdir().unwrap();
        let started = dir.path().join("started");
        let c2 = cancel.clone();
        let flag = started.clone();
        let canceller = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !flag.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            c2.cancel();
        });
        // The shell waits for its foreground `sleep` before running a trap: only TERM to the whole
        // group ends the sleep, so the trap runs and the script exits 143 long before the grace
        // is up (were TERM not enough, KILL would end it after a minute with 137 and no output).
        let script = format!("trap 'echo got-term; exit 143' TERM; touch {}; sleep 1000", started.display());
        let o = run_captured(sh(&script), &cancel, 1024, Duration::from_secs(60)).unwrap();
        canceller.join().unwrap();
        assert_eq!((o.exit_code, o.stdout.as_str()), (143, "got-term\n"));
    }

    #[test]
    fn an_exit_is_announced_without_being_reaped() {
        let mut child = sh("exit 7").spawn().unwrap();
        let notice = exit_notice(child.id()).expect("watcher thread");
        notice.recv_timeout(Duration::from_secs(60)).expect("the exit is announced");
        // WNOWAIT: the exit status is still there for `Child::wait`, so the group id stayed reserved.
        assert_eq!(child.try_wait().unwrap().and_then(|s| s.code()), Some(7));
    }

    #[test]
    fn summary_names_failed_and_successful_jobs() {
        let r = vec![("a".to_string(), Err("exit 1".to_string())), ("b".to_string(), Ok(()))];
        let e = summarize("pre-start scripts", &r).unwrap_err();
        assert!(e.starts_with("1 of 2 pre-start scripts failed. Failed Jobs: a. Successful Jobs: b."), "{e}");
        assert!(summarize("x", &[("a".into(), Ok(()))]).is_ok());
    }
}
