//! Alerts for the health monitor (`hm.agent.alert.<id>`), from the two local listeners that feed
//! them: monit mails every event to the agent's own SMTP server ([`SmtpServer`]), which this module
//! turns into an [`Alert`]; the stemcell's rsyslog forwards sshd's lines to [`syslog`], which makes
//! SSH login and logout alerts. Both listeners share the shape of [`tcp_service`].
//!
//! Mail is the only channel monit offers for events, hence an SMTP server inside the agent. Mail
//! content is outside input: parsing never fails, it only yields less (`None` when nothing usable or
//! the event is one the health monitor must not see).

mod smtp;
pub mod syslog;
mod tcp_service;

pub use smtp::{SmtpOptions, SmtpServer};

use crate::bus::{HmTopic, Notifier};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::settings::service::SettingsService;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// One alert as the health monitor validates it: `{"id","severity","title","summary","created_at"}`
/// in that order and without `source`, which the director fills in for alerts that lack it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Monit's message id (the part before `@`), or a fresh UUID: the health monitor drops repeated ids.
    pub id: String,
    /// 1 alert, 2 critical, 3 error, 4 warning.
    pub severity: u8,
    /// `"<service> (<ips>) - <event> - <action>"`.
    pub title: String,
    /// Monit's description of the event.
    pub summary: String,
    /// When monit saw the event, in unix seconds.
    pub created_at: i64,
}

/// Severity by lower-cased monit event name, as the health monitor has always received them.
/// `None` marks events that are not worth an alert (successes, recoveries, "not changed").
pub fn severity(event: &str) -> Option<u8> {
    const ALERT: &[&str] =
        &["connection failed", "execution failed", "monit instance failed", "does not exist"];
    const CRITICAL: &[&str] =
        &["checksum failed", "icmp failed", "pid failed", "ppid failed", "timeout", "uid failed"];
    const ERROR: &[&str] = &[
        "connection changed",
        "content failed",
        "content doesn't match",
        "data access error",
        "filesystem flags failed",
        "gid failed",
        "heartbeat failed",
        "invalid type",
        "permission failed",
        "resource limit matched",
        "size failed",
        "size changed",
        "timestamp failed",
    ];
    const WARNING: &[&str] = &[
        "checksum changed",
        "data access changed",
        "execution changed",
        "filesystem flags changed",
        "gid changed",
        "heartbeat changed",
        "icmp changed",
        "type changed",
        "existence changed",
        "permission changed",
        "pid changed",
        "ppid changed",
        "resource limit changed",
        "timeout changed",
        "timestamp changed",
        "uid changed",
    ];
    const IGNORED_OTHER: &[&str] =
        &["action done", "content match", "exists", "monit instance changed", "timeout recovery"];
    let e = event.trim().to_ascii_lowercase();
    let is = |list: &[&str]| list.contains(&e.as_str());
    if is(IGNORED_OTHER) || e.ends_with(" succeeded") || e.ends_with(" not changed") {
        return None;
    }
    Some(if is(ALERT) {
        1
    } else if is(CRITICAL) {
        2
    } else if is(ERROR) {
        3
    } else if is(WARNING) {
        4
    } else {
        log::warn!("unknown monit event '{}', reported as critical", event.trim());
        2
    })
}

/// The fields of one monit mail; each line is matched case-insensitively after leading whitespace,
/// a later line overriding an earlier one (the body's `Date:` comes after the header's).
#[derive(Default)]
struct Fields<'a> {
    id: Option<&'a str>,
    service: Option<&'a str>,
    event: Option<&'a str>,
    action: Option<&'a str>,
    description: Option<&'a str>,
    created_at: Option<i64>,
    any: bool,
}

fn fields(mail: &str) -> Fields<'_> {
    let mut f = Fields::default();
    for line in mail.lines() {
        let line = line.trim_start();
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let slot = match key.to_ascii_lowercase().as_str() {
            "message-id" => {
                if let Some(id) = message_id(value) {
                    f.id = Some(id);
                    f.any = true;
                }
                continue;
            }
            "service" => &mut f.service,
            "event" => &mut f.event,
            "action" => &mut f.action,
            "description" => &mut f.description,
            "date" => {
                f.any = true;
                if let Some(t) = parse_date(value) {
                    f.created_at = Some(t);
                }
                continue;
            }
            _ => continue,
        };
        *slot = Some(value);
        f.any = true;
    }
    f
}

/// `<X@host>` → `X`, the id monit gave the event.
fn message_id(value: &str) -> Option<&str> {
    let inner = value.strip_prefix('<')?.split_once('>')?.0;
    inner.split('@').next().filter(|id| !id.is_empty())
}

