//! The agent's HTTP client through a real proxy (tinyproxy, as an operator's VM may have one in
//! `HTTP_PROXY`/`HTTPS_PROXY`): a blob fetched over plain HTTP in the proxy's absolute form, a blob
//! fetched over HTTPS through a `CONNECT` tunnel with the server still verified end to end, and
//! proxy credentials. The test servers are on loopback, which an environment's proxy never serves, so
//! the client is given the proxy directly (`Client::proxy`); choosing it from the environment is a unit
//! test (`http_client::tests`).

use crate::common::blob_server::{BlobServer, BlobServerOptions};
use crate::common::certs::TestPki;
use crate::common::wait_until;
use bosh_agent::http_client::{Body, Client};
use bosh_agent::tls::Trust;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A tinyproxy on a free loopback port, with an optional `BasicAuth`; killed when dropped.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start(basic_auth: Option<(&str, &str)>) -> Tinyproxy {
        let binary = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("tinyproxy is not installed: scripts/prerequisites installs it (apt package tinyproxy)");
        let dir = tempfile::tempdir().expect("tinyproxy dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Info\nMaxClients 20\n\
             Allow 127.0.0.1\nViaProxyName \"tinyproxy\"\n",
            log.display()
        );
        if let Some((user, password)) = basic_auth {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf_file = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_file, conf).expect("writing tinyproxy.conf");
        let child = Command::new(binary)
            .args(["-d", "-c"])
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tinyproxy");
        let proxy = Tinyproxy { child, port, log, _dir: dir };
        assert!(
            wait_until(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "tinyproxy never listened on {port}"
        );
        proxy
    }

    fn url(&self, credentials: &str) -> String {
        format!("http://{credentials}127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_plain_http_blob_comes_through_the_proxy_with_its_credentials() {
    let proxy = Tinyproxy::start(Some(("agent", "pr0xy")));
    let server = BlobServer::start(BlobServerOptions::default());
    server.put_blob("/ab/blob-1", b"through the proxy");
    let url = format!("{}/ab/blob-1", server.url());

    let client = Client::new(Trust::System).proxy(&proxy.url("agent:pr0xy@")).expect("a proxy URL");
    let mut answer = client.send("GET", &url, &[], Body::Empty, None).expect("an answer");
    let body = String::from_utf8_lossy(&answer.read_to_vec(1 << 20).expect("the body")).into_owned();
    assert_eq!(
        (answer.status, body.as_str()),
        (200, "through the proxy"),
        "tinyproxy's log: {}",
        proxy.log()
    );
    let seen = server.requests();
    let via = seen.last().and_then(|r| r.header("via")).unwrap_or_default().to_string();
    assert!(via.contains("tinyproxy"), "the blob server was reached through the proxy: {seen:?}");

    let anonymous = Client::new(Trust::System).proxy(&proxy.url("")).expect("a proxy URL");
    let refused = anonymous.send("GET", &url, &[], Body::Empty, None).expect("an answer");
    assert_eq!(refused.status, 407, "without the proxy's credentials");
}

#[test]
fn an_https_blob_comes_through_a_connect_tunnel_and_the_server_is_still_verified() {
    let proxy = Tinyproxy::start(None);
    let pki = TestPki::new();
    let cert = std::fs::read_to_string(&pki.server_cert_file).expect("server certificate");
    let key = std::fs::read_to_string(&pki.server_key_file).expect("server key");
    let config = bosh_agent::tls::server::server_config(&cert, &key).expect("a server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the TLS server");
    let port = listener.local_addr().expect("its address").port();
    let origin = std::thread::spawn(move || {
        // Two connections: the verified client's and the one that must refuse the certificate.
        let mut heads = Vec::new();
        for _ in 0..2 {
            let Ok((tcp, _)) = listener.accept() else { break };
            let session = rustls::ServerConnection::new(config.clone()).expect("a TLS session");
            let mut tls = rustls::StreamOwned::new(session, tcp);
            let mut head = String::new();
            let mut reader = BufReader::new(&mut tls);
            while reader.read_line(&mut head).map(|n| n > 0).unwrap_or(false) && !head.ends_with("\r\n\r\n") {
            }
            drop(reader);
            if !head.is_empty() {
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret");
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            heads.push(head);
        }
        heads
    });

    let url = format!("https://127.0.0.1:{port}/blobs/b-1?X-Signature=s1gn");
    let ca = bosh_agent::tls::parse_certs(&pki.ca_pem).expect("the CA");
    let client = Client::new(Trust::roots(&ca).expect("a CA")).proxy(&proxy.url("")).expect("a proxy URL");
    let mut answer = client.send("GET", &url, &[], Body::Empty, None).expect("an answer through the tunnel");
    assert_eq!(answer.status, 200);
    let mut body = String::new();
    answer.read_to_string(&mut body).expect("the body");
    assert_eq!(body, "secret");

    // A client that trusts nobody refuses the same server through the same tunnel.
    let refusing = Client::new(Trust::Nobody).proxy(&proxy.url("")).expect("a proxy URL");
    let err = refusing.send("GET", &url, &[], Body::Empty, None).err().expect("no answer");
    assert!(err.contains("TLS handshake") && !err.contains("s1gn"), "{err}");

    let heads = origin.join().expect("the TLS server");
    assert!(heads[0].starts_with("GET /blobs/b-1?X-Signature=s1gn HTTP/1.1\r\n"), "{heads:?}");
    assert!(!heads[0].to_ascii_lowercase().contains("via:"), "a tunnel leaves the request alone: {heads:?}");
    let log = proxy.log();
    assert!(log.contains(&format!("CONNECT 127.0.0.1:{port}")), "the proxy tunnelled it: {log}");
}
