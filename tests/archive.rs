//! Tests for `archive`: well-formed archives unpack faithfully, every kind of hostile entry is refused
//! without leaving anything behind, and `pack` round-trips through `unpack`. Hostile archives are
//! written header by header, since the tar crate's own path setters refuse to produce them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bosh_agent::archive::{pack_tar, unpack, Unpack};
use tar::{EntryType, Header};

const MTIME: u64 = 1_600_000_000;

/// One entry of a hand-written archive.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Special(&'a str, EntryType),
}

/// Builds a plain tar from `entries`, writing names verbatim (no normalisation, no checks).
fn raw_tar(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (name, kind, mode, data, link): (&str, EntryType, u32, &[u8], Option<&str>) = match *entry {
            E::Dir(n, m) => (n, EntryType::Directory, m, b"", None),
            E::File(n, m, d) => (n, EntryType::Regular, m, d, None),
            E::Symlink(n, t) => (n, EntryType::Symlink, 0o777, b"", Some(t)),
            E::Hard(n, t) => (n, EntryType::Link, 0o644, b"", Some(t)),
            E::Special(n, k) => (n, k, 0o644, b"", None),
        };
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(MTIME);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A scratch area: the archive file, and `out/` where `dest` goes, so leftovers are easy to see.
struct Case {
    tmp: tempfile::TempDir,
    archive: PathBuf,
    dest: PathBuf,
}

impl Case {
    fn new(archive_bytes: &[u8]) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("blob");
        fs::write(&archive, archive_bytes).unwrap();
        fs::create_dir(tmp.path().join("out")).unwrap();
        let dest = tmp.path().join("out/dest");
        Case { tmp, archive, dest }
    }

    fn unpack(&self, subdir: Option<&str>) -> Result<(), String> {
        unpack(&self.archive, &self.dest, &Unpack { subdir })
    }

    /// Names left in `out/`: the destination and any staging directory.
    fn leftovers(&self) -> Vec<String> {
        let out = self.tmp.path().join("out");
        fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }
}

