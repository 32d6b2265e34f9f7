//! What `agent.json`'s `Platform.Linux` says about disks, typed once for the disk code: which
//! partition layout the ephemeral disk gets, how a disk hint becomes a device, what warden's
//! directory "disks" need, and how long the IaaS-specific lookups may wait for a device.
//!
//! | key | here |
//! |---|---|
//! | `PartitionerType` | [`Layout`]: `parted` or `""` → GPT with named partitions, `sfdisk` → an msdos table; anything else refuses to start, as the Go agent panics |
//! | `DevicePathResolutionType` | [`Resolution`]: `virtio`, `scsi`, `iscsi`; anything else is the path as given |
//! | `VirtioDevicePrefix` | the `<prefix>-<first 20 characters of the CID>` by-id name tried by `virtio` |
//! | `CreatePartitionIfNoEphemeralDisk` | swap and data on the root disk's free space when there is no ephemeral disk |
//! | `SkipDiskSetup` | no raw-ephemeral, ephemeral or root disk work: `data` is a directory |
//! | `UsePreformattedPersistentDisk` | persistent disks are mounted as given, never partitioned, formatted or grown |
//! | `BindMountPersistentDisk` | persistent disks are mounted with `-o bind` (warden: the "disk" is a directory) |
//! | `ScrubEphemeralDisk` | ignored, as by the Go agent since it dropped the key (logged) |
//! | `DiskIDTransform*`, `LunDeviceSymlinkPath`, `InstanceStorage*` | set by no official stemcell; ignored with a warning |

use crate::config::LinuxOptions;
use std::time::Duration;

/// The ephemeral disk's partition layout (`PartitionerType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `parted` and `""` (the Go agent's default for the ephemeral disk): a GPT whose partitions are
    /// named `bosh-partition-<agent id>-<n>`; a disk whose partition names carry the prefix is this
    /// agent's and is kept.
    Gpt,
    /// `sfdisk`: an msdos table with a swap (82) and a Linux (83) partition; a disk whose partitions
    /// have those types and sizes (within 100 MiB) is kept.
    Dos,
}

/// How a disk hint becomes a device (`DevicePathResolutionType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// `""` and unknown values: the hint's path (and the other hints this agent has always read).
    Identity,
    /// `virtio` (KVM/Xen clouds): udev's `/dev/disk/by-id` names of the CID, else the hint's path
    /// under the name the guest's driver gives it (`sdX` → `vdX`, `xvdX`), waited for.
    Virtio,
    /// `scsi` (vSphere, Azure): a rescan of every SCSI host, then the device id under by-id, the
    /// volume id as a SCSI target, or the LUN under the host device id, waited for.
    Scsi,
    /// `iscsi` (SoftLayer): the hint's path if given, else an iSCSI login and the new multipath map.
    Iscsi,
}

/// How long a lookup may wait for a device the IaaS is still attaching. The defaults are the Go
/// agent's; tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waits {
    /// virtio: the by-id names, after `udevadm settle` (0.5 s).
    pub by_id: Duration,
    /// virtio: the hint's path under any driver's name (30 s).
    pub mapped_path: Duration,
    /// scsi: a device id or a LUN after the rescan (50 s).
    pub scsi: Duration,
    /// scsi: a volume id after the rescan (15 s).
    pub scsi_volume: Duration,
    /// iscsi: the new multipath map after the login (50 s), and its partition map (60 s).
    pub iscsi: Duration,
    /// How often a lookup looks again (100 ms; iSCSI's `dmsetup ls` at most every 5 s).
    pub poll: Duration,
}

impl Default for Waits {
    fn default() -> Waits {
        Waits {
            by_id: Duration::from_millis(500),
            mapped_path: Duration::from_secs(30),
            scsi: Duration::from_secs(50),
            scsi_volume: Duration::from_secs(15),
            iscsi: Duration::from_secs(50),
            poll: Duration::from_millis(100),
        }
    }
}

