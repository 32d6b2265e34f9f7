//! Every path the agent uses, derived from the base dir (`-b`, default /var/vcap) and the root dir
//! (`-r`, default /). Keeping them in one place is what lets tests run the whole agent in a scratch
//! directory, and what keeps the layout the Go agent's, so stemcells and jobs find what they expect:
//! no other module joins a piece of this layout onto a directory.

use std::path::{Path, PathBuf};

/// The agent's directory layout.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// `/var/vcap` on a stemcell.
    pub base: PathBuf,
    /// `/` on a VM; a scratch directory in tests.
    pub root: PathBuf,
}

impl Dirs {
    /// Builds the layout from the two command-line directories.
    pub fn new(base: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Dirs {
        Dirs { base: base.into(), root: root.into() }
    }

    /// A path under the root dir, for system files such as `/etc/hosts` or the CA directory.
    pub fn under_root(&self, absolute: &str) -> PathBuf {
        self.root.join(Path::new(absolute.trim_start_matches('/')))
    }

    // ---- <base>/bosh: the agent's own state ----

    /// `<base>/bosh`: the agent's own state.
    pub fn bosh(&self) -> PathBuf {
        self.base.join("bosh")
    }
    /// `<base>/bosh/etc`: configuration the agent writes (NTP servers, blobstore CLI options).
    pub fn bosh_etc(&self) -> PathBuf {
        self.bosh().join("etc")
    }
    /// The stemcell's version, written into the image by the stemcell builder.
    pub fn stemcell_version(&self) -> PathBuf {
        self.bosh_etc().join("stemcell_version")
    }
    /// `<base>/bosh/bin`: the stemcell's helper programs.
    pub fn bosh_bin(&self) -> PathBuf {
        self.bosh().join("bin")
    }
    /// The monit a stemcell may bundle with the agent.
    pub fn bundled_monit(&self) -> PathBuf {
        self.bosh_bin().join("monit")
    }
    /// The stemcell's script that applies new network files.
    pub fn restart_networking(&self) -> PathBuf {
        self.bosh_bin().join("restart_networking")
    }
    /// The stemcell's script that syncs the clock with the NTP servers.
    pub fn sync_time(&self) -> PathBuf {
        self.bosh_bin().join("sync-time")
    }
    /// The stemcell's script run after the job logs' rotation is written (the official stemcells'
    /// cron schedule for logrotate).
    pub fn setup_logrotate(&self) -> PathBuf {
        self.bosh_bin().join("setup-logrotate.sh")
    }
    /// `<base>/bosh/log`: the agent's own logs, as `bosh logs --agent` collects them.
    pub fn bosh_log(&self) -> PathBuf {
        self.bosh().join("log")
    }
    /// The agent's own log as the stemcell's service writes it (`bosh/log/current`).
    pub fn agent_log(&self) -> PathBuf {
        self.bosh_log().join("current")
    }
    /// Cached settings, re-read when every settings source fails.
    pub fn settings_json(&self) -> PathBuf {
        self.bosh().join("settings.json")
    }
    /// The overrides received through `update_settings`; they win over the infrastructure's settings.
    pub fn update_settings_json(&self) -> PathBuf {
        self.bosh().join("update_settings.json")
    }
    /// The Ruby dummy infrastructure's settings file (`-I dummy`).
    pub fn dummy_cpi_settings_json(&self) -> PathBuf {
        self.bosh().join("dummy-cpi-agent-env.json")
    }
    /// The applied spec, source of `get_state` and heartbeats.
    pub fn spec_json(&self) -> PathBuf {
        self.bosh().join("spec.json")
    }
    /// Persistent tasks to resume after a restart.
    pub fn tasks_json(&self) -> PathBuf {
        self.bosh().join("tasks.json")
    }
    /// Hints for persistent disks given by `add_persistent_disk`.
    pub fn disk_hints_json(&self) -> PathBuf {
        self.bosh().join("persistent_disk_hints.json")
    }
    /// The CID of the persistent disk last mounted on store, remounted at boot.
    pub fn managed_disk_settings_json(&self) -> PathBuf {
        self.bosh().join("managed_disk_settings.json")
    }
    /// The embedded default's self-signed certificate and key.
    pub fn embedded_cert(&self) -> (PathBuf, PathBuf) {
        (self.bosh().join("embedded-mbus.crt"), self.bosh().join("embedded-mbus.key"))
    }
    /// The options file of an external blobstore CLI (`bosh-blobstore-<provider>`).
    pub fn blobstore_config(&self, provider: &str) -> PathBuf {
        self.bosh_etc().join(format!("blobstore-{provider}.json"))
    }
    /// The NTP servers, for the stemcell's `sync-time`.
    pub fn ntpserver(&self) -> PathBuf {
        self.bosh_etc().join("ntpserver")
    }
    /// The stemcell's monitrc, for `monit reload`.
    pub fn monitrc(&self) -> PathBuf {
        self.bosh_etc().join("monitrc")
    }

    // ---- what the dummy platform records instead of changing the machine ----

    /// DNS records the dummy platform would have put in `/etc/hosts`.
    pub fn dummy_etc_hosts(&self) -> PathBuf {
        self.bosh().join("etc_hosts")
    }
    /// Trusted certificates the dummy platform would have installed.
    pub fn dummy_trusted_certs(&self) -> PathBuf {
        self.bosh().join("trusted_certs")
    }
    /// The disks the dummy platform pretends are mounted.
    pub fn dummy_mounts_json(&self) -> PathBuf {
        self.bosh().join("dummy_mounts.json")
    }
    /// What the dummy platform reports DHCP gave dynamic networks (the Go dummy platform's file).
    pub fn dummy_default_network_json(&self) -> PathBuf {
        self.bosh().join("dummy-default-network-settings.json")
    }
    /// The `bosh ssh` users the dummy platform pretends to have created.
    pub fn dummy_ssh_users_json(&self) -> PathBuf {
        self.bosh().join("dummy_ssh_users.json")
    }
    /// The disk association names the dummy platform records (the Go dummy's file name).
    pub fn dummy_disk_associations_json(&self) -> PathBuf {
        self.bosh().join("disk_associations.json")
    }

    // ---- installed jobs and packages ----

    /// `<base>/jobs`: one link per installed job.
    pub fn jobs(&self) -> PathBuf {
        self.base.join("jobs")
    }
    /// `<base>/jobs/<job>`: the link to a job's installed bundle.
    pub fn job(&self, job: &str) -> PathBuf {
        self.jobs().join(job)
    }
    /// `<base>/packages`: one link per installed package.
    pub fn packages(&self) -> PathBuf {
        self.base.join("packages")
    }
    /// `<base>/packages/<package>`: the link to a package's installed bundle.
    pub fn package(&self, package: &str) -> PathBuf {
        self.packages().join(package)
    }
    /// `<base>/sys`, a link to `data/sys`.
    pub fn sys(&self) -> PathBuf {
        self.base.join("sys")
    }
    /// `<base>/sys/log`: the jobs' logs, as jobs and `bosh logs` see them.
    pub fn sys_log(&self) -> PathBuf {
        self.sys().join("log")
    }
    /// `<base>/instance`: the instance's id, name, AZ and deployment, one file each.
    pub fn instance(&self) -> PathBuf {
        self.base.join("instance")
    }
    /// The DNS records `sync_dns` last stored.
    pub fn dns_records_json(&self) -> PathBuf {
        self.instance().join("dns").join("records.json")
    }
    /// `{"state":"<job state>"}`, rewritten on every heartbeat (bosh-dns health checks read it).
    pub fn health_json(&self) -> PathBuf {
        self.instance().join("health.json")
    }
    /// `<base>/instance/disks`: one link per associated persistent disk.
    pub fn instance_disks(&self) -> PathBuf {
        self.instance().join("disks")
    }
    /// `<base>/instance/disks/<name>`: the link for the disk associated under `name`.
    pub fn instance_disk(&self, name: &str) -> PathBuf {
        self.instance_disks().join(name)
    }
    /// `<base>/monit`: `monit.user`, the installed job configurations and the stopped marker.
    pub fn monit(&self) -> PathBuf {
        self.base.join("monit")
    }
    /// The monitrc snippet that points monit's alert mails at the agent.
    pub fn alerts_monitrc(&self) -> PathBuf {
        self.monit().join("alerts.monitrc")
    }
    /// Where monit queues alert mails while the agent is not listening.
    pub fn monit_events(&self) -> PathBuf {
        self.monit().join("events")
    }
    /// `<base>/bosh_ssh`: the homes of `bosh ssh` users.
    pub fn bosh_ssh(&self) -> PathBuf {
        self.base.join("bosh_ssh")
    }

    // ---- disks ----

    /// Ephemeral data disk mount point.
    pub fn data(&self) -> PathBuf {
        self.base.join("data")
    }
    /// Persistent disk mount point.
    pub fn store(&self) -> PathBuf {
        self.base.join("store")
    }
    /// Where the new persistent disk is mounted while `migrate_disk` copies store onto it.
    pub fn store_migration_target(&self) -> PathBuf {
        self.base.join("store_migration_target")
    }

    // ---- <base>/data: the ephemeral disk ----

    /// Installed job bundles, `data/jobs/<job>/<hash>`.
    pub fn data_jobs(&self) -> PathBuf {
        self.data().join("jobs")
    }
    /// Installed package bundles, `data/packages/<package>/<hash>`.
    pub fn data_packages(&self) -> PathBuf {
        self.data().join("packages")
    }
    /// `data/sys`: the jobs' logs and run files.
    pub fn data_sys(&self) -> PathBuf {
        self.data().join("sys")
    }
    /// `data/sys/log`: the jobs' log directories.
    pub fn data_sys_log(&self) -> PathBuf {
        self.data_sys().join("log")
    }
    /// `data/sys/run`: the jobs' run directories.
    pub fn data_sys_run(&self) -> PathBuf {
        self.data_sys().join("run")
    }
    /// A job's log directory, made at apply.
    pub fn job_log(&self, job: &str) -> PathBuf {
        self.data_sys_log().join(job)
    }
    /// A job's run directory (pid files), made at apply.
    pub fn job_run(&self, job: &str) -> PathBuf {
        self.data_sys_run().join(job)
    }
    /// A job's data directory on the ephemeral disk, made at apply.
    pub fn job_data(&self, job: &str) -> PathBuf {
        self.data().join(job)
    }
    /// The logs of `packaging` scripts (`<base>/sys` links to `data/sys` once a spec was applied, and
    /// `bosh logs` collects `sys/log`).
    pub fn compile_logs(&self) -> PathBuf {
        self.data_sys_log().join("compilation")
    }
    /// Where source packages are unpacked and compiled.
    pub fn compile(&self) -> PathBuf {
        self.data().join("compile")
    }
    /// Temp files on the ephemeral disk (downloads, tarballs being built).
    pub fn data_tmp(&self) -> PathBuf {
        self.data().join("tmp")
    }
    /// Blobs received over HTTPS `/blobs` and read by apply and compile.
    pub fn blobs(&self) -> PathBuf {
        self.data().join("blobs")
    }
    /// Blobs received through `upload_blob` (rendered templates with credentials).
    pub fn sensitive_blobs(&self) -> PathBuf {
        self.data().join("sensitive_blobs")
    }
    /// Links to dynamic disks, `data/dynamic_disks/<cid>`.
    pub fn dynamic_disks(&self) -> PathBuf {
        self.data().join("dynamic_disks")
    }
    /// `data/root_tmp`: bind-mounted over `/tmp` and `/var/tmp` when `data` is a disk.
    pub fn root_tmp(&self) -> PathBuf {
        self.data().join("root_tmp")
    }
    /// `data/root_log`: bind-mounted over `/var/log` when `data` is a disk.
    pub fn root_log(&self) -> PathBuf {
        self.data().join("root_log")
    }
    /// `data/root_opt`: bind-mounted over `/opt` when `data` is a disk.
    pub fn root_opt(&self) -> PathBuf {
        self.data().join("root_opt")
    }
    /// `data/root_var_opt`: bind-mounted over `/var/opt` when `data` is a disk.
    pub fn root_var_opt(&self) -> PathBuf {
        self.data().join("root_var_opt")
    }

    // ---- system files under the root dir ----

    /// `/etc/logrotate.d/vcap`: the rotation of the jobs' logs, written after every apply.
    pub fn logrotate_vcap(&self) -> PathBuf {
        self.under_root("/etc/logrotate.d/vcap")
    }
    /// `/etc/logrotate.d/bosh-agent`: the rotation of the agent's own log, where the stemcell has none.
    pub fn logrotate_agent(&self) -> PathBuf {
        self.under_root("/etc/logrotate.d/bosh-agent")
    }
}
