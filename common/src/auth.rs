//! Cephx-like authentication: secret keys, challenge–response proofs, signed tickets and
//! capabilities.
//!
//! An entity proves its key to a mon without sending it: the mon hands out a stateless signed
//! challenge, the entity answers with an HMAC of it under its key, and the mon returns a
//! short-lived ticket (entity, caps, expiry) signed with the ticket key. Every later call
//! carries the ticket; any mon verifies it without shared state, because all mons derive the
//! ticket key from the `mon.` secret they share.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const KEY_BYTES: usize = 32;
const CHALLENGE_NONCE_BYTES: usize = 16;
const MAC_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no ticket: the call must carry `authorization: Bearer <ticket>` (authenticate with a keyring first)")]
    NoTicket,
    #[error("malformed ticket")]
    MalformedTicket,
    #[error("ticket signature is invalid (forged, or issued by another cluster)")]
    BadSignature,
    #[error("ticket expired at {expired_at_ms} ms since the epoch; authenticate again")]
    Expired { expired_at_ms: u64 },
    #[error("challenge is invalid or expired; ask for a new one")]
    BadChallenge,
    #[error("authentication failed for {entity}: unknown entity or wrong key")]
    BadProof { entity: String },
    #[error("{entity} is not allowed to {action}: needs '{service} {need}' capability")]
    PermissionDenied {
        entity: String,
        action: String,
        service: String,
        need: String,
    },
    #[error("invalid key: {0}")]
    BadKey(String),
    #[error("invalid capability {cap:?}: {why}")]
    BadCap { cap: String, why: String },
    #[error("invalid entity name {0:?}: expected TYPE.ID with TYPE one of client, mon, osd, mds")]
    BadEntity(String),
}

/// A 256-bit secret. Its `Debug` and `Display` never show the bytes, so a key cannot leak
/// through a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_BYTES]);

impl SecretKey {
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_BYTES];
        rand::thread_rng().fill_bytes(&mut k);
        SecretKey(k)
    }

    pub fn from_base64(s: &str) -> Result<Self, AuthError> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| AuthError::BadKey("not base64".into()))?;
        let arr: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| AuthError::BadKey(format!("a key is {KEY_BYTES} bytes")))?;
        Ok(SecretKey(arr))
    }

    /// The only way to see the key: for writing keyrings and `cairn auth get`.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A key for one purpose derived from this one, so one secret serves several uses without
    /// any of them revealing another.
    pub fn derive(&self, purpose: &str) -> SecretKey {
        SecretKey(hmac(&self.0, &[b"cairn-derive-v1", purpose.as_bytes()]))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl Serialize for SecretKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_BYTES] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `TYPE.ID` entity names.
pub fn validate_entity(name: &str) -> Result<(), AuthError> {
    let bad = || AuthError::BadEntity(name.to_string());
    let (kind, id) = name.split_once('.').ok_or_else(bad)?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if matches!(kind, "client" | "mon" | "osd" | "mds") && id_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The proof a client sends: HMAC of the challenge and its own nonce under its key.
pub fn client_proof(key: &SecretKey, challenge: &[u8], client_nonce: &[u8]) -> [u8; MAC_BYTES] {
    hmac(&key.0, &[b"cairn-client-proof-v1", challenge, client_nonce])
}

/// The proof a mon returns, so the client knows the mon holds its key too.
pub fn server_proof(key: &SecretKey, challenge: &[u8], client_nonce: &[u8]) -> [u8; MAC_BYTES] {
    hmac(&key.0, &[b"cairn-server-proof-v1", challenge, client_nonce])
}

pub fn proof_matches(expected: &[u8], got: &[u8]) -> bool {
    constant_time_eq(expected, got)
}

/// What a ticket says about its holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub entity: String,
    pub caps: BTreeMap<String, String>,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

impl Ticket {
    /// Whether the holder may act on `service` at `need` level.
    pub fn require(&self, service: &str, need: Need, action: &str) -> Result<(), AuthError> {
        let granted = self
            .caps
            .get(service)
            .map(|c| CapLevel::parse(c))
            .transpose()
            .ok()
            .flatten()
            .unwrap_or_default();
        if granted.allows(need) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied {
                entity: self.entity.clone(),
                action: action.to_string(),
                service: service.to_string(),
                need: need.cap_string().to_string(),
            })
        }
    }
}