/// Unpacking `entries` (gzip'd) must fail with an error naming `entry`, and leave nothing in `out/`.
fn assert_refused(entries: &[E], entry: &str) -> String {
    let case = Case::new(&gzip(&raw_tar(entries)));
    let err = case.unpack(None).expect_err("hostile archive was accepted");
    assert!(err.contains(&format!("entry '{entry}'")), "error does not name '{entry}': {err}");
    assert_eq!(case.leftovers(), Vec::<String>::new(), "left behind after: {err}");
    err
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `pack_tar` gzipped, as the compiler stores a compiled package (with a zero gzip timestamp).
fn pack(dir: &Path, out: &mut Vec<u8>) -> Result<(), String> {
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    pack_tar(dir, &mut gz)?;
    gz.finish().map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn unpacks_nested_dirs_files_modes_and_links() {
    let case = Case::new(&gzip(&raw_tar(&[
        E::Dir("bin/", 0o750),
        E::File("bin/run", 0o755, b"#!/bin/sh\n"),
        E::File("config/app.yml", 0o640, b"a: 1\n"),
        E::Symlink("bin/alias", "run"),
        E::Dir("lib/", 0o755),
        E::Symlink("lib/up", "../bin/run"),
        E::Symlink("lib/self", "./"),
        E::Hard("bin/run2", "bin/run"),
        E::File("setuid", 0o4755, b"x"),
        E::Dir("ro/", 0o555),
        E::File("ro/f", 0o444, b"read only"),
    ])));
    case.unpack(None).unwrap();
    let d = &case.dest;
    assert_eq!(fs::read(d.join("bin/run")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode(&d.join("bin/run")), 0o755);
    assert_eq!(mode(&d.join("bin")), 0o750);
    assert_eq!(mode(&d.join("config/app.yml")), 0o640);
    assert_eq!(fs::read_link(d.join("bin/alias")).unwrap(), Path::new("run"));
    assert_eq!(fs::read(d.join("lib/up")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::read(d.join("bin/run2")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::metadata(d.join("bin/run2")).unwrap().ino(),
        fs::metadata(d.join("bin/run")).unwrap().ino()
    );
    assert_eq!(mode(&d.join("setuid")), 0o755, "setuid bit must be masked");
    assert_eq!(mode(&d.join("ro")), 0o555);
    assert_eq!(fs::read(d.join("ro/f")).unwrap(), b"read only");
    assert_eq!(fs::metadata(d.join("bin/run")).unwrap().mtime() as u64, MTIME);
    assert_eq!(fs::metadata(d.join("bin")).unwrap().mtime() as u64, MTIME);
    assert_eq!(mode(d), 0o755, "root defaults to 0755");
    assert_eq!(case.leftovers(), ["dest"]);
    fs::set_permissions(d.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    // let TempDir clean up
}

#[test]
fn accepts_dot_slash_prefix_and_takes_root_mode() {
    let case = Case::new(&gzip(&raw_tar(&[
        E::Dir("./", 0o750),
        E::Dir("./bin/", 0o755),
        E::File("./bin/run", 0o700, b"run"),
        E::File(".//odd//path", 0o600, b"odd"),
    ])));
    case.unpack(None).unwrap();
    assert_eq!(fs::read(case.dest.join("bin/run")).unwrap(), b"run");
    assert_eq!(fs::read(case.dest.join("odd/path")).unwrap(), b"odd");
    assert_eq!(mode(&case.dest), 0o750);
}

#[test]
fn selects_and_strips_a_subdir() {
    let archive = gzip(&raw_tar(&[
        E::Dir("./", 0o755),
        E::Dir("./job1/", 0o700),
        E::File("./job1/monit", 0o644, b"job1 monit"),
        E::Dir("./job2/", 0o755),
        E::File("./job2/monit", 0o644, b"job2 monit"),
        E::File("job1/bin/ctl", 0o755, b"ctl"),
        E::Symlink("job1/bin/ctl2", "ctl"),
    ]));
    let case = Case::new(&archive);
    case.unpack(Some("job1")).unwrap();
    assert_eq!(fs::read(case.dest.join("monit")).unwrap(), b"job1 monit");
    assert_eq!(fs::read(case.dest.join("bin/ctl2")).unwrap(), b"ctl");
    assert!(!case.dest.join("job2").exists() && !case.dest.join("job1").exists());
    assert_eq!(mode(&case.dest), 0o700, "root takes the selected directory's mode");

    let missing = Case::new(&archive);
    let err = missing.unpack(Some("nope")).unwrap_err();
    assert!(err.contains("no entries under 'nope'"), "{err}");
    assert_eq!(missing.leftovers(), Vec::<String>::new());
    assert!(missing.unpack(Some("../job1")).is_err());
}

#[test]
fn hard_link_into_another_job_is_refused() {
    let case =
        Case::new(&gzip(&raw_tar(&[E::File("job2/secret", 0o600, b"s"), E::Hard("job1/h", "job2/secret")])));
    let err = case.unpack(Some("job1")).unwrap_err();
    assert!(err.contains("entry 'job1/h'"), "{err}");
    assert_eq!(case.leftovers(), Vec::<String>::new());
}

#[test]
fn unpacks_plain_tar() {
    let case = Case::new(&raw_tar(&[E::File("a/b", 0o644, b"plain")]));
    case.unpack(None).unwrap();
    assert_eq!(fs::read(case.dest.join("a/b")).unwrap(), b"plain");
}

#[test]
fn refuses_absolute_paths_and_dot_dot() {
    assert_refused(
        &[E::File("/tmp/bosh-agent-archive-test-abs", 0o644, b"x")],
        "/tmp/bosh-agent-archive-test-abs",
    );
    assert!(!Path::new("/tmp/bosh-agent-archive-test-abs").exists());
    assert_refused(&[E::File("ok", 0o644, b"x"), E::File("../x", 0o644, b"x")], "../x");
    assert_refused(&[E::Dir("a/", 0o755), E::File("a/../../x", 0o644, b"x")], "a/../../x");
    assert_refused(&[E::Dir("./../up/", 0o755)], "./../up/");
}

/// A plain tar whose single file's real name comes from a PAX `path` record, with `header_name` as
/// the (ignored) name in its own header.
fn pax_tar(path: &str, header_name: &str) -> Vec<u8> {
    let body = format!(" path={path}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    let record = format!("{len}{body}");
    let mut builder = tar::Builder::new(Vec::new());
    let mut pax = Header::new_ustar();
    pax.as_old_mut().name[..10].copy_from_slice(b"PaxHeaders");
    pax.set_entry_type(EntryType::XHeader);
    pax.set_size(record.len() as u64);
    pax.set_cksum();
    builder.append(&pax, record.as_bytes()).unwrap();
    let mut file = Header::new_ustar();
    file.as_old_mut().name[..header_name.len()].copy_from_slice(header_name.as_bytes());
    file.set_entry_type(EntryType::Regular);
    file.set_mode(0o644);
    file.set_size(3);
    file.set_cksum();
    builder.append(&file, &b"pax"[..]).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn pax_path_is_used_and_checked() {
    let long = format!("./{}/file", "long-pax-directory-name".repeat(8));
    let case = Case::new(&gzip(&pax_tar(&long, "truncated")));
    case.unpack(None).unwrap();
    assert_eq!(fs::read(case.dest.join(&long[2..])).unwrap(), b"pax");

    let case = Case::new(&pax_tar("../evil", "innocent"));
    let err = case.unpack(None).unwrap_err();
    assert!(err.contains("entry '../evil'"), "{err}");
    assert_eq!(case.leftovers(), Vec::<String>::new());
}

#[test]
fn refuses_symlinks_escaping_the_destination() {
    assert_refused(&[E::Symlink("l", "/etc")], "l");
    assert_refused(&[E::Dir("a/", 0o755), E::Symlink("a/l", "../../x")], "a/l");
    assert_refused(&[E::Symlink("l", "..")], "l");
    // Lexically inside, but `a` is a link to `..`: `..` after a name is refused outright.
    assert_refused(&[E::Symlink("sub/a", ".."), E::Symlink("sub/b", "a/../../x")], "sub/b");
    assert_refused(&[E::Symlink("sub/b", "a/../x"), E::Symlink("sub/a", "..")], "sub/b");
}

#[test]
fn refuses_writing_through_a_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let err = assert_refused(&[E::Symlink("link", target), E::File("link/x", 0o644, b"x")], "link");
    assert!(err.contains("absolute"), "{err}");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    // A link that is itself harmless still may not be written through.
    assert_refused(
        &[E::Dir("real/", 0o755), E::Symlink("link", "real"), E::File("link/x", 0o644, b"x")],
        "link/x",
    );
    assert_refused(
        &[E::Dir("real/", 0o755), E::Symlink("link", "real"), E::Dir("link/d/", 0o755)],
        "link/d/",
    );
    assert_refused(&[E::Dir("real/", 0o755), E::Symlink("link", "real"), E::Dir("link/", 0o755)], "link/");
}

#[test]
fn replaces_an_earlier_symlink_instead_of_following_it() {
    let case = Case::new(&gzip(&raw_tar(&[
        E::File("target", 0o644, b"original"),
        E::Symlink("l", "target"),
        E::File("l", 0o644, b"replacement"),
    ])));
    case.unpack(None).unwrap();
    assert_eq!(fs::read(case.dest.join("target")).unwrap(), b"original");
    assert_eq!(fs::read(case.dest.join("l")).unwrap(), b"replacement");
    assert!(fs::symlink_metadata(case.dest.join("l")).unwrap().is_file());
}

#[test]
fn refuses_hard_links_outside_or_not_yet_extracted() {
    assert_refused(&[E::Hard("h", "../etc/passwd")], "h");
    assert_refused(&[E::Hard("h", "/etc/passwd")], "h");
    assert_refused(&[E::Hard("h", "later"), E::File("later", 0o644, b"x")], "h");
    assert_refused(&[E::Dir("d/", 0o755), E::Hard("h", "d")], "h");
    // A hard link to a symlink would re-root its relative target somewhere else.
    assert_refused(&[E::Dir("d/", 0o755), E::Symlink("d/s", ".."), E::Hard("h", "d/s")], "h");
    assert_refused(
        &[
            E::Dir("real/", 0o755),
            E::File("real/f", 0o644, b"x"),
            E::Symlink("l", "real"),
            E::Hard("h", "l/f"),
        ],
        "h",
    );
}

#[test]
fn refuses_devices_and_fifos() {
    let err =
        assert_refused(&[E::File("ok", 0o644, b"x"), E::Special("dev/null", EntryType::Char)], "dev/null");
    assert!(err.contains("device"), "{err}");
    assert_refused(&[E::Special("disk", EntryType::Block)], "disk");
    let err = assert_refused(&[E::Special("pipe", EntryType::Fifo)], "pipe");
    assert!(err.contains("FIFO"), "{err}");
}

#[test]
fn refuses_an_existing_destination() {
    let case = Case::new(&gzip(&raw_tar(&[E::File("f", 0o644, b"new")])));
    fs::create_dir(&case.dest).unwrap();
    fs::write(case.dest.join("keep"), b"old").unwrap();
    let err = case.unpack(None).unwrap_err();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(case.leftovers(), ["dest"]);
    assert_eq!(fs::read(case.dest.join("keep")).unwrap(), b"old");
    assert!(!case.dest.join("f").exists());
}

/// A gzip'd tar big enough that its compressed stream spans many blocks.
fn sizeable_archive() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    gzip(&raw_tar(&[E::File("a", 0o644, &noise), E::File("b", 0o644, &noise[..1000])]))
}

#[test]
fn refuses_truncated_or_corrupt_gzip() {
    let good = sizeable_archive();
    Case::new(&good).unpack(None).unwrap();
    let mut corrupt = good.clone();
    for b in &mut corrupt[good.len() / 2..good.len() / 2 + 64] {
        *b ^= 0x5a;
    }
    for bytes in [&good[..good.len() / 2], &good[..good.len() - 4], &corrupt[..]] {
        let case = Case::new(bytes);
        let err = case.unpack(None).expect_err("damaged archive accepted");
        assert!(err.contains("reading archive") || err.contains("truncated"), "{err}");
        assert_eq!(case.leftovers(), Vec::<String>::new(), "{err}");
    }
}

#[test]
fn refuses_truncated_plain_tar_and_empty_archives() {
    let tar = raw_tar(&[E::File("a", 0o644, &[7u8; 5000])]);
    let case = Case::new(&tar[..2048]);
    let err = case.unpack(None).unwrap_err();
    assert!(err.contains("entry 'a'"), "{err}");
    assert_eq!(case.leftovers(), Vec::<String>::new());

    for bytes in [&b""[..], &[0u8; 1024][..], &gzip(b"")[..]] {
        let case = Case::new(bytes);
        assert!(case.unpack(None).unwrap_err().contains("no entries"));
        assert_eq!(case.leftovers(), Vec::<String>::new());
    }
}

/// Builds a tree exercising modes, symlinks, empty dirs and names longer than a tar header holds.
fn sample_tree(root: &Path) {
    let long_dir =
        root.join("a-rather-long-directory-name-to-push-past-one-hundred-bytes/and-another-level-below");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(root.join("bin/run"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("secret"), b"s").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    fs::write(long_dir.join("file-with-a-long-name-as-well.txt"), vec![b'x'; 70_000]).unwrap();
    std::os::unix::fs::symlink("../bin/run", long_dir.join("up")).unwrap();
    std::os::unix::fs::symlink("bin/run", root.join("alias")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", root.join("dangling")).unwrap();
    let long_target =
        format!("{}/file-with-a-long-name-as-well.txt", long_dir.strip_prefix(root).unwrap().display());
    std::os::unix::fs::symlink(long_target, root.join("long-link")).unwrap();
    fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o700)).unwrap();
}

/// Asserts two trees have the same entries, types, permission bits, contents and link targets.
fn assert_same_tree(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
    let mut names_b: Vec<_> = fs::read_dir(b).unwrap().map(|e| e.unwrap().file_name()).collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "entries of {}", a.display());
    for name in names_a {
        let (pa, pb) = (a.join(&name), b.join(&name));
        let (ma, mb) = (fs::symlink_metadata(&pa).unwrap(), fs::symlink_metadata(&pb).unwrap());
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pa.display());
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
            continue;
        }
        assert_eq!(ma.mode() & 0o777, mb.mode() & 0o777, "mode of {}", pa.display());
        assert_eq!(ma.mtime(), mb.mtime(), "mtime of {}", pa.display());
        if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else {
            assert_eq!(fs::read(&pa).unwrap(), fs::read(&pb).unwrap());
        }
    }
}

#[test]
fn pack_then_unpack_round_trips() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let mut packed = Vec::new();
    pack(src.path(), &mut packed).unwrap();

    let mut again = Vec::new();
    pack(src.path(), &mut again).unwrap();
    assert_eq!(packed, again, "pack is not deterministic");

    let names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&packed[..]))
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect();
    assert_eq!(names[0], "./");
    assert!(names.iter().all(|n| n.starts_with("./")), "{names:?}");
    assert!(names.contains(&"./bin/".to_string()) && names.contains(&"./bin/run".to_string()));

    let case = Case::new(&packed);
    case.unpack(None).unwrap();
    assert_same_tree(src.path(), &case.dest);
    assert_eq!(mode(&case.dest), mode(src.path()));
}

