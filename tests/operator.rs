//! What an operator sees: the agent's log lines, `bosh-agent call`'s answers when it cannot reach an
//! agent, and bad configuration refused at start with the bad value named.

use crate::common::agent::{AgentEnv, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::nats_server::{free_port, NatsServerOptions};
use crate::common::settings::nats_settings;
use crate::common::wait_until;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn agent_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bosh-agent"))
}

/// `bosh-agent call` with these arguments. The timeout is generous: an answer that names its cause
/// came from knowing it, not from running out of time.
fn call(args: &[&str]) -> Output {
    agent_bin().arg("call").args(["--timeout", "120"]).args(args).output().expect("running bosh-agent call")
}

/// What `call` printed on stderr, after checking that it failed.
fn failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// An agent on the HTTPS bus (as `bosh create-env` leaves one) with `mbus:pw` as its credentials;
/// returns it and its URL without credentials' password.
fn https_agent(extra: &[&str]) -> (TestAgent, u16) {
    let port = free_port();
    let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".to_string()]).unwrap();
    let settings = json!({
        "agent_id": "operator-https", "mbus": format!("https://mbus:pw@127.0.0.1:{port}"),
        "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}}
    });
    let agent = TestAgent::start(&settings, extra);
    let up =
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(up, "HTTPS bus never listened:\n{}", agent.log());
    (agent, port)
}

#[test]
fn call_says_why_it_cannot_reach_an_agent() {
    let env = AgentEnv::start("why", NatsServerOptions::default(), None);
    let dir = tempfile::tempdir().unwrap();
    let ca = env.pki.ca_file.to_str().unwrap().to_string();
    let (cert, key) = env.pki.client("operator.bosh-internal");
    let (cert, key) = (write(dir.path(), "c.pem", &cert), write(dir.path(), "k.pem", &key));
    let other = TestPki::new();
    let (other_cert, other_key) = other.client("operator.bosh-internal");
    let (other_cert, other_key) =
        (write(dir.path(), "oc.pem", &other_cert), write(dir.path(), "ok.pem", &other_key));
    let (url, id) = (env.nats.url(), env.agent.agent_id.clone());
    let nats = |agent_id: &str, tls: &[&str]| {
        let mut args = vec!["--mbus", url.as_str(), "--agent-id", agent_id];
        args.extend_from_slice(tls);
        args.push("ping");
        call(&args)
    };

    let closed = format!("nats://127.0.0.1:{}", free_port());
    let e = failure(&call(&["--mbus", &closed, "--agent-id", &id, "ping"]));
    assert!(e.contains("nothing listens there") && e.contains("Connection refused"), "{e}");
    let e = failure(&nats(&id, &["--ca", &ca]));
    assert!(e.contains("the server requires mutual TLS: give --ca, --cert and --key"), "{e}");
    let e = failure(&nats(&id, &["--ca", &ca, "--cert", &other_cert, "--key", &other_key]));
    assert!(e.contains("the server refused the TLS handshake"), "{e}");
    let other_ca = other.ca_file.to_str().unwrap();
    let e = failure(&nats(&id, &["--ca", other_ca, "--cert", &cert, "--key", &key]));
    assert!(e.contains("the server's certificate is not trusted"), "{e}");
    let e = failure(&nats("nobody-here", &["--ca", &ca, "--cert", &cert, "--key", &key]));
    assert!(e.contains("no reply from agent.nobody-here: nothing listens there"), "{e}");
    // Go's -flag=value forms, as an operator used to the Go agent types them.
    let mbus = format!("-mbus={url}");
    let agent_id = format!("--agent-id={id}");
    let (ca_flag, cert_flag, key_flag) =
        (format!("-ca={ca}"), format!("-cert={cert}"), format!("-key={key}"));
    let ok = call(&[&mbus, &agent_id, &ca_flag, &cert_flag, &key_flag, "ping"]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), r#"{"value":"pong"}"#, "{}", failure(&ok));

    let closed = format!("https://mbus:pw@127.0.0.1:{}", free_port());
    let e = failure(&call(&["--mbus", &closed, "ping"]));
    assert!(e.contains("nothing listens there"), "{e}");
    let (https, port) = https_agent(&[]);
    let e = failure(&call(&["--mbus", &format!("https://mbus:wrong@127.0.0.1:{port}"), "ping"]));
    assert!(e.contains("wrong mbus credentials"), "{e}");
    let ok = call(&["--mbus", &format!("https://mbus:pw@127.0.0.1:{port}"), "ping"]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), r#"{"value":"pong"}"#);
    // The refused request is in the agent's log at INFO, with where it came from.
    let log = https.log();
    assert!(log.contains("[INFO] https: 401 for POST /agent from 127.0.0.1:"), "{log}");
}

#[test]
fn call_help_and_version() {
    let help = agent_bin().args(["call", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && text.contains("CALL OPTIONS") && text.contains("--agent-id"), "{text}");
    for flag in ["--version", "-v"] {
        let out = agent_bin().arg(flag).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.starts_with("bosh-agent "), "{flag}: {text}");
    }
}

