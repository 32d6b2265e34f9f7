//! What DHCP gave the VM, for the networks the director marked dynamic: the director learns a
//! dynamic network's address only from the agent (`apply` and `get_state` report it). A DHCP network
//! gets its interface's address (IPv4, or IPv6 for a network whose `prefix` is 128) with the
//! address's netmask and the gateway of that interface's default route, and is marked `resolved`.
//!
//! Which interface: the one with the network's MAC; for a network without one, the interface of the
//! default route, as the Go agent does for every DHCP network, or with no default route the only NIC
//! that has an address. Deliberate differences: the Go agent
//! gives every DHCP network the default route's interface even when it names another NIC by MAC
//! (wrong for a second dynamic NIC), and reports nothing when there is no default route (a network
//! with no router, such as qemu's restricted user network), where this agent still reports the
//! address, without a gateway.
//!
//! Read from the kernel of the agent's own network namespace (`/proc/net/route`,
//! `/proc/net/ipv6_route`, `getifaddrs`), not from files under the root dir: these are reads of live
//! state, and they are what the agent's own traffic uses. The NICs' MACs come from the sysfs under
//! the root dir, as everywhere else.

use super::nics::Nic;
use super::{is_dhcp, mask_prefix};
use crate::settings::{Network, Prefix};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The default route's interface and gateway, and that interface's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The interface holding the default route.
    pub iface: String,
    /// Its address.
    pub ip: IpAddr,
    /// The address's netmask, dotted (`255.255.255.0`) or, for IPv6, as an address (`ffff:ffff::`).
    pub netmask: String,
    /// The default route's next hop, if it has one.
    pub gateway: Option<IpAddr>,
}

/// A default route: its interface, its gateway (if it has one) and its metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    /// The interface it leaves by.
    pub iface: String,
    /// The next hop.
    pub gateway: Option<IpAddr>,
    /// Lower wins.
    pub metric: u32,
}

/// The usable default routes in `/proc/net/route` text, lowest metric first.
pub fn default_routes_v4(table: &str) -> Vec<DefaultRoute> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(flags), Some(metric), Some(mask)) =
            (hex(f[1]), hex(f[2]), hex(f[3]), f[6].parse::<u32>().ok(), hex(f[7]))
        else {
            continue;
        };
        // RTF_UP, and a default route: destination and mask 0.
        if flags & 0x1 == 0 || dest != 0 || mask != 0 {
            continue;
        }
        // The file holds the address in network byte order, printed as a host-order number.
        let gateway = (gw != 0).then(|| IpAddr::V4(Ipv4Addr::from(u32::from_be(gw))));
        out.push(DefaultRoute { iface: f[0].to_string(), gateway, metric });
    }
    crate::order::sort_by_key(&mut out, |r| r.metric);
    out
}

/// The usable default routes in `/proc/net/ipv6_route` text, lowest metric first.
pub fn default_routes_v6(table: &str) -> Vec<DefaultRoute> {
    let mut out = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Ok(dest), Ok(len), Ok(hop), Ok(metric), Ok(flags)) = (
            u128::from_str_radix(f[0], 16),
            u8::from_str_radix(f[1], 16),
            u128::from_str_radix(f[4], 16),
            u32::from_str_radix(f[5], 16),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        // RTF_UP without RTF_REJECT (the kernel's unreachable defaults on `lo`).
        if dest != 0 || len != 0 || flags & 0x1 == 0 || flags & 0x200 != 0 || f[9] == "lo" {
            continue;
        }
        let gateway = (hop != 0).then(|| IpAddr::V6(Ipv6Addr::from(hop)));
        out.push(DefaultRoute { iface: f[9].to_string(), gateway, metric });
    }
    crate::order::sort_by_key(&mut out, |r| r.metric);
    out
}

/// Each address of the interfaces: `(interface, address, prefix length)`.
pub fn interface_addresses() -> Vec<(String, IpAddr, u8)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list it owns until freeifaddrs; every pointer is checked for null
    // and read only while the list lives, as the family field says it is laid out.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let (addr, mask) = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let m = (!ifa.ifa_netmask.is_null()).then(|| {
                        u32::from_be((*(ifa.ifa_netmask as *const libc::sockaddr_in)).sin_addr.s_addr)
                    });
                    let mask = m.map(|m| IpAddr::V4(Ipv4Addr::from(m)));
                    (IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))), mask)
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let mask = (!ifa.ifa_netmask.is_null()).then(|| {
                        IpAddr::V6(Ipv6Addr::from(
                            (*(ifa.ifa_netmask as *const libc::sockaddr_in6)).sin6_addr.s6_addr,
                        ))
                    });
                    (IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)), mask)
                }
                _ => continue,
            };
            let prefix = mask.and_then(mask_prefix).unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
            out.push((name, addr, prefix));
        }
        libc::freeifaddrs(head);
    }
    out
}

