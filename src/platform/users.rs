//! Local users for `bosh ssh` and the `vcap` account: creating and removing the temporary `bosh_*`
//! users, writing `authorized_keys`, setting crypted passwords.
//!
//! Why shell out to `useradd`/`usermod`/`userdel`/`groupadd` instead of editing `/etc/passwd`: those
//! tools take the shadow-utils locks, update `/etc/shadow` and `/etc/group` consistently and create the
//! home directory from `/etc/skel`; a hand-written editor would race with them and with `sshd`. Each one
//! runs through `exec::run` with a deadline, so a hung tool cannot hold a worker forever.
//!
//! The user database is always the live system's (`/etc/passwd` of `/`), never the `-r` root: sshd reads
//! the live one, and `useradd --root` would need a complete chroot. Everything else (homes under the
//! base dir, key files) is a path the caller passes in.
//!
//! Names come from outside (the director, bosh-cli), so they are validated before any command sees
//! them: `bosh_` followed by `[a-z0-9_-]`, at most 32 bytes (the `useradd` limit).

use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use crate::sync::lock;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The live user database; see the module documentation for why it is not under `-r`.
pub const SYSTEM_PASSWD: &str = "/etc/passwd";
/// The live group database.
pub const SYSTEM_GROUP: &str = "/etc/group";
/// The prefix every temporary SSH user has; cleanup never touches any other user.
pub const SSH_USER_PREFIX: &str = "bosh_";
/// Groups a `bosh ssh` user joins when they exist: `admin`/`bosh_sudoers` grant sudo on stemcells,
/// `bosh_sshers` is the group sshd allows.
pub const SSH_GROUPS: [&str; 4] = ["vcap", "admin", "bosh_sudoers", "bosh_sshers"];
/// Groups created when missing, so sudo and sshd rules keyed on them apply to the new user.
const CREATED_GROUPS: [&str; 2] = ["bosh_sudoers", "bosh_sshers"];
/// Longest a shadow-utils command may take; they normally finish in milliseconds.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Serialises this process's changes to the user database: the check-then-create steps of setup are
/// not atomic on their own.
static USER_DB: Mutex<()> = Mutex::new(());

/// One `/etc/passwd` line, the fields the agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Parses passwd text; malformed lines are skipped (the file is the system's, not ours to judge).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(f[5]),
            })
        })
        .collect()
}

/// Reads and parses a passwd file; a missing file is an empty database.
pub fn read_passwd(path: &Path) -> Result<Vec<PasswdEntry>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_passwd(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

pub use crate::owner::group_gid;

/// Checks a `bosh ssh` user name: `bosh_` + `[a-z0-9_-]`, at most 32 bytes. Anything else is refused
/// before it can reach a command line.
pub fn validate_ssh_user(name: &str) -> Result<(), String> {
    let rest = name.strip_prefix(SSH_USER_PREFIX);
    let ok = name.len() <= 32
        && rest.is_some_and(|r| {
            !r.is_empty()
                && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Invalid SSH user name '{}': expected '{SSH_USER_PREFIX}' followed by a-z, 0-9, '_' or '-', at most 32 characters",
            name.escape_debug()
        ))
    }
}

/// The `user_regex` of `ssh cleanup`, restricted to the forms the director and bosh-cli send:
/// `^prefix` (CLI: `"^" + user`), `^prefix.*`, and `^name$`, where the literal part has no regex
/// metacharacters. Other syntax is refused with an error instead of being half-understood: a cleanup
/// that matched more than asked would delete users. This keeps the agent free of a regex engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRegex {
    literal: String,
    exact: bool,
}

impl UserRegex {
    /// Parses the restricted form; the error says which forms are accepted.
    pub fn parse(pattern: &str) -> Result<UserRegex, String> {
        let unsupported = || {
            format!(
                "Unsupported user_regex '{}': only '^literal', '^literal.*' and '^literal$' are accepted",
                pattern.escape_debug()
            )
        };
        let body = pattern.strip_prefix('^').ok_or_else(unsupported)?;
        let (literal, exact) = if let Some(l) = body.strip_suffix(".*") {
            (l, false)
        } else if let Some(l) = body.strip_suffix('$') {
            (l, true)
        } else {
            (body, false)
        };
        const META: &str = ".*+?()[]{}|\\^$";
        if literal.is_empty() || literal.chars().any(|c| META.contains(c) || c.is_control()) {
            return Err(unsupported());
        }
        Ok(UserRegex { literal: literal.to_string(), exact })
    }

