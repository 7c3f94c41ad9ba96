//! The active MDS's client sessions and the files each client has open.
//!
//! A mounted client keeps a session stream open to the active; while it is open the session
//! is connected and never expires. When the stream breaks (the client died, or is cut off)
//! the session waits `mds.session_timeout_ms` for the client to come back, then is evicted:
//! its opens end (files removed while it held them open go) and the replies remembered for
//! its retries are forgotten.
//!
//! Opens are counted per client and per mode: a client with a file open for writing may hold
//! back the size its writes gave it until the MDS recalls it (see `node.rs`).
//!
//! A client that is a file's only opener may also hold its *exclusive* capability: it answers
//! stats of the file from the attributes it was given (a database asks for its files' sizes
//! all the time). Any request of another client that shows or changes the file revokes it
//! first.
//!
//! The last holder of a file's exclusive capability keeps, after its last close, the right
//! to keep the file's data cached until another client opens the file for writing or cuts
//! it: reopened, it is told it may keep what it cached.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cairn_common::fsops::SessionStatus;

/// How many times one client has one file open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opens {
    pub readers: u32,
    pub writers: u32,
}

impl Opens {
    fn is_empty(&self) -> bool {
        self.readers == 0 && self.writers == 0
    }
}

#[derive(Debug)]
struct Session {
    connected: bool,
    /// When the stream connected, or when it broke (or the client was last heard from).
    since: Instant,
}

#[derive(Debug, Default)]
pub struct Sessions {
    sessions: HashMap<String, Session>,
    /// By inode: which clients have it open, and how.
    opens: HashMap<u64, HashMap<String, Opens>>,
    /// By client: the inodes it has open (the same facts, indexed the other way).
    open_by_client: HashMap<String, HashSet<u64>>,
    /// Which client holds each file's exclusive capability.
    exclusive: HashMap<u64, String>,
    /// Files whose capability is being recalled: none is granted until the recall is over.
    revoking: HashMap<u64, u32>,
    /// Which client may keep each file's data cached (at most `CACHED_FILES_MAX`; one
    /// forgotten costs that client a cold cache, nothing else).
    cached_by: HashMap<u64, String>,
}

/// How many files' cache holders the MDS remembers.
const CACHED_FILES_MAX: usize = 65_536;

impl Sessions {
    /// A client's session stream is open; `files` is everything it has open (after a
    /// takeover, how this MDS learns of opens made at its predecessor). Replaces what was
    /// known of the client's opens: the client's own count is the truth. Returns the files
    /// no longer open anywhere because of it, and the capabilities of other clients taken
    /// away because this one states it has their files open too (to recall).
    pub fn connected(
        &mut self,
        client: &str,
        files: impl IntoIterator<Item = (u64, Opens)>,
    ) -> (Vec<u64>, Vec<(u64, String)>) {
        // The client dropped its capabilities when its stream broke.
        let mut closed = self.forget_opens(client);
        let mut revoked = Vec::new();
        for (ino, opens) in files {
            if opens.writers > 0 {
                self.data_changing(client, ino);
            }
            if !opens.is_empty() {
                if let Some(holder) = self.exclusive.remove(&ino) {
                    revoked.push((ino, holder));
                }
                self.opens
                    .entry(ino)
                    .or_default()
                    .insert(client.to_string(), opens);
                self.open_by_client
                    .entry(client.to_string())
                    .or_default()
                    .insert(ino);
            }
        }
        closed.retain(|ino| !self.is_open(*ino));
        self.sessions.insert(
            client.to_string(),
            Session {
                connected: true,
                since: Instant::now(),
            },
        );
        (closed, revoked)
    }

    /// The client's stream broke: the eviction clock starts.
    pub fn disconnected(&mut self, client: &str) {
        if let Some(s) = self.sessions.get_mut(client) {
            s.connected = false;
            s.since = Instant::now();
        }
    }

    /// When `client`'s session was last known to have a stream or to be alive, if it has
    /// none now (`None`: it has a stream, or no session here).
    pub fn streamless_since(&self, client: &str) -> Option<Instant> {
        self.sessions
            .get(client)
            .filter(|s| !s.connected)
            .map(|s| s.since)
    }

