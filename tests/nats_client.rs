//! Integration tests of the NATS client against a real nats-server with mutual TLS.
//!
//! They pin what BOSH needs from the bus: mTLS with the bosh-internal name rule, PKCS#1 keys,
//! credentials in URLs, reconnect + resubscribe + buffered flush across a server restart, connecting
//! once the server appears, local max_payload enforcement, and certificate hot-swap.

use crate::common::certs::TestPki;
use crate::common::nats_server::{free_port, NatsServer, NatsServerOptions};
use crate::common::wait_until;
use bosh_agent::mbus::nats::{Message, NatsConnection, NatsOptions, PublishError};
use bosh_agent::tls::client::nats_client_config;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

const CONNECT: Duration = Duration::from_secs(10);
const RECV: Duration = Duration::from_secs(5);

fn opts(url: String, tls: Arc<rustls::ClientConfig>, subs: &[&str]) -> NatsOptions {
    NatsOptions {
        urls: vec![url],
        tls: Some(tls),
        subscriptions: subs.iter().map(|s| s.to_string()).collect(),
        name: "test".into(),
    }
}

fn client(url: String, tls: Arc<rustls::ClientConfig>, subs: &[&str]) -> (NatsConnection, Receiver<Message>) {
    crate::common::capture_logs();
    let (tx, rx) = channel();
    (NatsConnection::start(opts(url, tls, subs), tx), rx)
}

fn connected(conn: &NatsConnection, server: &NatsServer) {
    assert!(conn.wait_connected(CONNECT), "client did not connect; server log:\n{}", server.log());
    // The PONG proves the server has processed our SUBs, so peers' publishes will reach us.
    assert!(conn.flush(RECV), "flush after connect failed");
}

/// The director/agent exchange: request on `agent.<id>` carrying a NATS reply subject, answer on it.
fn roundtrip(
    agent: &NatsConnection,
    agent_rx: &Receiver<Message>,
    director: &NatsConnection,
    director_rx: &Receiver<Message>,
    tag: &str,
) {
    let reply_to = format!("director.d1.agent-1.{tag}");
    director
        .publish_with_reply("agent.agent-1", &reply_to, format!("request {tag}").as_bytes())
        .expect("director publish");
    let request = agent_rx.recv_timeout(RECV).expect("agent received the request");
    assert_eq!(request.subject, "agent.agent-1");
    assert_eq!(request.payload, format!("request {tag}").into_bytes());
    let reply = request.reply.expect("request carries a reply subject");
    assert_eq!(reply, reply_to);
    agent.publish(&reply, format!("response {tag}").as_bytes()).expect("agent publish");
    let response = director_rx.recv_timeout(RECV).expect("director received the response");
    assert_eq!(response.subject, reply_to);
    assert_eq!(response.reply, None);
    assert_eq!(response.payload, format!("response {tag}").into_bytes());
}

#[test]
fn mtls_request_reply_roundtrip() {
    let pki = TestPki::new();
    let server = NatsServer::start(&pki, NatsServerOptions::default());
    let (agent, agent_rx) =
        client(server.url(), pki.nats_tls("agent-1.agent.bosh-internal"), &["agent.agent-1"]);
    let (director, director_rx) =
        client(server.url(), pki.nats_tls("director.bosh-internal"), &["director.>"]);
    connected(&agent, &server);
    connected(&director, &server);
    assert_eq!(agent.max_payload(), 1024 * 1024);
    for i in 0..3 {
        roundtrip(&agent, &agent_rx, &director, &director_rx, &format!("r{i}"));
    }
    // An empty payload and a binary one containing CRLFs survive the framing.
    director.publish("agent.agent-1", b"").expect("publish empty");
    assert_eq!(agent_rx.recv_timeout(RECV).expect("empty message").payload, b"");
    director.publish("agent.agent-1", b"a\r\nPING\r\n\0").expect("publish binary");
    assert_eq!(agent_rx.recv_timeout(RECV).expect("binary message").payload, b"a\r\nPING\r\n\0");
    assert!(matches!(agent.publish("bad subject", b"x"), Err(PublishError::InvalidSubject(_))));
    agent.shutdown();
    director.shutdown();
    assert!(!agent.is_connected());
    assert_eq!(agent.publish("x", b"y"), Err(PublishError::Closed));
}

#[test]
fn pkcs1_rsa_client_key() {
    let pki = TestPki::new();
    let server = NatsServer::start(&pki, NatsServerOptions::default());
    let (cert, key) = pki.client_rsa_pkcs1("agent-1.bootstrap.agent.bosh-internal");
    assert!(key.contains("BEGIN RSA PRIVATE KEY"));
    let tls = nats_client_config(&pki.ca_pem, &cert, &key).expect("PKCS#1 key accepted");
    let (agent, agent_rx) = client(server.url(), tls, &["agent.agent-1"]);
    let (director, director_rx) = client(server.url(), pki.nats_tls("director"), &["director.>"]);
    connected(&agent, &server);
    connected(&director, &server);
    roundtrip(&agent, &agent_rx, &director, &director_rx, "rsa");
}

