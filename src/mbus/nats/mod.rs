//! A small blocking core-NATS client over rustls (owned by the NATS helper; interface fixed here).
//!
//! INTERFACE CONTRACT (the rest of the agent codes against exactly this):
//!
//! ```ignore
//! pub struct NatsOptions {
//!     pub urls: Vec<String>,                       // nats://[user:pass@]host:port, tried in turn
//!     pub tls: Option<Arc<rustls::ClientConfig>>,  // Some => TLS upgrade after INFO (mTLS)
//!     pub subscriptions: Vec<String>,              // subjects to SUB after every (re)connect
//!     pub name: String,                            // CONNECT "name"
//! }
//! pub struct Message { pub subject: String, pub reply: Option<String>, pub payload: Vec<u8> }
//! #[derive(Clone)] pub struct NatsConnection { .. }
//! impl NatsConnection {
//!     /// Spawns the connection thread; it connects and reconnects forever, delivering MSGs to `inbox`.
//!     pub fn start(opts: NatsOptions, inbox: std::sync::mpsc::Sender<Message>) -> NatsConnection;
//!     /// Err(PublishError::TooLarge{..}) when payload > max_payload (nothing sent, connection kept);
//!     /// while disconnected, buffers a bounded number of messages flushed after reconnect.
//!     pub fn publish(&self, subject: &str, payload: &[u8]) -> Result<(), PublishError>;
//!     pub fn max_payload(&self) -> usize;           // from INFO; 1 MiB until known
//!     pub fn is_connected(&self) -> bool;
//!     pub fn wait_connected(&self, timeout: Duration) -> bool;
//!     pub fn reconfigure(&self, opts: NatsOptions); // new certs/urls: drop and reconnect with these
//!     pub fn shutdown(&self);
//! }
//! ```
