//! IPv6 in the kernel, for `env.bosh.ipv6.enable` and for networks with IPv6 addresses: Jammy
//! stemcells disable it three ways, and the Go agent undoes each (its `kernel_ipv6.go`):
//!
//! 1. `/etc/sysctl.d/60-bosh-sysctl.conf` sets `net.ipv6.conf.{all,default}.disable_ipv6=1`: both
//!    are turned to `=0` (nothing else in the file changes), so the next boot keeps IPv6.
//! 2. GRUB's kernel command line has `ipv6.disable=1`: the module is not even loaded, which only a
//!    reboot can change. The option is removed from `grub.cfg` and the VM is rebooted (on the live
//!    system; the agent then waits for the reboot).
//! 3. Otherwise the running kernel is told: `accept_ra=1` and `disable_ipv6=0` for `all` and
//!    `default` (what `sysctl` does, written to `/proc/sys` directly).
//!
//! A stemcell without the sysctl file or `grub.cfg` (Noble already enables IPv6; images booted
//! otherwise) just skips that step, where the Go agent fails. Every path is under the root dir.

use crate::dirs::Dirs;
use crate::error::Context as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The stemcell's sysctl file.
pub const SYSCTL_CONF: &str = "/etc/sysctl.d/60-bosh-sysctl.conf";
/// Where GRUB's configuration may be, in the order looked at.
pub const GRUB_CFGS: [&str; 2] = ["/boot/grub/grub.cfg", "/boot/efi/EFI/grub/grub.cfg"];
/// How long the agent waits for the reboot it asked for before it gives up and exits.
const REBOOT_WAIT: Duration = Duration::from_secs(600);

/// What enabling took.
#[derive(Debug, PartialEq, Eq)]
pub enum Enabled {
    /// The running kernel now has IPv6.
    Now,
    /// `ipv6.disable=1` was removed from GRUB's configuration: only a reboot enables it (on a scratch
    /// root, nothing reboots).
    AfterReboot(PathBuf),
}

