//! Networks on a real LAN (`common::netns`): a real DHCP server (dnsmasq) and the DHCP client the
//! agent drives on a stemcell (systemd-networkd, restarted by a `restart_networking` script), the
//! agent in its own network namespace with a scratch root, reaching a nats-server and a metadata
//! service on the LAN. What it shows: with no NIC configured the agent brings up DHCP before it asks
//! the metadata service (which it can reach only then), dynamic networks report the lease in
//! `get_state` and `apply`, and with three NICs each network lands on the NIC with its MAC, the
//! static address is really configured, only the default network's NIC gets a default route, and
//! each dynamic network reports its own NIC's lease.

use crate::common::agent::{exception, value, Director, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::metadata::{MetaServer, MetaState};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::netns::{Lan, SERVER_IP};
use crate::common::settings::nats_settings;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Everything one LAN test runs: the servers (in the server namespace) and the agent's scratch root.
struct Net {
    pki: TestPki,
    nats: NatsServer,
    meta: MetaServer,
    root: tempfile::TempDir,
}

impl Net {
    /// Starts nats-server and the metadata service where the LAN's clients reach them; the calling
    /// thread must be in the server namespace.
    fn start() -> Net {
        let pki = TestPki::new();
        let nats = NatsServer::start(&pki, NatsServerOptions { listen_all: true, ..Default::default() });
        let meta = MetaServer::start_on("0.0.0.0:0", MetaState::default());
        Net { pki, nats, meta, root: tempfile::tempdir().expect("scratch root") }
    }

    /// Settings for agent `id` on the LAN's NATS with `networks`.
    fn settings(&self, id: &str, networks: Value) -> Value {
        let mut s = nats_settings(&self.pki, id, &format!("nats://{SERVER_IP}:{}", self.nats.port()));
        s["networks"] = networks;
        s
    }

    /// Serves `settings` as EC2 user data and starts the agent (`-P ubuntu` on the scratch root) in
    /// the client namespace, reading them from the metadata service on the LAN.
    fn agent(&self, lan: &Lan, settings: &Value) -> TestAgent {
        self.meta.route("/latest/user-data", 200, &settings.to_string());
        let uri = format!("http://{SERVER_IP}:{}", self.meta.listener.addr().port());
        let agent_json = json!({"Infrastructure": {"Settings": {"Sources": [
            {"Type": "HTTP", "URI": uri, "UserDataPath": "/latest/user-data"}]}}});
        let base = self.root.path().join("var/vcap");
        lan.install_restart_networking(&base);
        let root = self.root.path().to_str().expect("UTF-8 root").to_string();
        let wrapper = lan.client_wrapper(self.root.path());
        TestAgent::launch(
            settings,
            Launch {
                base: Some(&base),
                agent_json: Some(agent_json),
                extra: &["-P", "ubuntu", "-r", &root],
                wrapper: &wrapper,
                ..Launch::default()
            },
        )
    }

    fn network_file(&self, iface: &str) -> String {
        let path = self.root.path().join(format!("etc/systemd/network/10_{iface}.network"));
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

/// Whether `ip` is one dnsmasq leases on link `net` (`.50`–`.99`).
fn leased(ip: &str, net: &str) -> bool {
    ip.parse::<Ipv4Addr>().is_ok_and(|a| {
        let [o1, o2, o3, o4] = a.octets();
        format!("{o1}.{o2}.{o3}") == net && (50..=99).contains(&o4)
    })
}

fn ready(d: &mut Director, agent: &TestAgent, lan: &Lan) {
    assert!(
        d.wait_ready(Duration::from_secs(90)),
        "agent never answered:\n{}\n{}",
        agent.log(),
        lan.diagnostics()
    );
}

#[test]
fn dhcp_comes_up_before_the_metadata_service_and_dynamic_networks_report_the_lease() {
    let Some(lan) = Lan::start(1) else { return };
    let _server_side = lan.enter_server();
    let net = Net::start();
    let nic = &lan.links[0];
    let id = format!("dhcp-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let networks = json!({"default": {"type": "dynamic", "mac": nic.mac, "default": ["dns", "gateway"],
                                      "dns": [SERVER_IP], "cloud_properties": {"subnet": "s-1"}}});
    let agent = net.agent(&lan, &net.settings(&id, networks));
    let mut d = Director::connect(&net.pki, &net.nats.url(), &id);
    ready(&mut d, &agent, &lan);
    let log = agent.log();
    assert!(
        log.contains(&format!("bringing up DHCP on {} so the settings source can be reached", nic.client_if)),
        "{log}"
    );
    assert!(log.contains("settings loaded from HTTP("), "{log}");
    // The settings' network replaced the bootstrap DHCP file: same NIC, now with the DNS server.
    let file = net.network_file(&nic.client_if);
    assert!(file.contains("DHCP=yes\n") && file.contains(&format!("DNS={SERVER_IP}\n")), "{file}");

    let state = value(&d.send("get_state", json!([]))).clone();
    let got = &state["networks"]["default"];
    let ip = got["ip"].as_str().unwrap_or_default().to_string();
    assert!(leased(&ip, "10.0.2"), "get_state: {state}\n{}", lan.diagnostics());
    assert_eq!((&got["netmask"], &got["gateway"]), (&json!("255.255.255.0"), &json!(SERVER_IP)), "{state}");
    assert_eq!(got["cloud_properties"], json!({"subnet": "s-1"}), "other keys are kept: {state}");
    let dnsmasq = lan.dnsmasq_log(0);
    assert!(dnsmasq.contains(&format!("DHCPACK({}) {ip} {}", nic.server_if, nic.mac)), "{dnsmasq}");

    // The director sends dynamic networks without an address and copies back what apply reports.
    let spec = json!({"deployment": "d", "job": null, "packages": {}, "configuration_hash": "",
                      "networks": {"default": {"type": "dynamic", "cloud_properties": {"subnet": "s-1"}}}});
    assert_eq!(d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    let state = value(&d.send("get_state", json!([]))).clone();
    let applied = &state["networks"]["default"];
    assert_eq!(
        (&applied["ip"], &applied["netmask"], &applied["gateway"]),
        (&json!(ip), &json!("255.255.255.0"), &json!(SERVER_IP)),
        "{state}"
    );
    let stranger = json!({"deployment": "d", "job": null, "configuration_hash": "",
                          "networks": {"other": {"type": "dynamic"}}});
    let reply = d.run_task("apply", json!([stranger]));
    let e = exception(&reply);
    assert!(e.ends_with("result: Network 'other' is not found in settings"), "{e}");
}

#[test]
fn three_nics_get_their_networks_by_mac_and_one_default_route() {
    let Some(lan) = Lan::start(3) else { return };
    let _server_side = lan.enter_server();
    let net = Net::start();
    let (first, second, third) = (&lan.links[0], &lan.links[1], &lan.links[2]);
    let id = format!("nics-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let networks = json!({
        "public": {"type": "dynamic", "mac": first.mac, "default": ["dns", "gateway"]},
        "private": {"type": "manual", "mac": second.mac.to_ascii_uppercase(), "ip": "10.0.3.7",
                    "netmask": "255.255.255.0", "gateway": second.server_ip,
                    "routes": [{"destination": "192.168.50.0", "netmask": "255.255.255.0", "gateway": second.server_ip}]},
        "backend": {"type": "dynamic", "mac": third.mac}
    });
    let agent = net.agent(&lan, &net.settings(&id, networks));
    let mut d = Director::connect(&net.pki, &net.nats.url(), &id);
    ready(&mut d, &agent, &lan);
    // Before the settings, every NIC asked DHCP (none could be told apart yet).
    let names = format!("{}, {}, {}", first.client_if, second.client_if, third.client_if);
    assert!(agent.log().contains(&format!("bringing up DHCP on {names}")), "{}", agent.log());

    // The static address is really there (the agent checked it too), the route as well, and only
    // the default network's NIC holds a default route.
    let addrs = lan.client_ip(&["-4", "-o", "addr", "show", "dev", &second.client_if]);
    assert!(addrs.contains("inet 10.0.3.7/24"), "{addrs}\n{}", lan.diagnostics());
    let routes = lan.client_ip(&["-4", "route"]);
    let defaults: Vec<&str> = routes.lines().filter(|l| l.starts_with("default")).collect();
    assert_eq!(defaults.len(), 1, "{routes}");
    assert!(defaults[0].contains(&format!("via {SERVER_IP} dev {}", first.client_if)), "{routes}");
    assert!(
        routes.contains(&format!("192.168.50.0/24 via {} dev {}", second.server_ip, second.client_if)),
        "{routes}"
    );
    let dynamic_file = net.network_file(&first.client_if);
    assert!(dynamic_file.contains("DHCP=yes\n") && !dynamic_file.contains("UseRoutes"), "{dynamic_file}");
    let backend_file = net.network_file(&third.client_if);
    assert!(backend_file.contains("DHCP=yes\n") && backend_file.contains("UseRoutes=no\n"), "{backend_file}");

    let state = value(&d.send("get_state", json!([]))).clone();
    let nets = &state["networks"];
    assert!(leased(nets["public"]["ip"].as_str().unwrap_or_default(), "10.0.2"), "{state}");
    assert_eq!(nets["private"]["ip"], "10.0.3.7", "static networks are reported as given: {state}");
    assert!(nets["private"].get("resolved").is_none(), "{state}");
    // Each dynamic network reports its own NIC's lease (the Go agent would report the default
    // route's NIC for both); the backend NIC has no default route, so no gateway.
    assert!(leased(nets["backend"]["ip"].as_str().unwrap_or_default(), "10.0.4"), "{state}");
    assert_eq!(
        (&nets["public"]["gateway"], &nets["backend"]["gateway"]),
        (&json!(SERVER_IP), &json!(null)),
        "{state}"
    );
    // One file per NIC, named by interface; the bootstrap DHCP files were replaced, not added to.
    let dir = net.root.path().join("etc/systemd/network");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("network dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = lan.links.iter().map(|l| format!("10_{}.network", l.client_if)).collect();
    assert_eq!(names, want);
}