fn global_unicast(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => !(v.is_loopback() || v.is_link_local() || v.is_unspecified() || v.is_multicast()),
        IpAddr::V6(v) => {
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (v.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The interface's primary address of the family: the first global one (IPv4 falls back to any).
pub fn primary_address(addrs: &[(String, IpAddr, u8)], iface: &str, v6: bool) -> Option<(IpAddr, u8)> {
    let mine: Vec<(IpAddr, u8)> =
        addrs.iter().filter(|(n, a, _)| n == iface && a.is_ipv6() == v6).map(|(_, a, p)| (*a, *p)).collect();
    mine.iter().find(|(a, _)| global_unicast(a)).or(if v6 { None } else { mine.first() }).copied()
}

/// The netmask of a prefix length, as the Go agent prints it.
pub fn netmask_text(prefix: u8, v6: bool) -> String {
    if v6 {
        let bits = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
        Ipv6Addr::from(bits).to_string()
    } else {
        let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
        Ipv4Addr::from(bits).to_string()
    }
}

/// The kernel's routes and addresses, read once for all the networks of one report.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// IPv4 default routes, lowest metric first.
    pub v4: Vec<DefaultRoute>,
    /// IPv6 default routes, lowest metric first.
    pub v6: Vec<DefaultRoute>,
    /// Every interface address: `(interface, address, prefix length)`.
    pub addrs: Vec<(String, IpAddr, u8)>,
}

impl Live {
    /// What the kernel of the agent's network namespace says now.
    pub fn read() -> Live {
        let table = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Live {
            v4: default_routes_v4(&table("/proc/net/route")),
            v6: default_routes_v6(&table("/proc/net/ipv6_route")),
            addrs: interface_addresses(),
        }
    }

    /// What DHCP gave network `n` (see the module doc); `None` when its interface has no address of
    /// the family.
    pub fn lease(&self, nics: &[Nic], n: &Network, v6: bool) -> Option<Resolved> {
        let routes = if v6 { &self.v6 } else { &self.v4 };
        let by_mac = nics.iter().find(|c| !n.mac.is_empty() && c.mac.eq_ignore_ascii_case(n.mac.trim()));
        let only_addressed = || {
            let mut with = nics.iter().filter(|c| primary_address(&self.addrs, &c.name, v6).is_some());
            match (with.next(), with.next()) {
                (Some(only), None) => Some(only.name.clone()),
                _ => None,
            }
        };
        let iface = match (by_mac, routes.first()) {
            (Some(nic), _) => nic.name.clone(),
            (None, Some(default)) => default.iface.clone(),
            (None, None) => only_addressed()?,
        };
        let (ip, prefix) = primary_address(&self.addrs, &iface, v6)?;
        let gateway = routes.iter().find(|r| r.iface == iface).and_then(|r| r.gateway);
        Some(Resolved { iface, ip, netmask: netmask_text(prefix, v6), gateway })
    }
}

/// Whether a DHCP network's address should come from the default route (the Go agent's rule: only
/// when its `prefix` is unset, 32 or 128, i.e. it does not describe a delegated range).
fn resolvable(n: &Network) -> bool {
    is_dhcp(n)
        && match &n.prefix {
            None => true,
            Some(Prefix::Text(t)) if t.is_empty() => true,
            Some(p) => matches!(p.length(), Some(32) | Some(128)),
        }
}

/// Fills `ip`, `netmask` and `gateway` of the DHCP networks from `lookup(network, v6)` and marks
/// them `resolved`; networks the lookup has nothing for are left as they are.
pub fn fill_dhcp(
    networks: &mut BTreeMap<String, Network>,
    lookup: impl Fn(&Network, bool) -> Option<Resolved>,
) {
    for (name, n) in networks.iter_mut().filter(|(_, n)| resolvable(n)) {
        let v6 = n.prefix.as_ref().and_then(Prefix::length) == Some(128);
        match lookup(n, v6) {
            Some(r) => {
                n.ip = r.ip.to_string();
                n.netmask = r.netmask;
                n.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
                n.resolved = true;
            }
            None => log::debug!("network {name}: no interface address to report as its DHCP lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth1\t00000000\t0102000A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
        eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
        eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";

    const ROUTE6: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
        00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
        fd000000000000000000000000000000 40 00000000000000000000000000000000 00 \
        00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
        fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";

    fn route(iface: &str, gw: &str, metric: u32) -> DefaultRoute {
        DefaultRoute { iface: iface.into(), gateway: Some(gw.parse().unwrap()), metric }
    }

    #[test]
    fn parses_the_kernels_default_routes() {
        assert_eq!(
            default_routes_v4(ROUTE),
            vec![route("eth0", "192.168.0.1", 100), route("eth1", "10.0.2.1", 200)]
        );
        assert_eq!(default_routes_v4("Iface\tDestination\n"), vec![]);
        assert_eq!(default_routes_v6(ROUTE6), vec![route("eth0", "fd00::1", 1024)]);
        assert_eq!(netmask_text(24, false), "255.255.255.0");
        assert_eq!(netmask_text(0, false), "0.0.0.0");
        assert_eq!(netmask_text(64, true), "ffff:ffff:ffff:ffff::");
    }

    #[test]
    fn picks_the_primary_address_and_fills_only_dhcp_networks() {
        let addrs = vec![
            ("eth0".to_string(), "169.254.1.1".parse().unwrap(), 16),
            ("eth0".to_string(), "10.0.0.7".parse().unwrap(), 24),
            ("eth0".to_string(), "fe80::1".parse().unwrap(), 64),
            ("eth0".to_string(), "fd00::7".parse().unwrap(), 64),
        ];
        assert_eq!(primary_address(&addrs, "eth0", false), Some(("10.0.0.7".parse().unwrap(), 24)));
        assert_eq!(primary_address(&addrs, "eth0", true), Some(("fd00::7".parse().unwrap(), 64)));
        assert_eq!(primary_address(&addrs, "eth1", false), None);
        let mut nets: BTreeMap<String, Network> = serde_json::from_value(json!({
            "dyn": {"type": "dynamic", "cloud_properties": {"a": 1}},
            "six": {"type": "dynamic", "prefix": 128},
            "range": {"type": "dynamic", "prefix": "28"},
            "man": {"type": "manual", "ip": "10.1.0.5", "netmask": "255.255.255.0"},
            "vip": {"type": "vip", "ip": "1.2.3.4"}
        }))
        .unwrap();
        let before = nets.clone();
        fill_dhcp(&mut nets, |_, v6| {
            Some(Resolved {
                iface: "eth0".into(),
                ip: if v6 { "fd00::7".parse().unwrap() } else { "10.0.0.7".parse().unwrap() },
                netmask: netmask_text(if v6 { 64 } else { 24 }, v6),
                gateway: Some(if v6 { "fd00::1".parse().unwrap() } else { "10.0.0.1".parse().unwrap() }),
            })
        });
        let d = &nets["dyn"];
        assert_eq!(
            (d.ip.as_str(), d.netmask.as_str(), d.gateway.as_str(), d.resolved),
            ("10.0.0.7", "255.255.255.0", "10.0.0.1", true)
        );
        assert_eq!(d.extra["cloud_properties"], json!({"a": 1}));
        assert_eq!((nets["six"].ip.as_str(), nets["six"].gateway.as_str()), ("fd00::7", "fd00::1"));
        for kept in ["range", "man", "vip"] {
            assert_eq!(nets[kept], before[kept], "{kept}");
        }
        let mut untouched = before.clone();
        fill_dhcp(&mut untouched, |_, _| None);
        assert_eq!(untouched, before, "nothing known: nothing changed");
    }

    #[test]
    fn a_lease_is_its_nics_address_with_that_nics_gateway() {
        let nics = [
            Nic { name: "eth0".into(), mac: "aa:bb:cc:dd:ee:01".into() },
            Nic { name: "eth1".into(), mac: "aa:bb:cc:dd:ee:02".into() },
        ];
        let addrs = vec![
            ("eth0".to_string(), "10.0.0.7".parse().unwrap(), 24),
            ("eth1".to_string(), "10.1.0.9".parse().unwrap(), 16),
        ];
        let live = Live { v4: vec![route("eth0", "10.0.0.1", 100)], v6: vec![], addrs };
        let net = |mac: &str| Network { kind: "dynamic".into(), mac: mac.into(), ..Network::default() };
        let first = live.lease(&nics, &net("AA:BB:CC:DD:EE:01"), false).unwrap();
        assert_eq!(
            (first.ip.to_string(), first.gateway),
            ("10.0.0.7".into(), Some("10.0.0.1".parse().unwrap()))
        );
        let second = live.lease(&nics, &net("aa:bb:cc:dd:ee:02"), false).unwrap();
        assert_eq!(
            (second.ip.to_string(), second.netmask.as_str(), second.gateway),
            ("10.1.0.9".into(), "255.255.0.0", None)
        );
        let anonymous = live.lease(&nics, &net(""), false).unwrap();
        assert_eq!(anonymous.iface, "eth0", "no MAC: the default route's interface");
        assert_eq!(live.lease(&nics, &net(""), true), None, "no IPv6 route or address");
        // No router at all (qemu's restricted network): the NIC's address still, without a gateway.
        let routerless = Live { v4: vec![], ..live.clone() };
        let r = routerless.lease(&nics, &net("aa:bb:cc:dd:ee:01"), false).unwrap();
        assert_eq!((r.ip.to_string(), r.gateway), ("10.0.0.7".into(), None));
        assert_eq!(routerless.lease(&nics, &net(""), false), None, "two NICs with addresses: which?");
        let r = routerless.lease(&nics[..1], &net(""), false).unwrap();
        assert_eq!(r.iface, "eth0", "the only NIC with an address");
    }
}
