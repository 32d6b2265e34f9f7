//! TLS client configurations (NATS mutual TLS with the bosh-internal name rule; HTTPS for `call`).