/// The disk half of `Platform.Linux`, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskConfig {
    /// `PartitionerType`.
    pub layout: Layout,
    /// `DevicePathResolutionType`.
    pub resolution: Resolution,
    /// `VirtioDevicePrefix` (`virtio` when empty).
    pub virtio_prefix: String,
    /// `CreatePartitionIfNoEphemeralDisk`.
    pub root_partitions: bool,
    /// `SkipDiskSetup`.
    pub skip_setup: bool,
    /// `UsePreformattedPersistentDisk`.
    pub preformatted: bool,
    /// `BindMountPersistentDisk`.
    pub bind_mount: bool,
    /// Bounds of the device lookups.
    pub waits: Waits,
}

impl Default for DiskConfig {
    fn default() -> DiskConfig {
        DiskConfig {
            layout: Layout::Gpt,
            resolution: Resolution::Identity,
            virtio_prefix: "virtio".into(),
            root_partitions: false,
            skip_setup: false,
            preformatted: false,
            bind_mount: false,
            waits: Waits::default(),
        }
    }
}

impl DiskConfig {
    /// Types the disk keys of `Platform.Linux`; an unknown `PartitionerType` is refused (the Go
    /// agent panics on it), an unknown resolution type falls back to the path as given (as there),
    /// and keys that change nothing here are logged once.
    pub fn from_linux(o: &LinuxOptions) -> Result<DiskConfig, String> {
        let layout = match o.partitioner_type.as_str() {
            "" | "parted" => Layout::Gpt,
            "sfdisk" => Layout::Dos,
            other => return Err(format!("Unknown partitioner type '{other}'")),
        };
        let resolution = match o.device_path_resolution_type.as_str() {
            "virtio" => Resolution::Virtio,
            "scsi" => Resolution::Scsi,
            "iscsi" => Resolution::Iscsi,
            "" => Resolution::Identity,
            other => {
                log::warn!("DevicePathResolutionType '{other}' is unknown: disk paths are used as given");
                Resolution::Identity
            }
        };
        if o.scrub_ephemeral_disk {
            log::info!(
                "ScrubEphemeralDisk is ignored, as the Go agent ignores it: an ephemeral disk whose partitions \
                 this agent did not make is repartitioned and formatted anyway"
            );
        }
        for (key, value) in [
            ("DiskIDTransformPattern", &o.disk_id_transform_pattern),
            ("LunDeviceSymlinkPath", &o.lun_device_symlink_path),
            ("InstanceStorageManagedVolumePattern", &o.instance_storage_managed_volume_pattern),
            ("InstanceStorageDevicePattern", &o.instance_storage_device_pattern),
        ] {
            if !value.is_empty() {
                log::warn!(
                    "{key} is not supported by this agent and is ignored (no official stemcell sets it)"
                );
            }
        }
        let prefix = if o.virtio_device_prefix.is_empty() { "virtio" } else { &o.virtio_device_prefix };
        Ok(DiskConfig {
            layout,
            resolution,
            virtio_prefix: prefix.to_string(),
            root_partitions: o.create_partition_if_no_ephemeral_disk,
            skip_setup: o.skip_disk_setup,
            preformatted: o.use_preformatted_persistent_disk,
            bind_mount: o.bind_mount_persistent_disk,
            waits: Waits::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_the_stemcell_keys() {
        let mut o = LinuxOptions::default();
        assert_eq!(DiskConfig::from_linux(&o).unwrap(), DiskConfig::default());
        o.partitioner_type = "sfdisk".into();
        o.device_path_resolution_type = "iscsi".into();
        o.virtio_device_prefix = "google".into();
        o.create_partition_if_no_ephemeral_disk = true;
        o.use_preformatted_persistent_disk = true;
        o.bind_mount_persistent_disk = true;
        o.skip_disk_setup = true;
        o.scrub_ephemeral_disk = true;
        let c = DiskConfig::from_linux(&o).unwrap();
        assert_eq!(
            (c.layout, c.resolution, c.virtio_prefix.as_str()),
            (Layout::Dos, Resolution::Iscsi, "google")
        );
        assert!(c.root_partitions && c.preformatted && c.bind_mount && c.skip_setup);
        o.partitioner_type = "parted".into();
        o.device_path_resolution_type = "mapper".into();
        let c = DiskConfig::from_linux(&o).unwrap();
        assert_eq!((c.layout, c.resolution), (Layout::Gpt, Resolution::Identity));
        o.partitioner_type = "gdisk".into();
        assert_eq!(DiskConfig::from_linux(&o).unwrap_err(), "Unknown partitioner type 'gdisk'");
    }
}