    /// Whether `name` matches, with the regex's meaning.
    pub fn matches(&self, name: &str) -> bool {
        if self.exact {
            name == self.literal
        } else {
            name.starts_with(&self.literal)
        }
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    exec::run(cmd, None, COMMAND_LIMIT)
}

/// Creates groups the sudo and sshd rules of stemcells expect, when they are missing. A concurrent
/// creator (`groupadd` exit 9) is fine: the group exists afterwards either way.
fn ensure_groups() -> Result<(), String> {
    for g in CREATED_GROUPS {
        if group_gid(Path::new(SYSTEM_GROUP), g).is_none() {
            if let Err(e) = run(Command::new("groupadd").arg(g)) {
                if group_gid(Path::new(SYSTEM_GROUP), g).is_none() {
                    return Err(format!("creating group {g}: {e}"));
                }
            }
        }
    }
    Ok(())
}

/// Creates (or, when a previous attempt already created it, completes) the `bosh ssh` user `user`
/// with home `<ssh_base>/<user>` (0700), the [`SSH_GROUPS`] that exist, an optional crypted password
/// and `~/.ssh/authorized_keys` holding `public_key`. Idempotent so a retried request succeeds.
pub fn setup_ssh_user(
    ssh_base: &Path,
    user: &str,
    password: Option<&str>,
    public_key: &str,
) -> Result<(), String> {
    validate_ssh_user(user)?;
    let _db = lock(&USER_DB);
    std::fs::create_dir_all(ssh_base).with_context(|| format!("creating {}", ssh_base.display()))?;
    let home = ssh_base.join(user);
    let existing = read_passwd(Path::new(SYSTEM_PASSWD))?.into_iter().find(|e| e.name == user);
    match existing {
        Some(e) if e.home != home => {
            return Err(format!("user {user} already exists with home {}", e.home.display()));
        }
        Some(_) => log::info!("ssh: user {user} already exists; completing its setup"),
        None => {
            let mut cmd = Command::new("useradd");
            cmd.arg("-m").arg("-b").arg(ssh_base).args(["-s", "/bin/bash"]);
            if let Some(p) = password.filter(|p| !p.is_empty()) {
                cmd.args(["-p", p]);
            }
            run(cmd.arg(user)).with_context(|| format!("creating user {user}"))?;
        }
    }
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", home.display()))?;
    ensure_groups()?;
    let groups: Vec<&str> =
        SSH_GROUPS.into_iter().filter(|g| group_gid(Path::new(SYSTEM_GROUP), g).is_some()).collect();
    if !groups.is_empty() {
        run(Command::new("usermod").args(["-G", &groups.join(","), user]))
            .with_context(|| format!("adding {user} to groups {}", groups.join(",")))?;
    }
    let entry = read_passwd(Path::new(SYSTEM_PASSWD))?
        .into_iter()
        .find(|e| e.name == user)
        .ok_or_else(|| format!("user {user} missing from {SYSTEM_PASSWD} after useradd"))?;
    write_authorized_keys(&home, public_key, Some((entry.uid, entry.gid)))
}

/// Writes `<home>/.ssh/authorized_keys` (directory 0700, file 0600), owned by `owner` when given.
/// Refuses a `.ssh` that is not a real directory, so a planted symlink cannot redirect the write.
pub fn write_authorized_keys(home: &Path, keys: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
    let dir = home.join(".ssh");
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if !m.is_dir() => return Err(format!("{} exists and is not a directory", dir.display())),
        Ok(_) => {}
        Err(_) => std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?,
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    let file = dir.join("authorized_keys");
    let mut text = keys.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    crate::fsutil::write_atomic(&file, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", file.display()))?;
    if let Some((uid, gid)) = owner {
        for p in [&dir, &file] {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} {}", p.display()))?;
        }
    }
    Ok(())
}

/// Removes (`userdel -rf`, home included) every user whose name starts with `bosh_` and matches
/// `regex`. Tries them all; the error lists the ones that failed. Returns the removed names.
pub fn cleanup_ssh_users(regex: &UserRegex) -> Result<Vec<String>, String> {
    let _db = lock(&USER_DB);
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for entry in read_passwd(Path::new(SYSTEM_PASSWD))? {
        if !entry.name.starts_with(SSH_USER_PREFIX) || !regex.matches(&entry.name) {
            continue;
        }
        match run(Command::new("userdel").args(["-r", "-f", &entry.name])) {
            Ok(_) => removed.push(entry.name),
            // userdel -r exits 12 when only the mail spool or home was missing; the user is gone.
            Err(e) if !user_exists(&entry.name) => {
                log::info!("ssh: userdel {} reported: {e}", entry.name);
                removed.push(entry.name);
            }
            Err(e) => failures.push(format!("{}: {e}", entry.name)),
        }
    }
    if failures.is_empty() {
        Ok(removed)
    } else {
        Err(format!("removing SSH users: {}", failures.join("; ")))
    }
}

fn user_exists(name: &str) -> bool {
    read_passwd(Path::new(SYSTEM_PASSWD)).map(|v| v.iter().any(|e| e.name == name)).unwrap_or(true)
}

/// Sets `user`'s crypted password with `usermod -p` (`*` locks password login). The hash is never
/// logged.
pub fn set_password(user: &str, crypted: &str) -> Result<(), String> {
    let _db = lock(&USER_DB);
    run(Command::new("usermod").args(["-p", crypted, user]))
        .map(|_| ())
        .map_err(|e| format!("setting the password of {user}: {}", e.replace(crypted, "<hash>")))
}

/// Host public key files, in order of preference: RSA is what the Go agent reads; the others cover
/// stemcells built without an RSA host key.
const HOST_KEYS: [&str; 3] =
    ["/etc/ssh/ssh_host_rsa_key.pub", "/etc/ssh/ssh_host_ecdsa_key.pub", "/etc/ssh/ssh_host_ed25519_key.pub"];
/// The VM's SSH host public key, so bosh-cli can pin it in `known_hosts`.
pub fn host_public_key(dirs: &Dirs) -> Result<String, String> {
    for path in HOST_KEYS.map(|p| dirs.under_root(p)) {
        match std::fs::read_to_string(&path) {
            Ok(key) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("Reading host public key {}: {e}", path.display())),
        }
    }
    Err(format!("Reading host public key: none of {} exists", HOST_KEYS.join(", ")))
}