#[test]
fn user_and_password_from_url_are_percent_decoded() {
    let pki = TestPki::new();
    let password = "p@ss:w/rd%20 ü";
    let server = NatsServer::start(
        &pki,
        NatsServerOptions { users: Some(("bosh user".into(), password.into())), ..Default::default() },
    );
    let url = format!("nats://bosh%20user:p%40ss%3Aw%2Frd%2520%20%C3%BC@127.0.0.1:{}", server.port());
    let (agent, rx) = client(url, pki.nats_tls("agent"), &["agent.self"]);
    connected(&agent, &server);
    agent.publish("agent.self", b"hi").expect("publish");
    assert_eq!(rx.recv_timeout(RECV).expect("own message").payload, b"hi");

    // A wrong password is an authorization violation: never connected, retried without panicking.
    let bad = format!("nats://bosh%20user:wrong@127.0.0.1:{}", server.port());
    let (intruder, _rx) = client(bad, pki.nats_tls("agent"), &[]);
    assert!(!intruder.wait_connected(Duration::from_millis(1500)));
    assert!(crate::common::logged("Authorization Violation"));
    intruder.shutdown();
}

#[test]
fn server_restart_reconnects_resubscribes_and_flushes_buffer() {
    let pki = TestPki::new();
    let mut server = NatsServer::start(&pki, NatsServerOptions::default());
    let (agent, agent_rx) = client(server.url(), pki.nats_tls("agent"), &["agent.agent-1"]);
    let (director, director_rx) = client(server.url(), pki.nats_tls("director"), &["director.>"]);
    connected(&agent, &server);
    connected(&director, &server);
    roundtrip(&agent, &agent_rx, &director, &director_rx, "before");

    server.stop();
    assert!(wait_until(RECV, || !agent.is_connected() && !director.is_connected()));
    // Published while down: buffered, then flushed after the reconnect *and* resubscribe, so the
    // agent gets its own message back on agent.agent-1.
    agent.publish("agent.agent-1", b"buffered while down").expect("buffered publish");
    server.restart();
    connected(&agent, &server);
    connected(&director, &server);
    let flushed = agent_rx.recv_timeout(RECV).expect("buffered message delivered after reconnect");
    assert_eq!(flushed.payload, b"buffered while down");
    roundtrip(&agent, &agent_rx, &director, &director_rx, "after");
}

#[test]
fn connects_once_the_server_comes_up() {
    let pki = TestPki::new();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (agent, rx) = client(url, pki.nats_tls("agent"), &["agent.self"]);
    assert!(!agent.wait_connected(Duration::from_millis(700)));
    let server = NatsServer::start(&pki, NatsServerOptions { port: Some(port), ..Default::default() });
    connected(&agent, &server);
    agent.publish("agent.self", b"up").expect("publish");
    assert_eq!(rx.recv_timeout(RECV).expect("own message").payload, b"up");
}

#[test]
fn oversize_publish_is_refused_locally_and_connection_kept() {
    let pki = TestPki::new();
    let server = NatsServer::start(&pki, NatsServerOptions { max_payload: Some(1024), ..Default::default() });
    let (agent, rx) = client(server.url(), pki.nats_tls("agent"), &["agent.self"]);
    connected(&agent, &server);
    assert_eq!(agent.max_payload(), 1024);
    assert_eq!(
        agent.publish("agent.self", &[b'x'; 1025]),
        Err(PublishError::TooLarge { size: 1025, max_payload: 1024 })
    );
    agent.publish("agent.self", &[b'y'; 1024]).expect("publish at the limit");
    assert_eq!(rx.recv_timeout(RECV).expect("message at the limit").payload, vec![b'y'; 1024]);
    assert!(agent.is_connected());
    assert!(agent.flush(RECV));
}

#[test]
fn server_certificate_with_wrong_common_name_is_rejected() {
    let pki = TestPki::new();
    let wrong = pki.server_files("nats.example.com", "wrong-cn");
    let server =
        NatsServer::start(&pki, NatsServerOptions { server_cert: Some(wrong), ..Default::default() });
    let (agent, _rx) = client(server.url(), pki.nats_tls("agent"), &["agent.self"]);
    assert!(!agent.wait_connected(Duration::from_millis(2000)));
    assert!(!agent.is_connected());
    assert!(crate::common::logged("server certificate CommonName does not match *.nats.bosh-internal"));
    // Still alive and controllable after repeated failures.
    agent.publish("agent.self", b"buffered").expect("buffered while never connected");
    agent.shutdown();
}