    /// A request from `client`: a session it has without a stream (a client of the previous
    /// active, or one whose stream is reconnecting) starts its timeout again.
    pub fn heard_from(&mut self, client: &str) {
        let s = self
            .sessions
            .entry(client.to_string())
            .or_insert_with(|| Session {
                connected: false,
                since: Instant::now(),
            });
        if !s.connected {
            s.since = Instant::now();
        }
    }

    pub fn opened(&mut self, client: &str, ino: u64, write: bool) {
        let o = self
            .opens
            .entry(ino)
            .or_default()
            .entry(client.to_string())
            .or_default();
        if write {
            o.writers = o.writers.saturating_add(1);
        } else {
            o.readers = o.readers.saturating_add(1);
        }
        self.open_by_client
            .entry(client.to_string())
            .or_default()
            .insert(ino);
    }

    /// Grants `client` the exclusive capability of `ino` if it is the file's only opener,
    /// its session stream (which carries recalls) is connected, and no recall of the file's
    /// capability is under way (the request that recalled it has not run yet).
    pub fn grant_exclusive(&mut self, client: &str, ino: u64) -> bool {
        let sole = self
            .opens
            .get(&ino)
            .is_some_and(|by_client| by_client.len() == 1 && by_client.contains_key(client));
        let connected = self.sessions.get(client).is_some_and(|s| s.connected);
        let granted = sole && connected && !self.revoking.contains_key(&ino);
        if granted {
            self.exclusive.insert(ino, client.to_string());
            if self.cached_by.len() >= CACHED_FILES_MAX && !self.cached_by.contains_key(&ino) {
                if let Some(forgotten) = self.cached_by.keys().next().copied() {
                    self.cached_by.remove(&forgotten);
                }
            }
            self.cached_by.insert(ino, client.to_string());
        }
        granted
    }

    /// Whether `client` may keep what it cached of `ino`'s data: it held the file's
    /// exclusive capability last and no other client has opened the file for writing or cut
    /// it since.
    pub fn cache_kept(&self, client: &str, ino: u64) -> bool {
        self.cached_by.get(&ino).is_some_and(|c| c == client)
    }

    /// `client` is about to open `ino` for writing or to cut it: no other client may keep
    /// its data cached any longer.
    pub fn data_changing(&mut self, client: &str, ino: u64) {
        if self.cached_by.get(&ino).is_some_and(|c| c != client) {
            self.cached_by.remove(&ino);
        }
    }

    /// Takes the exclusive capability of `ino` away from its holder unless that is
    /// `requester`; returns the holder to recall. No capability of the file is granted
    /// until [`Sessions::revoke_done`].
    pub fn revoke_exclusive(&mut self, ino: u64, requester: &str) -> Option<String> {
        if self.exclusive.get(&ino)? == requester {
            return None;
        }
        *self.revoking.entry(ino).or_default() += 1;
        self.exclusive.remove(&ino)
    }