#[test]
fn pack_follows_the_root_link_but_not_links_below() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("real")).unwrap();
    fs::write(tmp.path().join("outside"), b"o").unwrap();
    std::os::unix::fs::symlink("../outside", tmp.path().join("real/out")).unwrap();
    std::os::unix::fs::symlink("real", tmp.path().join("install")).unwrap();
    let mut packed = Vec::new();
    pack(&tmp.path().join("install"), &mut packed).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&packed[..]));
    let entries: Vec<_> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path_bytes().into_owned(), e.header().entry_type())
        })
        .collect();
    assert_eq!(entries, [(b"./".to_vec(), EntryType::Directory), (b"./out".to_vec(), EntryType::Symlink)]);
    assert!(pack(&tmp.path().join("outside"), &mut Vec::new()).is_err());
}

/// By hand: `cargo test --release --test archive -- --ignored --nocapture measure`. Unpacks .tgz
/// files of 3000 mixed files (~120 MB mostly incompressible, and a text-heavy one) with `unpack` and
/// with `tar xzf`, best of three each, and checks both give the same tree.
#[test]
#[ignore = "a measurement against tar xzf, not a check: run by hand in release mode (see above)"]
fn measure_against_tar_xzf() {
    for text_share in [1, 3] {
        measure(text_share);
    }
}

