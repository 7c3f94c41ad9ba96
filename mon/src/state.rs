//! The replicated state: the cluster maps plus the secrets that never leave the mons. Applying
//! a command is pure and deterministic, so every mon reaches the same state from the same log.

use std::collections::BTreeMap;

use cairn_common::auth::{validate_caps, validate_entity, SecretKey};
use cairn_common::command::{validate_config_name, validate_config_value, Command, CommandOutcome};
use cairn_common::maps::{ClusterMaps, EntityInfo, MonInfo};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub maps: ClusterMaps,
    /// Entity name → secret key.
    pub secrets: BTreeMap<String, SecretKey>,
}

impl ClusterState {
    pub fn is_bootstrapped(&self) -> bool {
        self.maps.fsid.is_some()
    }

    /// Checks a command against the current state without changing anything. The same checks
    /// run again in `apply`, where the state may have moved on.
    pub fn check(&self, cmd: &Command) -> Result<(), String> {
        match cmd {
            Command::Bootstrap { entities, .. } => {
                for (name, e) in entities {
                    validate_entity(name).map_err(|e| e.to_string())?;
                    validate_caps(&e.caps).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Command::ConfigSet { name, value } => {
                validate_config_name(name)?;
                validate_config_value(value)
            }
            Command::ConfigRm { name } => {
                validate_config_name(name)?;
                if self.maps.config.options.contains_key(name) {
                    Ok(())
                } else {
                    Err(format!("option {name} is not set"))
                }
            }
            Command::AuthAdd { entity, caps, key } => {
                validate_entity(entity).map_err(|e| e.to_string())?;
                validate_caps(caps).map_err(|e| e.to_string())?;
                if key.is_none() {
                    return Err("internal: AuthAdd reached the state machine without a key".into());
                }
                if self.maps.auth.entities.contains_key(entity) {
                    return Err(format!("entity {entity} exists"));
                }
                Ok(())
            }
            Command::AuthCaps { entity, caps } => {
                validate_caps(caps).map_err(|e| e.to_string())?;
                self.require_entity(entity)
            }
            Command::AuthRm { entity } => self.require_entity(entity),
        }
    }

    fn require_entity(&self, entity: &str) -> Result<(), String> {
        if self.maps.auth.entities.contains_key(entity) {
            Ok(())
        } else {
            Err(format!("entity {entity} does not exist"))
        }
    }

    /// Applies a committed command. Refused commands change nothing.
    pub fn apply(&mut self, cmd: Command) -> CommandOutcome {
        if let Err(reason) = self.check(&cmd) {
            return CommandOutcome::Refused { reason };
        }
        let maps = &mut self.maps;
        match cmd {
            Command::Bootstrap { fsid, entities } => {
                if maps.fsid.is_some() {
                    return CommandOutcome::Done {
                        epoch: maps.auth.epoch,
                        message: "already bootstrapped".into(),
                    };
                }
                maps.fsid = Some(fsid);
                for (name, e) in entities {
                    maps.auth
                        .entities
                        .insert(name.clone(), EntityInfo { caps: e.caps });
                    self.secrets.insert(name, e.key);
                }
                maps.auth.epoch += 1;
                maps.osdmap.epoch += 1;
                maps.config.epoch += 1;
                done(maps.auth.epoch, format!("cluster {fsid} bootstrapped"))
            }
            Command::ConfigSet { name, value } => {
                maps.config.options.insert(name.clone(), value);
                maps.config.epoch += 1;
                done(maps.config.epoch, format!("set {name}"))
            }
            Command::ConfigRm { name } => {
                maps.config.options.remove(&name);
                maps.config.epoch += 1;
                done(maps.config.epoch, format!("removed {name}"))
            }
            Command::AuthAdd { entity, caps, key } => {
                maps.auth
                    .entities
                    .insert(entity.clone(), EntityInfo { caps });
                self.secrets
                    .insert(entity.clone(), key.expect("checked above"));
                maps.auth.epoch += 1;
                done(maps.auth.epoch, format!("added key for {entity}"))
            }
            Command::AuthCaps { entity, caps } => {
                maps.auth
                    .entities
                    .insert(entity.clone(), EntityInfo { caps });
                maps.auth.epoch += 1;
                done(maps.auth.epoch, format!("updated caps for {entity}"))
            }
            Command::AuthRm { entity } => {
                maps.auth.entities.remove(&entity);
                self.secrets.remove(&entity);
                maps.auth.epoch += 1;
                done(maps.auth.epoch, format!("removed {entity}"))
            }
        }
    }

    /// Applies a committed Raft membership: the monmap mirrors the voters.
    pub fn apply_membership(&mut self, voters: BTreeMap<u64, MonInfo>) {
        if self.maps.monmap.mons != voters {
            self.maps.monmap.mons = voters;
            self.maps.monmap.epoch += 1;
        }
    }
}

fn done(epoch: u64, message: String) -> CommandOutcome {
    CommandOutcome::Done { epoch, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::command::NewEntity;

    fn admin_caps() -> BTreeMap<String, String> {
        BTreeMap::from([("mon".to_string(), "allow *".to_string())])
    }

    fn bootstrapped() -> ClusterState {
        let mut s = ClusterState::default();
        let out = s.apply(Command::Bootstrap {
            fsid: uuid::Uuid::new_v4(),
            entities: BTreeMap::from([(
                "client.admin".to_string(),
                NewEntity {
                    key: SecretKey::generate(),
                    caps: admin_caps(),
                },
            )]),
        });
        assert!(matches!(out, CommandOutcome::Done { .. }));
        s
    }

    #[test]
    fn bootstrap_applies_once() {
        let mut s = bootstrapped();
        let fsid = s.maps.fsid;
        let epoch = s.maps.auth.epoch;
        s.apply(Command::Bootstrap {
            fsid: uuid::Uuid::new_v4(),
            entities: BTreeMap::new(),
        });
        assert_eq!(s.maps.fsid, fsid);
        assert_eq!(s.maps.auth.epoch, epoch);
        assert!(s.secrets.contains_key("client.admin"));
    }

    #[test]
    fn epochs_grow_with_each_change_and_refusals_change_nothing() {
        let mut s = bootstrapped();
        let e0 = s.maps.config.epoch;
        s.apply(Command::ConfigSet {
            name: "mon.x".into(),
            value: "1".into(),
        });
        assert_eq!(s.maps.config.epoch, e0 + 1);
        let before = s.maps.clone();
        let out = s.apply(Command::ConfigSet {
            name: "BAD NAME".into(),
            value: "1".into(),
        });
        assert!(matches!(out, CommandOutcome::Refused { .. }));
        let out = s.apply(Command::ConfigRm {
            name: "mon.unset".into(),
        });
        assert!(matches!(out, CommandOutcome::Refused { .. }));
        assert_eq!(s.maps, before);
    }

    #[test]
    fn auth_lifecycle() {
        let mut s = bootstrapped();
        let add = Command::AuthAdd {
            entity: "client.bob".into(),
            caps: BTreeMap::from([("mon".to_string(), "allow r".to_string())]),
            key: Some(SecretKey::generate()),
        };
        assert!(matches!(s.apply(add.clone()), CommandOutcome::Done { .. }));
        assert!(matches!(s.apply(add), CommandOutcome::Refused { .. }));
        assert!(matches!(
            s.apply(Command::AuthCaps {
                entity: "client.bob".into(),
                caps: BTreeMap::from([("mon".to_string(), "allow nonsense".to_string())]),
            }),
            CommandOutcome::Refused { .. }
        ));
        assert!(matches!(
            s.apply(Command::AuthRm {
                entity: "client.bob".into()
            }),
            CommandOutcome::Done { .. }
        ));
        assert!(!s.secrets.contains_key("client.bob"));
        assert!(matches!(
            s.apply(Command::AuthRm {
                entity: "client.bob".into()
            }),
            CommandOutcome::Refused { .. }
        ));
    }

    #[test]
    fn monmap_follows_membership() {
        let mut s = ClusterState::default();
        let voters = BTreeMap::from([(
            1,
            MonInfo {
                name: "a".into(),
                addr: "x".into(),
            },
        )]);
        s.apply_membership(voters.clone());
        s.apply_membership(voters);
        assert_eq!(s.maps.monmap.epoch, 1);
    }
}
