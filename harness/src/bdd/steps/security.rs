//! Channel security (Core TS 1.1 §7.1; ETS int-401, int-402): the credentials a client's
//! `coaps://` account holds and the server knows, and what the DTLS handshake and the
//! session carried.
//!
//! ```gherkin
//! Given the client uses DTLS with the PSK identity "ets-psk"
//! Given the client uses DTLS with the PSK identity "ets-psk" and a wrong key
//! Given the client uses DTLS with the PSK identity "stranger" unknown to the server
//! Given the client uses DTLS with the PSK identity "ets-other" of "ets-other-device"
//! Given the client uses DTLS with a certificate for "ets-cert"
//! Given the client uses DTLS with an expired certificate for "ets-cert"
//! Given the client uses DTLS with a certificate for "ets-cert" from an untrusted CA
//! Given every client uses DTLS with its endpoint name as PSK identity
//! Given the client's bootstrap account uses DTLS with a PSK
//! When the server forgets its DTLS sessions
//! Then the client completes a DTLS handshake with the bootstrap server within 10s
//! Then the client completes a DTLS handshake within 10s
//! Then the client is registered over DTLS with the PSK identity "ets-psk"
//! Then the client is registered over DTLS with the certificate of "ets-cert"
//! Then the last operation went over DTLS
//! Then the client's DTLS handshake fails within 10s with "wrong PSK key"
//! Then the server refuses the client's Register with 4.03 within 10s
//! ```
//!
//! PSK keys are 16 bytes derived from the scenario seed and the identity
//! ([`PskPattern::key`]); certificates are issued by the run's test CA
//! ([`crate::bdd::secure::pki`]).

use std::net::SocketAddr;

use cucumber::{given, then, when};
use lwm2m_dtls::Identity;
use lwm2m_dtls::pki::{Purpose, TestCa, Validity};
use lwm2m_dtls::record::RecordBytes;
use lwm2m_proto::coap::{CoapOption, MessageClass, RequestType, ResponseType, message};
use lwm2m_simulator::fleet::PskPattern;

use crate::accounts::SecureAccount;
use crate::bdd::backend::{Capability, DtlsHappening, DtlsSide, Happening, ServerRole, ServerView};
use crate::bdd::exchange::Sent;
use crate::bdd::params::DurationParam;
use crate::bdd::secure::pki;
use crate::bdd::world::Lwm2mWorld;

/// The 16-byte PSK of `identity` in this scenario.
pub fn psk_key(w: &Lwm2mWorld, identity: &str) -> [u8; 16] {
    PskPattern {
        identity: identity.to_owned(),
        seed: w.seed,
    }
    .key(identity)
}

/// Gives the current client a `coaps://` account with `account` (DTLS needed).
fn secure(w: &mut Lwm2mWorld, account: SecureAccount) -> anyhow::Result<()> {
    w.require(Capability::Dtls);
    let name = w.current()?;
    w.backend().secure_client(&name, ServerRole::Lwm2m, account)
}

/// The client's PSK account, and the server's entry for `identity` (`server`: the
/// endpoint it belongs to and the key the server holds; `None`: unknown to the server).
fn psk(
    w: &mut Lwm2mWorld,
    identity: &str,
    key: &[u8],
    server: Option<(&str, &[u8])>,
) -> anyhow::Result<()> {
    w.require(Capability::Dtls);
    if let Some((endpoint, server_key)) = server {
        w.backend()
            .add_psk(ServerRole::Lwm2m, endpoint, identity.as_bytes(), server_key)?;
    }
    secure(
        w,
        SecureAccount::Psk {
            identity: identity.as_bytes().to_vec(),
            key: key.to_vec(),
        },
    )
}

/// PSK credentials (Security mode 0) the server knows for this client.
#[given(expr = "the client uses DTLS with the PSK identity {string}")]
fn with_psk(w: &mut Lwm2mWorld, identity: String) -> anyhow::Result<()> {
    let key = psk_key(w, &identity);
    let name = w.current()?;
    psk(w, &identity, &key, Some((&name, &key)))
}

