//! The replicated state: the cluster maps plus the secrets that never leave the mons. Applying
//! a command is pure and deterministic, so every mon reaches the same state from the same log.

use std::collections::{BTreeMap, VecDeque};

use cairn_common::auth::{validate_caps, validate_entity, SecretKey};
use cairn_common::command::{
    validate_config_name, validate_config_value, Command, CommandOutcome, Proposal, RequestId,
    CONFIG_OPTIONS_MAX, ENTITIES_MAX,
};
use cairn_common::maps::{ClusterMaps, EntityInfo, MonInfo, OsdMap};
use cairn_common::pg_states::ScrubStamps;
use cairn_common::placement::PgId;
use serde::{Deserialize, Serialize};

use crate::{fsmap_change, osdmap_change};

/// Outcomes remembered per client, and clients remembered: enough for retries, bounded.
pub const SESSION_OUTCOMES_MAX: usize = 64;
pub const SESSIONS_MAX: usize = 1024;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub maps: ClusterMaps,
    /// Entity name → secret key.
    pub secrets: BTreeMap<String, SecretKey>,
    /// Recent request outcomes by client, so a retried write applies once.
    #[serde(default)]
    pub sessions: BTreeMap<String, ClientSession>,
    /// The last `OSDMAP_HISTORY_MAX` OSD maps, oldest first: OSDs work out from them which
    /// past intervals of a PG may have accepted writes (peering).
    #[serde(default)]
    pub osdmap_history: VecDeque<OsdMap>,
    /// Each PG's newest scrub stamps, by pool then seed (only PGs that exist).
    #[serde(default)]
    pub scrub_stamps: BTreeMap<u32, BTreeMap<u32, ScrubStamps>>,
}

/// Most PGs one `ScrubStamps` command may carry (an OSD's beacon reports at most this many).
pub const SCRUB_STAMPS_PER_COMMAND_MAX: usize = 65_536;

/// OSD maps the mons keep.
pub const OSDMAP_HISTORY_MAX: usize = 2000;
/// Most maps one history request returns.
pub const OSDMAP_HISTORY_REPLY_MAX: usize = 200;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientSession {
    /// Log index of the session's last request (the least recent session is evicted first).
    pub last_index: u64,
    pub outcomes: BTreeMap<u64, CommandOutcome>,
}

impl ClusterState {
    pub fn is_bootstrapped(&self) -> bool {
        self.maps.fsid.is_some()
    }

    /// An entity's secret key and caps, if it exists.
    pub fn key_and_caps(&self, entity: &str) -> Option<(SecretKey, BTreeMap<String, String>)> {
        let key = self.secrets.get(entity)?.clone();
        let caps = self.maps.auth.entities.get(entity)?.caps.clone();
        Some((key, caps))
    }

    /// A PG's committed scrub stamps (zero when it was never scrubbed).
    pub fn scrub_stamps_of(&self, pg: PgId) -> ScrubStamps {
        self.scrub_stamps
            .get(&pg.pool)
            .and_then(|seeds| seeds.get(&pg.seed))
            .copied()
            .unwrap_or_default()
    }

    fn pg_exists(&self, pg: PgId) -> bool {
        self.maps
            .osdmap
            .pools
            .get(&pg.pool)
            .is_some_and(|p| pg.seed < p.pg_num)
    }

    /// Drops the stamps of PGs the OSD map no longer has, so they stay bounded by the PGs.
    fn prune_scrub_stamps(&mut self) {
        let pools = &self.maps.osdmap.pools;
        self.scrub_stamps
            .retain(|pool, seeds| match pools.get(pool) {
                Some(p) => {
                    seeds.retain(|seed, _| *seed < p.pg_num);
                    !seeds.is_empty()
                }
                None => false,
            });
    }

    /// The outcome of a request already applied, if it is still remembered.
    pub fn cached_outcome(&self, id: &RequestId) -> Option<&CommandOutcome> {
        self.sessions.get(&id.client)?.outcomes.get(&id.seq)
    }

