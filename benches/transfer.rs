//! Blob transfers through the agent's own HTTP client against curl: a 256 MiB GET and PUT over
//! TLS to a local server, as the agent does them for a dav blobstore or a signed URL
//! (`blobstore::signed::get` and `put`: the client of `http_client`, the body streamed into a sink or
//! from a file). CPU per GiB moved and throughput, the median of interleaved rounds.
//!
//! The agent's side runs on this process's calling thread, so its CPU is that thread's
//! (`RUSAGE_THREAD`); curl's is the child's (`RUSAGE_CHILDREN` around it). The server is a thread of this process, the
//! same for both, and is not counted. curl is the baseline because it is what an operator would
//! reach for, and it moves bytes with OpenSSL's hand-tuned AES-GCM as ring does.

mod support;

use bosh_agent::blobstore::signed;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{cores, load, Report, Target};

/// Bytes per transfer.
const SIZE: u64 = 256 << 20;
/// Interleaved rounds; the median is reported.
const ROUNDS: usize = 5;
/// The target: the agent spends at most this many times curl's CPU per byte.
const CPU_TARGET: f64 = 1.5;

fn main() {
    let started = Instant::now();
    let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".into()]).expect("a certificate");
    let config = bosh_agent::tls::server::server_config(&cert, &key).expect("a server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the server");
    let base = format!("https://127.0.0.1:{}", listener.local_addr().expect("its address").port());
    std::thread::spawn(move || serve(listener, config));

    let dir = tempfile::tempdir().expect("a scratch directory");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &cert).expect("writing the CA");
    let upload = dir.path().join("blob");
    write_blob(&upload);
    let client = signed::http_agent(Some(&cert)).expect("the agent's client");
    let headers = BTreeMap::new();
    let get_url = format!("{base}/blob?X-Signature=s");

    let (mut ours_get, mut curl_get, mut ours_put, mut curl_put) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        ours_get.push(measure_thread(|| {
            signed::get(&client, &get_url, &headers, &mut std::io::sink()).expect("the agent's GET")
        }));
        curl_get.push(curl(&["-o", "/dev/null", &get_url], &ca_file));
        ours_put.push(measure_thread(|| {
            signed::put(&client, &format!("{base}/up"), &headers, &upload).expect("the agent's PUT")
        }));
        curl_put.push(curl(
            &["-o", "/dev/null", "-T", &upload.to_string_lossy(), &format!("{base}/up")],
            &ca_file,
        ));
    }

    let mut report = Report::new("curl");
    for (what, ours, theirs) in [("GET", ours_get, curl_get), ("PUT", ours_put, curl_put)] {
        let (ours, theirs) = (median(ours), median(theirs));
        let per_gib = |m: &Measured| m.cpu.as_secs_f64() * (1u64 << 30) as f64 / SIZE as f64;
        report.compare(
            &format!("{what} 256 MiB over TLS: CPU per GiB"),
            format!("{:.2} s", per_gib(&ours)),
            format!("{:.2} s", per_gib(&theirs)),
            per_gib(&ours) / per_gib(&theirs),
            Some(Target::AtMost(CPU_TARGET)),
        );
        let mbs = |m: &Measured| SIZE as f64 / 1e6 / m.wall.as_secs_f64();
        report.throughput(&format!("{what} 256 MiB over TLS: throughput"), mbs(&ours), mbs(&theirs), None);
    }
    report.print(
        &[
            "bosh-agent transfer: its HTTP client (blobstore::signed::get/put) against curl, TLS to a local server".into(),
            format!("samples: {ROUNDS} interleaved rounds of a 256 MiB GET and PUT each, median by CPU"),
            format!("machine: {}; load average {}", cores(), load()),
        ],
        started.elapsed(),
    );
}

/// One transfer's CPU and wall time.
#[derive(Clone, Copy)]
struct Measured {
    cpu: Duration,
    wall: Duration,
}

/// The round with the median CPU.
fn median(mut v: Vec<Measured>) -> Measured {
    v.sort_by_key(|m| m.cpu);
    v[v.len() / 2]
}

/// Runs `f` on this thread and measures this thread's CPU and the wall time.
fn measure_thread(f: impl FnOnce()) -> Measured {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    f();
    Measured { cpu: thread_cpu() - cpu, wall: wall.elapsed() }
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    rusage_time(&usage)
}

fn rusage_time(u: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs curl with `args` against the server's CA and measures its CPU (what reaped children used
/// before and after: curl is the only child) and wall time.
fn curl(args: &[&str], ca: &std::path::Path) -> Measured {
    let (cpu, wall) = (children_cpu(), Instant::now());
    let status = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(ca)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("curl (apt-get install curl)");
    assert!(status.success(), "curl {args:?} failed: {status}");
    Measured { cpu: children_cpu() - cpu, wall: wall.elapsed() }
}

fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    rusage_time(&usage)
}

/// A 256 MiB file of incompressible bytes (TLS does not compress, but be honest anyway).
fn write_blob(path: &std::path::Path) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("creating the blob"));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..SIZE >> 20 {
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        file.write_all(&chunk).expect("writing the blob");
    }
    file.flush().expect("writing the blob");
}

/// The server: TLS, one request per connection; GET answers `SIZE` bytes, PUT reads its body.
fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    for tcp in listener.incoming().flatten() {
        let config = config.clone();
        std::thread::spawn(move || {
            let Ok(session) = rustls::ServerConnection::new(config) else { return };
            let mut tls = rustls::StreamOwned::new(session, tcp);
            let mut reader = BufReader::with_capacity(64 << 10, &mut tls);
            let (mut head, mut line) = (String::new(), String::new());
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                head.push_str(&line);
                line.clear();
            }
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let _ = std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink());
            drop(reader);
            if head.starts_with("GET ") {
                let _ = write!(tls, "HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
                let block = vec![0x5au8; 1 << 20];
                for _ in 0..SIZE >> 20 {
                    if tls.write_all(&block).is_err() {
                        return;
                    }
                }
            } else {
                let _ = tls.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
            }
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
    }
}
