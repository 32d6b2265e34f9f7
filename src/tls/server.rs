//! TLS server configuration for the HTTPS bus, and the self-signed certificate of the embedded default.