/// Signs and verifies tickets and challenges with the cluster's ticket key.
#[derive(Clone)]
pub struct TicketAuthority {
    key: SecretKey,
}

impl TicketAuthority {
    /// All mons share the `mon.` secret and derive the same authority from it.
    pub fn from_mon_secret(mon_secret: &SecretKey) -> Self {
        TicketAuthority {
            key: mon_secret.derive("ticket-signing"),
        }
    }

    /// The key a service's daemons (`osd`) check tickets with. The mons sign every ticket a
    /// second time with it, so a daemon holding it can verify tickets but never mint one the
    /// mons would accept.
    pub fn service_key(mon_secret: &SecretKey, service: &str) -> SecretKey {
        mon_secret.derive(&format!("service-{service}"))
    }

    /// An authority over one service's tickets, from its service key.
    pub fn from_service_key(key: SecretKey) -> Self {
        TicketAuthority { key }
    }

    pub fn issue(&self, ticket: &Ticket) -> String {
        let body = serde_json::to_vec(ticket).expect("a ticket always serializes");
        let mac = hmac(&self.key.0, &[b"cairn-ticket-v1", &body]);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(mac)
        )
    }

    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Ticket, AuthError> {
        let (body_b64, mac_b64) = token.split_once('.').ok_or(AuthError::MalformedTicket)?;
        let body = URL_SAFE_NO_PAD
            .decode(body_b64)
            .map_err(|_| AuthError::MalformedTicket)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac_b64)
            .map_err(|_| AuthError::MalformedTicket)?;
        let expected = hmac(&self.key.0, &[b"cairn-ticket-v1", &body]);
        if !constant_time_eq(&expected, &mac) {
            return Err(AuthError::BadSignature);
        }
        let ticket: Ticket =
            serde_json::from_slice(&body).map_err(|_| AuthError::MalformedTicket)?;
        if now_ms >= ticket.expires_at_ms {
            return Err(AuthError::Expired {
                expired_at_ms: ticket.expires_at_ms,
            });
        }
        Ok(ticket)
    }

    /// A challenge any mon can check later without remembering it: time, nonce and a MAC
    /// binding both to the entity.
    pub fn challenge(&self, entity: &str, now_ms: u64) -> Vec<u8> {
        let mut nonce = [0u8; CHALLENGE_NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ts = now_ms.to_be_bytes();
        let mac = hmac(
            &self.key.0,
            &[b"cairn-challenge-v1", entity.as_bytes(), &ts, &nonce],
        );
        [&ts[..], &nonce[..], &mac[..]].concat()
    }

    pub fn check_challenge(
        &self,
        entity: &str,
        challenge: &[u8],
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<(), AuthError> {
        if challenge.len() != 8 + CHALLENGE_NONCE_BYTES + MAC_BYTES {
            return Err(AuthError::BadChallenge);
        }
        let (ts, rest) = challenge.split_at(8);
        let (nonce, mac) = rest.split_at(CHALLENGE_NONCE_BYTES);
        let expected = hmac(
            &self.key.0,
            &[b"cairn-challenge-v1", entity.as_bytes(), ts, nonce],
        );
        let issued = u64::from_be_bytes(ts.try_into().map_err(|_| AuthError::BadChallenge)?);
        let fresh = issued <= now_ms + 1_000 && now_ms.saturating_sub(issued) <= max_age_ms;
        if constant_time_eq(&expected, mac) && fresh {
            Ok(())
        } else {
            Err(AuthError::BadChallenge)
        }
    }
}

/// The gRPC status of an authentication failure: PERMISSION_DENIED when caps are missing,
/// UNAUTHENTICATED otherwise.
pub fn grpc_status(e: AuthError) -> tonic::Status {
    match e {
        AuthError::PermissionDenied { .. } => tonic::Status::permission_denied(e.to_string()),
        _ => tonic::Status::unauthenticated(e.to_string()),
    }
}

/// The verified ticket a call carries as `authorization: Bearer <ticket>`.
pub fn bearer_ticket(
    metadata: &tonic::metadata::MetadataMap,
    authority: &TicketAuthority,
) -> Result<Ticket, tonic::Status> {
    let token = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| grpc_status(AuthError::NoTicket))?;
    authority
        .verify(token, crate::now_ms())
        .map_err(grpc_status)
}

