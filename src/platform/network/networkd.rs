//! systemd-networkd files from the director's networks, per interface as the Go agent writes them
//! (`/etc/systemd/network/10_<iface>.network`, `[Match] Name=<iface>`), so a stemcell moving
//! between agents keeps meaningful files and the "is any NIC configured yet" check before metadata
//! requests finds them. A pure function from networks and detected NICs to file contents.
//!
//! Which network goes on which NIC (the Go agent's rules):
//! - `vip` networks are the infrastructure's business: no file.
//! - One network without a MAC and exactly one NIC: that NIC.
//! - Otherwise a network with a `mac` goes on the NIC with that MAC (no such NIC is an error); a NIC
//!   that no network names gets DHCP; a network without a MAC goes on the interface its `alias`
//!   names, and without an alias it cannot be placed and is left out (logged): so several networks
//!   without MACs never fail the boot, every NIC just asks DHCP.
//! - A network is DHCP when it is dynamic (see [`super::is_dhcp`]) or has no MAC, unless it has an
//!   alias; otherwise static. Static aliases `eth0:1` become labelled extra addresses of `eth0`.
//! - Only the network(s) whose `default` has `gateway` install a default route: static files get
//!   `Gateway=` only then, DHCP files say `UseRoutes=no` on the other NICs (when any network is the
//!   default). The DNS servers (of the network that is the default for `dns`) go into every file.
//!
//! MACs compare without regard to case (sysfs writes lower case, CPIs do not always).

use super::nics::Nic;
use super::{broadcast, ip, is_dhcp, is_vip, prefix_of, GENERATED};
use crate::settings::{Network, Route};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

/// What the networks ask of the interfaces.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// `(file name, contents)` under `/etc/systemd/network`, sorted by name.
    pub files: Vec<(String, String)>,
    /// The static addresses (not aliases) that must be on their interfaces once networkd applied
    /// the files.
    pub static_addresses: Vec<(String, IpAddr)>,
    /// Whether any interface gets an IPv6 address (the kernel must have IPv6 enabled first).
    pub ipv6: bool,
}

struct Dhcp {
    iface: String,
    routes: Vec<Route>,
    v6: bool,
    default_gateway: bool,
    network: String,
}

struct Static {
    iface: String,
    addr: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    default_gateway: bool,
    routes: Vec<Route>,
    labels: Vec<(String, IpAddr, u8)>,
    network: String,
}

/// The `.network` file name of `iface`.
pub fn file_name(iface: &str) -> String {
    format!("10_{iface}.network")
}

