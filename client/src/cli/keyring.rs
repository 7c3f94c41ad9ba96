//! `cairn keyring`: keyring files, offline (no cluster needed).

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;

use cairn_common::keyring::Keyring;

#[derive(Subcommand)]
pub enum KeyringCmd {
    /// Copy the entries of ENTITY... from one keyring into a new one (mode 0600), so that a
    /// daemon holds only the keys it needs. A trailing `*` matches a prefix: `osd.*`.
    Extract {
        /// The keyring to read.
        #[arg(long)]
        from: PathBuf,
        /// The keyring to write; it must not exist yet.
        #[arg(long)]
        to: PathBuf,
        #[arg(required = true, value_name = "ENTITY")]
        entities: Vec<String>,
    },
}

pub fn run(cmd: &KeyringCmd) -> anyhow::Result<()> {
    match cmd {
        KeyringCmd::Extract { from, to, entities } => {
            let n = extract(from, to, entities)?;
            println!("wrote {n} keys to {}", to.display());
            Ok(())
        }
    }
}

fn matches(pattern: &str, entity: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => entity.starts_with(prefix),
        None => entity == pattern,
    }
}

/// Writes the entries of `from` that `patterns` name to `to`; answers how many. Every
/// pattern must match: a typo must not leave a daemon without its key.
fn extract(from: &Path, to: &Path, patterns: &[String]) -> anyhow::Result<usize> {
    if to.exists() {
        bail!("{} exists: not overwriting a keyring", to.display());
    }
    let all = Keyring::load(from)?;
    let mut out = Keyring::default();
    for pattern in patterns {
        let mut found = false;
        for (entity, entry) in all.entries.iter().filter(|(e, _)| matches(pattern, e)) {
            out.entries.insert(entity.clone(), entry.clone());
            found = true;
        }
        if !found {
            bail!("{} has no entity matching {pattern:?}", from.display());
        }
    }
    out.save(to)?;
    Ok(out.entries.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_common::auth::SecretKey;

    use super::*;

    #[test]
    fn extracts_named_entities_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("keyring");
        let mut keyring = Keyring::default();
        for e in ["client.admin", "mon.", "osd.0", "osd.1"] {
            keyring.add(e, SecretKey::generate(), BTreeMap::new());
        }
        keyring.save(&full).unwrap();

        let osds = dir.path().join("osd");
        assert_eq!(extract(&full, &osds, &["osd.*".into()]).unwrap(), 2);
        let got = Keyring::load(&osds).unwrap();
        assert_eq!(
            got.entries.keys().collect::<Vec<_>>(),
            vec!["osd.0", "osd.1"]
        );
        assert_eq!(got.key("osd.1").unwrap(), keyring.key("osd.1").unwrap());
        // Not over an existing file, and not when a name matches nothing.
        assert!(extract(&full, &osds, &["osd.*".into()]).is_err());
        let admin = dir.path().join("admin");
        assert!(extract(&full, &admin, &["client.admn".into()]).is_err());
        assert!(!admin.exists());
    }
}
