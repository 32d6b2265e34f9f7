//! Message buses: NATS for the director and health monitor, HTTPS for bosh-cli.
pub mod https;
pub mod nats;
