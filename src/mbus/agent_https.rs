//! The agent's side of the HTTPS bus: `POST /agent` bodies go to the dispatcher as NATS messages do
//! (quick ones answered on the connection thread, the rest by a worker), and the connection thread
//! waits for the reply.

use super::https::{AgentEndpoint, HttpsOptions, HttpsServer};
use super::url::MbusUrl;
use crate::bus::BusControl;
use crate::dirs::Dirs;
use crate::dispatch::pool::Requests;
use crate::dispatch::Response;
use crate::dispatch::{Incoming, ReplySink};
use crate::error::Context as _;
use crate::settings::Effective;
use std::sync::mpsc::{self, Sender};

/// How many HTTPS connections are served at once; bosh-cli uses one at a time.
pub const MAX_CONNECTIONS: usize = 32;

struct Endpoint {
    requests: Requests,
}

impl AgentEndpoint for Endpoint {
    fn handle(&self, body: Vec<u8>) -> Vec<u8> {
        let (tx, rx) = mpsc::channel();
        self.requests.submit(Incoming { body, reply: Box::new(HttpReply(tx)) });
        rx.recv().unwrap_or_else(|_| Response::exception("request was dropped by the agent").encode(None))
    }
}

struct HttpReply(Sender<Vec<u8>>);

impl ReplySink for HttpReply {
    fn limit(&self) -> Option<usize> {
        None
    }
    fn send(self: Box<Self>, _reply_to: Option<&str>, body: Vec<u8>) {
        let _ = self.0.send(body);
    }
}

/// Starts the HTTPS listener on the mbus URL's host and port, with the certificate from
/// `env.bosh.mbus.cert` and Basic-auth credentials from the URL.
pub fn start(settings: &Effective, dirs: &Dirs, requests: Requests) -> Result<HttpsServer, String> {
    let url_text = settings.mbus_urls().into_iter().next().unwrap_or_default();
    let url = MbusUrl::parse(&url_text)?;
    let cert = settings.mbus_cert();
    if cert.certificate.is_empty() || cert.private_key.is_empty() {
        return Err("HTTPS bus needs env.bosh.mbus.cert.certificate and private_key".into());
    }
    let tls = crate::tls::server::server_config(&cert.certificate, &cert.private_key)?;
    let listen = url.host_port();
    let opts = HttpsOptions {
        listen: listen.clone(),
        user: url.user,
        password: url.password,
        tls,
        blobs_dir: dirs.blobs(),
        max_connections: MAX_CONNECTIONS,
    };
    let endpoint = std::sync::Arc::new(Endpoint { requests });
    HttpsServer::start(opts, endpoint).with_context(|| format!("listening on {listen}"))
}

/// The HTTPS bus cannot swap its identity while bosh-cli talks to it; new settings apply at restart.
pub struct HttpsControl;

impl BusControl for HttpsControl {
    fn settings_changed(&self, _: &Effective) {
        log::info!("bus settings changed; the HTTPS bus picks them up at the next start");
    }
}