/// A PSK identity the server knows for this client, with another key than the server's.
#[given(expr = "the client uses DTLS with the PSK identity {string} and a wrong key")]
fn with_wrong_key(w: &mut Lwm2mWorld, identity: String) -> anyhow::Result<()> {
    let key = psk_key(w, &identity);
    let mut wrong = key;
    wrong.iter_mut().for_each(|b| *b ^= 0x5a);
    let name = w.current()?;
    psk(w, &identity, &wrong, Some((&name, &key)))
}

/// A PSK identity the server has no key for.
#[given(expr = "the client uses DTLS with the PSK identity {string} unknown to the server")]
fn with_unknown_identity(w: &mut Lwm2mWorld, identity: String) -> anyhow::Result<()> {
    let key = psk_key(w, &identity);
    psk(w, &identity, &key, None)
}

/// Valid PSK credentials that the server holds for another endpoint.
#[given(expr = "the client uses DTLS with the PSK identity {string} of {string}")]
fn with_foreign_identity(
    w: &mut Lwm2mWorld,
    identity: String,
    owner: String,
) -> anyhow::Result<()> {
    let key = psk_key(w, &identity);
    psk(w, &identity, &key, Some((&owner, &key)))
}

/// Our LwM2M Server forgets its DTLS sessions without telling the clients (a restart).
#[when("the server forgets its DTLS sessions")]
fn server_forgets_sessions(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    w.require(Capability::Dtls);
    w.backend().forget_dtls_sessions(ServerRole::Lwm2m)
}

/// Every client of the scenario so far gets PSK credentials the server knows: its
/// endpoint name as identity, a key of its own.
#[given("every client uses DTLS with its endpoint name as PSK identity")]
fn fleet_psk(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    w.require(Capability::Dtls);
    for name in w.fleet.clone() {
        let key = psk_key(w, &name);
        let backend = w.backend();
        backend.add_psk(ServerRole::Lwm2m, &name, name.as_bytes(), &key)?;
        let account = SecureAccount::Psk {
            identity: name.clone().into_bytes(),
            key: key.to_vec(),
        };
        backend.secure_client(&name, ServerRole::Lwm2m, account)?;
    }
    Ok(())
}

/// A certificate account (Security mode 2) for common name `cn` issued by `ca`.
fn with_certificate_from(
    w: &mut Lwm2mWorld,
    ca: &TestCa,
    cn: &str,
    validity: Validity,
) -> anyhow::Result<()> {
    let issued = ca.issue(cn, &[], Purpose::Client, validity)?;
    let account = SecureAccount::Certificate {
        certificate: issued.certificate,
        private_key: issued.private_key,
        trust_anchor: pki()?.ca.certificate().to_vec(),
    };
    secure(w, account)
}

/// A client certificate for common name `cn` from the run's test CA, which the server
/// trusts; the client trusts the CA for the server's certificate.
#[given(expr = "the client uses DTLS with a certificate for {string}")]
fn with_certificate(w: &mut Lwm2mWorld, cn: String) -> anyhow::Result<()> {
    with_certificate_from(w, &pki()?.ca, &cn, Validity::Current)
}

/// The same, expired (valid 2019-2020).
#[given(expr = "the client uses DTLS with an expired certificate for {string}")]
fn with_expired_certificate(w: &mut Lwm2mWorld, cn: String) -> anyhow::Result<()> {
    with_certificate_from(w, &pki()?.ca, &cn, Validity::Expired)
}

/// A certificate from a CA the server does not trust.
#[given(expr = "the client uses DTLS with a certificate for {string} from an untrusted CA")]
fn with_untrusted_certificate(w: &mut Lwm2mWorld, cn: String) -> anyhow::Result<()> {
    with_certificate_from(w, &pki()?.stranger, &cn, Validity::Current)
}

/// The client's Bootstrap-Server account (ETS C.13: PSK) talks DTLS: the endpoint name as
/// PSK identity, a key the Bootstrap Server knows.
#[given("the client's bootstrap account uses DTLS with a PSK")]
fn bootstrap_psk(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    bootstrap_account(w, &name, &name)
}

