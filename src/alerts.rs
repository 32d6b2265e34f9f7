//! Monit alerts over SMTP (owned by the monit helper; interface fixed here).
//!
//! INTERFACE CONTRACT:
//!
//! ```ignore
//! pub struct Alert { pub id: String, pub severity: u8, pub title: String, pub summary: String, pub created_at: i64 }
//! /// Parses a monit alert mail; None when it carries nothing usable or the event is ignorable.
//! pub fn from_mail(mail: &str, ips: &[String], now: i64) -> Option<Alert>;
//! pub struct SmtpOptions { pub listen: String /* 127.0.0.1:2825 */, pub user: String, pub password: String }
//! pub struct SmtpServer { .. }
//! impl SmtpServer {
//!     /// Accepts monit's mails; each parsed alert is passed to `sink` (which publishes it once).
//!     pub fn start(opts: SmtpOptions, sink: Box<dyn Fn(String /*mail*/) + Send + Sync>) -> io::Result<SmtpServer>;
//!     pub fn local_addr(&self) -> SocketAddr;
//!     pub fn shutdown(&self);
//! }
//! /// The `alerts.monitrc` monit needs to mail the agent.
//! pub fn monitrc(port: u16, user: &str, password: &str, events_dir: &Path) -> String;
//! ```

// TEMPORARY compile stubs until the monit branch lands.
#![allow(missing_docs, unused_variables, dead_code)]
use std::path::Path;
#[derive(serde::Serialize)]
pub struct Alert {
    pub id: String,
    pub severity: u8,
    pub title: String,
    pub summary: String,
    pub created_at: i64,
}
pub fn from_mail(mail: &str, ips: &[String], now: i64) -> Option<Alert> {
    None
}
pub struct SmtpOptions {
    pub listen: String,
    pub user: String,
    pub password: String,
}
pub struct SmtpServer;
impl SmtpServer {
    pub fn start(opts: SmtpOptions, sink: Box<dyn Fn(String) + Send + Sync>) -> std::io::Result<SmtpServer> {
        Err(std::io::Error::other("stub"))
    }
    pub fn local_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], 0).into()
    }
}
pub fn monitrc(port: u16, user: &str, password: &str, events_dir: &Path) -> String {
    String::new()
}
