//! The agent binary waiting for its settings, against the metadata service of `common::metadata`:
//! a dead service gives way to the cached `settings.json` after one bounded pass; with nothing
//! cached the boot keeps passing over its sources and boots once the service answers; a boot that
//! finds nothing gives up after its patience, and never exits sooner than its minimum run. Every
//! wait is shortened through `agent.json`'s `Infrastructure.Settings.Retry` (the defaults, 10 tries
//! 1 s apart, 10 s per try, 2 min per pass, 5 s between passes for 10 min, 10 s minimum run, are
//! pinned by unit tests).

use crate::common::agent::{Director, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::metadata::{MetaServer, MetaState};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use crate::common::wait_until;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const USER_DATA: &str = "/latest/user-data";

/// A director's NATS, an agent's settings for it, and a metadata service that serves nothing yet.
struct Boot {
    pki: TestPki,
    nats: NatsServer,
    id: String,
    doc: Value,
    meta: MetaServer,
}

impl Boot {
    fn new(tag: &str) -> Boot {
        let pki = TestPki::new();
        let nats = NatsServer::start(&pki, NatsServerOptions::default());
        let id = format!("{tag}-{}", &bosh_agent::ids::uuid_v4()[..8]);
        let doc = nats_settings(&pki, &id, &nats.url());
        Boot { pki, nats, id, doc, meta: MetaServer::start(MetaState::default()) }
    }

    /// The agent on the metadata service's `HTTP` source, with `retry` as its patience.
    fn agent(&self, retry: Value) -> TestAgent {
        let agent_json = json!({"Infrastructure": {"Settings": {
            "Sources": [{"Type": "HTTP", "URI": self.meta.url(), "UserDataPath": USER_DATA}],
            "Retry": retry
        }}});
        TestAgent::launch(&self.doc, Launch { agent_json: Some(agent_json), ..Launch::default() })
    }

    fn director(&self) -> Director {
        Director::connect(&self.pki, &self.nats.url(), &self.id)
    }
}

#[test]
fn a_dead_metadata_service_gives_way_to_the_cached_settings_after_one_pass() {
    let b = Boot::new("cache");
    let meta = &b.meta;
    meta.route(USER_DATA, 200, &b.doc.to_string());
    let mut agent = b.agent(json!({"Attempts": 3, "IntervalMs": 100}));
    let mut d = b.director();
    assert!(d.wait_ready(Duration::from_secs(20)), "first boot:\n{}", agent.log());
    assert_eq!(meta.count(USER_DATA), 1);

    // The service now fails every request (a non-2xx answer is retried, as the Go agent does).
    meta.route(USER_DATA, 503, "down for maintenance");
    agent.restart();
    let mut d = b.director();
    assert!(d.wait_ready(Duration::from_secs(20)), "no boot from the cache:\n{}", agent.log());
    let log = agent.log();
    assert_eq!(meta.count(USER_DATA), 1 + 3, "one pass of 3 tries:\n{log}");
    assert!(
        log.contains("try 1/3 failed: user data: GET")
            && log.contains("HTTP 503 (down for maintenance); trying again in 100ms"),
        "{log}"
    );
    assert!(log.contains("no settings source answered; using the cached settings.json"), "{log}");
}

#[test]
fn without_a_cache_the_boot_waits_for_a_late_metadata_service() {
    // Not there yet: user data is attached later (404 until then).
    let b = Boot::new("late");
    let meta = &b.meta;
    let mut agent = b.agent(json!({"Attempts": 2, "IntervalMs": 50, "PauseMs": 100}));
    let waited = wait_until(Duration::from_secs(20), || agent.log().contains("waiting for settings: pass 2"));
    assert!(waited, "{}", agent.log());
    assert!(agent.alive(), "the agent must keep waiting, not exit:\n{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "waiting for settings: pass 1 over HTTP({}) found none and nothing is cached",
            meta.url()
        )),
        "{log}"
    );
    assert!(log.contains("HTTP 404"), "what it waits for is logged:\n{log}");
    meta.route(USER_DATA, 200, &b.doc.to_string());
    let mut d = b.director();
    assert!(d.wait_ready(Duration::from_secs(20)), "no boot once the service answered:\n{}", agent.log());
    assert!(meta.count(USER_DATA) >= 5, "two passes of two tries, then the answer");
}

#[test]
fn a_boot_without_settings_gives_up_after_its_patience_but_not_before_its_minimum_run() {
    let b = Boot::new("giveup");
    let meta = &b.meta;
    let started = Instant::now();
    let mut agent = b.agent(json!({"Attempts": 1, "PauseMs": 100, "GiveUpMs": 500, "MinFailedRunMs": 2000}));
    assert!(wait_until(Duration::from_secs(20), || !agent.alive()), "never gave up:\n{}", agent.log());
    let lasted = started.elapsed();
    let log = agent.log();
    assert!(log.contains("no settings could be loaded") && log.contains("(gave up after"), "{log}");
    assert!(lasted >= Duration::from_secs(2), "exited after {lasted:?}, before its minimum run:\n{log}");
    assert!(meta.count(USER_DATA) >= 2, "more than one pass before giving up:\n{log}");
}