    /// The recall of `ino`'s capability is over (the request that needed it runs now).
    pub fn revoke_done(&mut self, ino: u64) {
        if let Some(n) = self.revoking.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                self.revoking.remove(&ino);
            }
        }
    }

    /// One open ends; returns whether the file is still open anywhere.
    pub fn released(&mut self, client: &str, ino: u64, write: bool) -> bool {
        let Some(by_client) = self.opens.get_mut(&ino) else {
            return false;
        };
        if let Some(o) = by_client.get_mut(client) {
            let n = if write {
                &mut o.writers
            } else {
                &mut o.readers
            };
            *n = n.saturating_sub(1);
            if o.is_empty() {
                by_client.remove(client);
                if self.exclusive.get(&ino).is_some_and(|h| h == client) {
                    self.exclusive.remove(&ino);
                }
                if let Some(inos) = self.open_by_client.get_mut(client) {
                    inos.remove(&ino);
                    if inos.is_empty() {
                        self.open_by_client.remove(client);
                    }
                }
            }
        }
        if by_client.is_empty() {
            self.opens.remove(&ino);
            return false;
        }
        true
    }

    /// Every file open anywhere.
    pub fn open_inos(&self) -> impl Iterator<Item = u64> + '_ {
        self.opens.keys().copied()
    }

    pub fn is_open(&self, ino: u64) -> bool {
        self.opens.contains_key(&ino)
    }

    /// Clients other than `client` that have `ino` open for writing.
    pub fn writers_besides(&self, ino: u64, client: &str) -> Vec<String> {
        self.opening_besides(ino, client, |o| o.writers > 0)
    }

    /// Clients other than `client` that have `ino` open at all.
    pub fn openers_besides(&self, ino: u64, client: &str) -> Vec<String> {
        self.opening_besides(ino, client, |_| true)
    }

    fn opening_besides(&self, ino: u64, client: &str, how: impl Fn(&Opens) -> bool) -> Vec<String> {
        self.opens
            .get(&ino)
            .into_iter()
            .flatten()
            .filter(|(c, o)| c.as_str() != client && how(o))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Whether `client` has `ino` open for writing (it may hold writes back).
    pub fn writes(&self, ino: u64, client: &str) -> bool {
        self.opens
            .get(&ino)
            .and_then(|by_client| by_client.get(client))
            .is_some_and(|o| o.writers > 0)
    }

    /// The sessions disconnected for longer than `timeout`: to evict.
    pub fn expired(&self, timeout: Duration) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| !s.connected && s.since.elapsed() > timeout)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Ends `client`'s session and every open and capability it had. Returns the files no
    /// longer open anywhere because of it.
    pub fn evict(&mut self, client: &str) -> Vec<u64> {
        self.sessions.remove(client);
        self.cached_by.retain(|_, c| c != client);
        self.forget_opens(client)
    }

    /// Drops every open of `client`; returns the files no longer open anywhere.
    fn forget_opens(&mut self, client: &str) -> Vec<u64> {
        self.exclusive.retain(|_, holder| holder != client);
        let mut closed = Vec::new();
        for ino in self.open_by_client.remove(client).unwrap_or_default() {
            if let Some(by_client) = self.opens.get_mut(&ino) {
                by_client.remove(client);
                if by_client.is_empty() {
                    self.opens.remove(&ino);
                    closed.push(ino);
                }
            }
        }
        closed
    }

    pub fn status(&self) -> Vec<SessionStatus> {
        let mut capabilities: HashMap<&str, u64> = HashMap::new();
        for holder in self.exclusive.values() {
            *capabilities.entry(holder.as_str()).or_default() += 1;
        }
        let mut out: Vec<SessionStatus> = self
            .sessions
            .iter()
            .map(|(client, s)| SessionStatus {
                client: client.clone(),
                connected: s.connected,
                since_ms: s.since.elapsed().as_millis() as u64,
                open_files: self.open_by_client.get(client).map_or(0, |i| i.len()) as u64,
                capabilities: capabilities.get(client.as_str()).copied().unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.client.cmp(&b.client));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opens(readers: u32, writers: u32) -> Opens {
        Opens { readers, writers }
    }

    #[test]
    fn a_file_stays_open_until_every_client_released_it() {
        let mut s = Sessions::default();
        s.opened("a", 7, true);
        s.opened("a", 7, false);
        s.opened("b", 7, false);
        assert!(s.released("a", 7, true));
        assert!(s.released("b", 7, false));
        assert!(s.is_open(7));
        assert!(!s.released("a", 7, false));
        assert!(!s.is_open(7));
        // A release the MDS never saw the open of (made at a predecessor) changes nothing.
        assert!(!s.released("a", 7, false));
    }

    #[test]
    fn only_other_openers_are_recalled() {
        let mut s = Sessions::default();
        s.opened("a", 7, true);
        s.opened("b", 7, false);
        s.opened("c", 7, true);
        let mut w = s.writers_besides(7, "c");
        w.sort();
        assert_eq!(w, vec!["a".to_string()]);
        assert!(s.writers_besides(8, "c").is_empty());
        // A change of the file's data reaches readers too.
        let mut o = s.openers_besides(7, "c");
        o.sort();
        assert_eq!(o, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn only_a_connected_sole_opener_holds_the_exclusive_capability() {
        let mut s = Sessions::default();
        s.opened("a", 7, true);
        assert!(!s.grant_exclusive("a", 7), "no stream to recall it through");
        s.connected("a", [(7, opens(0, 1))]);
        assert!(s.grant_exclusive("a", 7));
        assert_eq!(s.revoke_exclusive(7, "a"), None, "its own stat");
        assert_eq!(s.revoke_exclusive(7, "b"), Some("a".into()));
        assert_eq!(s.revoke_exclusive(7, "b"), None, "revoked once");
        assert!(
            !s.grant_exclusive("a", 7),
            "not while the recall is under way"
        );
        s.revoke_done(7);
        assert!(s.grant_exclusive("a", 7));
        s.opened("b", 7, false);
        assert!(!s.grant_exclusive("a", 7), "two openers");
        assert!(s.released("b", 7, false), "a still has it open");
        // The holder's last close ends it; so does a new stream of its session.
        s.released("a", 7, true);
        assert_eq!(s.revoke_exclusive(7, "b"), None);
        s.opened("a", 8, false);
        assert!(s.grant_exclusive("a", 8));
        assert_eq!(s.status()[0].capabilities, 1);
        s.connected("a", [(8, opens(1, 0))]);
        assert_eq!(s.revoke_exclusive(8, "b"), None);
    }

    #[test]
    fn the_last_holder_keeps_its_cache_until_another_client_may_change_the_data() {
        let mut s = Sessions::default();
        s.connected("a", []);
        s.connected("b", []);
        s.opened("a", 7, true);
        assert!(!s.cache_kept("a", 7), "never held");
        assert!(s.grant_exclusive("a", 7));
        s.released("a", 7, true);
        assert!(s.cache_kept("a", 7), "kept past the last close");
        assert!(!s.cache_kept("b", 7));
        // Another client reading, or the holder writing, changes nothing.
        s.data_changing("a", 7);
        s.opened("b", 7, false);
        s.released("b", 7, false);
        assert!(s.cache_kept("a", 7));
        // Another client about to write or cut ends it; so does one stating a write-open.
        s.data_changing("b", 7);
        assert!(!s.cache_kept("a", 7));
        s.opened("a", 8, false);
        assert!(s.grant_exclusive("a", 8));
        s.connected("b", [(8, opens(0, 1))]);
        assert!(!s.cache_kept("a", 8));
    }

    #[test]
    fn a_client_stating_an_open_takes_the_capability_from_its_holder() {
        let mut s = Sessions::default();
        s.connected("a", [(7, opens(1, 0))]);
        assert!(s.grant_exclusive("a", 7));
        let (_, revoked) = s.connected("b", [(7, opens(0, 1))]);
        assert_eq!(revoked, vec![(7, "a".to_string())]);
        assert_eq!(s.writers_besides(7, "a"), vec!["b".to_string()]);
    }

    #[test]
    fn a_reconnecting_client_states_its_opens() {
        let mut s = Sessions::default();
        s.opened("a", 7, true);
        s.opened("a", 7, true);
        s.opened("a", 9, false);
        s.opened("b", 13, false);
        let (closed, _) = s.connected(
            "a",
            [(7, opens(0, 1)), (11, opens(1, 0)), (12, opens(0, 0))],
        );
        assert_eq!(closed, vec![9], "what the client no longer holds");
        assert!(s.is_open(7) && s.is_open(11) && s.is_open(13));
        assert!(!s.is_open(9) && !s.is_open(12));
        assert_eq!(s.status()[0].open_files, 2);
        assert!(!s.released("a", 7, true));
    }

    #[test]
    fn only_sessions_disconnected_past_the_timeout_are_evicted() {
        let mut s = Sessions::default();
        s.connected("live", [(1, opens(0, 1))]);
        s.connected("gone", [(1, opens(1, 0)), (2, opens(1, 0))]);
        s.disconnected("gone");
        assert!(s.expired(Duration::from_secs(3600)).is_empty());
        std::thread::sleep(Duration::from_millis(5));
        let expired = s.expired(Duration::from_millis(1));
        assert_eq!(expired, vec!["gone".to_string()]);
        assert!(s.writes(1, "live") && !s.writes(1, "gone") && !s.writes(2, "live"));
        let mut closed = s.evict("gone");
        closed.sort_unstable();
        // File 1 is still open by the live client.
        assert_eq!(closed, vec![2]);
        assert!(s.is_open(1) && !s.is_open(2));
        let status = s.status();
        assert_eq!(status.len(), 1);
        assert!(status[0].connected);
        assert_eq!(status[0].open_files, 1);
    }

    #[test]
    fn requests_keep_a_streamless_session_alive() {
        let mut s = Sessions::default();
        s.heard_from("old");
        std::thread::sleep(Duration::from_millis(50));
        s.heard_from("old");
        assert!(s.expired(Duration::from_millis(40)).is_empty());
    }
}