/// Whether a ticket still says what the auth map says: a ticket of an entity since removed, or
/// whose caps changed, is revoked (its holder authenticates again and gets the current caps).
pub fn ticket_is_current(ticket: &Ticket, auth: &crate::maps::AuthMap) -> bool {
    auth.entities.get(&ticket.entity).map(|e| &e.caps) == Some(&ticket.caps)
}

/// The access a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    /// Everything, including keys and monitor membership.
    All,
}

impl Need {
    fn cap_string(self) -> &'static str {
        match self {
            Need::Read => "allow r",
            Need::Write => "allow rw",
            Need::All => "allow *",
        }
    }
}

/// A parsed capability for one service: `allow r`, `allow rw`, `allow rwx`, `allow *`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapLevel {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub all: bool,
}

impl CapLevel {
    pub fn parse(cap: &str) -> Result<CapLevel, AuthError> {
        let bad = |why: &str| AuthError::BadCap {
            cap: cap.to_string(),
            why: why.to_string(),
        };
        let rest = cap
            .trim()
            .strip_prefix("allow")
            .ok_or_else(|| bad("must start with 'allow'"))?
            .trim();
        if rest == "*" {
            return Ok(CapLevel {
                read: true,
                write: true,
                exec: true,
                all: true,
            });
        }
        if rest.is_empty() {
            return Err(bad("names no permission (r, w, x or *)"));
        }
        let mut level = CapLevel::default();
        for c in rest.chars() {
            match c {
                'r' => level.read = true,
                'w' => level.write = true,
                'x' => level.exec = true,
                _ => return Err(bad("permissions are r, w, x or *")),
            }
        }
        Ok(level)
    }

    pub fn allows(&self, need: Need) -> bool {
        match need {
            Need::Read => self.read || self.all,
            Need::Write => (self.read && self.write) || self.all,
            Need::All => self.all,
        }
    }
}

/// Longest capability string accepted.
pub const CAP_BYTES_MAX: usize = 256;

