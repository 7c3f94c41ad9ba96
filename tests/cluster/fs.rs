//! The shared filesystem through real FUSE mounts (`cairn mount`, a separate process) on a
//! cluster of real mons, OSDs and MDSs: POSIX behaviour, two mounts seeing each other (also
//! while one writes), kill -9 of the active MDS under a metadata workload with files held
//! open across it, kill -9 of a client, a stalled client fenced, fsck, and a restart of every
//! daemon.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use cairn_client::dev::Kind;
use cairn_client::fs::FsClient;
use cairn_client::{ClientError, Rados};
use cairn_common::command::Command;
use cairn_common::config::Config;
use cairn_common::fsmap::MdsRole;
use cairn_common::fsops::data_object;
use cairn_common::maps::{FailureDomain, PoolKind};
use cairn_tests::{bin_dir, wait_for, TestCluster};

const FS: &str = "myfs";

/// A cluster with 3 OSDs, a replicated-3 metadata pool, an EC 2+1 data pool, filesystem
/// `myfs` with standby-replay, and MDS daemons `names` (the first becomes active).
async fn fs_cluster(names: &[&str], overrides: &[&str]) -> TestCluster {
    let t = TestCluster::start_with_osds(1, 3, overrides).await;
    let monc = t.admin();
    for (name, kind) in [
        (
            "meta",
            PoolKind::Replicated {
                size: 3,
                min_size: 2,
            },
        ),
        (
            "data",
            PoolKind::Erasure {
                k: 2,
                m: 1,
                stripe_unit: 4096,
                min_size: 2,
            },
        ),
    ] {
        monc.command(Command::PoolCreate {
            name: name.into(),
            pg_num: 8,
            kind,
            failure_domain: FailureDomain::Osd,
        })
        .await
        .expect("create pool");
    }
    monc.command(Command::FsNew {
        name: FS.into(),
        metadata_pool: "meta".into(),
        data_pool: "data".into(),
        force: false,
    })
    .await
    .expect("fs new");
    monc.command(Command::FsSet {
        name: FS.into(),
        key: "allow_standby_replay".into(),
        value: "true".into(),
    })
    .await
    .expect("fs set");
    for name in names {
        t.cluster.add_mds(&monc, name).await.expect("add mds");
        t.cluster.start(Kind::Mds, name).expect("start mds");
    }
    wait_for_active(&t, names.len() > 1).await;
    t
}

/// Waits until the filesystem's rank is served (and has a standby-replay, if wanted);
/// returns the active's name.
async fn wait_for_active(t: &TestCluster, standby_replay: bool) -> String {
    let monc = t.admin();
    wait_for(Duration::from_secs(60), "an active MDS", || async {
        let maps = monc.maps().await.ok()?;
        let (id, _) = maps.fsmap.fs_by_name(FS)?;
        let (name, d) = maps.fsmap.active_of(id)?;
        let serving = matches!(d.role, MdsRole::Active { serving: true, .. });
        let replay_ok = !standby_replay || maps.fsmap.standby_replay_of(id).is_some();
        (serving && replay_ok).then(|| name.to_string())
    })
    .await
}

/// A `cairn mount` process and its mountpoint; unmounted (and the process ended) on drop.
struct Mount {
    child: Child,
    path: PathBuf,
}

impl Mount {
    async fn new(t: &TestCluster, path: &Path) -> Mount {
        Mount::new_at_path(t, path, "/").await
    }

    /// Mounts directory `fs_path` of the filesystem at `path`.
    async fn new_at_path(t: &TestCluster, path: &Path, fs_path: &str) -> Mount {
        fs::create_dir_all(path).expect("mountpoint");
        let log = fs::File::create(t.dir().join(format!(
            "log/mount.{}.log",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("m")
        )))
        .expect("mount log");
        let child = Process::new(bin_dir().join("cairn"))
            .arg("--conf")
            .arg(t.cluster.config_path())
            .args(["mount", FS])
            .arg(path)
            .args(["--allow-other", "--path", fs_path])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start cairn mount");
        let m = Mount {
            child,
            path: path.to_path_buf(),
        };
        let p = m.path.clone();
        wait_for(Duration::from_secs(30), "the FUSE mount", || {
            let p = p.clone();
            async move { is_mounted(&p).then_some(()) }
        })
        .await;
        m
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // SAFETY: signals the mount process this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.path) {
            if let Ok(c) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
                // SAFETY: detaches a mount this test made; the path is a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()) && l.contains("fuse"))
}

/// The read-ahead the kernel uses on the mount at `path`, in KiB.
fn readahead_kb(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).expect("stat the mount").dev();
    let setting = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let text = fs::read_to_string(&setting).expect("the mount's read-ahead setting");
    text.trim().parse().expect("a number of KiB")
}

/// Runs blocking filesystem work off the runtime (the mount's own I/O must keep flowing).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking work")
}

/// The sessions the active MDS holds, and how many of them are connected.
async fn sessions(config: &Config) -> Option<(usize, usize)> {
    let client = FsClient::connect(config, FS).await.ok()?;
    let sessions = client.mds_status().await.ok()?.sessions;
    Some((
        sessions.len(),
        sessions.iter().filter(|s| s.connected).count(),
    ))
}

/// Whether the first data object of file `ino` exists, after long enough for a purge the
/// MDS started to have removed it (purges run in the background).
async fn data_kept(rados: &Rados, ino: u64) -> bool {
    tokio::time::sleep(Duration::from_secs(3)).await;
    rados.stat("data", &data_object(ino, 0)).await.is_ok()
}

/// Empties the kernel's page cache, so reads reach the mount's client.
fn drop_page_cache() {
    fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
}