/// The client's Bootstrap-Server account holds a PSK identity that the Bootstrap Server
/// knows as another endpoint's.
#[given(expr = "the client's bootstrap account uses the PSK identity {string} of {string}")]
fn bootstrap_foreign_psk(
    w: &mut Lwm2mWorld,
    identity: String,
    owner: String,
) -> anyhow::Result<()> {
    bootstrap_account(w, &identity, &owner)
}

/// A PSK Bootstrap-Server account with `identity`, which the Bootstrap Server knows as
/// `owner`'s.
fn bootstrap_account(w: &mut Lwm2mWorld, identity: &str, owner: &str) -> anyhow::Result<()> {
    w.require(Capability::Dtls);
    let name = w.current()?;
    let key = psk_key(w, &format!("{identity}@bootstrap"));
    let backend = w.backend();
    backend.add_psk(ServerRole::Bootstrap, owner, identity.as_bytes(), &key)?;
    let account = SecureAccount::Psk {
        identity: identity.as_bytes().to_vec(),
        key: key.to_vec(),
    };
    backend.secure_client(&name, ServerRole::Bootstrap, account)
}

/// Waits for the DTLS handshake of the client with our server `role`.
fn handshake_with(
    w: &mut Lwm2mWorld,
    role: ServerRole,
    within: DurationParam,
) -> anyhow::Result<()> {
    let name = w.current()?;
    let what = format!("a DTLS handshake of {name:?} with the {role}");
    let found = w.wait_for(within.0, &what, |t| {
        matches!(&t.happening, Happening::Dtls(DtlsHappening::Established { endpoint, server, .. } | DtlsHappening::HandshakeFailed { endpoint, server, .. }) if *endpoint == name && *server == role)
    })?;
    match found.happening {
        Happening::Dtls(DtlsHappening::HandshakeFailed { side, reason, .. }) => {
            Err(w.fail(format!(
                "the DTLS handshake of {name:?} with the {role} failed at {}: {reason}",
                side_name(side)
            )))
        }
        _ => Ok(()),
    }
}

/// The LwM2M Server's DTLS listener completed a handshake with the client.
#[then(expr = "the client completes a DTLS handshake within {duration}")]
fn handshake_completes(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    handshake_with(w, ServerRole::Lwm2m, within)
}

/// The Bootstrap Server's DTLS listener completed a handshake with the client.
#[then(expr = "the client completes a DTLS handshake with the bootstrap server within {duration}")]
fn bootstrap_handshake(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    handshake_with(w, ServerRole::Bootstrap, within)
}

/// The datagrams of the scenario between `client` (any client: `None`) and the LwM2M
/// Server (either of its addresses), from log line `mark` on.
fn with_server(w: &mut Lwm2mWorld, client: Option<SocketAddr>, mark: usize) -> Vec<Sent> {
    with(w, ServerRole::Lwm2m, client, mark)
}

/// [`with_server`] for our server `role`.
fn with(
    w: &mut Lwm2mWorld,
    role: ServerRole,
    client: Option<SocketAddr>,
    mark: usize,
) -> Vec<Sent> {
    let backend = w.backend();
    let plain = match role {
        ServerRole::Lwm2m => backend.server_address(),
        ServerRole::Bootstrap => backend.bootstrap_address(),
    };
    let server = [Some(plain), backend.secure_address(role)];
    let is_server = |a: SocketAddr| server.contains(&Some(a));
    backend
        .exchange_log()
        .sent()
        .iter()
        .filter(|d| d.line >= mark)
        .filter(|d| {
            let is_client = |a: SocketAddr| client.is_none_or(|c| c == a);
            (is_client(d.src) && is_server(d.dst)) || (is_client(d.dst) && is_server(d.src))
        })
        .cloned()
        .collect()
}

/// A datagram carrying its CoAP message in a DTLS application record.
fn is_dtls_application(d: &Sent) -> bool {
    RecordBytes::of_datagram(&d.bytes).application_records > 0
        && d.coap.as_deref().is_some_and(|c| c != d.bytes.as_slice())
}