/// Looks up a user's uid and gid in the live user database (for chowning `bundle_logs` tarballs to
/// the SSH user who fetches them). Uses `getpwnam_r`, so it is safe on the agent's many threads.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let c_name = CString::new(name).map_err(|_| format!("Invalid owning user '{}'", name.escape_debug()))?;
    let mut buf_len = 4096usize;
    loop {
        let mut buf = vec![0 as libc::c_char; buf_len];
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids) for getpwnam_r to fill.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the NUL-terminated name, the passwd, the buffer
        // with its true length, and the result slot. Only the ids are read afterwards, not pointers
        // into the buffer.
        let rc =
            unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf_len < 1 << 20 {
            buf_len *= 4;
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "Looking up owning user '{}': {}",
                name.escape_debug(),
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if result.is_null() {
            return Err(format!("Looking up owning user '{}': no such user", name.escape_debug()));
        }
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ssh_user_names() {
        for ok in ["bosh_abc", "bosh_8ckfjuxt7", "bosh_a-b_c", "bosh_123456789012345678901234567"] {
            assert!(validate_ssh_user(ok).is_ok(), "{ok}");
        }
        for bad in ["", "bosh_", "root", "vcap", "bosh_A", "bosh_a b", "bosh_a;rm", "-bosh_a", "bosh_\u{e9}"]
        {
            assert!(validate_ssh_user(bad).is_err(), "{bad}");
        }
        assert!(validate_ssh_user(&format!("bosh_{}", "a".repeat(28))).is_err(), "33 characters");
    }

    #[test]
    fn user_regex_accepts_only_anchored_literals() {
        let r = UserRegex::parse("^bosh_abc").unwrap();
        assert!(r.matches("bosh_abc") && r.matches("bosh_abcdef") && !r.matches("bosh_ab"));
        let r = UserRegex::parse("^bosh_abc$").unwrap();
        assert!(r.matches("bosh_abc") && !r.matches("bosh_abcd"));
        let r = UserRegex::parse("^bosh_.*").unwrap();
        assert!(r.matches("bosh_x") && !r.matches("vcap"));
        for bad in ["bosh_abc", "^", "^$", "^bosh_(a|b)", "^bosh_a+", "^bosh_[a-z]", "^bosh_a\\d", "^.*", ""]
        {
            let e = UserRegex::parse(bad).unwrap_err();
            assert!(e.starts_with("Unsupported user_regex"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_passwd() {
        let users = parse_passwd("root:x:0:0:root:/root:/bin/bash\nbad line\nvcap:x:1000:1000::/home/vcap:/bin/bash\nx:x:notanumber:1::/:/bin/sh\n");
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[1],
            PasswdEntry { name: "vcap".into(), uid: 1000, gid: 1000, home: "/home/vcap".into() }
        );
    }

    #[test]
    fn authorized_keys_have_strict_modes_and_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        write_authorized_keys(dir.path(), "ssh-rsa AAA", None).unwrap();
        let ssh = dir.path().join(".ssh");
        assert_eq!(std::fs::metadata(&ssh).unwrap().permissions().mode() & 0o777, 0o700);
        let f = ssh.join("authorized_keys");
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "ssh-rsa AAA\n");
        let other = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path(), other.path().join(".ssh")).unwrap();
        assert!(write_authorized_keys(other.path(), "k", None).is_err());
    }

    #[test]
    fn host_key_falls_back_to_other_types() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("base"), root.path());
        assert!(host_public_key(&dirs).unwrap_err().contains("none of"));
        crate::fsutil::write_atomic(
            &dirs.under_root("/etc/ssh/ssh_host_ed25519_key.pub"),
            b"ssh-ed25519 E\n",
            0o644,
        )
        .unwrap();
        assert_eq!(host_public_key(&dirs).unwrap(), "ssh-ed25519 E\n");
        crate::fsutil::write_atomic(&dirs.under_root("/etc/ssh/ssh_host_rsa_key.pub"), b"ssh-rsa R\n", 0o644)
            .unwrap();
        assert_eq!(host_public_key(&dirs).unwrap(), "ssh-rsa R\n");
    }

    #[test]
    fn looks_up_users() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        let e = lookup_user("no-such-user-here").unwrap_err();
        assert!(e.contains("no such user"), "{e}");
        assert!(lookup_user("a\0b").is_err());
    }
}