/// The runtime switches, under `<root>/proc/sys`.
pub fn sysctls(dirs: &Dirs) -> [(PathBuf, &'static str); 4] {
    let conf = |scope: &str, key: &str| dirs.under_root(&format!("/proc/sys/net/ipv6/conf/{scope}/{key}"));
    [
        (conf("all", "accept_ra"), "1"),
        (conf("default", "accept_ra"), "1"),
        (conf("all", "disable_ipv6"), "0"),
        (conf("default", "disable_ipv6"), "0"),
    ]
}

/// Enables IPv6 (see the module doc); on the live system, a needed reboot is requested and waited
/// for, so this returns [`Enabled::AfterReboot`] only on a scratch root.
pub fn enable(dirs: &Dirs, live: bool) -> Result<Enabled, String> {
    let conf = dirs.under_root(SYSCTL_CONF);
    match std::fs::read_to_string(&conf) {
        Ok(text) if text.contains("net.ipv6.conf.all.disable_ipv6=1") => {
            let fixed = text
                .replace("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=0")
                .replace("net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=0");
            crate::fsutil::write_atomic(&conf, fixed.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", conf.display()))?;
            log::info!("IPv6: {} no longer disables it", conf.display());
        }
        Ok(_) => {}
        Err(e) => log::info!("IPv6: {} not read ({e}); nothing to change there", conf.display()),
    }
    if let Some(grub) = GRUB_CFGS.iter().map(|p| dirs.under_root(p)).find(|p| p.is_file()) {
        let text = std::fs::read_to_string(&grub).with_context(|| format!("reading {}", grub.display()))?;
        if text.contains("ipv6.disable=1") {
            let fixed = text.replace("ipv6.disable=1", "");
            crate::fsutil::write_atomic(&grub, fixed.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", grub.display()))?;
            return reboot(&grub, live);
        }
    }
    for (path, value) in sysctls(dirs) {
        if let Some(parent) = path.parent().filter(|_| !live) {
            // A scratch root: the tree stands in for /proc/sys.
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))?;
    }
    log::info!("IPv6: enabled in the running kernel (accept_ra=1, disable_ipv6=0)");
    Ok(Enabled::Now)
}

fn reboot(grub: &Path, live: bool) -> Result<Enabled, String> {
    if !live {
        log::info!(
            "IPv6: removed ipv6.disable=1 from {}; a reboot would enable it (scratch root)",
            grub.display()
        );
        return Ok(Enabled::AfterReboot(grub.to_path_buf()));
    }
    log::warn!("IPv6: removed ipv6.disable=1 from {}; rebooting to enable it", grub.display());
    crate::exec::run(Command::new("shutdown").args(["-r", "now"]), None, Duration::from_secs(60))?;
    std::thread::sleep(REBOOT_WAIT);
    Err(format!("IPv6: asked for a reboot {}s ago and it has not happened", REBOOT_WAIT.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAMMY_SYSCTL: &str = "net.ipv4.tcp_syncookies=1\nnet.ipv6.conf.all.disable_ipv6=1\n\
        net.ipv6.conf.default.disable_ipv6=1\nnet.ipv6.conf.all.accept_ra=0\nnet.ipv6.route.flush=1\n";

    fn scratch() -> (tempfile::TempDir, Dirs) {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("var/vcap"), root.path());
        (root, dirs)
    }

    fn write(dirs: &Dirs, path: &str, text: &str) {
        crate::fsutil::write_atomic(&dirs.under_root(path), text.as_bytes(), 0o644).unwrap();
    }

    #[test]
    fn jammy_gets_its_sysctl_file_fixed_and_grub_edited_for_a_reboot() {
        let (_root, dirs) = scratch();
        write(&dirs, SYSCTL_CONF, JAMMY_SYSCTL);
        write(&dirs, GRUB_CFGS[0], "linux /vmlinuz root=LABEL=root ro ipv6.disable=1 console=ttyS0\n");
        let got = enable(&dirs, false).unwrap();
        assert_eq!(got, Enabled::AfterReboot(dirs.under_root(GRUB_CFGS[0])));
        let sysctl = std::fs::read_to_string(dirs.under_root(SYSCTL_CONF)).unwrap();
        assert_eq!(sysctl, JAMMY_SYSCTL.replace("disable_ipv6=1", "disable_ipv6=0"));
        assert!(sysctl.contains("accept_ra=0"), "other lines are kept");
        let grub = std::fs::read_to_string(dirs.under_root(GRUB_CFGS[0])).unwrap();
        assert_eq!(grub, "linux /vmlinuz root=LABEL=root ro  console=ttyS0\n");
        assert!(!sysctls(&dirs)[0].0.exists(), "no runtime switch before the reboot");
        // After the reboot: grub is clean, so the running kernel is switched.
        assert_eq!(enable(&dirs, false).unwrap(), Enabled::Now);
        let values: Vec<String> =
            sysctls(&dirs).iter().map(|(p, _)| std::fs::read_to_string(p).unwrap()).collect();
        assert_eq!(values, ["1", "1", "0", "0"]);
    }

    #[test]
    fn noble_and_bare_images_only_switch_the_running_kernel() {
        let (_root, dirs) = scratch();
        let noble = "net.ipv6.conf.all.disable_ipv6=0\nnet.ipv6.conf.all.accept_ra=1\n";
        write(&dirs, SYSCTL_CONF, noble);
        write(&dirs, GRUB_CFGS[1], "linux /vmlinuz ro\n");
        assert_eq!(enable(&dirs, false).unwrap(), Enabled::Now);
        assert_eq!(std::fs::read_to_string(dirs.under_root(SYSCTL_CONF)).unwrap(), noble);
        let (_root, bare) = scratch();
        assert_eq!(enable(&bare, false).unwrap(), Enabled::Now, "no sysctl file, no grub.cfg");
        assert_eq!(std::fs::read_to_string(&sysctls(&bare)[3].0).unwrap(), "0");
    }
}