/// The registration exists, its Register went in DTLS application records, and the
/// server hears the registration through a session authenticated as `expected`.
fn registered_as(w: &mut Lwm2mWorld, expected: Identity) -> anyhow::Result<()> {
    w.require(Capability::Dtls);
    let name = w.current()?;
    if w.backend().registration(&name).is_none() {
        return Err(w.fail_since(0, format!("{name:?} is not registered")));
    }
    // Every Register under its name, from whichever address it had then.
    let ep = format!("ep={name}");
    let registers: Vec<Sent> = with_server(w, None, 0)
        .into_iter()
        .filter(|d| {
            d.coap
                .as_deref()
                .and_then(|c| message::decode(c).ok())
                .is_some_and(|p| {
                    p.header.code == MessageClass::Request(RequestType::Post)
                        && message::uri_path(&p) == "/rd"
                        && p.get_option(CoapOption::UriQuery)
                            .is_some_and(|q| q.iter().any(|v| v.as_slice() == ep.as_bytes()))
                })
        })
        .collect();
    if registers.is_empty() {
        return Err(w.fail_since(0, format!("no Register of {name:?} in the exchange")));
    }
    if let Some(plain) = registers.iter().find(|d| !is_dtls_application(d)) {
        return Err(w.fail_since(
            plain.line,
            format!("{name:?} sent its Register in the clear"),
        ));
    }
    match w.backend().secure_identity(&name) {
        Some(identity) if identity == expected => Ok(()),
        Some(identity) => Err(w.fail_since(
            0,
            format!("{name:?} is registered over a DTLS session as {identity}, not {expected}"),
        )),
        None => Err(w.fail_since(
            0,
            format!("the server does not hear {name:?} through a DTLS session"),
        )),
    }
}

/// ETS int-401: the registration came through a PSK session with this identity.
#[then(expr = "the client is registered over DTLS with the PSK identity {string}")]
fn registered_with_psk(w: &mut Lwm2mWorld, identity: String) -> anyhow::Result<()> {
    registered_as(w, Identity::Psk(identity.as_bytes().into()))
}

/// ETS int-402: the registration came through a session whose client certificate has
/// this common name.
#[then(expr = "the client is registered over DTLS with the certificate of {string}")]
fn registered_with_certificate(w: &mut Lwm2mWorld, cn: String) -> anyhow::Result<()> {
    registered_as(w, Identity::Certificate(cn.as_str().into()))
}

/// Every datagram of the last operation between the client and the server was a DTLS
/// record: the request and the response in application records, none in the clear. A
/// handshake record of the session (a retransmitted final flight arriving late, as on a
/// loaded real network) is DTLS too and does not count against it.
#[then("the last operation went over DTLS")]
fn operation_over_dtls(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let outcome = w.outcome()?;
    let name = w.current()?;
    let Some(client) = w.backend().public_address(&name) else {
        return Err(w.fail(format!("{name:?} has no address")));
    };
    let datagrams = with_server(w, Some(client), outcome.log_mark);
    let application = |d: &&Sent| is_dtls_application(d);
    let (to, from) = (
        datagrams
            .iter()
            .filter(application)
            .filter(|d| d.src == client)
            .count(),
        datagrams
            .iter()
            .filter(application)
            .filter(|d| d.dst == client)
            .count(),
    );
    if to == 0 || from == 0 {
        return Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} went {to} DTLS application record(s) to and {from} from {name:?}: not a \
                 request and a response inside the session",
                outcome.description
            ),
        ));
    }
    match datagrams
        .iter()
        .find(|d| !is_dtls_application(d) && !is_dtls_handshake(d))
    {
        None => Ok(()),
        Some(d) => Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} was not all inside the DTLS session: line {} is not DTLS application data",
                outcome.description, d.line
            ),
        )),
    }
}

/// A datagram of DTLS handshake (and change_cipher_spec) records only.
fn is_dtls_handshake(d: &Sent) -> bool {
    let records = RecordBytes::of_datagram(&d.bytes);
    records.handshake > 0 && records.application == 0 && records.alert == 0 && records.other == 0
}

