//! The HTTPS bus for `bosh create-env` (owned by the HTTPS helper; interface fixed here).
//!
//! INTERFACE CONTRACT:
//!
//! ```ignore
//! pub trait AgentEndpoint: Send + Sync + 'static {
//!     /// Body of `POST /agent` in, JSON reply body out (always a JSON object).
//!     fn handle(&self, body: Vec<u8>) -> Vec<u8>;
//! }
//! pub struct HttpsOptions {
//!     pub listen: String,            // "host:port" from the mbus URL
//!     pub user: String, pub password: String,   // Basic auth, percent-decoded
//!     pub tls: Arc<rustls::ServerConfig>,
//!     pub blobs_dir: PathBuf,        // <base>/data/blobs
//!     pub max_connections: usize,
//! }
//! pub struct HttpsServer { .. }
//! impl HttpsServer {
//!     pub fn start(opts: HttpsOptions, endpoint: Arc<dyn AgentEndpoint>) -> std::io::Result<HttpsServer>;
//!     pub fn local_addr(&self) -> SocketAddr;
//!     pub fn shutdown(&self);
//! }
//! ```
