//! A small LAN for DHCP tests, made of real parts: two network namespaces joined by veth pairs, a
//! real DHCP server (dnsmasq) on the server side, and on the client side the DHCP client the agent
//! drives on a stemcell, systemd-networkd, started by a `restart_networking` script as the stemcell's
//! is. The host's own network is never touched; everything is removed on drop.
//!
//! The server namespace holds `10.0.2.100` (the address the test PKI's server certificates name, as
//! for the VM test) on its first link, so a nats-server and a metadata service started there (by a
//! test thread that [`Lan::enter_server`]) are reachable from the client side with TLS checks
//! intact. Further links get `10.0.<2+i>.1`. dnsmasq leases `.50`–`.99` of each, with the server's
//! address as router.
//!
//! The agent runs in the client namespace ([`Lan::client_command`]) inside its own mount namespace,
//! where `/sys` is a fresh read-only sysfs of that namespace (networkd waits for udev otherwise), the
//! scratch root's `sys` is that same sysfs (the agent finds its NICs there), `/etc/systemd/network`
//! is the scratch root's (the agent's files are networkd's), and `/run/systemd` is a private tmpfs.
//! veth NICs have no `device` in sysfs, so each gets the `bosh-interface-<i>` alias the agent's NIC
//! detection accepts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tempfile::TempDir;

/// The server side's first address, also a SAN of the test PKI's server certificates.
pub const SERVER_IP: &str = "10.0.2.100";
/// systemd-networkd as Debian installs it.
pub const NETWORKD: &str = "/lib/systemd/systemd-networkd";

/// One veth pair: its server-side name and address, its client-side name and MAC.
pub struct Link {
    /// The server end.
    pub server_if: String,
    /// The server end's address (the router and DHCP server of this link).
    pub server_ip: String,
    /// The client end (a NIC of the agent's VM).
    pub client_if: String,
    /// The client end's MAC, lower case.
    pub mac: String,
}

/// Two network namespaces, their links and the DHCP servers; all removed on drop.
pub struct Lan {
    /// The server namespace's name.
    pub srv: String,
    /// The client namespace's name.
    pub cli: String,
    /// The links, in order.
    pub links: Vec<Link>,
    dnsmasq: Vec<Child>,
    dir: TempDir,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why a LAN cannot be built here, if it cannot.
fn missing_parts() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces)".into());
    }
    if Command::new("dnsmasq").arg("--version").output().is_err() {
        return Some("dnsmasq is not installed (dnsmasq-base)".into());
    }
    if !Path::new(NETWORKD).exists() {
        return Some(format!("{NETWORKD} is not installed (systemd)"));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("ip is not installed (iproute2)".into());
    }
    None
}

