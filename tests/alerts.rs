//! Monit alerts: mail parsing, the SMTP server driven by a raw client, and end to end with a real
//! monit mailing the server when a job process dies.

use crate::common::monit_daemon::MonitDaemon;
use base64::Engine as _;
use bosh_agent::alerts::{self, from_mail, Alert, SmtpOptions, SmtpServer};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NOW: i64 = 1_800_000_000;

fn mail(event: &str) -> String {
    format!(
        "From: monit@localhost\r\nTo: bosh@localhost\r\nSubject: Monit Alert\r\n\
         Date: Wed, 25 Nov 2026 08:00:00 +0000\r\nMessage-id: <1795593600.12345@vm-1>\r\n\r\n\
         Service: nats\r\n          Event: {event}\r\n          Action: restart\r\n\
         \x20         Date: Wed, 25 Nov 2026 08:00:01 +0000\r\n          Description: process is not running\r\n"
    )
}

#[test]
fn parses_a_monit_mail() {
    let ips = vec!["192.168.1.30".to_string(), "10.0.0.1".to_string()];
    let alert = from_mail(&mail("Does not exist"), &ips, NOW).expect("alert");
    assert_eq!(
        alert,
        Alert {
            id: "1795593600.12345".into(),
            severity: 1,
            title: "nats (10.0.0.1, 192.168.1.30) - Does not exist - restart".into(),
            summary: "process is not running".into(),
            created_at: 1_795_593_601,
        }
    );
    let json = serde_json::to_string(&alert).expect("json");
    assert_eq!(
        json,
        r#"{"id":"1795593600.12345","severity":1,"title":"nats (10.0.0.1, 192.168.1.30) - Does not exist - restart","summary":"process is not running","created_at":1795593601}"#
    );
    let no_ips = from_mail(&mail("Does not exist"), &[], NOW).expect("alert");
    assert_eq!(no_ips.title, "nats - Does not exist - restart");
}

#[test]
fn severity_table() {
    let cases = [
        ("Does not exist", Some(1)),
        ("connection failed", Some(1)),
        ("Execution failed", Some(1)),
        ("Monit instance failed", Some(1)),
        ("Checksum failed", Some(2)),
        ("PID failed", Some(2)),
        ("Timeout", Some(2)),
        ("uid failed", Some(2)),
        ("Resource limit matched", Some(3)),
        ("Content doesn't match", Some(3)),
        ("Size changed", Some(3)),
        ("Data access error", Some(3)),
        ("Checksum changed", Some(4)),
        ("Existence changed", Some(4)),
        ("Timestamp changed", Some(4)),
        ("Some brand new event", Some(2)),
        ("Action done", None),
        ("Exists", None),
        ("Timeout recovery", None),
        ("Checksum succeeded", None),
        ("Pid not changed", None),
        ("Monit instance changed", None),
        ("Content match", None),
        ("Status succeeded", None),
    ];
    for (event, want) in cases {
        assert_eq!(from_mail(&mail(event), &[], NOW).map(|a| a.severity), want, "{event}");
    }
}

#[test]
fn tolerates_partial_and_odd_mail() {
    // Case-insensitive keys, leading whitespace, LF only, no Message-id, unparsable date.
    let a = from_mail("  SERVICE: web\n\tevent: Timeout\nDATE: yesterday\n", &[], NOW).expect("alert");
    assert_eq!(
        (a.title.as_str(), a.summary.as_str(), a.created_at, a.severity),
        ("web - Timeout - ", "", NOW, 2)
    );
    assert_eq!(a.id.len(), 36, "fresh UUID: {}", a.id);
    let b = from_mail("Service: web\nEvent: Timeout\n", &[], NOW).expect("alert");
    assert_ne!(a.id, b.id);
    // A Message-id without a host part is used whole; an empty one is ignored.
    assert_eq!(
        from_mail("Message-id: <abc>\nEvent: Timeout", &[], NOW).map(|a| a.id).as_deref(),
        Some("abc")
    );
    assert_eq!(from_mail("Message-id: <@host>\nEvent: Timeout", &[], NOW).map(|a| a.id.len()), Some(36));
    // Nothing of monit's: no alert.
    assert_eq!(from_mail("", &[], NOW), None);
    assert_eq!(from_mail("Subject: hello\n\njust text", &[], NOW), None);
    assert_eq!(from_mail("\u{0}\u{ff}\u{fffd}:::\n:\n", &[], NOW), None);
}