/// Parses a monit alert mail; `None` when it carries none of monit's fields or the event is
/// ignorable. `ips` are the VM's addresses (shown sorted in the title), `now` the fallback time.
pub fn from_mail(mail: &str, ips: &[String], now: i64) -> Option<Alert> {
    let f = fields(mail);
    if !f.any {
        return None;
    }
    let event = f.event.unwrap_or("");
    let severity = severity(event)?;
    let service = f.service.unwrap_or("");
    let mut sorted: Vec<&str> = ips.iter().map(String::as_str).collect();
    crate::order::sort(&mut sorted);
    let who =
        if sorted.is_empty() { service.to_string() } else { format!("{service} ({})", sorted.join(", ")) };
    Some(Alert {
        id: f.id.map(str::to_string).unwrap_or_else(crate::ids::uuid_v4),
        severity,
        title: format!("{who} - {event} - {}", f.action.unwrap_or("")),
        summary: f.description.unwrap_or("").to_string(),
        created_at: f.created_at.unwrap_or(now),
    })
}

/// Parses an RFC 822/1123 date (`Wed, 25 Nov 2026 08:00:00 +0000`, zone also `GMT`, `UT`, `Z` or a
/// US zone name; seconds and weekday optional) to unix seconds. `None` for anything else, including a
/// missing zone: guessing one would misdate the alert by hours.
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = match s.split_once(',') {
        Some((day, rest)) if day.trim().chars().all(|c| c.is_ascii_alphabetic()) => rest,
        _ => s,
    };
    let mut parts = s.split_whitespace();
    let day: i64 = parts.next()?.parse().ok()?;
    let month = month(parts.next()?)?;
    let year = match parts.next()? {
        y if y.len() == 2 => match y.parse::<i64>().ok()? {
            yy @ 0..=49 => 2000 + yy,
            yy => 1900 + yy,
        },
        y if y.len() == 4 => y.parse::<i64>().ok()?,
        _ => return None,
    };
    let mut clock = parts.next()?.split(':');
    let hour: i64 = clock.next()?.parse().ok()?;
    let minute: i64 = clock.next()?.parse().ok()?;
    let second: i64 = clock.next().map_or(Some(0), |s| s.parse().ok())?;
    let offset = zone(parts.next()?)?;
    if clock.next().is_some() || parts.next().is_some() {
        return None;
    }
    if !(1..=days_in_month(year, month)).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn month(name: &str) -> Option<i64> {
    const MONTHS: [&str; 12] =
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let lower = name.to_ascii_lowercase();
    MONTHS.iter().position(|m| *m == lower).map(|i| i as i64 + 1)
}

/// A zone as seconds east of UTC.
fn zone(z: &str) -> Option<i64> {
    let hours = match z.to_ascii_uppercase().as_str() {
        "UT" | "UTC" | "GMT" | "Z" => 0,
        "EDT" => -4,
        "EST" | "CDT" => -5,
        "CST" | "MDT" => -6,
        "MST" | "PDT" => -7,
        "PST" => -8,
        _ => {
            let (sign, digits) = match z.as_bytes().first()? {
                b'+' => (1, &z[1..]),
                b'-' => (-1, &z[1..]),
                _ => return None,
            };
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hh: i64 = digits[..2].parse().ok()?;
            let mm: i64 = digits[2..].parse().ok()?;
            return (mm < 60).then_some(sign * (hh * 3600 + mm * 60));
        }
    };
    Some(hours * 3600)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the usual era-based conversion).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first line of an `alerts.monitrc` the agent wrote; a file without it is the stemcell's.
pub const MONITRC_MARKER: &str = "# Written by the BOSH agent, where the stemcell ships no alerts.monitrc.";

/// The `alerts.monitrc` the agent writes where the stemcell has none: the official stemcells' file
/// (monit mails every event to `127.0.0.1:<port>` without credentials, queueing undelivered events
/// under `events_dir` so alerts raised while the agent restarts are not lost, in the mail format
/// [`from_mail`] reads), marked as the agent's by [`MONITRC_MARKER`].
pub fn monitrc(port: u16, events_dir: &Path) -> String {
    format!(
        "{MONITRC_MARKER}
set alert agent@local

set mailserver 127.0.0.1 port {port}
    with timeout 15 seconds

set eventqueue
    basedir {events}
    slots 5000

set mail-format {{
  from: monit@localhost
  subject: Monit Alert
  message: Service: $SERVICE
  Event: $EVENT
  Action: $ACTION
  Date: $DATE
  Description: $DESCRIPTION
}}
",
        events = events_dir.display()
    )
}

/// Whose `alerts.monitrc` monit reads, as [`ensure_monitrc`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitrcOwner {
    /// The stemcell shipped one: left exactly as it is.
    Stemcell,
    /// None was there (or the agent's own): the agent's is in place.
    Agent,
}