    /// Applies a committed proposal at log `index`; a repeat of a remembered request returns
    /// the first outcome and changes nothing.
    pub fn apply_proposal(&mut self, p: Proposal, index: u64) -> CommandOutcome {
        let Some(id) = p.request else {
            return self.apply(p.command);
        };
        if let Some(out) = self.cached_outcome(&id) {
            return out.clone();
        }
        let outcome = self.apply(p.command);
        let session = self.sessions.entry(id.client).or_default();
        session.last_index = index;
        session.outcomes.insert(id.seq, outcome.clone());
        while session.outcomes.len() > SESSION_OUTCOMES_MAX {
            session.outcomes.pop_first();
        }
        if self.sessions.len() > SESSIONS_MAX {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_index)
                .map(|(c, _)| c.clone());
            if let Some(c) = oldest {
                self.sessions.remove(&c);
            }
        }
        outcome
    }

    /// Checks a command against the current state without changing anything. The same checks
    /// run again in `apply`, where the state may have moved on.
    pub fn check(&self, cmd: &Command) -> Result<(), String> {
        if let Command::PoolRm { name } = cmd {
            fsmap_change::check_pool_rm(&self.maps.fsmap, name)?;
        }
        if osdmap_change::is_osdmap_command(cmd) {
            return osdmap_change::check(&self.maps.osdmap, cmd);
        }
        if fsmap_change::is_fsmap_command(cmd) {
            return fsmap_change::check(&self.maps, cmd);
        }
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
                validate_config_value(value)?;
                let options = &self.maps.config.options;
                if options.len() >= CONFIG_OPTIONS_MAX && !options.contains_key(name) {
                    return Err(format!(
                        "the config map holds its maximum of {CONFIG_OPTIONS_MAX} options"
                    ));
                }
                Ok(())
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
                if entity.starts_with("mon.") {
                    return Err("monitors authenticate with the shared mon. key; mon entities cannot be added".into());
                }
                if self.maps.auth.entities.contains_key(entity) {
                    return Err(format!("entity {entity} exists"));
                }
                if self.maps.auth.entities.len() >= ENTITIES_MAX {
                    return Err(format!(
                        "the auth map holds its maximum of {ENTITIES_MAX} entities"
                    ));
                }
                Ok(())
            }
            Command::AuthCaps { entity, caps } => {
                validate_caps(caps).map_err(|e| e.to_string())?;
                self.require_entity(entity)
            }
            Command::AuthRm { entity } => self.require_entity(entity),
            Command::ScrubStamps { stamps } if stamps.len() > SCRUB_STAMPS_PER_COMMAND_MAX => Err(
                format!("at most {SCRUB_STAMPS_PER_COMMAND_MAX} PGs' stamps per command"),
            ),
            Command::ScrubStamps { .. } => Ok(()),
            _ => Err(format!("internal: {} has no check", cmd.label())),
        }
    }

    fn require_entity(&self, entity: &str) -> Result<(), String> {
        if self.maps.auth.entities.contains_key(entity) {
            Ok(())
        } else {
            Err(format!("entity {entity} does not exist"))
        }
    }

    /// Applies a committed command (refused ones change nothing) and keeps each new OSD map.
    pub fn apply(&mut self, cmd: Command) -> CommandOutcome {
        let before = self.maps.osdmap.epoch;
        let outcome = self.apply_command(cmd);
        if self.maps.osdmap.epoch != before {
            self.prune_scrub_stamps();
            self.osdmap_history.push_back(self.maps.osdmap.clone());
            while self.osdmap_history.len() > OSDMAP_HISTORY_MAX {
                self.osdmap_history.pop_front();
            }
        }
        outcome
    }

    /// The kept OSD maps of epochs `from..=to`, at most `OSDMAP_HISTORY_REPLY_MAX`.
    pub fn osdmap_history(&self, from: u64, to: u64) -> Vec<OsdMap> {
        self.osdmap_history
            .iter()
            .filter(|m| m.epoch >= from && m.epoch <= to)
            .take(OSDMAP_HISTORY_REPLY_MAX)
            .cloned()
            .collect()
    }

    fn apply_command(&mut self, cmd: Command) -> CommandOutcome {
        // Before the per-map modules: some checks span maps (a pool in use by a filesystem).
        if let Err(reason) = self.check(&cmd) {
            return CommandOutcome::Refused { reason };
        }
        if osdmap_change::is_osdmap_command(&cmd) {
            return osdmap_change::apply(&mut self.maps.osdmap, cmd);
        }
        if fsmap_change::is_fsmap_command(&cmd) {
            return fsmap_change::apply(&mut self.maps, cmd);
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
            Command::ScrubStamps { stamps } => {
                let mut noted = 0;
                for (pg, stamp) in stamps {
                    // PGs of removed pools (the report crossed the removal) are not kept.
                    if self.pg_exists(pg) {
                        let seeds = self.scrub_stamps.entry(pg.pool).or_default();
                        seeds.entry(pg.seed).or_default().merge(stamp);
                        noted += 1;
                    }
                }
                done(
                    self.maps.osdmap.epoch,
                    format!("noted the scrub stamps of {noted} pgs"),
                )
            }
            other => CommandOutcome::Refused {
                reason: format!("internal: {} is not applied here", other.label()),
            },
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

    /// A bootstrapped state with one OSD and a replicated pool of size 1 named `p` (pool 1, 8 PGs).
    fn with_pool() -> ClusterState {
        let mut s = bootstrapped();
        let boot = s.apply(Command::OsdBoot {
            id: 0,
            addr: "127.0.0.1:1".into(),
            host: "h".into(),
            weight: 1.0,
            capacity_bytes: 1 << 30,
        });
        assert!(matches!(boot, CommandOutcome::Done { .. }), "{boot:?}");
        let create = s.apply(Command::PoolCreate {
            name: "p".into(),
            pg_num: 8,
            kind: cairn_common::maps::PoolKind::Replicated {
                size: 1,
                min_size: 1,
            },
            failure_domain: cairn_common::maps::FailureDomain::Osd,
        });
        assert!(matches!(create, CommandOutcome::Done { .. }), "{create:?}");
        s
    }

    #[test]
    fn scrub_stamps_only_move_forward_and_go_with_their_pool() {
        let mut s = with_pool();
        let pg = |seed| PgId { pool: 1, seed };
        let stamp = |light_ms, deep_ms| ScrubStamps { light_ms, deep_ms };
        let epoch = s.maps.osdmap.epoch;
        s.apply(Command::ScrubStamps {
            stamps: vec![(pg(0), stamp(10, 20)), (pg(1), stamp(5, 0))],
        });
        assert_eq!(s.maps.osdmap.epoch, epoch, "stamps are not part of the map");
        // An older report (a primary that has not scrubbed since) changes nothing; PGs that do
        // not exist are not kept.
        s.apply(Command::ScrubStamps {
            stamps: vec![
                (pg(0), stamp(15, 1)),
                (pg(8), stamp(1, 1)),
                (PgId { pool: 9, seed: 0 }, stamp(1, 1)),
            ],
        });
        assert_eq!(s.scrub_stamps_of(pg(0)), stamp(15, 20));
        assert_eq!(s.scrub_stamps_of(pg(1)), stamp(5, 0));
        assert_eq!(s.scrub_stamps_of(pg(8)), ScrubStamps::default());
        assert_eq!(s.scrub_stamps.len(), 1);
        assert_eq!(s.scrub_stamps[&1].len(), 2);

        let rm = s.apply(Command::PoolRm { name: "p".into() });
        assert!(matches!(rm, CommandOutcome::Done { .. }), "{rm:?}");
        assert!(s.scrub_stamps.is_empty(), "{:?}", s.scrub_stamps);
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
    fn retried_requests_apply_once() {
        let mut s = bootstrapped();
        let id = RequestId {
            client: "client.admin/1".into(),
            seq: 7,
        };
        let rm = |id: &RequestId| Proposal {
            request: Some(id.clone()),
            command: Command::AuthRm {
                entity: "client.admin".into(),
            },
        };
        let first = s.apply_proposal(rm(&id), 10);
        assert!(matches!(first, CommandOutcome::Done { .. }));
        let epoch = s.maps.auth.epoch;
        // The retry gets the first outcome, not "does not exist", and changes nothing.
        assert_eq!(s.apply_proposal(rm(&id), 11), first);
        assert_eq!(s.maps.auth.epoch, epoch);
        for seq in 0..(SESSION_OUTCOMES_MAX as u64 + 10) {
            s.apply_proposal(
                Proposal {
                    request: Some(RequestId {
                        client: "c".into(),
                        seq,
                    }),
                    command: Command::ConfigSet {
                        name: "a.b".into(),
                        value: seq.to_string(),
                    },
                },
                100 + seq,
            );
        }
        assert_eq!(s.sessions["c"].outcomes.len(), SESSION_OUTCOMES_MAX);
    }

    #[test]
    fn mon_entities_cannot_be_added() {
        let mut s = bootstrapped();
        let out = s.apply(Command::AuthAdd {
            entity: "mon.x".into(),
            caps: BTreeMap::new(),
            key: Some(SecretKey::generate()),
        });
        assert!(matches!(out, CommandOutcome::Refused { .. }));
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

    mod model {
        //! Property test: random command sequences against a plain model of the config map,
        //! checking the epoch rules on every step.
        use super::*;
        use proptest::prelude::*;

        fn command() -> impl Strategy<Value = Command> {
            let name = prop::sample::select(vec!["a.x", "a.y", "b.z", "BAD NAME"]);
            prop_oneof![
                (name.clone(), "[a-z0-9]{0,8}").prop_map(|(n, v)| Command::ConfigSet {
                    name: n.to_string(),
                    value: v
                }),
                name.prop_map(|n| Command::ConfigRm {
                    name: n.to_string()
                }),
                prop::sample::select(vec!["client.p", "client.q", "mon.m"]).prop_map(|e| {
                    Command::AuthAdd {
                        entity: e.to_string(),
                        caps: BTreeMap::from([("mon".to_string(), "allow r".to_string())]),
                        key: Some(SecretKey::generate()),
                    }
                }),
                prop::sample::select(vec!["client.p", "client.q"]).prop_map(|e| Command::AuthRm {
                    entity: e.to_string()
                }),
            ]
        }

        proptest! {
            #[test]
            fn epochs_and_config_follow_the_model(cmds in prop::collection::vec(command(), 1..60)) {
                let mut s = bootstrapped();
                let mut model: BTreeMap<String, String> = BTreeMap::new();
                for cmd in cmds {
                    let before = s.maps.clone();
                    let out = s.apply(cmd.clone());
                    let refused = matches!(out, CommandOutcome::Refused { .. });
                    if refused {
                        prop_assert_eq!(&s.maps, &before);
                    }
                    match (&cmd, refused) {
                        (Command::ConfigSet { name, value }, false) => { model.insert(name.clone(), value.clone()); }
                        (Command::ConfigRm { name }, false) => { model.remove(name); }
                        (Command::ConfigSet { name, .. }, true) => prop_assert!(validate_config_name(name).is_err()),
                        (Command::ConfigRm { name }, true) => prop_assert!(!before.config.options.contains_key(name)),
                        _ => {}
                    }
                    prop_assert_eq!(s.maps.config.epoch - before.config.epoch, u64::from(s.maps.config != before.config));
                    prop_assert_eq!(s.maps.auth.epoch - before.auth.epoch, u64::from(s.maps.auth != before.auth));
                    prop_assert_eq!(&s.maps.config.options, &model);
                    prop_assert!(!s.maps.auth.entities.contains_key("mon.m"));
                    prop_assert_eq!(s.secrets.len(), s.maps.auth.entities.len());
                }
            }
        }
    }
}
