//! Authentication and authorization: every wrong credential is refused and changes nothing;
//! malformed or oversized requests get errors and no mon falls over.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_client::dev::Kind;
use cairn_client::{ClientError, MonClient};
use cairn_common::auth::{client_proof, SecretKey, Ticket, TicketAuthority};
use cairn_common::command::Command;
use cairn_common::keyring::{Keyring, MON_SECRET_ENTITY};
use cairn_common::proto::auth_client::AuthClient;
use cairn_common::proto::mon_client::MonClient as MonRpc;
use cairn_common::proto::mon_peer_client::MonPeerClient;
use cairn_common::proto::*;
use cairn_tests::TestCluster;
use tonic::{Code, Request};

fn bearer<T>(body: T, ticket: &str) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ticket}").parse().unwrap());
    r
}

async fn raw_ticket(addr: &str, entity: &str, key: &SecretKey) -> String {
    let mut auth = AuthClient::connect(format!("http://{addr}")).await.unwrap();
    let challenge = auth
        .challenge(ChallengeRequest {
            entity: entity.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let nonce = b"0123456789abcdef".to_vec();
    let proof = client_proof(key, &challenge, &nonce).to_vec();
    auth.authenticate(AuthenticateRequest {
        entity: entity.into(),
        challenge,
        client_nonce: nonce,
        proof,
    })
    .await
    .unwrap()
    .into_inner()
    .ticket
}

fn keyring(c: &TestCluster) -> Keyring {
    Keyring::load(&c.config().keyring).unwrap()
}

fn client_with(c: &TestCluster, entity: &str, key: SecretKey) -> MonClient {
    let config = c.config();
    let addrs = config.monitors.iter().map(|m| m.addr.clone()).collect();
    MonClient::new(addrs, entity, key, config.client).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_missing_forged_and_expired_tickets_are_refused() {
    let c = TestCluster::start(3, &["mon.ticket_ttl_secs=2"]).await;
    let addr = c.addr_of("a");
    let admin = c.admin();
    let before = admin.maps().await.unwrap();

    // Wrong key, unknown entity.
    for (entity, key) in [
        ("client.admin", SecretKey::generate()),
        ("client.nobody", SecretKey::generate()),
    ] {
        let err = client_with(&c, entity, key)
            .status()
            .await
            .expect_err("refused");
        assert!(matches!(err, ClientError::Auth(_)), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("authentication failed for {entity}")),
            "{err}"
        );
    }

    let mut mon = MonRpc::connect(format!("http://{addr}")).await.unwrap();
    // No ticket.
    let s = mon
        .status(StatusRequest::default())
        .await
        .expect_err("no ticket");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("no ticket"), "{}", s.message());

    // Forged: signed by another authority, or a valid one with its body changed.
    let forger = TicketAuthority::from_mon_secret(&SecretKey::generate());
    let forged = forger.issue(&Ticket {
        entity: "client.admin".into(),
        caps: BTreeMap::from([("mon".into(), "allow *".into())]),
        issued_at_ms: 0,
        expires_at_ms: u64::MAX,
    });
    let s = mon
        .status(bearer(StatusRequest::default(), &forged))
        .await
        .expect_err("forged");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("signature"), "{}", s.message());

    let admin_key = keyring(&c).key("client.admin").unwrap().clone();
    let good = raw_ticket(&addr, "client.admin", &admin_key).await;
    mon.status(bearer(StatusRequest::default(), &good))
        .await
        .expect("a valid ticket works");
    let (_, sig) = good.split_once('.').unwrap();
    let tampered = format!("{}.{sig}", forged.split_once('.').unwrap().0);
    let s = mon
        .status(bearer(StatusRequest::default(), &tampered))
        .await
        .expect_err("tampered");
    assert_eq!(s.code(), Code::Unauthenticated);

    // Expired.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = mon
        .command(bearer(
            CommandRequest {
                command_json: serde_json::to_vec(&Command::ConfigSet {
                    name: "x.y".into(),
                    value: "1".into(),
                })
                .unwrap(),
                ..Default::default()
            },
            &good,
        ))
        .await
        .expect_err("expired");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("expired"), "{}", s.message());
    // The library renews its tickets by itself.
    admin
        .status()
        .await
        .expect("the client renews its expired ticket");

    let after = admin.maps().await.unwrap();
    assert_eq!(after.config, before.config);
    assert_eq!(after.auth, before.auth);

    // Keys never reach the logs.
    for (kind, name) in c.cluster.daemons().unwrap() {
        let log = std::fs::read_to_string(c.cluster.log_file(kind, &name)).unwrap_or_default();
        assert!(
            !log.contains(&admin_key.to_base64()),
            "a key leaked into {name}'s log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_limit_what_an_entity_may_do() {
    let c = TestCluster::start(1, &[]).await;
    let admin = c.admin();
    admin
        .command(Command::AuthAdd {
            entity: "client.ro".into(),
            caps: BTreeMap::from([("mon".to_string(), "allow r".to_string())]),
            key: None,
        })
        .await
        .unwrap();
    let (key, caps) = admin.auth_get("client.ro").await.unwrap();
    assert_eq!(caps["mon"], "allow r");
    let before = admin.maps().await.unwrap();

    let ro = client_with(&c, "client.ro", key.clone());
    ro.status().await.expect("read access");
    let writes = [
        Command::ConfigSet {
            name: "ro.x".into(),
            value: "1".into(),
        },
        Command::AuthRm {
            entity: "client.admin".into(),
        },
    ];
    for cmd in writes {
        let err = ro.command(cmd).await.expect_err("denied");
        assert!(matches!(err, ClientError::Denied(_)), "{err}");
        assert!(
            err.to_string().contains("client.ro is not allowed"),
            "{err}"
        );
    }
    let err = ro.auth_get("client.admin").await.expect_err("no key reads");
    assert!(matches!(err, ClientError::Denied(_)), "{err}");
    let err = ro.mon_rm("a").await.expect_err("no membership changes");
    assert!(matches!(err, ClientError::Denied(_)), "{err}");
    assert_eq!(admin.maps().await.unwrap(), before);

    // New caps take effect for a client holding a ticket with the old ones.
    admin
        .command(Command::AuthCaps {
            entity: "client.ro".into(),
            caps: BTreeMap::from([("mon".to_string(), "allow rw".to_string())]),
        })
        .await
        .unwrap();
    ro.command(Command::ConfigSet {
        name: "ro.x".into(),
        value: "1".into(),
    })
    .await
    .expect("write after the caps were raised");

    // A removed entity's tickets are revoked, and its key no longer authenticates.
    admin
        .command(Command::AuthRm {
            entity: "client.ro".into(),
        })
        .await
        .unwrap();
    let err = ro.status().await.expect_err("ticket of a removed entity");
    assert!(matches!(err, ClientError::Auth(_)), "{err}");
    let err = client_with(&c, "client.ro", key)
        .status()
        .await
        .expect_err("removed");
    assert!(matches!(err, ClientError::Auth(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_errors_and_no_mon_falls_over() {
    let c = TestCluster::start(3, &[]).await;
    let addr = c.addr_of("b");
    let kr = keyring(&c);
    let admin_ticket = raw_ticket(&addr, "client.admin", kr.key("client.admin").unwrap()).await;
    let mut mon = MonRpc::connect(format!("http://{addr}")).await.unwrap();

    for junk in [
        b"".to_vec(),
        b"{".to_vec(),
        b"{\"NoSuchCommand\":{}}".to_vec(),
        vec![0xff; 64],
    ] {
        let s = mon
            .command(bearer(
                CommandRequest {
                    command_json: junk,
                    ..Default::default()
                },
                &admin_ticket,
            ))
            .await
            .expect_err("malformed command");
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    }
    let bad_values = [
        Command::ConfigSet {
            name: "Bad Name".into(),
            value: "1".into(),
        },
        Command::ConfigSet {
            name: "ok.name".into(),
            value: "v".repeat(5000),
        },
        Command::AuthAdd {
            entity: "nonsense".into(),
            caps: BTreeMap::new(),
            key: None,
        },
        Command::AuthAdd {
            entity: "client.x".into(),
            caps: BTreeMap::from([("mon".to_string(), "allow everything".to_string())]),
            key: None,
        },
    ];
    let admin = c.admin();
    for cmd in bad_values {
        let err = admin.command(cmd).await.expect_err("invalid value");
        assert!(matches!(err, ClientError::Refused(_)), "{err}");
    }
    let s = mon
        .command(bearer(
            CommandRequest {
                command_json: vec![b' '; 4 << 20],
                ..Default::default()
            },
            &admin_ticket,
        ))
        .await
        .expect_err("oversized");
    assert_ne!(s.code(), Code::Ok);
    let s = mon
        .mon_membership(bearer(
            MonMembershipRequest {
                op: 7,
                name: "z".into(),
                addr: "nowhere".into(),
            },
            &admin_ticket,
        ))
        .await
        .expect_err("bad membership op");
    assert_eq!(s.code(), Code::InvalidArgument);
    let mut auth = AuthClient::connect(format!("http://{addr}")).await.unwrap();
    let s = auth
        .challenge(ChallengeRequest {
            entity: "../../etc".into(),
        })
        .await
        .expect_err("bad entity name");
    assert_eq!(s.code(), Code::InvalidArgument);

    // The peer service: client tickets are refused; a mon's garbage gets InvalidArgument.
    let mut peer = MonPeerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let s = peer
        .vote(bearer(
            RaftMessage {
                json: b"{}".to_vec(),
            },
            &admin_ticket,
        ))
        .await
        .expect_err("client on the peer service");
    assert_eq!(s.code(), Code::PermissionDenied);
    let mon_authority = TicketAuthority::from_mon_secret(kr.key(MON_SECRET_ENTITY).unwrap());
    let mon_ticket = mon_authority.issue(&Ticket {
        entity: "mon.test".into(),
        caps: BTreeMap::from([("mon".into(), "allow *".into())]),
        issued_at_ms: 0,
        expires_at_ms: u64::MAX,
    });
    for junk in [b"".to_vec(), b"[1,2".to_vec(), b"{\"vote\":null}".to_vec()] {
        let s = peer
            .append_entries(bearer(RaftMessage { json: junk.clone() }, &mon_ticket))
            .await
            .expect_err("garbage raft message");
        assert_eq!(s.code(), Code::InvalidArgument);
        let s = peer
            .forward(bearer(
                ForwardRequest {
                    entity: "client.x".into(),
                    request_json: junk,
                },
                &mon_ticket,
            ))
            .await
            .expect_err("garbage forward");
        assert_eq!(s.code(), Code::InvalidArgument);
    }

    for (kind, name) in c.cluster.daemons().unwrap() {
        assert!(
            c.cluster.running_pid(kind, &name).is_some(),
            "mon.{name} died"
        );
        assert_eq!(kind, Kind::Mon);
    }
    c.wait_healthy(Duration::from_secs(10)).await;
}
