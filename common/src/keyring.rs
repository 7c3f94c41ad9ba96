//! Keyring files: entity name → secret key (and, for bootstrap, its caps). A TOML file, mode
//! 0600, e.g.
//!
//! ```toml
//! ["client.admin"]
//! key = "base64…"
//! caps = { mon = "allow *" }
//! ```
//!
//! The monitors' shared secret is the entity `mon.` (as in Ceph).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::auth::SecretKey;

/// The entity whose key every monitor holds; tickets are signed with a key derived from it.
pub const MON_SECRET_ENTITY: &str = "mon.";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Keyring {
    pub entries: BTreeMap<String, KeyringEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyringEntry {
    pub key: SecretKey,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caps: BTreeMap<String, String>,
}

impl Keyring {
    pub fn load(path: &Path) -> anyhow::Result<Keyring> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read keyring {}", path.display()))?;
        // The parse error may quote the file, which holds keys: report only where it failed.
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default();
            anyhow::anyhow!("keyring {} is malformed{at}", path.display())
        })
    }

    /// Writes the keyring readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let text = toml::to_string(self)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write keyring {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn key(&self, entity: &str) -> anyhow::Result<&SecretKey> {
        self.entries
            .get(entity)
            .map(|e| &e.key)
            .with_context(|| format!("the keyring has no key for {entity}"))
    }

    pub fn add(&mut self, entity: &str, key: SecretKey, caps: BTreeMap<String, String>) {
        self.entries
            .insert(entity.to_string(), KeyringEntry { key, caps });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_keys_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let mut k = Keyring::default();
        let key = SecretKey::generate();
        k.add(
            "client.admin",
            key.clone(),
            BTreeMap::from([("mon".into(), "allow *".into())]),
        );
        k.save(&path).unwrap();
        let back = Keyring::load(&path).unwrap();
        assert_eq!(back.key("client.admin").unwrap(), &key);
        assert!(back.key("client.nobody").is_err());

        std::fs::write(&path, format!("[x]\nkey = \"{}\"\nbad", key.to_base64())).unwrap();
        let err = format!("{:#}", Keyring::load(&path).unwrap_err());
        assert!(!err.contains(&key.to_base64()), "{err}");
    }
}
