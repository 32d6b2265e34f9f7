//! The agent's integration tests: one test binary (as ripgrep's `tests/tests.rs`), so the library
//! and the fixtures are compiled and linked once, and the module list below says where a new test
//! belongs. Unit tests of one module's logic sit next to the code instead (`#[cfg(test)]` in `src/`);
//! a test belongs here when it needs a real outside party: the agent binary, nats-server, monit, an
//! HTTP server, loop devices, users, or a whole VM.
//!
//! Run one group with `cargo test --test integration <module>::`, e.g. `monit::`. Every test
//! synchronises by polling with a deadline, never by sleeping a fixed time.

// Shared fixtures: a throw-away PKI, nats-server, monit, the agent binary and its director, HTTP blob
// servers, tarballs and loop devices. The PKI and nats-server are shared with `benches/support`.
mod common;

// ---- The agent binary, driven as the director and bosh-cli drive it ----

// Ping, get_state, tasks, persistence, certificate rotation, NATS permissions, the HTTPS bus.
mod agent;
// Every official stemcell's agent.json boots the agent from local stand-ins of its cloud's sources.
mod agent_json;
// upload_blob, sync_dns and delete_arp_entries over NATS (and upload_blob over HTTPS).
mod blobs_dns;
// compile_package and its signed-URL form, over NATS and the HTTPS bus.
mod compile;
// bosh-cli's and the director's conversation as real runs had it: list_disk after a CPI changed the
// settings, digest mismatches, cpu vitals from the first heartbeat.
mod conversation;
// A whole deploy under real monit: apply, start, failing jobs and alerts, update, monit gone.
mod deploy;
// Persistent disks on loop devices: mount, migrate, unmount, remount at boot; per IaaS option
// (warden directories, preformatted, resize on mount, SCSI rescan on a fake sysfs, virtio by-id,
// iSCSI with fake iscsiadm/dmsetup).
mod disks;
// Hostile input, floods and crashes: traversal, fuzzed envelopes and arguments, archive bombs,
// stop signals, kills during apply, task floods.
mod hostile;
// The HTTPS bus as `bosh create-env` uses it: no protocol field, Basic auth, `/blobs`.
mod https_agent;
// The job lifecycle with real tarballs: apply, scripts, drain, errands, cancel, hostile tarballs.
mod jobs;
// `bosh logs`: fetch_logs to a blobstore or a signed URL, bundle_logs over HTTPS.
mod logs;
// Networks on a real LAN (network namespaces, dnsmasq, systemd-networkd): DHCP before the metadata
// service, dynamic networks' leases in get_state and apply, several NICs.
mod networks;
// The agent waiting for its settings: retries, the cache after one pass, patience without a cache,
// the minimum run of a failed start.
mod settings_boot;
// Settings sources against real metadata services, config drives and CD-ROMs; the agent booting
// from one.
mod settings_sources;
// What an operator sees: log lines, `bosh-agent call`'s errors, bad configuration refused at start.
mod operator;
// `ssh` users, `prepare_network_change`, and SSH login alerts from syslog.
mod ssh;
// What a release job assumes of its VM: mounts, owners and modes on a data disk, a job running as
// vcap, health.json, log rotation, disk associations, the infrastructure's SSH key.
mod vm_layout;

// ---- One part of the library against real outside parties ----

// Monit alerts: mail parsing and the SMTP listener, with a real monit mailing it.
mod alerts;
// Tarballs: faithful unpacking, hostile entries refused, deterministic packing.
mod archive;
// The blobstore cascade and providers: local files, a dav server, an external CLI, signed URLs.
mod blobstore;
// The Linux bootstrap against a scratch root: the files it writes, idempotence, named failures.
mod bootstrap;
// The ephemeral disk in the bootstrap, on loop devices: swap and data, kept on a second boot;
// foreign disks repartitioned, PartitionerType, SkipDiskSetup, raw ephemeral disks.
mod ephemeral;
// The HTTPS bus server over real TLS, including clients that misbehave.
mod https_bus;
// The agent's HTTP client through a real proxy (tinyproxy): absolute-form requests, CONNECT tunnels,
// proxy credentials.
mod http_client;
// The root disk in the bootstrap, on a loop-backed root disk mounted as the root dir: swap and
// data after the root partition, the root partition and filesystem grown.
mod root_disk;
// The monit supervisor against a real monit: job states, lifecycle, the 2 s bound on status.
mod monit;
// Starting monit through runit (a real runsvdir) and systemd (a stand-in systemctl), and monit's
// alerts reaching the health monitor across agent restarts.
mod monit_start;
// The monit firewall with real nft in throw-away network namespaces: the agent's table and the
// binary run as bosh-enable-monit-access.
mod monit_firewall;
// The NATS client against a real nats-server: mutual TLS, auth, reconnects, max_payload.
mod nats_client;

// ---- The house itself ----

// The layer list of ARCHITECTURE.md holds for every `crate::` path in `src/`.
mod layers;

// ---- A whole VM (ignored: `scripts/stemcell-test` builds the stemcell and runs it) ----

// The stemcell booted in qemu and driven as the director drives it.
mod stemcell_boot;