/// Makes sure monit's `alerts.monitrc` at `path` mails the agent: the stemcell's file is used as
/// shipped; only where there is none (or the one there is the agent's own, from an earlier start) the
/// agent writes [`monitrc`], and only when its text changed. Its content never depends on the boot,
/// so a monit that keeps running across an agent restart keeps delivering to the new agent.
pub fn ensure_monitrc(path: &Path, port: u16, events_dir: &Path) -> Result<MonitrcOwner, String> {
    let wanted = monitrc(port, events_dir);
    match std::fs::read_to_string(path) {
        Ok(text) if text.lines().next() != Some(MONITRC_MARKER) => {
            if !text.contains(&format!("port {port}")) {
                log::warn!(
                    "alerts: the stemcell's {} does not name port {port}, where the agent listens",
                    path.display()
                );
            }
            log::info!("alerts: monit mails through the stemcell's {}", path.display());
            return Ok(MonitrcOwner::Stemcell);
        }
        Ok(text) if text == wanted => return Ok(MonitrcOwner::Agent),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Unreadable but there (e.g. not UTF-8): someone else's file, not ours to replace.
        Err(e) if path.exists() => {
            log::warn!("alerts: reading {}: {e}; leaving it as it is", path.display());
            return Ok(MonitrcOwner::Stemcell);
        }
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::fsutil::write_atomic(path, wanted.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    log::info!("alerts: wrote {} (the stemcell has none)", path.display());
    Ok(MonitrcOwner::Agent)
}

/// Starts the SMTP listener monit mails alerts to on `127.0.0.1:<port>`, and makes sure monit's
/// `alerts.monitrc` points at it ([`ensure_monitrc`]). Each alert is published once on
/// `hm.agent.alert.<id>`, titled with the VM's current IPs.
pub fn start_monit_alerts(
    settings: SettingsService,
    dirs: &Dirs,
    notifier: Arc<dyn Notifier>,
    port: u16,
) -> Result<SmtpServer, String> {
    let opts = SmtpOptions { listen: format!("127.0.0.1:{port}") };
    let sink = Box::new(move |mail: String| {
        let ips = network_ips(&settings.get());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Some(alert) = from_mail(&mail, &ips, now) {
            publish(notifier.as_ref(), &alert, "alert");
        }
    });
    let server = SmtpServer::start(opts, sink)
        .with_context(|| format!("starting the alert listener on port {port}"))?;
    ensure_monitrc(&dirs.alerts_monitrc(), server.local_addr().port(), &dirs.monit_events())
        .context("alerts.monitrc")?;
    Ok(server)
}

/// Starts the listener for SSH login alerts on the port the stemcell's rsyslog forwards to. A taken
/// port costs the alerts, never the agent: it is logged and `None` returned.
pub fn start_login_alerts(notifier: Arc<dyn Notifier>) -> Option<syslog::SyslogServer> {
    let listen = format!("127.0.0.1:{}", syslog::DEFAULT_PORT);
    let sink = Box::new(move |alert: Alert| publish(notifier.as_ref(), &alert, "SSH alert"));
    match syslog::start(&listen, sink) {
        Ok(server) => {
            log::info!("SSH login alerts: listening on {}", server.local_addr());
            Some(server)
        }
        Err(e) => {
            log::warn!("SSH login alerts disabled: listening on {listen}: {e}");
            None
        }
    }
}

/// Publishes one alert; failures are logged, since a lost alert must not stop a listener.
fn publish(notifier: &dyn Notifier, alert: &Alert, what: &str) {
    match serde_json::to_value(alert) {
        Ok(v) => {
            if let Err(e) = notifier.notify(HmTopic::Alert, &v) {
                log::warn!("publishing {what}: {e}");
            }
        }
        Err(e) => log::warn!("encoding {what}: {e}"),
    }
}

fn network_ips(settings: &crate::settings::Effective) -> Vec<String> {
    settings.settings.networks.values().filter(|n| !n.ip.is_empty()).map(|n| n.ip.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc822_dates() {
        assert_eq!(parse_date("Wed, 25 Nov 2026 08:00:00 +0000"), Some(1_795_593_600));
        assert_eq!(parse_date("25 Nov 2026 10:00:00 +0200"), Some(1_795_593_600));
        assert_eq!(parse_date("Wed, 25 Nov 2026 03:00 EST"), Some(1_795_593_600));
        assert_eq!(parse_date("Sun, 22 May 11 15:07:41 GMT"), Some(1_306_076_861));
        assert_eq!(parse_date("Tue, 29 Feb 2000 00:00:00 Z"), Some(951_782_400));
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 -0000"), Some(0));
    }

    #[test]
    fn refuses_what_is_not_an_rfc822_date() {
        for bad in [
            "",
            "Wed, 25 Nov 2026 08:00:00",
            "Wed, 31 Nov 2026 08:00:00 +0000",
            "Wed, 25 Nov 2026 24:00:00 +0000",
            "Wed, 25 Foo 2026 08:00:00 +0000",
            "Wed, 25 Nov 2026 08:00:00 +00000",
            "Wed, 25 Nov 2026 08:00:00 +0000 extra",
            "2026-11-25T08:00:00Z",
            "Wed, 29 Feb 2026 08:00:00 +0000",
            "Wed, 25 Nov 2026 08:00:00:00 +0000",
            "Wed, -1 Nov 2026 08:00:00 +0000",
            "Wed, 25 Nov 2026 08:00:00 +\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