/// An interface name from settings (an alias): what the kernel would accept and nothing that could
/// leave the directory or break a file.
fn valid_iface(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

/// Places `networks` on `nics` and renders their files; `dns` goes into every file.
pub fn plan(networks: &BTreeMap<String, Network>, nics: &[Nic], dns: &[IpAddr]) -> Result<Plan, String> {
    let real: Vec<(&String, &Network)> = networks.iter().filter(|(_, n)| !is_vip(n)).collect();
    let mut dhcp: Vec<Dhcp> = Vec::new();
    let mut statics: Vec<Static> = Vec::new();
    {
        let mut place = |iface: &str, name: &str, n: &Network, mac_known: bool| -> Result<(), String> {
            match configure(iface, name, n, mac_known)? {
                Placed::Dhcp(d) => dhcp.push(d),
                Placed::Static(s) => statics.push(s),
            }
            Ok(())
        };
        let single = real.len() == 1 && nics.len() == 1 && real[0].1.mac.is_empty();
        if single {
            let (name, n) = real[0];
            place(&nics[0].name, name, n, true)?;
        } else {
            for (name, n) in &real {
                if !n.mac.is_empty() && !nics.iter().any(|c| c.mac.eq_ignore_ascii_case(n.mac.trim())) {
                    return Err(format!("No device found for network '{name}' with MAC address '{}'", n.mac));
                }
            }
            for nic in nics {
                let mut mine =
                    real.iter().filter(|(_, n)| n.mac.trim().eq_ignore_ascii_case(&nic.mac)).peekable();
                if mine.peek().is_none() {
                    log::info!(
                        "network interface {} ({}) is on none of the networks: DHCP",
                        nic.name,
                        nic.mac
                    );
                    place(&nic.name, "", &Network::default(), false)?;
                }
                for (name, n) in mine {
                    place(&nic.name, name, n, true)?;
                }
            }
            for (name, n) in real.iter().filter(|(_, n)| n.mac.is_empty()) {
                if n.alias.is_empty() {
                    log::info!(
                        "network {name} has neither a mac nor an alias: with {} interfaces its own cannot be told \
                         apart, so it is not configured (interfaces no network names use DHCP)",
                        nics.len()
                    );
                    continue;
                }
                if !valid_iface(&n.alias) {
                    return Err(format!(
                        "network {name}: alias '{}' is not an interface name",
                        n.alias.escape_debug()
                    ));
                }
                place(&n.alias, name, n, false)?;
            }
        }
    }
    // Aliases (`eth0:1`) become labelled addresses of their interface's static configuration.
    let (labels, mut statics): (Vec<Static>, Vec<Static>) =
        statics.into_iter().partition(|s| s.iface.contains(':'));
    for l in labels {
        let base = l.iface.split(':').next().unwrap_or_default().to_string();
        match statics.iter_mut().find(|s| s.iface == base) {
            Some(s) => s.labels.push((l.iface, l.addr, l.prefix)),
            None => log::info!(
                "network {}: alias {} has no static configuration of {base} to join; left out",
                l.network,
                l.iface
            ),
        }
    }
    crate::order::sort_by(&mut statics, |a, b| a.iface.cmp(&b.iface));
    let any_default = dhcp.iter().any(|d| d.default_gateway) || statics.iter().any(|s| s.default_gateway);
    let mut by_iface: BTreeMap<&str, Vec<&Dhcp>> = BTreeMap::new();
    for d in &dhcp {
        by_iface.entry(&d.iface).or_default().push(d);
    }
    let mut out = Plan::default();
    for (iface, configs) in &by_iface {
        if statics.iter().any(|s| s.iface == *iface) {
            return Err(format!("interface {iface} is both static ({}) and DHCP", names(configs)));
        }
        let v6 = configs.iter().any(|c| c.v6);
        out.ipv6 |= v6;
        let mut f = Ini::new();
        f.section("Match").key("Name", iface);
        f.section("Network").key("DHCP", "yes");
        if v6 {
            f.key("IPv6AcceptRA", "true");
        }
        for d in dns {
            f.key("DNS", d);
        }
        f.section("DHCP").key("UseDomains", "yes").key("UseMTU", "yes");
        if any_default && !configs.iter().any(|c| c.default_gateway) {
            f.key("UseRoutes", "no");
        }
        for c in configs {
            routes(&mut f, &c.network, &c.routes)?;
        }
        out.files.push((file_name(iface), f.render()));
    }
    for s in &statics {
        let v6 = s.addr.is_ipv6();
        out.ipv6 |= v6;
        out.static_addresses.push((s.iface.clone(), s.addr));
        let mut f = Ini::new();
        f.section("Match").key("Name", &s.iface);
        f.section("Address").key("Address", format!("{}/{}", s.addr, s.prefix));
        if s.default_gateway {
            if let Some(b) = broadcast(s.addr, s.prefix) {
                f.key("Broadcast", b);
            }
        }
        for (label, addr, prefix) in &s.labels {
            f.section("Address").key("Label", label).key("Address", format!("{addr}/{prefix}"));
        }
        f.section("Network");
        if let (true, Some(gw)) = (s.default_gateway, s.gateway) {
            f.key("Gateway", gw);
        }
        if v6 {
            f.key("IPv6AcceptRA", "true");
        }
        for d in dns {
            f.key("DNS", d);
        }
        routes(&mut f, &s.network, &s.routes)?;
        out.files.push((file_name(&s.iface), f.render()));
    }
    crate::order::sort(&mut out.files);
    Ok(out)
}

enum Placed {
    Dhcp(Dhcp),
    Static(Static),
}

/// The configuration of network `name` on `iface`: DHCP when it is dynamic or its NIC is not known
/// by MAC (unless an alias names the interface), else static.
fn configure(iface: &str, name: &str, n: &Network, mac_known: bool) -> Result<Placed, String> {
    if (is_dhcp(n) || !mac_known) && n.alias.is_empty() {
        return Ok(Placed::Dhcp(Dhcp {
            iface: iface.into(),
            routes: n.routes.clone(),
            v6: n.ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()),
            default_gateway: n.is_default_for("gateway"),
            network: name.into(),
        }));
    }
    let addr = ip(name, "ip", &n.ip)?;
    let prefix = prefix_of(name, n.prefix.as_ref(), &n.netmask, addr)?;
    let gateway = match n.gateway.trim() {
        "" => None,
        gw => Some(ip(name, "gateway", gw)?),
    };
    Ok(Placed::Static(Static {
        iface: iface.into(),
        addr,
        prefix,
        gateway,
        default_gateway: n.is_default_for("gateway"),
        routes: n.routes.clone(),
        labels: Vec::new(),
        network: name.into(),
    }))
}