#[test]
fn the_log_says_what_an_operator_needs() {
    let pki = TestPki::new();
    let nats = crate::common::nats_server::NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("log-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let scratch = tempfile::tempdir().unwrap();
    let base = scratch.path().join("base");
    std::fs::create_dir_all(base.join("bosh/etc")).unwrap();
    std::fs::write(base.join("bosh/etc/stemcell_version"), "1.918\n").unwrap();
    let agent = TestAgent::launch(
        &nats_settings(&pki, &id, &nats.url()),
        Launch { base: Some(&base), ..Default::default() },
    );
    let mut d = crate::common::agent::Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());

    // One line at start with the versions, one when ready with where the settings came from, and
    // one per heartbeat sent (the test agent beats every second).
    let beat = "[INFO] heartbeat sent: job_state=running processes=0";
    assert!(wait_until(Duration::from_secs(10), || agent.log().contains(beat)), "{}", agent.log());
    let log = agent.log();
    let version = format!("[INFO] bosh-agent {} starting on stemcell 1.918", env!("CARGO_PKG_VERSION"));
    assert!(log.contains(&version), "{log}");
    assert!(log.contains(&format!("[INFO] agent {id} ready (settings from File(")), "{log}");

    // A task polled many times is logged once, by the poll that finds it done.
    let task = d.send("dummy_sleep", json!([1.5]));
    let task_id = task["value"]["agent_task_id"].as_str().unwrap().to_string();
    let mut polls = 0;
    let done = wait_until(Duration::from_secs(20), || {
        polls += 1;
        d.send("get_task", json!([task_id])) == json!({"value": {"canceled": false}})
    });
    assert!(done && polls > 2, "{polls} polls");
    // The reply goes out before its log line is written.
    let lines = |log: &str, level: &str| {
        log.lines().filter(|l| l.contains(level) && l.contains("request method=get_task")).count()
    };
    assert!(wait_until(Duration::from_secs(10), || lines(&agent.log(), "[INFO]") > 0), "{}", agent.log());
    let log = agent.log();
    assert_eq!(lines(&log, "[INFO]"), 1, "{log}");
    assert!(lines(&log, "[DEBUG]") >= polls - 1, "the running polls are still there at debug level:\n{log}");
}

/// Starts an agent on `settings` and waits for it to give up; returns its log.
fn refused_at_start(settings: &Value) -> String {
    let mut agent = TestAgent::start(settings, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || !agent.alive()),
        "the agent should exit:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(!log.contains("ready"), "{log}");
    log
}

#[test]
fn bad_configuration_fails_fast_naming_the_value() {
    let pki = TestPki::new();
    // A port no TCP connection can have: refused before "ready", naming the URL, said once.
    let log = refused_at_start(&nats_settings(&pki, "bad-port", "nats://127.0.0.1:99999"));
    let error = "mbus URL nats://127.0.0.1:99999: NATS URL has an invalid port '99999'";
    assert_eq!(log.matches(error).count(), 1, "{log}");
    let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".to_string()]).unwrap();
    let https = json!({"agent_id": "bad-https", "mbus": "https://mbus:pw@127.0.0.1:99999",
        "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}}});
    let log = refused_at_start(&https);
    assert_eq!(log.matches("invalid port '99999' in mbus URL").count(), 1, "{log}");

    // An mbus that is there but empty is "empty".
    let mut empty = nats_settings(&pki, "empty-mbus", "nats://127.0.0.1:4222");
    empty["mbus"] = json!("");
    let log = refused_at_start(&empty);
    assert!(log.contains("settings key 'mbus' is empty (from File("), "{log}");

    // A missing -C file: refused, naming the file, before anything is created.
    let scratch = tempfile::tempdir().unwrap();
    let base = scratch.path().join("base");
    let config = scratch.path().join("no-such-agent.json");
    let out = agent_bin()
        .args(["-P", "dummy", "-M", "dummy", "-C", config.to_str().unwrap(), "-b", base.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("no-such-agent.json").count(), 1, "the error, once:\n{err}");
    assert!(!base.exists(), "{} was created", base.display());
}

/// The README's commands are typed as a user types them (`target/release/bosh-agent`, never a bare
/// `bosh-agent` that is on no PATH), and each one parses with the agent's own command line.
#[test]
fn the_readme_commands_are_the_ones_a_user_types() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            text if in_sh => {
                let text = text.split(" # ").next().unwrap_or("").trim_end();
                pending.push_str(text.trim_end_matches('\\'));
                pending.push(' ');
                if !text.ends_with('\\') {
                    commands.push(std::mem::take(&mut pending));
                }
            }
            _ => {}
        }
    }
    let agent: Vec<&String> = commands.iter().filter(|c| c.contains("bosh-agent")).collect();
    assert!(agent.len() >= 6, "{commands:?}");
    for command in agent {
        let words = shell_words(command);
        assert_eq!(words[0], "target/release/bosh-agent", "{command}");
        let parsed = bosh_agent::cli::parse(words[1..].iter().map(std::ffi::OsString::from).collect());
        assert!(parsed.is_ok(), "{command}: {parsed:?}");
    }
}

/// Splits a command line as sh does for the README's simple commands: blanks, and single quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The README's recipe for a second agent: its own state directory and port, each reached by `call`.
#[test]
fn two_embedded_agents_side_by_side_as_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut agents: Vec<std::process::Child> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            agent_bin()
                .current_dir(dir.path())
                .args([
                    "-b",
                    &format!("./agent-data-{i}"),
                    "-n",
                    &format!("https://bosh:bosh@127.0.0.1:{port}"),
                ])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for port in ports {
        let mbus = format!("https://bosh:bosh@127.0.0.1:{port}");
        let pong = wait_until(Duration::from_secs(20), || {
            String::from_utf8_lossy(&call(&["--mbus", &mbus, "ping"]).stdout).trim() == r#"{"value":"pong"}"#
        });
        assert!(pong, "no pong on {port}");
    }
    assert!(dir.path().join("agent-data-0/bosh").is_dir() && dir.path().join("agent-data-1/bosh").is_dir());
    for agent in &mut agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
}