/// Validates a caps map (`service` → cap string) before it is stored.
pub fn validate_caps(caps: &BTreeMap<String, String>) -> Result<(), AuthError> {
    for (service, cap) in caps {
        if cap.len() > CAP_BYTES_MAX {
            return Err(AuthError::BadCap {
                cap: cap.chars().take(32).collect(),
                why: format!("longer than {CAP_BYTES_MAX} bytes"),
            });
        }
        if !matches!(service.as_str(), "mon" | "osd" | "mds") {
            return Err(AuthError::BadCap {
                cap: format!("{service} {cap}"),
                why: "services are mon, osd and mds".into(),
            });
        }
        CapLevel::parse(cap)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> TicketAuthority {
        TicketAuthority::from_mon_secret(&SecretKey::generate())
    }

    fn ticket(expires_at_ms: u64) -> Ticket {
        Ticket {
            entity: "client.admin".into(),
            caps: BTreeMap::from([("mon".into(), "allow *".into())]),
            issued_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn tickets_verify_and_expire() {
        let a = authority();
        let token = a.issue(&ticket(1_000));
        assert_eq!(a.verify(&token, 999).unwrap(), ticket(1_000));
        assert_eq!(
            a.verify(&token, 1_000),
            Err(AuthError::Expired {
                expired_at_ms: 1_000
            })
        );
    }

    #[test]
    fn forged_tickets_are_refused() {
        let a = authority();
        let token = a.issue(&ticket(u64::MAX));
        assert_eq!(authority().verify(&token, 0), Err(AuthError::BadSignature));
        // Raise the caps in the body, keep the signature.
        let (_, mac) = token.split_once('.').unwrap();
        let mut forged = ticket(u64::MAX);
        forged.entity = "client.evil".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            a.verify(&format!("{body}.{mac}"), 0),
            Err(AuthError::BadSignature)
        );
        assert_eq!(a.verify("garbage", 0), Err(AuthError::MalformedTicket));
    }

    #[test]
    fn challenges_bind_entity_and_age() {
        let a = authority();
        let c = a.challenge("client.admin", 10_000);
        assert!(a
            .check_challenge("client.admin", &c, 10_500, 30_000)
            .is_ok());
        assert!(a
            .check_challenge("client.other", &c, 10_500, 30_000)
            .is_err());
        assert!(a
            .check_challenge("client.admin", &c, 50_000, 30_000)
            .is_err());
        assert!(a
            .check_challenge("client.admin", &c[1..], 10_500, 30_000)
            .is_err());
    }

    #[test]
    fn proofs_need_the_key() {
        let key = SecretKey::generate();
        let p = client_proof(&key, b"chal", b"nonce");
        assert!(proof_matches(&p, &client_proof(&key, b"chal", b"nonce")));
        assert!(!proof_matches(
            &p,
            &client_proof(&SecretKey::generate(), b"chal", b"nonce")
        ));
        assert!(!proof_matches(&p, &server_proof(&key, b"chal", b"nonce")));
    }

    #[test]
    fn caps_parse_and_check() {
        let t = Ticket {
            caps: BTreeMap::from([("mon".into(), "allow r".into())]),
            ..ticket(1)
        };
        assert!(t.require("mon", Need::Read, "read").is_ok());
        assert!(t.require("mon", Need::Write, "write").is_err());
        assert!(t.require("osd", Need::Read, "read").is_err());
        assert!(CapLevel::parse("allow rw").unwrap().allows(Need::Write));
        assert!(!CapLevel::parse("allow rwx").unwrap().allows(Need::All));
        assert!(CapLevel::parse("deny *").is_err());
        assert!(CapLevel::parse("allow q").is_err());
    }

    #[test]
    fn mds_daemons_get_caps_on_every_service() {
        let caps = BTreeMap::from([
            ("mon".to_string(), "allow rw".to_string()),
            ("osd".to_string(), "allow rw".to_string()),
            ("mds".to_string(), "allow *".to_string()),
        ]);
        assert!(validate_entity("mds.a").is_ok());
        assert!(validate_caps(&caps).is_ok());
        let bad = BTreeMap::from([("mgr".to_string(), "allow *".to_string())]);
        assert!(validate_caps(&bad).is_err());
    }

    #[test]
    fn keys_never_print() {
        let k = SecretKey::generate();
        assert!(!format!("{k:?}").contains(&k.to_base64()));
        assert_eq!(SecretKey::from_base64(&k.to_base64()).unwrap(), k);
        assert!(SecretKey::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn entity_names() {
        for ok in ["client.admin", "mon.a", "osd.3", "mds.x"] {
            assert!(validate_entity(ok).is_ok(), "{ok}");
        }
        for bad in ["admin", "user.x", "client.", "client.a b", "mon.a/b"] {
            assert!(validate_entity(bad).is_err(), "{bad}");
        }
    }
}