fn names(configs: &[&Dhcp]) -> String {
    configs.iter().map(|c| c.network.as_str()).filter(|n| !n.is_empty()).collect::<Vec<_>>().join(", ")
}

fn routes(f: &mut Ini, network: &str, routes: &[Route]) -> Result<(), String> {
    for r in routes {
        let dest = ip(network, "route destination", &r.destination)?;
        let prefix = prefix_of(network, r.prefix.as_ref(), &r.netmask, dest)?;
        f.section("Route").key("Destination", format!("{dest}/{prefix}"));
        if !r.gateway.trim().is_empty() {
            f.key("Gateway", ip(network, "route gateway", &r.gateway)?);
        }
    }
    Ok(())
}

/// The Go agent's ini layout: the marker line, then each `[Section]` with its `Key=Value` lines and
/// a blank line.
#[derive(Default)]
struct Ini {
    sections: Vec<(&'static str, Vec<(&'static str, String)>)>,
}

impl Ini {
    fn new() -> Ini {
        Ini::default()
    }

    /// Starts a section; the keys that follow go into it.
    fn section(&mut self, name: &'static str) -> &mut Ini {
        self.sections.push((name, Vec::new()));
        self
    }

    fn key(&mut self, key: &'static str, value: impl std::fmt::Display) -> &mut Ini {
        if let Some((_, keys)) = self.sections.last_mut() {
            keys.push((key, value.to_string()));
        }
        self
    }