/// Waits until the first data object of file `ino` is gone (its data purged).
async fn wait_purged(rados: &Rados, ino: u64, what: &str) {
    wait_for(Duration::from_secs(30), what, || async {
        matches!(
            rados.stat("data", &data_object(ino, 0)).await,
            Err(ClientError::NotFound(_))
        )
        .then_some(())
    })
    .await;
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

/// File operations a program does, checked through the mount.
fn posix_checks(root: &Path) {
    // Write at offsets, read back, sparse holes read as zeros.
    let f = root.join("file");
    let mut h = fs::File::create(&f).expect("create");
    h.write_all(&pattern(1, 100_000)).expect("write");
    h.seek(SeekFrom::Start(9 << 20)).expect("seek");
    h.write_all(b"tail").expect("write far");
    drop(h);
    let data = fs::read(&f).expect("read");
    assert_eq!(data.len(), (9 << 20) + 4);
    assert_eq!(&data[..100_000], &pattern(1, 100_000)[..]);
    assert!(
        data[100_000..9 << 20].iter().all(|b| *b == 0),
        "a hole reads as zeros"
    );
    assert_eq!(&data[9 << 20..], b"tail");
    // Overwrite across an object boundary at an odd offset.
    let mut h = fs::OpenOptions::new().write(true).open(&f).expect("open");
    h.seek(SeekFrom::Start((4 << 20) - 7)).expect("seek");
    h.write_all(&pattern(2, 33)).expect("overwrite");
    drop(h);
    let data = fs::read(&f).expect("read");
    assert_eq!(&data[(4 << 20) - 7..(4 << 20) + 26], &pattern(2, 33)[..]);
    // Truncate down, then up: the cut bytes do not come back.
    let h = fs::OpenOptions::new().write(true).open(&f).expect("open");
    h.set_len(50_000).expect("truncate down");
    h.set_len(200_000).expect("truncate up");
    drop(h);
    let data = fs::read(&f).expect("read");
    assert_eq!(data.len(), 200_000);
    assert_eq!(&data[..50_000], &pattern(1, 50_000)[..]);
    assert!(
        data[50_000..].iter().all(|b| *b == 0),
        "truncated bytes stay gone"
    );
    // Append.
    let mut h = fs::OpenOptions::new().append(true).open(&f).expect("open");
    h.write_all(b"appended").expect("append");
    drop(h);
    assert_eq!(fs::metadata(&f).expect("stat").len(), 200_008);

    // Directories, rename over files and over empty directories, across directories.
    fs::create_dir(root.join("d1")).expect("mkdir");
    fs::create_dir(root.join("d2")).expect("mkdir");
    fs::write(root.join("d1/a"), b"A").expect("write");
    fs::write(root.join("d2/b"), b"B").expect("write");
    fs::rename(root.join("d1/a"), root.join("d2/b")).expect("rename over a file");
    assert_eq!(fs::read(root.join("d2/b")).expect("read"), b"A");
    assert!(!root.join("d1/a").exists());
    fs::create_dir(root.join("d1/sub")).expect("mkdir");
    fs::create_dir(root.join("d2/empty")).expect("mkdir");
    fs::rename(root.join("d1/sub"), root.join("d2/empty")).expect("rename over an empty dir");
    assert!(root.join("d2/empty").is_dir());
    assert_eq!(
        fs::remove_dir(root.join("d2"))
            .expect_err("not empty")
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        fs::rename(root.join("d2"), root.join("d2/empty/x"))
            .expect_err("into itself")
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        fs::metadata(root.join("d2")).expect("stat").nlink(),
        3,
        "d2 holds one directory"
    );

    // Hard links and symlinks.
    fs::hard_link(root.join("d2/b"), root.join("link")).expect("link");
    assert_eq!(fs::metadata(root.join("link")).expect("stat").nlink(), 2);
    fs::remove_file(root.join("d2/b")).expect("unlink");
    assert_eq!(fs::metadata(root.join("link")).expect("stat").nlink(), 1);
    assert_eq!(fs::read(root.join("link")).expect("read"), b"A");
    std::os::unix::fs::symlink("d2/empty", root.join("sym")).expect("symlink");
    assert_eq!(
        fs::read_link(root.join("sym")).expect("readlink"),
        PathBuf::from("d2/empty")
    );
    assert!(root.join("sym").is_dir(), "the symlink resolves");

    // A file removed while open lives on until it is closed.
    let tmp = root.join("tmpfile");
    let mut h = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .expect("create");
    fs::remove_file(&tmp).expect("unlink while open");
    assert!(!tmp.exists());
    h.write_all(b"still here").expect("write after unlink");
    h.seek(SeekFrom::Start(0)).expect("seek");
    let mut back = String::new();
    h.read_to_string(&mut back).expect("read after unlink");
    assert_eq!(back, "still here");
    assert_eq!(h.metadata().expect("fstat after unlink").nlink(), 0);
    drop(h);

    // Long names, xattrs, times, modes.
    let long = "n".repeat(255);
    fs::write(root.join(&long), b"x").expect("255-byte name");
    assert_eq!(
        fs::write(root.join("n".repeat(256)), b"x")
            .expect_err("too long")
            .raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    set_xattr(&f, "user.color", b"blue").expect("setxattr");
    assert_eq!(get_xattr(&f, "user.color").expect("getxattr"), b"blue");
    assert_eq!(
        get_xattr(&f, "user.none")
            .expect_err("absent")
            .raw_os_error(),
        Some(libc::ENODATA)
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o600);
    let before = fs::metadata(&f).expect("stat").mtime();
    std::thread::sleep(Duration::from_millis(1100));
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .expect("open")
        .write_all(b"!")
        .expect("write");
    assert!(
        fs::metadata(&f).expect("stat").mtime() > before,
        "a write moves mtime"
    );
}

/// Names that are not UTF-8 (Latin-1 here, as files copied from an old system carry): any
/// bytes but `/` and NUL make a name, and a symlink's target is kept byte for byte.
fn byte_name_checks(p1: &Path, p2: &Path) {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let latin1 = OsStr::from_bytes(b"caf\xe9");
    let longest = OsStr::from_bytes(&[0xff; 255]);
    fs::write(p1.join(latin1), b"espresso").expect("create a Latin-1 name");
    fs::write(p1.join(longest), b"x").expect("create 255 bytes of 0xff");
    let listed: Vec<Vec<u8>> = fs::read_dir(p2)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    assert!(
        listed.contains(&b"caf\xe9".to_vec()),
        "the other mount lists it"
    );
    assert!(listed.contains(&vec![0xff; 255]));
    assert_eq!(fs::read(p2.join(latin1)).expect("read"), b"espresso");
    let target = OsStr::from_bytes(b"../\xc0\xff/target");
    std::os::unix::fs::symlink(target, p1.join("byte-link")).expect("symlink");
    assert_eq!(
        fs::read_link(p2.join("byte-link"))
            .expect("readlink")
            .as_os_str(),
        target
    );
    let renamed = OsStr::from_bytes(b"th\xe9");
    fs::rename(p1.join(latin1), p1.join(renamed)).expect("rename");
    assert!(!p2.join(latin1).exists());
    assert_eq!(
        fs::read(p2.join(renamed)).expect("read renamed"),
        b"espresso"
    );
    for name in [renamed, longest, OsStr::new("byte-link")] {
        fs::remove_file(p2.join(name)).expect("unlink");
    }
}

/// A user other than root is held to the mode bits.
fn non_root_checks(root: &Path) {
    fs::create_dir(root.join("private")).expect("mkdir");
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::create_dir(root.join("shared")).expect("mkdir");
    fs::set_permissions(root.join("shared"), fs::Permissions::from_mode(0o777)).expect("chmod");
    let as_nobody = |script: &str| {
        use std::os::unix::process::CommandExt;
        Process::new("/bin/sh")
            .args(["-c", script])
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .status()
            .expect("run as nobody")
            .success()
    };
    let private = root.join("private/x");
    let shared = root.join("shared/mine");
    assert!(
        !as_nobody(&format!("echo hi > {}", private.display())),
        "mode 0700 keeps nobody out"
    );
    assert!(
        as_nobody(&format!("echo hi > {}", shared.display())),
        "mode 0777 lets nobody in"
    );
    let meta = fs::metadata(&shared).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "new files belong to their creator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_behaviour_through_two_mounts() {
    // A tiny cache written back often: directories and inodes are evicted and loaded back
    // from the metadata pool all the time.
    let t = fs_cluster(
        &["a", "b"],
        &[
            "mds.cache_memory_bytes=16384",
            "mds.writeback_interval_ms=200",
        ],
    )
    .await;
    let base = t.dir().join("mnt");
    let one = Mount::new(&t, &base.join("one")).await;
    let two = Mount::new(&t, &base.join("two")).await;
    // The test's directories are private to root: let other users reach the mounts.
    for dir in [t.dir().parent().expect("temp dir"), t.dir(), &base] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let (p1, p2) = (one.path.clone(), two.path.clone());
    blocking(move || {
        assert_eq!(readahead_kb(&p2), 4096, "the mount's read-ahead");
        posix_checks(&p1);
        non_root_checks(&p1);
        byte_name_checks(&p1, &p2);
        // Sequential reads with read-ahead, across object boundaries (4 MiB objects).
        fs::write(p1.join("long-file"), pattern(8, 9 << 20)).expect("write");
        assert!(fs::read(p2.join("long-file")).expect("read") == pattern(8, 9 << 20));
        // The other mount sees creates at once and data after close.
        fs::write(p1.join("shared-file"), pattern(7, 300_000)).expect("write");
        assert_eq!(
            fs::metadata(p2.join("shared-file")).expect("stat").len(),
            300_000
        );
        assert_eq!(
            fs::read(p2.join("shared-file")).expect("read"),
            pattern(7, 300_000)
        );
        fs::write(p2.join("shared-file"), b"changed").expect("rewrite");
        assert_eq!(fs::read(p1.join("shared-file")).expect("read"), b"changed");
        // A mount's kernel keeps a file's cached data across opens (while one stays open)
        // until another mount may write it: an overwrite in place there (same size, whole
        // pages, so nothing but the MDS can tell the first mount) ends that.
        fs::write(p1.join("cached"), pattern(11, 65_536)).expect("write");
        let kept_open = fs::File::open(p1.join("cached")).expect("open");
        let first = fs::read(p1.join("cached")).expect("read");
        assert!(first == pattern(11, 65_536), "the first mount's own write");
        fs::OpenOptions::new()
            .write(true)
            .open(p2.join("cached"))
            .and_then(|mut f| f.write_all(&pattern(12, 65_536)))
            .expect("overwrite in place");
        let seen = fs::read(p1.join("cached")).expect("read");
        assert!(
            seen == pattern(12, 65_536),
            "stale data from the first mount's cache"
        );
        drop(kept_open);
        open_handle_checks(&p1, &p2);
        // While one mount writes (no close, no fsync), the other sees each write at once in
        // stat and read: the MDS recalls the size from the writer.
        let mut w = fs::File::create(p1.join("growing")).expect("create");
        w.write_all(&pattern(9, 100_000)).expect("write");
        assert_eq!(
            fs::metadata(p2.join("growing")).expect("stat").len(),
            100_000
        );
        w.write_all(&pattern(10, 50_000)).expect("write more");
        let seen = fs::read(p2.join("growing")).expect("read while written");
        assert_eq!(seen.len(), 150_000);
        assert_eq!(&seen[100_000..], &pattern(10, 50_000)[..]);
        // A truncate from the other mount cuts what the writer wrote before it, and the
        // writer's close does not bring the bytes back.
        fs::OpenOptions::new()
            .write(true)
            .open(p2.join("growing"))
            .expect("open")
            .set_len(1000)
            .expect("truncate");
        assert_eq!(fs::metadata(p1.join("growing")).expect("stat").len(), 1000);
        drop(w);
        assert_eq!(fs::metadata(p2.join("growing")).expect("stat").len(), 1000);
        // A large directory, listed whole.
        fs::create_dir(p1.join("many")).expect("mkdir");
        for i in 0..10_000 {
            fs::File::create(p1.join(format!("many/f{i:05}"))).expect("create");
        }
        let mut names: Vec<String> = fs::read_dir(p2.join("many"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 10_000);
        assert_eq!(names[9_999], "f09999");
    })
    .await;
    exclusive_capability_checks(&t, &one.path, &two.path).await;
}

/// A handle kept open on one mount reads what another mount wrote once that mount's close
/// returned: the kernel's cached pages and the size the handle knew are dropped, also when
/// the file keeps its size or shrinks.
fn open_handle_checks(p1: &Path, p2: &Path) {
    fs::write(p1.join("kept"), pattern(13, 65_536)).expect("write");
    let mut kept = fs::File::open(p1.join("kept")).expect("open");
    // Plain reads to the end (no fstat, which would show the kernel the new size).
    let mut read_all = |what: &str| {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        kept.seek(SeekFrom::Start(0)).expect("seek");
        loop {
            match kept.read(&mut buf).expect(what) {
                0 => return seen,
                n => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    assert!(read_all("first read") == pattern(13, 65_536));
    // Cut to nothing and written again to the same size: only the MDS can tell.
    fs::write(p2.join("kept"), pattern(14, 65_536)).expect("rewrite");
    assert!(
        read_all("read after the rewrite") == pattern(14, 65_536),
        "the open handle read stale pages"
    );
    fs::OpenOptions::new()
        .append(true)
        .open(p2.join("kept"))
        .and_then(|mut f| f.write_all(&pattern(15, 10_000)))
        .expect("append");
    let grown = read_all("read after the append");
    assert_eq!(grown.len(), 75_536, "the open handle missed the growth");
    assert!(grown[65_536..] == pattern(15, 10_000));
    fs::OpenOptions::new()
        .write(true)
        .open(p2.join("kept"))
        .and_then(|f| f.set_len(100))
        .expect("truncate");
    assert!(
        read_all("read after the truncate") == pattern(14, 100),
        "the open handle read past the new end"
    );
}

/// The files whose exclusive capability clients hold, over all sessions.
async fn capabilities(config: &Config) -> Option<u64> {
    let client = FsClient::connect(config, FS).await.ok()?;
    let sessions = client.mds_status().await.ok()?.sessions;
    Some(sessions.iter().map(|s| s.capabilities).sum())
}

/// A file's only opener answers stats of it itself (its exclusive capability) until another
/// mount shows or changes the file: then the opener sees the change at once.
async fn exclusive_capability_checks(t: &TestCluster, p1: &Path, p2: &Path) {
    let config = t.config();
    let (a, b) = (p1.join("held"), p2.join("held"));
    // Read-only: a writer would be recalled for its writes anyway.
    let held = blocking({
        let a = a.clone();
        move || {
            fs::File::create(&a).expect("create");
            fs::File::open(&a).expect("open")
        }
    })
    .await;
    assert_eq!(
        capabilities(&config).await,
        Some(1),
        "the only opener holds it"
    );
    let held = blocking({
        let b = b.clone();
        move || {
            let before = held.metadata().expect("fstat");
            assert_eq!((before.nlink(), before.mode() & 0o7777), (1, 0o644));
            fs::set_permissions(&b, fs::Permissions::from_mode(0o600)).expect("chmod");
            fs::hard_link(&b, b.with_extension("link")).expect("link");
            let after = held.metadata().expect("fstat");
            assert_eq!((after.nlink(), after.mode() & 0o7777), (2, 0o600));
            held
        }
    })
    .await;
    assert_eq!(
        capabilities(&config).await,
        Some(0),
        "recalled by the other mount"
    );
    // Opened again, alone: the holder's own changes show in its own stats.
    drop(held);
    let held = blocking({
        let a = a.clone();
        move || fs::File::open(&a).expect("open")
    })
    .await;
    assert_eq!(capabilities(&config).await, Some(1));
    blocking(move || {
        fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).expect("chmod");
        fs::remove_file(a.with_extension("link")).expect("unlink");
        let own = held.metadata().expect("fstat");
        assert_eq!((own.nlink(), own.mode() & 0o7777), (1, 0o640));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn active_mds_killed_under_a_metadata_workload() {
    // No reconnect window: only the open files clients state on reconnecting keep a file
    // removed after the takeover alive.
    let t = fs_cluster(&["a", "b"], &["mds.reconnect_timeout_ms=0"]).await;
    let active = wait_for_active(&t, true).await;
    let mount = Mount::new(&t, &t.dir().join("mnt")).await;
    let other = Mount::new(&t, &t.dir().join("other")).await;
    // A file held open for writing across the takeover, its writes not yet reported.
    let held_path = mount.path.join("held");
    let mut held = blocking(move || {
        let mut h = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(held_path)
            .expect("create");
        h.write_all(&pattern(5, 1 << 20)).expect("write");
        h
    })
    .await;
    let held_ino = held.metadata().expect("fstat").ino();
    let root = mount.path.clone();
    let workload = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut made = Vec::new();
        let mut i = 0u32;
        while started.elapsed() < Duration::from_secs(12) {
            let dir = root.join(format!("d{}", i % 7));
            if i < 7 {
                fs::create_dir(&dir).expect("mkdir");
            }
            let p = dir.join(format!("f{i}"));
            fs::write(&p, format!("file {i}")).expect("create during failover");
            if i.is_multiple_of(5) {
                let q = dir.join(format!("r{i}"));
                fs::rename(&p, &q).expect("rename during failover");
                made.push(q);
            } else {
                made.push(p);
            }
            i += 1;
        }
        made
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    assert!(t.cluster.kill(Kind::Mds, &active).expect("kill"));
    let monc = t.admin();
    wait_for(
        Duration::from_secs(30),
        "the standby-replay to take the rank",
        || async {
            let maps = monc.maps().await.ok()?;
            let (id, _) = maps.fsmap.fs_by_name(FS)?;
            let (name, d) = maps.fsmap.active_of(id)?;
            (name != active && matches!(d.role, MdsRole::Active { serving: true, .. }))
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "takeover: {} ms from kill -9 to an active MDS",
        killed_at.elapsed().as_millis()
    );
    let made = workload
        .await
        .expect("the workload finished without an error");
    assert!(
        made.len() > 50,
        "the workload made progress ({} files)",
        made.len()
    );
    let root = mount.path.clone();
    blocking(move || {
        for (n, p) in made.iter().enumerate() {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let i: u32 = name[1..].parse().expect("index");
            assert_eq!(
                fs::read_to_string(p).expect("every acknowledged file is there"),
                format!("file {i}"),
                "file {n}"
            );
        }
        assert!(root.join("d0").is_dir());
    })
    .await;
    // The client stated its open files to the new active: a stat from the other mount
    // recalls the unreported writes, and removing the file keeps it for its open handle.
    let seen_at = other.path.join("held");
    wait_for(
        Duration::from_secs(15),
        "the held file's size recalled through the new active",
        || {
            let p = seen_at.clone();
            async move { (fs::metadata(&p).ok()?.len() == 1 << 20).then_some(()) }
        },
    )
    .await;
    let gone = other.path.join("held");
    blocking(move || fs::remove_file(gone).expect("unlink")).await;
    let rados = Rados::connect(&t.config()).await.expect("rados");
    assert!(
        data_kept(&rados, held_ino).await,
        "a file removed while open keeps its data"
    );
    held = blocking(move || {
        drop_page_cache();
        let mut back = Vec::new();
        held.seek(SeekFrom::Start(0)).expect("seek");
        held.read_to_end(&mut back).expect("read the removed file");
        assert_eq!(back, pattern(5, 1 << 20), "an open file outlives its name");
        held
    })
    .await;
    drop(held);
    wait_purged(
        &rados,
        held_ino,
        "the removed file's data to go at its last close",
    )
    .await;
    // The killed daemon comes back as a standby.
    t.cluster.start(Kind::Mds, &active).expect("restart");
    wait_for_active(&t, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_client_is_evicted_and_its_open_files_released() {
    let t = fs_cluster(
        &["a"],
        &[
            "mds.session_timeout_ms=3000",
            "mds.reconnect_timeout_ms=0",
            // Long enough that waiting on the dead client would show.
            "mds.recall_timeout_ms=20000",
        ],
    )
    .await;
    let config = t.config();
    let base = t.dir().join("mnt");
    let mut doomed = Mount::new(&t, &base.join("doomed")).await;
    let survivor = Mount::new(&t, &base.join("survivor")).await;
    wait_for(Duration::from_secs(20), "two client sessions", || async {
        (sessions(&config).await? == (2, 2)).then_some(())
    })
    .await;
    let (d, s) = (doomed.path.clone(), survivor.path.clone());
    let (ino, handles) = blocking(move || {
        let mut h = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(d.join("held"))
            .expect("create");
        h.write_all(&pattern(1, 5 << 20)).expect("write");
        h.sync_all().expect("fsync");
        let ino = h.metadata().expect("fstat").ino();
        fs::remove_file(s.join("held")).expect("unlink from the other mount");
        let mut w = fs::File::create(d.join("writing")).expect("create");
        w.write_all(b"never reported").expect("write");
        (ino, (h, w))
    })
    .await;
    let rados = Rados::connect(&config).await.expect("rados");
    assert!(
        data_kept(&rados, ino).await,
        "a removed file's data stays while a client holds it open"
    );
    doomed.child.kill().expect("kill -9 the client");
    doomed.child.wait().expect("reap");
    wait_for(
        Duration::from_secs(20),
        "the dead client's session to disconnect",
        || async { (sessions(&config).await? == (2, 1)).then_some(()) },
    )
    .await;
    // The dead client cannot be recalled: a stat of the file it was writing answers at once.
    let s = survivor.path.clone();
    let started = Instant::now();
    blocking(move || fs::metadata(s.join("writing")).expect("stat")).await;
    // It gets 2 s to reconnect (a live client would), then is fenced; never the 20 s a
    // connected client gets to answer.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a stat waited {:?} for a dead client",
        started.elapsed()
    );
    wait_for(
        Duration::from_secs(30),
        "the dead client's session to be evicted",
        || async { (sessions(&config).await? == (1, 1)).then_some(()) },
    )
    .await;
    wait_purged(&rados, ino, "the file the dead client held open to go").await;
    drop(handles);
}

/// A client cut off (SIGSTOP) while it holds writes back does not answer the recall another
/// client's open causes: it is evicted and blocklisted, so its held-back write, sent when it
/// wakes, is refused rather than landing over the other client's acknowledged write; its
/// fsync fails and it stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_does_not_answer_a_recall_is_fenced() {
    let t = fs_cluster(&["a"], &["mds.recall_timeout_ms=2000"]).await;
    let config = t.config();
    let base = t.dir().join("mnt");
    let stalled = Mount::new(&t, &base.join("stalled")).await;
    let other = Mount::new(&t, &base.join("other")).await;
    wait_for(Duration::from_secs(20), "two client sessions", || async {
        (sessions(&config).await? == (2, 2)).then_some(())
    })
    .await;
    const LEN: usize = 64 << 10;
    let st = stalled.path.clone();
    let (held, ino) = blocking(move || {
        let mut h = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(st.join("shared"))
            .expect("create");
        h.write_all(&pattern(1, LEN)).expect("write");
        let ino = h.metadata().expect("fstat").ino();
        (h, ino)
    })
    .await;
    let pid = stalled.child.id() as i32;
    // SAFETY: signals the mount process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let rados = Rados::connect(&config).await.expect("rados");
    let object = data_object(ino, 0);
    assert!(
        matches!(
            rados.stat("data", &object).await,
            Err(ClientError::NotFound(_))
        ),
        "the file's only opener buffers its writes (or this test shows nothing)"
    );

    let o = other.path.clone();
    let started = Instant::now();
    blocking(move || {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(o.join("shared"))
            .expect("open past the stalled client");
        f.write_all(&pattern(2, LEN)).expect("write");
        f.sync_all().expect("fsync");
    })
    .await;
    println!(
        "open, write and fsync past a stalled writer took {:?}",
        started.elapsed()
    );
    let blocklist = t.admin().maps().await.expect("maps").osdmap.blocklist;
    assert_eq!(
        blocklist.len(),
        1,
        "the stalled client is fenced: {blocklist:?}"
    );
    wait_for(
        Duration::from_secs(20),
        "the stalled client's session to be evicted",
        || async { (sessions(&config).await? == (1, 1)).then_some(()) },
    )
    .await;

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let synced = blocking(move || {
        let r = held.sync_all();
        drop(held);
        r
    })
    .await;
    assert!(
        synced.is_err(),
        "the fenced client's fsync of its held-back write must fail"
    );
    let s = stalled.path.clone();
    assert!(
        blocking(move || fs::metadata(s.join("shared")))
            .await
            .is_err(),
        "the fenced client stays out"
    );
    // Past the age at which a client sends what it buffered, only the acknowledged write
    // is there.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let data = rados
        .read("data", &object, 0, LEN as u64)
        .await
        .expect("read");
    assert!(
        data == pattern(2, LEN),
        "the fenced client's late write landed over the acknowledged one"
    );
    let o = other.path.clone();
    drop_page_cache();
    let through_mount = blocking(move || fs::read(o.join("shared")).expect("read")).await;
    assert!(through_mount == pattern(2, LEN));
}

/// `cairn fs fsck`: whether it exited cleanly, and what it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_reader_does_not_get_a_recalled_writer_fenced() {
    let t = fs_cluster(&["a"], &["mds.recall_timeout_ms=2000"]).await;
    let config = t.config();
    let base = t.dir().join("mnt");
    let writer = Mount::new(&t, &base.join("writer")).await;
    let reader = Mount::new(&t, &base.join("reader")).await;
    let asker = Mount::new(&t, &base.join("asker")).await;
    wait_for(Duration::from_secs(20), "three client sessions", || async {
        (sessions(&config).await? == (3, 3)).then_some(())
    })
    .await;
    let (w, r) = (writer.path.clone(), reader.path.clone());
    let (mut held, kept) = blocking(move || {
        let mut h = fs::File::create(w.join("shared")).expect("create");
        h.write_all(&pattern(1, 4096)).expect("write");
        let kept = fs::File::open(r.join("shared")).expect("open to read");
        // Written through (two openers), not yet reported to the MDS.
        h.write_all(&pattern(2, 4096)).expect("write more");
        (h, kept)
    })
    .await;
    let pid = reader.child.id() as i32;
    // SAFETY: signals the mount process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The stat recalls the writer; the writer's report then waits on the silent reader,
    // which must not make the writer look silent too.
    let a = asker.path.clone();
    let size = blocking(move || fs::metadata(a.join("shared")).expect("stat").len()).await;
    assert_eq!(size, 8192, "the stat sees the writer's unreported write");
    let blocklist = t.admin().maps().await.expect("maps").osdmap.blocklist;
    assert!(
        blocklist.is_empty(),
        "a writer that answered its recall was fenced: {blocklist:?}"
    );
    let synced = blocking(move || {
        held.write_all(&pattern(3, 4096))?;
        held.sync_all()
    })
    .await;
    assert!(synced.is_ok(), "the writer's session goes on: {synced:?}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    drop(kept);
}

fn fsck(t: &TestCluster) -> (bool, String) {
    let out = Process::new(bin_dir().join("cairn"))
        .arg("--conf")
        .arg(t.cluster.config_path())
        .args(["fs", "fsck", FS])
        .output()
        .expect("run cairn fs fsck");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A namespace built through a mount (directories, hard links, a symlink, renames, a file
/// removed while open) checks clean. The MDS stops while that file is still open and its
/// client never returns: the next active removes it from the stray directory once the
/// reconnect window is over. Damage written into the metadata pool behind the MDS's back (a
/// name of a missing inode, a wrong link count) is reported, and only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsck_passes_a_sound_namespace_and_names_damage() {
    let t = fs_cluster(&["a"], &["mds.reconnect_timeout_ms=3000"]).await;
    let config = t.config();
    let mut mount = Mount::new(&t, &t.dir().join("mnt")).await;
    let root = mount.path.clone();
    let (file_ino, gone_ino, held) = blocking(move || {
        fs::create_dir_all(root.join("d/e/f")).expect("mkdir");
        fs::write(root.join("d/file"), b"data").expect("write");
        fs::hard_link(root.join("d/file"), root.join("d/e/link")).expect("link");
        std::os::unix::fs::symlink("d/file", root.join("sym")).expect("symlink");
        fs::create_dir(root.join("moved")).expect("mkdir");
        fs::rename(root.join("moved"), root.join("d/e/f/moved")).expect("rename a directory");
        fs::write(root.join("gone"), b"x").expect("write");
        let held = fs::File::open(root.join("gone")).expect("open");
        let gone_ino = held.metadata().expect("fstat").ino();
        fs::remove_file(root.join("gone")).expect("unlink while open");
        let ino = fs::metadata(root.join("d/file")).expect("stat").ino();
        (ino, gone_ino, held)
    })
    .await;
    let (clean, report) = fsck(&t);
    println!("{report}");
    assert!(clean && report.contains("clean"), "{report}");

    // The MDS stops with the file open; its client dies and never comes back.
    assert!(t
        .cluster
        .stop(Kind::Mds, "a", Duration::from_secs(10))
        .expect("stop mds"));
    mount.child.kill().expect("kill -9 the client");
    drop(held);
    drop(mount);
    // Damage the stored namespace while no MDS runs (a clean stop writes everything back).
    let rados = Rados::connect(&config).await.expect("rados");
    let ghost = serde_json::json!({ "ino": 0xdead0, "kind": 0o100000 });
    rados
        .omap_set(
            "meta",
            "dir.1",
            vec![(b"ghost".to_vec(), serde_json::to_vec(&ghost).expect("json"))],
        )
        .await
        .expect("add an entry naming nothing");
    let object = format!("inode.{file_ino:x}");
    let mut inode: serde_json::Value = serde_json::from_slice(
        &rados
            .read_all("meta", &object, 1 << 20)
            .await
            .expect("read"),
    )
    .expect("an inode record");
    assert_eq!(inode["nlink"], 2);
    inode["nlink"] = 5.into();
    rados
        .write_full("meta", &object, serde_json::to_vec(&inode).expect("json"))
        .await
        .expect("write a wrong link count");
    // Data no file accounts for: of an inode that never existed, and past `d/file`'s four
    // bytes (as a purge that failed would leave them).
    for object in [data_object(0xdead1, 0), data_object(file_ino, 3)] {
        rados
            .write_full("data", &object, b"left behind".to_vec())
            .await
            .expect("write a leftover data object");
    }
    assert!(
        rados
            .stat("meta", &format!("inode.{gone_ino:x}"))
            .await
            .is_ok(),
        "the open file outlived the MDS"
    );
    t.cluster.start(Kind::Mds, "a").expect("start mds");
    wait_for_active(&t, false).await;
    wait_for(
        Duration::from_secs(30),
        "the stray nobody came back for to be removed",
        || async {
            matches!(
                rados.stat("meta", &format!("inode.{gone_ino:x}")).await,
                Err(ClientError::NotFound(_))
            )
            .then_some(())
        },
    )
    .await;
    let (clean, report) = fsck(&t);
    println!("{report}");
    assert!(!clean, "fsck must fail on damage: {report}");
    assert!(
        report.contains("\"ghost\" in directory 0x1 names inode 0xdead0, which does not exist"),
        "{report}"
    );
    assert!(
        report.contains(&format!("inode {file_ino:#x} has link count 5 but 2 names")),
        "{report}"
    );
    assert!(
        report.contains("the data pool holds 1 objects of inode 0xdead1, which does not exist"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "file {file_ino:#x} is 4 bytes but the data pool holds 1 objects past its end, the first {}",
            data_object(file_ino, 3)
        )),
        "{report}"
    );
    assert!(report.contains("has 4 problems"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_filesystem_survives_a_restart_of_every_daemon() {
    let t = fs_cluster(&["a", "b"], &[]).await;
    {
        let mount = Mount::new(&t, &t.dir().join("mnt")).await;
        let root = mount.path.clone();
        blocking(move || {
            fs::create_dir_all(root.join("x/y")).expect("mkdir");
            fs::write(root.join("x/y/data"), pattern(3, 5 << 20)).expect("write");
            // A name that is not UTF-8 goes through the journal and the directory object.
            fs::write(root.join(byte_name()), b"latin-1").expect("write");
            let mut h = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(root.join("x/synced"))
                .expect("create");
            h.write_all(b"durable").expect("write");
            h.sync_all().expect("fsync");
        })
        .await;
    }
    t.cluster
        .stop_all(Duration::from_secs(10))
        .expect("stop all");
    t.cluster.start_all().expect("start all");
    t.wait_healthy(Duration::from_secs(60)).await;
    wait_for_active(&t, false).await;
    let mount = Mount::new(&t, &t.dir().join("mnt2")).await;
    let root = mount.path.clone();
    blocking(move || {
        assert_eq!(
            fs::read(root.join("x/y/data")).expect("read"),
            pattern(3, 5 << 20)
        );
        let mut s = String::new();
        fs::File::open(root.join("x/synced"))
            .expect("open")
            .read_to_string(&mut s)
            .expect("read");
        assert_eq!(s, "durable");
        assert_eq!(fs::read(root.join(byte_name())).expect("read"), b"latin-1");
    })
    .await;
}

/// The mons refuse a new filesystem over a metadata pool whose PGs report objects, whoever
/// asks (`cairn fs new` also lists the pool, but a program sends the command itself), unless
/// the command says `force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mons_refuse_a_used_metadata_pool() {
    let t = fs_cluster(&["a"], &[]).await;
    wait_for_active(&t, false).await;
    let monc = t.admin();
    monc.command(Command::FsRm {
        name: FS.into(),
        at_ms: 0,
    })
    .await
    .expect("fs rm");
    // The journal the MDS wrote is in `meta` (the data pool holds nothing: no file was written).
    wait_for(
        Duration::from_secs(20),
        "meta's objects reported",
        || async { (monc.status().await.ok()?.objects > 0).then_some(()) },
    )
    .await;
    let fs_new = |force| Command::FsNew {
        name: "again".into(),
        metadata_pool: "meta".into(),
        data_pool: "data".into(),
        force,
    };
    match monc.command(fs_new(false)).await {
        Err(ClientError::Refused(why)) => assert!(why.contains("already holds"), "{why}"),
        other => panic!("a used metadata pool was taken: {other:?}"),
    }
    monc.command(fs_new(true)).await.expect("forced fs new");
}

fn byte_name() -> &'static std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(b"x/na\xefve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_osd_killed_under_a_file_workload() {
    let t = fs_cluster(&["a", "b"], &[]).await;
    let mount = Mount::new(&t, &t.dir().join("mnt")).await;
    let root = mount.path.clone();
    let workload = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut written = 0u64;
        while started.elapsed() < Duration::from_secs(10) {
            // Whole files and overwrites at odd offsets, on the erasure-coded data pool.
            let p = root.join(format!("f{written}"));
            fs::write(&p, pattern(written, 300_000)).expect("write during the OSD's absence");
            let mut h = fs::OpenOptions::new().write(true).open(&p).expect("open");
            h.seek(SeekFrom::Start(12_345)).expect("seek");
            h.write_all(&pattern(written + 1, 777)).expect("overwrite");
            h.sync_all().expect("fsync");
            written += 1;
        }
        written
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(t.cluster.kill(Kind::Osd, "1").expect("kill osd.1"));
    let written = workload
        .await
        .expect("the workload finished without an error");
    t.cluster.start(Kind::Osd, "1").expect("restart osd.1");
    let root = mount.path.clone();
    blocking(move || {
        for i in 0..written {
            let mut want = pattern(i, 300_000);
            want[12_345..12_345 + 777].copy_from_slice(&pattern(i + 1, 777));
            assert_eq!(
                fs::read(root.join(format!("f{i}"))).expect("read"),
                want,
                "file {i}"
            );
        }
    })
    .await;
    t.wait_healthy(Duration::from_secs(60)).await;
}

/// Runs a tool on the mount and asserts it succeeds; says so and returns when it is not
/// installed.
fn assert_tool_passes(program: &str, args: &[String]) {
    match Process::new(program).args(args).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: {program} is not installed (scripts/install-deps installs it)");
        }
        Err(e) => panic!("cannot run {program}: {e}"),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{program} failed on the mount:\n{text}"
            );
            eprintln!("{program} passed on the mount");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fio_verify_and_stress_ng_pass_on_the_mount() {
    let t = fs_cluster(&["a", "b"], &[]).await;
    let mount = Mount::new(&t, &t.dir().join("mnt")).await;
    let root = mount.path.clone();
    blocking(move || {
        let fio_dir = root.join("fio");
        let sng_dir = root.join("stress-ng");
        fs::create_dir(&fio_dir).expect("mkdir");
        fs::create_dir(&sng_dir).expect("mkdir");
        // Random writes of mixed sizes by two jobs, every block read back and checked.
        let fio: Vec<String> = [
            "--name=verify",
            &format!("--directory={}", fio_dir.display()),
            "--size=16M",
            "--bsrange=4k-128k",
            "--rw=randwrite",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--ioengine=psync",
            "--numjobs=2",
            // fio would leave its verify state files in the working directory.
            "--verify_state_save=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_tool_passes("fio", &fio);
        let stress: Vec<String> = [
            "--temp-path",
            &sng_dir.display().to_string(),
            "--dir",
            "1",
            "--dentry",
            "1",
            "--rename",
            "1",
            "--chmod",
            "1",
            "--hdd",
            "1",
            "--hdd-bytes",
            "8M",
            "--fstat",
            "1",
            "--getdent",
            "1",
            "--dirdeep",
            "1",
            "--timeout",
            "10s",
            "--verify",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_tool_passes("stress-ng", &stress);
    })
    .await;
}

/// The PostgreSQL server binaries of the Debian package, if installed.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs a PostgreSQL tool as the `postgres` user; panics with its output on failure.
fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> String {
    let mut command = format!("{}", bin.join(tool).display());
    for a in args {
        command.push_str(&format!(" '{a}'"));
    }
    let out = Process::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", &command])
        .current_dir("/")
        .output()
        .expect("run su");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tool} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_runs_on_a_subpath_of_the_mount() {
    let Some(bin) = postgres_bin() else {
        eprintln!("SKIPPED: PostgreSQL is not installed (scripts/install-deps installs it)");
        return;
    };
    let t = fs_cluster(&["a", "b"], &[]).await;
    {
        let whole = Mount::new(&t, &t.dir().join("whole")).await;
        let pg = whole.path.join("pg");
        fs::create_dir(&pg).expect("mkdir");
        let chown = Process::new("chown")
            .arg("postgres:postgres")
            .arg(&pg)
            .status()
            .expect("chown");
        assert!(chown.success());
    }
    // The data directory's mount: only the subdirectory, as Rook users mount a subvolume.
    for dir in [t.dir().parent().expect("temp dir"), t.dir()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mount = Mount::new_at_path(&t, &t.dir().join("pgmnt"), "/pg").await;
    let data = mount.path.join("data");
    let socket = t.dir().join("pgsock");
    fs::create_dir(&socket).expect("socket dir");
    let chown = Process::new("chown")
        .arg("postgres:postgres")
        .arg(&socket)
        .status()
        .expect("chown");
    assert!(chown.success());
    let port = cairn_client::dev::free_ports(1).expect("port")[0].to_string();
    let (d, s) = (data.display().to_string(), socket.display().to_string());
    // Unix socket only, in a directory the postgres user owns (its log goes there too).
    let server_opts = format!("-k {s} -p {port} -c listen_addresses=");
    let log = socket.join("postgresql.log").display().to_string();
    blocking(move || {
        let conn = ["-h", s.as_str(), "-p", port.as_str()];
        as_postgres(&bin, "initdb", &["-D", &d]);
        as_postgres(
            &bin,
            "pg_ctl",
            &["-D", &d, "-o", &server_opts, "-l", &log, "-w", "start"],
        );
        as_postgres(
            &bin,
            "pgbench",
            &[&conn[..], &["-i", "-s", "1", "postgres"]].concat(),
        );
        let run = as_postgres(
            &bin,
            "pgbench",
            &[&conn[..], &["-c", "2", "-T", "5", "postgres"]].concat(),
        );
        assert!(run.contains("number of failed transactions: 0"), "{run}");
        eprintln!(
            "{}",
            run.lines()
                .filter(|l| l.starts_with("tps"))
                .collect::<String>()
        );
        // A clean restart, then every table and index checked.
        as_postgres(&bin, "pg_ctl", &["-D", &d, "-m", "fast", "-w", "stop"]);
        as_postgres(
            &bin,
            "pg_ctl",
            &["-D", &d, "-o", &server_opts, "-l", &log, "-w", "start"],
        );
        as_postgres(
            &bin,
            "psql",
            &[&conn[..], &["-c", "create extension amcheck", "postgres"]].concat(),
        );
        as_postgres(
            &bin,
            "pg_amcheck",
            &[&conn[..], &["--heapallindexed", "postgres"]].concat(),
        );
        as_postgres(&bin, "pg_ctl", &["-D", &d, "-m", "fast", "-w", "stop"]);
    })
    .await;
}
