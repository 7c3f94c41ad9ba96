//! Tickets on the server side: every call but `Auth` carries one, checked before the handler
//! runs; the mon also mints its own tickets for the calls it makes to its peers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cairn_common::auth::{AuthError, Need, Ticket, TicketAuthority};
use tonic::{Request, Status};

use crate::state_machine::SharedState;

/// Metadata key carrying `Bearer <ticket>`.
pub const AUTHORIZATION: &str = "authorization";

pub use cairn_common::auth::grpc_status as auth_status;

/// A tonic interceptor: verifies the ticket and stores it in the request's extensions. A
/// ticket of an entity since removed, or whose caps changed, is refused as revoked (the
/// client authenticates again and gets the current caps).
#[derive(Clone)]
pub struct TicketCheck {
    pub authority: Arc<TicketAuthority>,
    pub shared: SharedState,
}

impl tonic::service::Interceptor for TicketCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let ticket = cairn_common::auth::bearer_ticket(req.metadata(), &self.authority)?;
        // Mons hold no entry in the auth map: their tickets are minted from the mon. secret.
        // A mon that has not joined yet has no auth map to judge by.
        if !ticket.entity.starts_with("mon.") {
            let current = self.shared.read(|a| {
                !a.state.is_bootstrapped()
                    || cairn_common::auth::ticket_is_current(&ticket, &a.state.maps.auth)
            });
            if !current {
                return Err(Status::unauthenticated(format!(
                    "ticket revoked: {} was removed or its caps changed; authenticate again",
                    ticket.entity
                )));
            }
        }
        req.extensions_mut().insert(ticket);
        Ok(req)
    }
}

/// The verified ticket of a request (the interceptor guarantees there is one).
pub fn ticket_of<T>(req: &Request<T>) -> Result<Ticket, Status> {
    req.extensions()
        .get::<Ticket>()
        .cloned()
        .ok_or_else(|| auth_status(AuthError::NoTicket))
}

/// Checks the request's ticket grants `need` on the mon service.
pub fn require<T>(req: &Request<T>, need: Need, action: &str) -> Result<Ticket, Status> {
    let ticket = ticket_of(req)?;
    ticket.require("mon", need, action).map_err(auth_status)?;
    Ok(ticket)
}

/// Peer calls are for mons only.
pub fn require_mon_peer<T>(req: &Request<T>) -> Result<Ticket, Status> {
    let ticket = require(req, Need::All, "call a monitor's peer service")?;
    if ticket.entity.starts_with("mon.") {
        Ok(ticket)
    } else {
        Err(Status::permission_denied(format!(
            "{} is not a monitor: the peer service is for monitors only",
            ticket.entity
        )))
    }
}

/// Tickets this mon presents to its peers, re-minted before they expire.
pub struct MonCredentials {
    authority: Arc<TicketAuthority>,
    entity: String,
    ttl_ms: u64,
    cached: Mutex<Option<(String, u64)>>,
}

impl MonCredentials {
    pub fn new(authority: Arc<TicketAuthority>, mon_name: &str, ttl_ms: u64) -> MonCredentials {
        MonCredentials {
            authority,
            entity: format!("mon.{mon_name}"),
            ttl_ms,
            cached: Mutex::new(None),
        }
    }

    /// `Bearer <ticket>` for a peer call.
    pub fn bearer(&self) -> String {
        let now = cairn_common::now_ms();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((token, expires)) if now + self.ttl_ms / 2 < *expires => format!("Bearer {token}"),
            _ => {
                let ticket = Ticket {
                    entity: self.entity.clone(),
                    caps: BTreeMap::from([("mon".to_string(), "allow *".to_string())]),
                    issued_at_ms: now,
                    expires_at_ms: now + self.ttl_ms,
                };
                let token = self.authority.issue(&ticket);
                *cached = Some((token.clone(), ticket.expires_at_ms));
                format!("Bearer {token}")
            }
        }
    }

    pub fn authorize<T>(&self, req: &mut Request<T>) {
        if let Ok(v) = self.bearer().parse() {
            req.metadata_mut().insert(AUTHORIZATION, v);
        }
    }
}