/// One measurement; `text_share` of every 4 files is text, the rest random bytes.
fn measure(text_share: usize) {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words: Vec<&str> =
        "the agent unpacks package and job archives sent by the director".split(' ').collect();
    for i in 0..3000 {
        let dir = src.join(format!("d{:02}/e{}", i % 40, i % 7));
        fs::create_dir_all(&dir).unwrap();
        let size = (next() % 100_000) as usize + 200;
        let data: Vec<u8> = if i % 4 < text_share {
            let mut text = Vec::with_capacity(size);
            while text.len() < size {
                text.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
                text.push(if next() % 12 == 0 { b'\n' } else { b' ' });
            }
            text
        } else {
            (0..size).map(|_| next() as u8).collect()
        };
        fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    let tgz = tmp.path().join("big.tgz");
    let status = std::process::Command::new("tar").arg("czf").arg(&tgz).arg("-C").arg(&src).arg(".").status();
    assert!(status.unwrap().success());
    let ours = |dest: &Path| unpack(&tgz, dest, &Unpack::default()).unwrap();
    let theirs = |dest: &Path| {
        fs::create_dir(dest).unwrap();
        let status = std::process::Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(dest).status();
        assert!(status.unwrap().success());
    };
    // Wall time is noisy on a shared machine, so CPU time (ours: this process; tar: its children,
    // gzip included) is reported too.
    let best = |f: &dyn Fn(&Path)| {
        (0..3)
            .map(|round| {
                let dest = tmp.path().join(format!("dest-{round}"));
                let cpu = cpu_time();
                let start = Instant::now();
                f(&dest);
                let took = (start.elapsed(), cpu_time() - cpu);
                fs::remove_dir_all(&dest).unwrap();
                took
            })
            .min()
            .unwrap_or((Duration::MAX, Duration::MAX))
    };
    let (t_ours, t_tar) = (best(&ours), best(&theirs));
    ours(&tmp.path().join("ours"));
    theirs(&tmp.path().join("tar"));
    assert_same_tree(&tmp.path().join("tar"), &tmp.path().join("ours"));
    let raw: u64 = fs::read_dir(&src).unwrap().count() as u64; // directories, for the record
    let mb = fs::metadata(&tgz).unwrap().len() as f64 / 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{mb:.1} MB tgz ({text_share}/4 text, 3000 files in {raw}x7 dirs): wall unpack {:.0} ms, tar xzf {:.0} ms, \
         ratio {:.2}; cpu unpack {:.0} ms, tar+gzip {:.0} ms, ratio {:.2}",
        ms(t_ours.0),
        ms(t_tar.0),
        ms(t_ours.0) / ms(t_tar.0),
        ms(t_ours.1),
        ms(t_tar.1),
        ms(t_ours.1) / ms(t_tar.1)
    );
}

/// User+system CPU time of this process plus its waited-for children.
fn cpu_time() -> std::time::Duration {
    let mut total = std::time::Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage only writes into the zeroed struct we pass.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut usage);
            usage
        };
        for t in [usage.ru_utime, usage.ru_stime] {
            total += std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        }
    }
    total
}
