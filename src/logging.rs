//! The only place a logger is installed: lines to stderr (runit or systemd keeps the file), each
//! `<UTC RFC 3339 time with microseconds> [LEVEL] message`. What is logged is decided at the call
//! sites: never arguments of actions marked not loggable, never keys or passwords.
//!
//! Why our own logger rather than simplelog's `WriteLogger`: every request writes a line, and that
//! logger wrote each piece of a line (time, level, message, newline) with its own `write(2)` on
//! unbuffered stderr while holding its global mutex, so the request threads queued on that mutex and
//! one line cost several system calls. Here a line is formatted into a buffer of the thread's own and
//! leaves in one `write(2)`, with no lock held: lines from different threads never interleave (one
//! write of a line to a pipe or an `O_APPEND` file lands whole), and no thread waits for another's
//! system call.

use log::{LevelFilter, Log, Metadata, Record};
use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Log targets never written: the TLS library's own chatter (its failures reach our log through the
/// errors it returns).
const IGNORED_TARGETS: [&str; 1] = ["rustls"];

/// Above this a thread's line buffer is not kept for the next line (a debug line with a large
/// argument should not pin its size for the thread's life).
const KEEP_BUFFER: usize = 16 * 1024;

struct Logger {
    level: LevelFilter,
    /// The file descriptor lines go to: stderr, or a pipe in the tests.
    fd: i32,
}

/// Installs the logger once; a second call is ignored.
pub fn init(level: LevelFilter) {
    // Leaked once: the logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(Logger { level, fd: 2 }))).is_ok() {
        log::set_max_level(level);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && !IGNORED_TARGETS.iter().any(|t| metadata.target().starts_with(t))
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let write = |buf: &mut Vec<u8>| {
            buf.clear();
            format_line(buf, SystemTime::now(), record);
            write_all(self.fd, buf);
            if buf.capacity() > KEEP_BUFFER {
                *buf = Vec::new();
            }
        };
        // A message whose formatting logs (re-entry) or a line written while the thread's locals are
        // torn down gets a buffer of its own.
        let reused = LINE.try_with(|line| line.try_borrow_mut().map(|mut buf| write(&mut buf)).is_ok());
        if reused != Ok(true) {
            write(&mut Vec::new());
        }
    }

    fn flush(&self) {}
}

/// Appends one line: time, level, message, newline.
fn format_line(buf: &mut Vec<u8>, now: SystemTime, record: &Record<'_>) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    write_time(buf, since_epoch.as_secs(), since_epoch.subsec_micros());
    // Writing into a Vec cannot fail; a Display impl that errs leaves its line cut short.
    let _ = write!(buf, " [{}] {}", record.level(), record.args());
    buf.push(b'\n');
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `secs` since the epoch (proleptic Gregorian, UTC).
fn write_time(buf: &mut Vec<u8>, secs: u64, micros: u32) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        buf,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// The calendar date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes all of `buf` to `fd`: one `write(2)` unless the kernel takes less (then the rest follows);
/// interrupted writes are retried, failures dropped (there is nowhere to report them).
fn write_all(fd: i32, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid, initialised slice for the duration of the call; `fd` is stderr
        // (or a test's pipe), which stays open for the process's life.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        buf = &buf[(n as usize).min(buf.len())..];
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::time::Duration;

    fn time(secs: u64, micros: u32) -> String {
        let mut buf = Vec::new();
        write_time(&mut buf, secs, micros);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        assert_eq!(time(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(time(951_782_400 + 3661, 7), "2000-02-29T01:01:01.000007Z");
        assert_eq!(time(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(time(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
    }

    #[test]
    fn a_line_is_time_level_message_and_one_newline() {
        let mut buf = Vec::new();
        let now = UNIX_EPOCH + Duration::from_micros(86_400_000_000 + 1_500);
        let args = format_args!("request method={} outcome={}", "ping", "value");
        format_line(&mut buf, now, &Record::builder().args(args).level(log::Level::Warn).build());
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "1970-01-02T00:00:00.001500Z [WARN] request method=ping outcome=value\n"
        );
    }

    #[test]
    fn lines_reach_the_descriptor_whole_and_libraries_are_filtered() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here alone.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let logger = Logger { level: LevelFilter::Info, fd: fds[1] };
        let long = "x".repeat(3000);
        let record = |target: &str, level, message: &str| {
            logger.log(&Record::builder().target(target).level(level).args(format_args!("{message}")).build())
        };
        record("bosh_agent::dispatch", log::Level::Info, &format!("first {long}"));
        record("rustls::client", log::Level::Warn, "hidden");
        record("rustls::server::hs", log::Level::Error, "hidden");
        record("bosh_agent::x", log::Level::Debug, "hidden");
        record("bosh_agent::x", log::Level::Error, "second");
        assert!(!logger.enabled(&Metadata::builder().target("rustls").level(log::Level::Error).build()));
        drop(write_end);
        let mut text = String::new();
        std::fs::File::from(read_end).read_to_string(&mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with(&format!(" [INFO] first {long}")), "{}", lines[0]);
        assert!(lines[1].ends_with(" [ERROR] second"), "{}", lines[1]);
    }
}
