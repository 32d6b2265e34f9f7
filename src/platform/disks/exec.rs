//! Bounded subprocesses for the disk tools. `platform::run_bounded` discards stdin and treats every
//! non-zero exit as failure; the disk code needs both stdin (an `sfdisk` script) and the exit code
//! (`blkid` exits 2 for "nothing found", which is an answer, not an error). Output is drained on
//! threads so a chatty tool can never fill a pipe and hang past its deadline.

use crate::error::Context as _;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished command said.
#[derive(Debug)]
pub struct Output {
    /// Exit code; `None` when it died from a signal.
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

fn drain<R: Read + Send + 'static>(src: Option<R>) -> Option<thread::JoinHandle<Vec<u8>>> {
    src.map(|mut s| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        })
    })
}

fn collect(h: Option<thread::JoinHandle<Vec<u8>>>) -> String {
    h.and_then(|h| h.join().ok()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Runs `cmd` with `input` on stdin and kills it after `limit`; any exit code is returned.
pub fn exec(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let stdin = if input.is_some() { Stdio::piped() } else { Stdio::null() };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {desc}"))?;
    let writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc} timed out after {}s", limit.as_secs()));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output { code: status.code(), stdout: collect(out), stderr: collect(err) })
}

/// Runs `cmd` and fails unless it exits 0; the error carries the command and its stderr.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let out = exec(cmd, input, limit)?;
    if out.code == Some(0) {
        Ok(out.stdout)
    } else {
        Err(format!("{desc} failed ({:?}): {}", out.code, out.stderr.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_stdin_reports_codes_and_times_out() {
        let o = exec(&mut Command::new("cat"), Some(b"hello"), Duration::from_secs(5)).unwrap();
        assert_eq!((o.code, o.stdout.as_str()), (Some(0), "hello"));
        let o = exec(Command::new("sh").args(["-c", "echo e >&2; exit 2"]), None, Duration::from_secs(5))
            .unwrap();
        assert_eq!((o.code, o.stderr.as_str()), (Some(2), "e\n"));
        let e = run(Command::new("sleep").arg("5"), None, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