/// The handshake of the client failed, on either side, for a reason whose text contains
/// `reason` (case-insensitive): "wrong PSK key", "unknown PSK identity", "certificate"...
#[then(expr = "the client's DTLS handshake fails within {duration} with {string}")]
fn handshake_fails(
    w: &mut Lwm2mWorld,
    within: DurationParam,
    reason: String,
) -> anyhow::Result<()> {
    // The reason is the server's diagnosis (a client sees an alert): a server under test
    // must report it.
    w.require_our_server(
        ServerView::Security,
        "the server's reason for a failed DTLS handshake",
    );
    let name = w.current()?;
    let wanted = reason.to_lowercase();
    let mut seen: Vec<String> = Vec::new();
    let what = format!("a DTLS handshake failure of {name:?} with {reason:?}");
    let found = w.wait_for(within.0, &what, |t| match &t.happening {
        Happening::Dtls(DtlsHappening::HandshakeFailed {
            endpoint,
            side,
            reason,
            ..
        }) if *endpoint == name => {
            let text = reason.to_string();
            let hit = text.to_lowercase().contains(&wanted);
            note(&mut seen, format!("{}: {text}", side_name(*side)));
            hit
        }
        Happening::Dtls(DtlsHappening::Established {
            endpoint, identity, ..
        }) if *endpoint == name => {
            note(&mut seen, format!("established as {identity}"));
            false
        }
        _ => false,
    });
    match found {
        Ok(_) => Ok(()),
        Err(e) if seen.is_empty() => Err(e),
        Err(_) => Err(w.fail(format!(
            "{what} did not happen within {:?}; the DTLS layer reported: {}",
            within.0,
            seen.join("; ")
        ))),
    }
}

/// A Register over the session was refused 4.03 because the identity belongs to another
/// endpoint (Core TS 1.1 §7.1.8), and the 4.03 went back inside the session.
#[then(expr = "the server refuses the client's Register with 4.03 within {duration}")]
fn register_refused(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    refused(w, ServerRole::Lwm2m, "Register", within)
}

/// The same for a Bootstrap-Request (`POST /bs?ep=`) over the Bootstrap Server's session.
#[then(expr = "the bootstrap server refuses the Bootstrap-Request with 4.03 within {duration}")]
fn bootstrap_refused(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    refused(w, ServerRole::Bootstrap, "Bootstrap-Request", within)
}

/// Our server `role` refused the client's `request` with 4.03, inside the session.
fn refused(
    w: &mut Lwm2mWorld,
    role: ServerRole,
    request: &str,
    within: DurationParam,
) -> anyhow::Result<()> {
    let name = w.current()?;
    w.wait_for(within.0, &format!("a 4.03 to a {request} of {name:?}"), |t| {
        matches!(&t.happening, Happening::Dtls(DtlsHappening::Refused { client, server, .. }) if *client == name && *server == role)
    })?;
    let Some(client) = w.backend().public_address(&name) else {
        return Err(w.fail(format!("{name:?} has no address")));
    };
    let answered = with(w, role, Some(client), 0).iter().any(|d| {
        d.dst == client
            && is_dtls_application(d)
            && d.coap
                .as_deref()
                .and_then(|c| message::decode(c).ok())
                .is_some_and(|p| p.header.code == MessageClass::Response(ResponseType::Forbidden))
    });
    if answered {
        Ok(())
    } else {
        Err(w.fail(format!(
            "the {role} refused the {request} but no 4.03 went back in the DTLS session"
        )))
    }
}

/// Adds `what` to `seen` unless it is there (waits look at the same happenings again).
fn note(seen: &mut Vec<String>, what: String) {
    if !seen.contains(&what) {
        seen.push(what);
    }
}

/// Which side saw a failure, in words.
fn side_name(side: DtlsSide) -> &'static str {
    match side {
        DtlsSide::Server => "the server",
        DtlsSide::Client => "the client",
    }
}