impl Lan {
    /// Builds the namespaces and `links` links with a DHCP server on each. `None`, said loudly, when
    /// this machine cannot (not root, parts missing); under `CI=true` that fails the test instead,
    /// because CI runs as root with `scripts/prerequisites` installed.
    pub fn start(links: usize) -> Option<Lan> {
        if let Some(why) = missing_parts() {
            let msg = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: no DHCP test LAN here: {why}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            eprintln!("{msg}");
            println!("{msg}");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true requires the DHCP tests: {why}");
            return None;
        }
        let tag = &bosh_agent::ids::uuid_v4()[..8];
        let dir = tempfile::tempdir().expect("LAN scratch dir");
        let mut lan = Lan {
            srv: format!("b13s{tag}"),
            cli: format!("b13c{tag}"),
            links: Vec::new(),
            dnsmasq: Vec::new(),
            dir,
        };
        ip(&["netns", "add", &lan.srv]).expect("server namespace");
        ip(&["netns", "add", &lan.cli]).expect("client namespace");
        for ns in [&lan.srv, &lan.cli] {
            ip(&["-n", ns, "link", "set", "lo", "up"]).expect("lo up");
        }
        for i in 0..links {
            let (server_if, client_if) = (format!("s{tag}{i}"), format!("c{tag}{i}"));
            let server_ip = if i == 0 { SERVER_IP.to_string() } else { format!("10.0.{}.1", 2 + i) };
            ip(&[
                "link", "add", &server_if, "netns", &lan.srv, "type", "veth", "peer", "name", &client_if,
                "netns", &lan.cli,
            ])
            .expect("veth pair");
            ip(&["-n", &lan.srv, "addr", "add", &format!("{server_ip}/24"), "dev", &server_if])
                .expect("address");
            ip(&["-n", &lan.srv, "link", "set", &server_if, "up"]).expect("server end up");
            ip(&["-n", &lan.cli, "link", "set", &client_if, "alias", &format!("bosh-interface-{i}")])
                .expect("alias");
            let show = ip(&["-n", &lan.cli, "-o", "link", "show", &client_if]).expect("client end");
            let mac = show
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .expect("client MAC")
                .to_ascii_lowercase();
            let net = server_ip.rsplit_once('.').map(|(n, _)| n.to_string()).unwrap_or_default();
            let leases = lan.dir.path().join(format!("leases-{i}"));
            let log = std::fs::File::create(lan.dir.path().join(format!("dnsmasq-{i}.log"))).expect("log");
            let child = Command::new("ip")
                .args(["netns", "exec", &lan.srv, "dnsmasq", "--no-daemon", "--conf-file=/dev/null"])
                .args(["--no-resolv", "--no-hosts", "--port=0", "--bind-interfaces", "--log-dhcp"])
                .arg(format!("--interface={server_if}"))
                .arg(format!("--dhcp-range={net}.50,{net}.99,255.255.255.0,1h"))
                .arg(format!("--dhcp-option=option:router,{server_ip}"))
                .arg(format!("--dhcp-leasefile={}", leases.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("starting dnsmasq");
            lan.dnsmasq.push(child);
            lan.links.push(Link { server_if, server_ip, client_if, mac });
        }
        Some(lan)
    }

    /// Moves the calling thread into the server namespace until the guard drops: servers it starts
    /// (nats-server, the metadata service on `0.0.0.0`) listen there, clients it connects go there.
    /// Threads it spawns meanwhile stay there.
    pub fn enter_server(&self) -> NsGuard {
        NsGuard::enter(&format!("/var/run/netns/{}", self.srv))
    }

    /// The command line that runs a program (appended to it) in the client namespace with the
    /// mounts described in the module doc, for an agent whose root dir is `root`.
    pub fn client_wrapper(&self, root: &Path) -> Vec<String> {
        let root = root.display();
        let setup = format!(
            "set -e\n\
             umount -l /sys\n\
             mount -t sysfs -o ro sysfs /sys\n\
             mkdir -p '{root}/sys' '{root}/etc/systemd/network'\n\
             mount --bind /sys '{root}/sys'\n\
             mount --bind '{root}/etc/systemd/network' /etc/systemd/network\n\
             mount -t tmpfs -o mode=0755 tmpfs /run/systemd\n\
             mkdir /run/systemd/netif\n\
             chown systemd-network:systemd-network /run/systemd/netif\n\
             exec \"$@\"\n"
        );
        [
            "ip",
            "netns",
            "exec",
            &self.cli,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &setup,
            "sh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A stand-in for the stemcell's `restart_networking` (`systemctl restart systemd-networkd`):
    /// stops the namespace's networkd if it runs and starts it again, detached, logging to
    /// [`Lan::networkd_log`]. Written to `bin/restart_networking` under `base/bosh`.
    pub fn install_restart_networking(&self, base: &Path) {
        let pid = self.dir.path().join("networkd.pid");
        let log = self.networkd_log();
        let script = format!(
            "#!/bin/sh\n\
             # Test stand-in for the stemcell's restart_networking: restarts this namespace's networkd.\n\
             pid=$(cat '{pid}' 2>/dev/null || true)\n\
             if [ -n \"$pid\" ] && kill \"$pid\" 2>/dev/null; then\n\
             \x20 for i in $(seq 200); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.05; done\n\
             fi\n\
             echo \"--- restart $(date +%T.%N)\" >>'{log}'\n\
             setsid {NETWORKD} </dev/null >>'{log}' 2>&1 &\n\
             echo $! >'{pid}'\n",
            pid = pid.display(),
            log = log.display()
        );
        let bin = base.join("bosh/bin");
        std::fs::create_dir_all(&bin).expect("bosh/bin");
        let path = bin.join("restart_networking");
        std::fs::write(&path, script).expect("restart_networking");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// What networkd logged (every start).
    pub fn networkd_log(&self) -> PathBuf {
        self.dir.path().join("networkd.log")
    }

    /// What dnsmasq logged on link `i`.
    pub fn dnsmasq_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("dnsmasq-{i}.log"))).unwrap_or_default()
    }

    /// `ip` run in the client namespace (its output).
    pub fn client_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.cli.as_str()];
        all.extend_from_slice(args);
        ip(&all).unwrap_or_else(|e| e)
    }

    /// Everything that helps when a test fails: networkd's and dnsmasq's logs, the client's
    /// addresses and routes.
    pub fn diagnostics(&self) -> String {
        let networkd = std::fs::read_to_string(self.networkd_log()).unwrap_or_default();
        let dnsmasq: Vec<String> = (0..self.links.len()).map(|i| self.dnsmasq_log(i)).collect();
        format!(
            "--- networkd\n{networkd}\n--- dnsmasq\n{}\n--- client addresses\n{}\n--- client routes\n{}",
            dnsmasq.join("\n"),
            self.client_ip(&["-br", "addr"]),
            self.client_ip(&["route"])
        )
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in &mut self.dnsmasq {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever still runs in the namespaces was started by this test (the agent, networkd).
        for ns in [&self.cli, &self.srv] {
            for pid in ip(&["netns", "pids", ns]).unwrap_or_default().split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) on a process of this test's own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for ns in [&self.cli, &self.srv] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The calling thread's network namespace, restored on drop.
pub struct NsGuard {
    original: std::fs::File,
}

impl NsGuard {
    fn enter(path: &str) -> NsGuard {
        let original = std::fs::File::open("/proc/thread-self/ns/net").expect("own network namespace");
        let target = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a namespace file this thread just opened; it affects this thread only.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "entering {path}: {}", std::io::Error::last_os_error());
        NsGuard { original }
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `enter`, back to the namespace the thread came from.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
