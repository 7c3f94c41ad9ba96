//! The `cairn` tool as people use it: `dev up`, status, health, config, auth, mon, and clear
//! errors for the usual mistakes.

use std::path::Path;
use std::process::{Command, Output};

use cairn_tests::bin_dir;

fn cairn(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin_dir().join("cairn"))
        .args(args)
        .current_dir(dir)
        .env_remove("CAIRN_CONF")
        .env_remove("CAIRN_DEV_DIR")
        .output()
        .expect("run cairn")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = cairn(dir, args);
    assert!(
        out.status.success(),
        "cairn {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The output of `cairn ARGS` once `settled` holds for it (polled for 10 s): PG states come
/// with the primaries' next beacons.
fn eventually(dir: &Path, args: &[&str], settled: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut out = ok(dir, args);
    while !settled(&out) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        out = ok(dir, args);
    }
    out
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = cairn(dir, args);
    assert!(!out.status.success(), "cairn {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// Stops the dev cluster in a directory when dropped, so a failing test leaves no daemons.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = cairn(self.0, &["dev", "down", "--dir", "."]);
    }
}

#[test]
fn dev_cluster_and_admin_commands_work_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path();
    let dir = top.join("c1");
    let _down = Down(&dir);
    let up = ok(
        top,
        &[
            "dev",
            "up",
            "--mons",
            "3",
            "--osds",
            "3",
            "--osd-size",
            "134217728",
            "--dir",
            "c1",
        ],
    );
    assert!(up.contains("health: HEALTH_OK"), "{up}");
    assert!(up.contains("mon: 3 daemons, quorum a,b,c (leader "), "{up}");
    assert!(up.contains("osd: 3 osds: 3 up, 3 in"), "{up}");
    for mon in ["a", "b", "c"] {
        assert!(dir.join(format!("run/mon.{mon}.pid")).exists());
    }
    // Inside the directory, cairn finds cairn.toml by itself.
    let status = ok(&dir, &["status"]);
    assert!(status.contains("  cluster:\n    id:     "), "{status}");
    assert!(
        status.contains("  services:\n    mon: 3 daemons"),
        "{status}"
    );
    assert!(
        status.contains("  data:\n    pools:   0 pools, 0 pgs"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["status", "--format", "json"])).unwrap();
    assert_eq!(json["health"]["status"], "HEALTH_OK");
    assert_eq!(json["mons"].as_array().unwrap().len(), 3);
    assert_eq!(ok(&dir, &["health"]), "HEALTH_OK\n");

    ok(&dir, &["config", "set", "mon.example_option", "42"]);
    assert_eq!(ok(&dir, &["config", "get", "mon.example_option"]), "42\n");
    assert!(ok(&dir, &["config", "dump"]).contains("mon.example_option = 42"));
    assert!(fails(&dir, &["config", "get", "mon.unset"]).contains("option mon.unset is not set"));
    assert!(fails(&dir, &["config", "set", "BAD", "1"]).contains("invalid option name"));

    ok(&dir, &["auth", "add", "client.bob", "mon", "allow r"]);
    assert!(ok(&dir, &["auth", "ls"]).contains("client.bob\n\tcaps: [mon] allow r"));
    let bob = ok(&dir, &["auth", "get", "client.bob"]);
    assert!(
        bob.contains("[\"client.bob\"]") && bob.contains("key = "),
        "{bob}"
    );
    std::fs::write(dir.join("bob.keyring"), &bob).unwrap();
    let as_bob = ["--name", "client.bob", "--keyring", "bob.keyring"];
    ok(&dir, &[&as_bob[..], &["status"]].concat());
    let denied = fails(
        &dir,
        &[&as_bob[..], &["config", "set", "a.b", "1"]].concat(),
    );
    assert!(
        denied.contains("permission denied: client.bob is not allowed"),
        "{denied}"
    );
    ok(&dir, &["auth", "caps", "client.bob", "mon", "allow rw"]);
    ok(
        &dir,
        &[&as_bob[..], &["config", "set", "a.b", "1"]].concat(),
    );
    ok(&dir, &["auth", "rm", "client.bob"]);
    assert!(fails(&dir, &[&as_bob[..], &["status"]].concat()).contains("authentication failed"));
    assert!(fails(&dir, &["auth", "caps", "client.bob", "mon"]).contains("caps come in pairs"));

    let stat = ok(&dir, &["mon", "stat"]);
    assert!(stat.contains("3 mons at {a=127.0.0.1:"), "{stat}");

    // Pools and objects for people.
    ok(&dir, &["osd", "pool", "create", "data", "--pg-num", "8"]);
    ok(
        &dir,
        &[
            "osd",
            "pool",
            "create",
            "ec",
            "--erasure",
            "--k",
            "2",
            "--m",
            "1",
        ],
    );
    assert!(fails(
        &dir,
        &[
            "osd",
            "pool",
            "create",
            "wide",
            "--erasure",
            "--k",
            "3",
            "--m",
            "2"
        ]
    )
    .contains("failure domains"));
    assert!(fails(&dir, &["osd", "pool", "rm", "data"]).contains("--yes-i-really-mean-it"));
    assert_eq!(ok(&dir, &["osd", "pool", "ls"]), "data\nec\n");
    std::fs::write(dir.join("hello.txt"), b"hello, cairn\n").unwrap();
    for pool in ["data", "ec"] {
        ok(&dir, &["rados", "put", pool, "greeting", "hello.txt"]);
        ok(&dir, &["rados", "get", pool, "greeting", "back.txt"]);
        assert_eq!(
            std::fs::read(dir.join("back.txt")).unwrap(),
            b"hello, cairn\n"
        );
        assert_eq!(ok(&dir, &["rados", "ls", pool]), "greeting\n");
    }
    // A filesystem's metadata pool must start empty, unless the admin insists.
    let refused = fails(&dir, &["fs", "new", "scratch", "data", "ec"]);
    assert!(refused.contains("already holds objects"), "{refused}");
    ok(&dir, &["fs", "new", "scratch", "data", "ec", "--force"]);
    ok(&dir, &["fs", "rm", "scratch", "--yes-i-really-mean-it"]);
    // `fs apply` checks the same before it changes anything.
    let pool = ["osd", "pool", "create", "scratch-metadata", "--pg-num", "8"];
    ok(
        &dir,
        &[&pool[..], &["--replicated", "--size", "2"]].concat(),
    );
    ok(
        &dir,
        &["rados", "put", "scratch-metadata", "journal", "hello.txt"],
    );
    let spec = r#"{"name": "scratch", "metadataPool": {"replicated": {"size": 2}},
        "dataPools": [{"replicated": {"size": 2}}]}"#;
    std::fs::write(dir.join("scratch.json"), spec).unwrap();
    let refused = fails(&dir, &["fs", "apply", "--file", "scratch.json"]);
    assert!(refused.contains("already holds objects"), "{refused}");
    assert!(!ok(&dir, &["osd", "pool", "ls"]).contains("scratch-data0"));
    let rm = [
        "osd",
        "pool",
        "rm",
        "scratch-metadata",
        "--yes-i-really-mean-it",
    ];
    ok(&dir, &rm);
    let status = eventually(&dir, &["status"], |s| {
        s.contains("pgs:     72 active+clean") && s.contains("objects: 2 objects")
    });
    assert!(status.contains("pools:   2 pools, 72 pgs"), "{status}");
    assert!(status.contains("pgs:     72 active+clean"), "{status}");
    assert!(status.contains("objects: 2 objects"), "{status}");
    let tree: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["osd", "tree", "--format", "json"])).unwrap();
    let statuses: Vec<&str> = tree["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["up", "up", "up"]);

    // A clean stop marks the OSD down at once; out and in are an admin's decisions.
    let osd2 = |dir: &std::path::Path| {
        let tree: serde_json::Value =
            serde_json::from_str(&ok(dir, &["osd", "tree", "--format", "json"])).unwrap();
        tree["nodes"][2].clone()
    };
    ok(&dir, &["dev", "stop", "osd", "2"]);
    assert_eq!(osd2(&dir)["status"], "down");
    ok(&dir, &["osd", "out", "2"]);
    assert_eq!(osd2(&dir)["in"], false);
    ok(&dir, &["osd", "in", "2"]);
    assert_eq!(osd2(&dir)["in"], true);
    let weight = osd2(&dir)["weight"].clone();
    ok(&dir, &["osd", "reweight", "2", "0.5"]);
    assert_eq!(osd2(&dir)["weight"], 0.5);
    assert!(fails(&dir, &["osd", "reweight", "2", "1e9"]).contains("invalid weight"));
    ok(&dir, &["osd", "reweight", "2", &weight.to_string()]);
    assert_eq!(osd2(&dir)["weight"], weight);
    // A fenced instance is listed until it is lifted; a malformed one is refused.
    ok(
        &dir,
        &[
            "osd",
            "blocklist",
            "add",
            "client.x/5eed",
            "--expire",
            "600",
        ],
    );
    let listed = ok(&dir, &["osd", "blocklist", "ls"]);
    assert!(listed.contains("client.x/5eed  expires in "), "{listed}");
    assert!(fails(&dir, &["osd", "blocklist", "add", "client.x"]).contains("ENTITY/NONCE"));
    ok(&dir, &["osd", "blocklist", "rm", "client.x/5eed"]);
    assert_eq!(ok(&dir, &["osd", "blocklist", "ls"]), "listed 0 entries\n");
    assert!(fails(&dir, &["osd", "blocklist", "rm", "client.x/5eed"]).contains("not blocklisted"));
    ok(&dir, &["dev", "start", "osd", "2"]);
    while osd2(&dir)["status"] != "up" {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // df and pg stat read the space the OSDs report.
    // Each of `data` and `ec` holds the one object put above, 13 bytes: one 4 KiB block on
    // each of three OSDs in both pools; erasure coding stores it as two data stripe units and
    // one of parity.
    let space = |df: &str| -> Vec<[u64; 4]> {
        let v: serde_json::Value = serde_json::from_str(df).unwrap();
        let field = |p: &serde_json::Value, f: &str| p[f].as_u64().unwrap();
        v["pools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "data" || p["name"] == "ec")
            .map(|p| {
                ["objects", "stored_bytes", "used_bytes", "max_avail_bytes"].map(|f| field(p, f))
            })
            .collect()
    };
    let expected = |s: &[[u64; 4]]| {
        let block = 4096;
        s.len() == 2 && s[0][..3] == [1, 13, 3 * block] && s[1][..3] == [1, 2 * block, 3 * block]
    };
    let df = eventually(&dir, &["df", "--format", "json"], |df| expected(&space(df)));
    let pools = space(&df);
    assert!(expected(&pools), "{df}");
    // The same raw space holds twice as much data at 1.5 raw bytes per byte as at 3.
    let (replicated, erasure) = (pools[0][3], pools[1][3]);
    assert!(
        replicated > 0 && erasure.abs_diff(2 * replicated) <= 2,
        "{df}"
    );
    let df = ok(&dir, &["df"]);
    for shown in ["--- RAW STORAGE ---", "erasure 2+1", "STORED", "MAX AVAIL"] {
        assert!(df.contains(shown), "{df}");
    }
    let stat = eventually(&dir, &["pg", "stat"], |s| {
        s.starts_with("72 pgs: 72 active+clean; ")
    });
    assert!(stat.starts_with("72 pgs: 72 active+clean; "), "{stat}");
    // pg query: the mons' row and the primary's own account.
    let query: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["pg", "query", "1.0"])).unwrap();
    assert_eq!(query["pg"]["state"], "active+clean", "{query}");
    assert!(query["primary"]["activated_epoch"].is_u64(), "{query}");
    assert_eq!(
        query["primary"]["state"]["recovery_objects_left"], 0,
        "{query}"
    );

    // A dead mon shows in health detail; dev start brings it back.
    ok(&dir, &["dev", "kill", "mon", "c"]);
    let detail = loop {
        let d = ok(&dir, &["health", "detail"]);
        if d.starts_with("HEALTH_WARN") {
            break d;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        detail.contains("[WRN] MON_DOWN: 1/3 mons down, quorum a,b"),
        "{detail}"
    );
    assert!(detail.contains("mon.c (127.0.0.1:"), "{detail}");
    ok(&dir, &["dev", "start", "mon", "c"]);
    // Inside the directory, `dev up` finds the cluster there and waits for it to be healthy.
    ok(&dir, &["dev", "up"]);
    assert!(!dir.join("cairn-dev").exists() && !dir.join("c1").exists());

    // Clear errors: wrong keyring, bad arguments, unknown daemons.
    std::fs::write(
        dir.join("wrong.keyring"),
        "[\"client.admin\"]\nkey = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n",
    )
    .unwrap();
    let e = fails(&dir, &["--keyring", "wrong.keyring", "status"]);
    assert!(e.contains("authentication failed for client.admin"), "{e}");
    assert!(
        fails(&dir, &["--keyring", "missing.keyring", "status"]).contains("cannot read keyring")
    );
    assert!(fails(&dir, &["dev", "kill", "mon", "zz", "--dir", "."]).contains("has no mon.zz"));
    assert_eq!(cairn(&dir, &["no-such-command"]).status.code(), Some(2));

    // `dev up --fs` checks the metadata pool as `fs apply` does, and takes the --force its
    // refusal names.
    let pool = ["osd", "pool", "create", "late-metadata", "--pg-num", "8"];
    ok(
        &dir,
        &[&pool[..], &["--replicated", "--size", "3"]].concat(),
    );
    ok(
        &dir,
        &["rados", "put", "late-metadata", "journal", "hello.txt"],
    );
    let fs_up = ["dev", "up", "--mds", "1", "--fs", "late"];
    let refused = fails(&dir, &fs_up);
    assert!(
        refused.contains("already holds objects") && refused.contains("--force"),
        "{refused}"
    );
    ok(&dir, &[&fs_up[..], &["--force"]].concat());
    assert!(ok(&dir, &["fs", "ls"]).contains("late"));

    ok(&dir, &["dev", "down"]);
    for mon in ["a", "b", "c"] {
        assert!(
            !dir.join(format!("run/mon.{mon}.pid")).exists(),
            "mon.{mon} still running"
        );
    }
    // The cluster is stopped: a clear, bounded error.
    let e = fails(&dir, &["--set", "client.op_timeout_ms=2000", "status"]);
    assert!(e.contains("cannot reach any monitor"), "{e}");
}
