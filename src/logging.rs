//! The only place a logger is installed: simplelog to stderr (runit or systemd keeps the file), UTC
//! RFC 3339 timestamps. What is logged is decided at the call sites: never arguments of actions marked
//! not loggable, never keys or passwords.

use log::LevelFilter;

/// Installs the logger once; a second call is ignored.
pub fn init(level: LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .add_filter_ignore_str("rustls")
        .add_filter_ignore_str("ureq")
        .build();
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}
