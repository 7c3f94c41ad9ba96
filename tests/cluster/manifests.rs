//! The deployment files stay valid: `containers/k8s/validate` (the manifests against the
//! Kubernetes API schemas, strictly; the kustomization; the OSDs' seccomp profile) and
//! `containers/systemd/validate` (`systemd-analyze verify` and `security` on the units). Each
//! script also checks that it refuses a deliberately broken copy.

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `tool` can be run at all (it is installed and on PATH).
fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn passes(script: &str) {
    let root = repo_root();
    let out = Command::new(root.join(script))
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    if !installed("python3") {
        eprintln!("skipped: containers/k8s/validate needs python3, which is not installed");
        return;
    }
    passes("containers/k8s/validate");
}

#[test]
fn systemd_units_pass_systemd_analyze() {
    if !installed("systemd-analyze") {
        eprintln!(
            "skipped: containers/systemd/validate needs systemd-analyze, which is not installed"
        );
        return;
    }
    passes("containers/systemd/validate");
}
