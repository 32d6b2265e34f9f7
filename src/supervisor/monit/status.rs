//! Monit's `/_status2?format=xml` document, reduced to what job supervision needs.
//!
//! Parsing is kept apart from HTTP so that every rule about monit's numbers (what "starting",
//! "pending" or "errored" mean) is tested against captured documents without a daemon. Monit's answer
//! is outside input: any missing or malformed field reads as "absent" (zero), never as a panic.

use crate::error::Context as _;
use roxmltree::{Document, Node};

/// The `<monit>` element of one status answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// `incarnation`: the daemon's (re)start time in seconds, which is how a reload is observed.
    pub incarnation: String,
    /// Every `services/service`, in document order.
    pub services: Vec<Service>,
    /// Service names listed in `servicegroups/servicegroup[@name="vcap"]`, the group BOSH jobs use.
    pub vcap: Vec<String>,
}

/// One `services/service` element.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Service {
    /// `@name`.
    pub name: String,
    /// `status`: 0 when every check passes, otherwise a bit mask of failed events.
    pub status: u64,
    /// `status_message`, present only when something failed.
    pub status_message: String,
    /// `monitor`: 0 not monitored, 1 monitored, 2 initialising (starting).
    pub monitor: u64,
    /// `pendingaction`: non-zero while monit still has to carry out an action on the service.
    pub pending_action: u64,
    /// `uptime` in seconds (absent for a process that is not running).
    pub uptime: u64,
    /// `memory/kilobytetotal`: the process and its children.
    pub mem_kb: u64,
    /// `memory/percenttotal`.
    pub mem_percent: f64,
    /// `cpu/percenttotal`.
    pub cpu_percent: f64,
}

impl Service {
    /// The state BOSH reports for one process: `unknown` when unmonitored, `starting` while monit
    /// initialises it, `running` when all its checks pass, otherwise `failing`.
    pub fn state(&self) -> &'static str {
        match (self.monitor, self.status) {
            (0, _) => "unknown",
            (2, _) => "starting",
            (_, 0) => "running",
            _ => "failing",
        }
    }

    /// Monit will still act on the service (a start or stop is queued or running).
    pub fn pending(&self) -> bool {
        self.pending_action > 0
    }

    /// Monit watches the service (monitored or initialising).
    pub fn monitored(&self) -> bool {
        self.monitor > 0
    }

    /// A check failed and monit said why.
    pub fn errored(&self) -> bool {
        self.status > 0 && !self.status_message.is_empty()
    }
}

impl Status {
    /// Parses a status document. Monit declares ISO-8859-1, so callers decode the bytes with
    /// [`latin1`] first.
    pub fn parse(xml: &str) -> Result<Status, String> {
        let doc = Document::parse(xml).context("monit status is not XML")?;
        let root = doc.root_element();
        if root.tag_name().name() != "monit" {
            return Err(format!("monit status has root <{}>, expected <monit>", root.tag_name().name()));
        }
        let services = child(root, "services")
            .map(|s| s.children().filter(|n| n.has_tag_name("service")).map(service).collect())
            .unwrap_or_default();
        let vcap = child(root, "servicegroups")
            .into_iter()
            .flat_map(|g| g.children())
            .filter(|g| g.has_tag_name("servicegroup") && g.attribute("name") == Some("vcap"))
            .flat_map(|g| g.children())
            .filter(|n| n.has_tag_name("service"))
            .map(|n| n.text().unwrap_or("").trim().to_string())
            .collect();
        Ok(Status { incarnation: root.attribute("incarnation").unwrap_or("").to_string(), services, vcap })
    }

    /// The services of group `vcap`, in document order (a name listed in the group but absent from
    /// `services` is skipped: monit has nothing to say about it).
    pub fn vcap_services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().filter(|s| self.vcap.contains(&s.name))
    }
}

/// Decodes monit's ISO-8859-1 answer: every byte is the code point of the same value, so this never
/// fails, unlike treating the body as UTF-8.
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn service(node: Node<'_, '_>) -> Service {
    let memory = child(node, "memory");
    let cpu = child(node, "cpu");
    Service {
        name: node.attribute("name").unwrap_or("").to_string(),
        status: number(Some(node), "status"),
        status_message: text(Some(node), "status_message").to_string(),
        monitor: number(Some(node), "monitor"),
        pending_action: number(Some(node), "pendingaction"),
        uptime: number(Some(node), "uptime"),
        mem_kb: number(memory, "kilobytetotal"),
        mem_percent: float(memory, "percenttotal"),
        cpu_percent: float(cpu, "percenttotal"),
    }
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn text<'a>(node: Option<Node<'a, '_>>, name: &str) -> &'a str {
    node.and_then(|n| child(n, name)).and_then(|n| n.text()).map(str::trim).unwrap_or("")
}

fn number(node: Option<Node<'_, '_>>, name: &str) -> u64 {
    text(node, name).parse().unwrap_or(0)
}

fn float(node: Option<Node<'_, '_>>, name: &str) -> f64 {
    text(node, name).parse::<f64>().ok().filter(|f| f.is_finite()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monit 5.33's answer for the `vcap` group (one running, one failing, one starting service) and
    /// a system service outside it.
    const DOC: &str = include_str!("../../../tests/fixtures/monit/status.xml");

    #[test]
    fn parses_services_and_the_vcap_group() {
        let s = Status::parse(DOC).unwrap();
        assert_eq!(s.incarnation, "1795593803");
        assert_eq!(s.vcap, ["web", "db", "init", "gone"]);
        let names: Vec<_> = s.vcap_services().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "db", "init"]);
        let web = &s.services[0];
        assert_eq!((web.uptime, web.mem_kb, web.mem_percent, web.cpu_percent), (42, 1660, 1.5, 2.5));
        assert_eq!(web.state(), "running");
        let db = &s.services[1];
        assert_eq!(db.state(), "failing");
        assert!(db.errored() && db.pending() && db.monitored());
        assert_eq!(s.services[2].state(), "starting");
    }

    #[test]
    fn tolerates_missing_and_malformed_fields() {
        let s = Status::parse(
            "<monit><services><service><status>x</status><monitor>-1</monitor>\
             <memory><percenttotal>NaN</percenttotal></memory></service></services></monit>",
        )
        .unwrap();
        assert_eq!(s.services[0], Service::default());
        assert_eq!(s.services[0].state(), "unknown");
        assert!(s.vcap.is_empty());
    }

    #[test]
    fn rejects_what_is_not_a_monit_status() {
        assert!(Status::parse("<html><body>Unauthorized</body></html>").is_err());
        assert!(Status::parse("not xml at all <").is_err());
        assert!(Status::parse("").is_err());
    }

    #[test]
    fn decodes_latin1() {
        assert_eq!(latin1(b"caf\xe9"), "caf\u{e9}");
        let xml = latin1(
            b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><monit incarnation=\"1\"><services>\
            <service name=\"caf\xe9\"><status>0</status></service></services></monit>",
        );
        assert_eq!(Status::parse(&xml).unwrap().services[0].name, "caf\u{e9}");
    }
}