#[test]
fn monitrc_is_accepted_by_monit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = alerts::monitrc(2825, &dir.path().join("events"));
    assert!(text.starts_with(&format!("{}\nset alert agent@local\n", alerts::MONITRC_MARKER)), "{text}");
    assert!(text.contains("\nset mailserver 127.0.0.1 port 2825\n    with timeout 15 seconds\n"), "{text}");
    assert!(!text.contains("username") && !text.contains("password"), "no credentials: {text}");
    assert!(text.contains("slots 5000"));
    assert!(text.contains("Description: $DESCRIPTION\n}\n"));
    std::fs::write(dir.path().join("alerts.monitrc"), &text).expect("write");
    let control = dir.path().join("monitrc");
    let d = dir.path().display();
    std::fs::write(
        &control,
        format!("set idfile {d}/id\nset statefile {d}/state\ninclude {d}/alerts.monitrc\n"),
    )
    .expect("write control");
    std::fs::set_permissions(&control, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let out = std::process::Command::new(crate::common::monit_daemon::monit_binary())
        .arg("-t")
        .arg("-c")
        .arg(&control)
        .output()
        .expect("run monit -t");
    assert!(
        out.status.success(),
        "monit -t: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- SMTP server, driven by a raw client ----

const USER: &str = "vcap";
const PASSWORD: &str = "s3cret-password";

fn server() -> (SmtpServer, Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let sink = Box::new(move |mail: String| {
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(mail);
    });
    let opts = SmtpOptions { listen: "127.0.0.1:0".into() };
    (SmtpServer::start(opts, sink).expect("smtp server"), rx)
}

struct Client {
    out: TcpStream,
    input: BufReader<TcpStream>,
}

impl Client {
    fn connect(server: &SmtpServer) -> Client {
        let out = TcpStream::connect(server.local_addr()).expect("connect");
        out.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let input = BufReader::new(out.try_clone().expect("clone"));
        let mut c = Client { out, input };
        assert_eq!(c.reply(), "220 BOSH Agent SMTP Server");
        c
    }

    /// One whole reply (all `NNN-` lines and the final `NNN ` line), lines joined by `\n`.
    fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.input.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed; got so far: {all:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            all.push(line);
            if last {
                return all.join("\n");
            }
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).expect("send");
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    fn login(&mut self) {
        assert!(self.cmd("EHLO monit").contains("250-AUTH PLAIN"));
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
        assert_eq!(self.cmd(&format!("AUTH PLAIN {creds}")), "235 authentication ok");
    }

    /// True once the server has closed the connection (EOF or reset).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.input.read(&mut buf) {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}

fn recv(rx: &Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(5)).expect("a message at the sink")
}

#[test]
fn smtp_accepts_mail_without_authentication() {
    // The stemcell's alerts.monitrc names no credentials: monit goes straight to MAIL.
    let (server, rx) = server();
    let mut c = Client::connect(&server);
    assert_eq!(c.cmd("EHLO monit"), "250-BOSH Agent SMTP Server\n250-AUTH PLAIN\n250 SIZE 1048576");
    assert!(c.cmd("RCPT TO:<agent@local>").starts_with("503"), "MAIL comes first");
    assert!(c.cmd("DATA").starts_with("503"));
    assert_eq!(c.cmd("MAIL FROM:<monit@localhost>"), "250 Ok");
    assert_eq!(c.cmd("RCPT TO:<agent@local>"), "250 Ok");
    assert_eq!(c.cmd("DATA"), "354 Send it");
    c.send_raw(b"Subject: Monit Alert\r\n\r\nService: web\r\n.\r\n");
    assert_eq!(c.reply(), "250 Message accepted");
    assert_eq!(recv(&rx), "Subject: Monit Alert\n\nService: web");
    assert_eq!(c.cmd("QUIT"), "221 Ok");
    assert!(c.closed());
}

#[test]
fn smtp_still_answers_auth_plain() {
    // A monit configured with a username (an older alerts.monitrc) authenticates first: any
    // well-formed credentials do, since mail needs none; malformed ones are refused.
    let (server, _rx) = server();
    let mut c = Client::connect(&server);
    c.cmd("EHLO monit");
    assert_eq!(c.cmd("AUTH PLAIN !!!notbase64"), "535 invalid authentication");
    let no_user = base64::engine::general_purpose::STANDARD.encode("\0\0pw");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {no_user}")), "535 invalid authentication");
    assert!(c.cmd("AUTH LOGIN").starts_with("504"));
    assert_eq!(c.cmd("AUTH PLAIN"), "334");
    assert_eq!(c.cmd("*"), "501 Authentication cancelled");
    let good = base64::engine::general_purpose::STANDARD.encode(format!("{USER}\0{USER}\0{PASSWORD}"));
    assert_eq!(c.cmd(&format!("AUTH PLAIN {good}")), "235 authentication ok");
    assert!(c.cmd(&format!("AUTH PLAIN {good}")).starts_with("503"), "only once per session");
    assert_eq!(c.cmd("MAIL FROM:<monit@localhost>"), "250 Ok");
    assert_eq!(c.cmd("QUIT"), "221 Ok");
}

#[test]
fn smtp_delivers_several_messages_per_session_dot_unstuffed() {
    let (server, rx) = server();
    let mut c = Client::connect(&server);
    c.login();
    assert!(c.cmd("DATA").starts_with("503"), "DATA needs a recipient");
    for n in 1..=2 {
        assert_eq!(c.cmd("MAIL FROM:<monit@localhost>"), "250 Ok");
        assert_eq!(c.cmd("RCPT TO:<bosh@localhost>"), "250 Ok");
        assert_eq!(c.cmd("DATA"), "354 Send it");
        c.send_raw(format!("Subject: Test {n}\r\n\r\n..leading dot\r\n.\r\n").as_bytes());
        assert_eq!(c.reply(), "250 Message accepted");
        assert_eq!(recv(&rx), format!("Subject: Test {n}\n\n.leading dot"));
    }
    assert_eq!(c.cmd("MAIL FROM:<monit@localhost>"), "250 Ok");
    assert_eq!(c.cmd("RSET"), "250 Ok");
    assert!(c.cmd("RCPT TO:<bosh@localhost>").starts_with("503"), "RSET forgets the sender");
    assert_eq!(c.cmd("NOOP"), "250 Ok");
    assert_eq!(c.cmd("QUIT"), "221 Ok");
}

#[test]
fn smtp_refuses_an_oversized_message() {
    let (server, rx) = server();
    let mut c = Client::connect(&server);
    c.login();
    c.cmd("MAIL FROM:<monit@localhost>");
    c.cmd("RCPT TO:<bosh@localhost>");
    assert_eq!(c.cmd("DATA"), "354 Send it");
    let line = format!("{}\r\n", "x".repeat(998));
    let mut answer = String::new();
    // Write until the server answers (it may stop reading before all is sent).
    let mut reader = c.input.get_ref().try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        for _ in 0..1100 {
            if c.out.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
        let _ = c.out.write_all(b".\r\n");
    });
    let _ = reader.read_to_string(&mut answer);
    let _ = writer.join();
    assert_eq!(answer, "552 Message too large\r\n");
    assert!(rx.try_recv().is_err());
    // The server keeps serving others.
    let mut d = Client::connect(&server);
    assert_eq!(d.cmd("NOOP"), "250 Ok");
}

#[test]
fn smtp_survives_garbage() {
    let (server, _rx) = server();
    let mut c = Client::connect(&server);
    c.send_raw(b"\x00\xff\xfe\x80 binary\r\n");
    assert_eq!(c.reply(), "500 Unknown command");
    c.send_raw(b"\r\n");
    assert_eq!(c.reply(), "500 Unknown command");
    assert_eq!(c.cmd("HELO x"), "250 BOSH Agent SMTP Server");
    // A line with no end: answered and closed.
    c.send_raw(&vec![b'A'; 10_000]);
    assert_eq!(c.reply(), "500 Line too long");
    assert!(c.closed());
    // Endless errors: closed after a while.
    let mut d = Client::connect(&server);
    let mut last = String::new();
    for _ in 0..30 {
        last = d.cmd("BOGUS");
        if !last.starts_with("500") {
            break;
        }
    }
    assert_eq!(last, "421 Too many errors");
    assert!(d.closed());
    // Abrupt disconnects mid-DATA deliver nothing and harm nothing.
    let mut e = Client::connect(&server);
    e.login();
    e.cmd("MAIL FROM:<a>");
    e.cmd("RCPT TO:<b>");
    e.cmd("DATA");
    e.send_raw(b"half a message");
    drop(e);
    let mut f = Client::connect(&server);
    f.login();
}

#[test]
fn smtp_shutdown_closes_sessions() {
    let (server, _rx) = server();
    let mut c = Client::connect(&server);
    let addr = server.local_addr();
    let t = Instant::now();
    drop(server);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(c.closed());
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

// ---- end to end with monit ----

#[test]
fn monit_mails_an_alert_when_a_job_dies() {
    let (server, rx) = server();
    let port = server.local_addr().port();
    let daemon =
        MonitDaemon::start_with(&["web"], |monit_dir| alerts::monitrc(port, &monit_dir.join("events")));
    let mut seen = Vec::new();
    let mut next_mail = |what: &str, deadline: Instant, pred: &dyn Fn(&str) -> bool| -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) if pred(&m) => return m,
                Ok(m) => seen.push(m),
                Err(_) => panic!("no mail {what}; mails so far: {seen:#?}\nmonit log:\n{}", daemon.log()),
            }
        }
    };
    // Monit first finds `web` missing and starts it; once it mails `Exists`, the job runs and every
    // later `Does not exist` is about the kill below.
    let is_web = |m: &str, event: &str| m.contains("Service: web") && m.contains(&format!("Event: {event}"));
    next_mail("about web existing", Instant::now() + Duration::from_secs(20), &|m| is_web(m, "Exists"));
    let pid = daemon.live_pid("web").expect("web runs");
    let killed_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    // SAFETY: plain signal to the job process this test's monit started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mail = next_mail("about web dying", Instant::now() + Duration::from_secs(15), &|m| {
        is_web(m, "Does not exist")
    });
    let alert =
        from_mail(&mail, &["10.0.0.2".to_string()], 0).unwrap_or_else(|| panic!("no alert from:\n{mail}"));
    assert_eq!(alert.severity, 1, "{mail}");
    assert_eq!(alert.title, "web (10.0.0.2) - Does not exist - restart", "{mail}");
    assert!(alert.summary.contains("not running"), "{mail}");
    assert!((alert.created_at - killed_at).abs() <= 5, "date parsed from the mail: {mail}");
    assert!(!alert.id.is_empty());
}