#[test]
fn reconfigure_swaps_the_client_certificate() {
    let pki = TestPki::new();
    let untrusted = TestPki::new();
    let server = NatsServer::start(&pki, NatsServerOptions::default());

    // A client certificate from a CA the server does not trust (while we trust the real server)
    // never gets in...
    let (cert, key) = untrusted.client("agent-1.bootstrap.agent.bosh-internal");
    let bad_tls = nats_client_config(&pki.ca_pem, &cert, &key).expect("config");
    let (agent, rx) = client(server.url(), bad_tls.clone(), &["agent.agent-1"]);
    assert!(!agent.wait_connected(Duration::from_millis(1000)));

    // ...until the certificate is swapped for a good one.
    let good = opts(server.url(), pki.nats_tls("agent-1.agent.bosh-internal"), &["agent.agent-1"]);
    agent.reconfigure(good.clone());
    connected(&agent, &server);
    agent.publish("agent.agent-1", b"one").expect("publish");
    assert_eq!(rx.recv_timeout(RECV).expect("first").payload, b"one");

    // Swapping to the bad identity drops the live connection; swapping back restores it.
    agent.reconfigure(opts(server.url(), bad_tls, &["agent.agent-1"]));
    assert!(wait_until(RECV, || !agent.is_connected()));
    assert!(!agent.wait_connected(Duration::from_millis(500)));
    agent.reconfigure(good);
    connected(&agent, &server);
    agent.publish("agent.agent-1", b"two").expect("publish");
    assert_eq!(rx.recv_timeout(RECV).expect("second").payload, b"two");
}

#[test]
fn plain_nats_without_tls_is_refused_by_a_tls_server_but_does_not_panic() {
    let pki = TestPki::new();
    let server = NatsServer::start(&pki, NatsServerOptions::default());
    crate::common::capture_logs();
    let (tx, _rx) = channel();
    let conn = NatsConnection::start(
        NatsOptions { urls: vec![server.url()], tls: None, subscriptions: vec![], name: "plain".into() },
        tx,
    );
    assert!(!conn.wait_connected(Duration::from_millis(800)));
    assert!(crate::common::logged("server requires TLS"));
    conn.shutdown();
}

#[test]
fn plain_nats_roundtrip_without_tls() {
    let pki = TestPki::new();
    let server = NatsServer::start(&pki, NatsServerOptions { plain: true, ..Default::default() });
    crate::common::capture_logs();
    let (tx, rx) = channel();
    let conn = NatsConnection::start(
        NatsOptions {
            urls: vec![server.url()],
            tls: None,
            subscriptions: vec!["agent.plain".into()],
            name: "plain".into(),
        },
        tx,
    );
    connected(&conn, &server);
    conn.publish_with_reply("agent.plain", "director.x.plain.1", b"hello").expect("publish");
    let message = rx.recv_timeout(RECV).expect("own message");
    assert_eq!(message.payload, b"hello");
    assert_eq!(message.reply.as_deref(), Some("director.x.plain.1"));
}

#[test]
fn permissions_violation_keeps_the_connection() {
    let pki = TestPki::new();
    let server = NatsServer::start(
        &pki,
        NatsServerOptions {
            users: Some(("agent".into(), "secret".into())),
            publish_allow: Some(vec!["agent.>".into()]),
            ..Default::default()
        },
    );
    let url = format!("nats://agent:secret@127.0.0.1:{}", server.port());
    let (agent, rx) = client(url, pki.nats_tls("agent"), &["agent.self"]);
    connected(&agent, &server);
    agent.publish("hm.director.alert", b"not allowed").expect("publish is sent");
    assert!(wait_until(RECV, || crate::common::logged("Permissions Violation")));
    assert!(!crate::common::logged("server error: Permissions"), "must not reconnect");
    // Same connection still works: nothing was lost to a reconnect.
    assert!(agent.is_connected());
    agent.publish("agent.self", b"allowed").expect("publish");
    assert_eq!(rx.recv_timeout(RECV).expect("own message").payload, b"allowed");
    assert!(agent.flush(RECV));
}

#[test]
fn replies_have_no_batching_delay() {
    // 300 sequential request/reply exchanges over mTLS: with Nagle or a polling loop anywhere on the
    // path (~40 ms each) this would take many seconds; without, well under one.
    let pki = TestPki::new();
    let server = NatsServer::start(&pki, NatsServerOptions::default());
    let (agent, agent_rx) = client(server.url(), pki.nats_tls("agent"), &["agent.agent-1"]);
    let (director, director_rx) = client(server.url(), pki.nats_tls("director"), &["director.>"]);
    connected(&agent, &server);
    connected(&director, &server);
    let started = std::time::Instant::now();
    for i in 0..300 {
        roundtrip(&agent, &agent_rx, &director, &director_rx, &format!("n{i}"));
    }
    let elapsed = started.elapsed();
    eprintln!("300 request/reply exchanges took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "too slow: {elapsed:?}");
}