    fn render(&self) -> String {
        let mut text = format!("{GENERATED}\n");
        for (name, keys) in &self.sections {
            let _ = writeln!(text, "[{name}]");
            for (k, v) in keys {
                let _ = writeln!(text, "{k}={v}");
            }
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn nets(v: Value) -> BTreeMap<String, Network> {
        serde_json::from_value(v).unwrap()
    }

    fn nic(name: &str, mac: &str) -> Nic {
        Nic { name: name.into(), mac: mac.into() }
    }

    fn dns() -> Vec<IpAddr> {
        vec!["10.0.0.2".parse().unwrap()]
    }

    #[test]
    fn one_network_without_mac_goes_on_the_only_nic() {
        let n = nets(json!({"default": {"type": "manual", "ip": "10.0.0.5", "netmask": "255.255.255.0",
            "gateway": "10.0.0.1", "default": ["dns", "gateway"]}}));
        let p = plan(&n, &[nic("ens4", "aa:bb:cc:dd:ee:01")], &dns()).unwrap();
        assert_eq!(
            p.files,
            vec![(
                "10_ens4.network".to_string(),
                "# Generated by bosh-agent\n[Match]\nName=ens4\n\n[Address]\nAddress=10.0.0.5/24\n\
                 Broadcast=10.0.0.255\n\n[Network]\nGateway=10.0.0.1\nDNS=10.0.0.2\n\n"
                    .to_string()
            )]
        );
        assert_eq!(p.static_addresses, vec![("ens4".to_string(), "10.0.0.5".parse().unwrap())]);
        assert!(!p.ipv6);
        let dynamic = nets(json!({"d": {"type": "dynamic"}}));
        let p = plan(&dynamic, &[nic("eth0", "aa:bb:cc:dd:ee:01")], &[]).unwrap();
        assert_eq!(
            p.files[0].1,
            "# Generated by bosh-agent\n[Match]\nName=eth0\n\n[Network]\nDHCP=yes\n\n\
             [DHCP]\nUseDomains=yes\nUseMTU=yes\n\n"
        );
    }

    #[test]
    fn nics_are_matched_by_mac_and_only_the_default_gateway_takes_dhcp_routes() {
        let n = nets(json!({
            "a": {"type": "manual", "ip": "10.0.0.5", "netmask": "255.255.255.0", "gateway": "10.0.0.1",
                  "default": ["dns", "gateway"], "mac": "AA:BB:CC:DD:EE:02",
                  "routes": [{"destination": "192.168.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.254"}]},
            "b": {"type": "dynamic", "mac": "aa:bb:cc:dd:ee:01", "gateway": "10.1.0.1"},
            "v": {"type": "vip", "ip": "1.2.3.4"}
        }));
        let nics = [
            nic("eth0", "aa:bb:cc:dd:ee:01"),
            nic("eth1", "aa:bb:cc:dd:ee:02"),
            nic("eth2", "aa:bb:cc:dd:ee:03"),
        ];
        let p = plan(&n, &nics, &dns()).unwrap();
        let names: Vec<&str> = p.files.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, ["10_eth0.network", "10_eth1.network", "10_eth2.network"]);
        assert_eq!(
            p.files[0].1,
            "# Generated by bosh-agent\n[Match]\nName=eth0\n\n[Network]\nDHCP=yes\nDNS=10.0.0.2\n\n\
             [DHCP]\nUseDomains=yes\nUseMTU=yes\nUseRoutes=no\n\n"
        );
        assert_eq!(
            p.files[1].1,
            "# Generated by bosh-agent\n[Match]\nName=eth1\n\n[Address]\nAddress=10.0.0.5/24\nBroadcast=10.0.0.255\n\n\
             [Network]\nGateway=10.0.0.1\nDNS=10.0.0.2\n\n[Route]\nDestination=192.168.0.0/16\nGateway=10.0.0.254\n\n"
        );
        assert!(
            p.files[2].1.contains("DHCP=yes\n") && p.files[2].1.contains("UseRoutes=no\n"),
            "unnamed NIC: DHCP"
        );
        let e =
            plan(&nets(json!({"a": {"type": "dynamic", "mac": "aa:bb:cc:dd:ee:09"}, "b": {}})), &nics, &[]);
        assert_eq!(e.unwrap_err(), "No device found for network 'a' with MAC address 'aa:bb:cc:dd:ee:09'");
    }

    #[test]
    fn several_networks_without_macs_leave_every_nic_on_dhcp() {
        let n = nets(json!({
            "a": {"type": "manual", "ip": "10.0.0.5", "netmask": "255.255.255.0", "default": ["gateway"]},
            "b": {"type": "dynamic"}
        }));
        let nics = [nic("eth0", "aa:bb:cc:dd:ee:01"), nic("eth1", "aa:bb:cc:dd:ee:02")];
        let p = plan(&n, &nics, &[]).unwrap();
        assert_eq!(p.files.len(), 2);
        for (_, text) in &p.files {
            assert!(text.contains("DHCP=yes\n") && !text.contains("UseRoutes"), "{text}");
        }
        assert!(p.static_addresses.is_empty());
        // With no NIC at all (a scratch root), nothing can be placed and nothing fails.
        assert_eq!(plan(&n, &[], &[]).unwrap(), Plan::default());
    }

    #[test]
    fn aliases_become_labelled_addresses_and_ipv6_accepts_router_advertisements() {
        let n = nets(json!({
            "a": {"ip": "10.0.0.5", "netmask": "255.255.255.0", "mac": "aa:bb:cc:dd:ee:01", "default": ["gateway"], "gateway": "10.0.0.1"},
            "b": {"ip": "10.0.0.6", "netmask": "255.255.255.0", "alias": "eth0:1"},
            "c": {"ip": "fd00::5", "netmask": "ffff:ffff:ffff:ffff::", "mac": "aa:bb:cc:dd:ee:02", "gateway": "fd00::1"}
        }));
        let nics = [nic("eth0", "aa:bb:cc:dd:ee:01"), nic("eth1", "aa:bb:cc:dd:ee:02")];
        let p = plan(&n, &nics, &[]).unwrap();
        assert_eq!(
            p.files[0].1,
            "# Generated by bosh-agent\n[Match]\nName=eth0\n\n[Address]\nAddress=10.0.0.5/24\nBroadcast=10.0.0.255\n\n\
             [Address]\nLabel=eth0:1\nAddress=10.0.0.6/24\n\n[Network]\nGateway=10.0.0.1\n\n"
        );
        assert_eq!(
            p.files[1].1,
            "# Generated by bosh-agent\n[Match]\nName=eth1\n\n[Address]\nAddress=fd00::5/64\n\n\
             [Network]\nIPv6AcceptRA=true\n\n"
        );
        assert!(p.ipv6);
        assert_eq!(p.static_addresses.len(), 2, "aliases are not checked: {:?}", p.static_addresses);
    }

    #[test]
    fn refuses_what_would_corrupt_a_file() {
        let nics = [nic("eth0", "aa:bb:cc:dd:ee:01")];
        let bad = |v: Value| plan(&nets(v), &nics, &[]).unwrap_err();
        assert!(
            bad(json!({"a": {"ip": "10.0.0.5\nDNS=1.1.1.1", "netmask": "255.0.0.0"}})).contains("not an IP")
        );
        assert!(bad(json!({"a": {"ip": "10.0.0.5", "netmask": "255.0.255.0"}})).contains("contiguous"));
        let alias = json!({"a": {"ip": "10.0.0.5", "netmask": "255.0.0.0", "alias": "../x"}, "b": {}});
        assert!(bad(alias).contains("not an interface name"));
        let route =
            json!({"a": {"type": "dynamic", "routes": [{"destination": "x", "netmask": "255.0.0.0"}]}});
        assert!(bad(route).contains("route destination"));
    }
}
