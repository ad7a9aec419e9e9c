//! The Bootstrap interface (Core TS 1.1 §5.2, §6.1): what the Bootstrap Server sends a
//! client, and how the session went.
//!
//! ```gherkin
//! Given the bootstrap server provisions the client with an account on the LwM2M server
//! Given the bootstrap server provisions a PSK account on the LwM2M server
//! And the bootstrap configuration starts with a Bootstrap-Discover
//! And the bootstrap configuration reads /1, /2
//! When the client starts
//! Then the bootstrap session finishes within 30s
//! And every bootstrap "write" was answered 2.04
//! And the bootstrap discover lists "</>;lwm2m=1.1, </0/1>"
//! Then the bootstrap session fails at "finish" with 4.06 within 30s
//! And the client's value of /0/0/0 is the LwM2M server's DTLS URI
//! ```

use std::collections::BTreeMap;

use cucumber::{given, then, when};
use lwm2m_proto::bootstrap::{
    AclInstance, BootstrapConfig, BootstrapEvent, FailureReason, SecurityInstance, SecurityMode,
    ServerInstance,
};
use lwm2m_proto::{Lwm2mPath, Value};

use lwm2m_dtls::pki::{Purpose, Validity};

use super::assertions::links_missing;
use crate::bdd::backend::{Capability, Happening, ServerRole};
use crate::bdd::params::{Code, DurationParam, PathParam, Paths};
use crate::bdd::world::Lwm2mWorld;

fn server_account(w: &mut Lwm2mWorld) -> (SecurityInstance, ServerInstance) {
    let server = w.backend().server_address();
    let security = SecurityInstance {
        short_server_id: Some(1),
        ..SecurityInstance::nosec(format!("coap://{server}"))
    };
    (security, ServerInstance::new(1, 86400))
}

/// Stores the client's configuration in the world and hands it to the Bootstrap Server.
fn commit(w: &mut Lwm2mWorld, name: &str, config: BootstrapConfig) {
    w.backend().add_bootstrap_config(name, config.clone());
    w.bootstrap.insert(name.to_owned(), config);
}

/// Changes the current client's configuration.
fn amend(w: &mut Lwm2mWorld, change: impl FnOnce(&mut BootstrapConfig)) -> anyhow::Result<()> {
    let name = w.current()?;
    let mut config = w.bootstrap.get(&name).cloned().ok_or_else(|| {
        anyhow::anyhow!("no bootstrap configuration for {name:?} yet: provision it first")
    })?;
    change(&mut config);
    commit(w, &name, config);
    Ok(())
}

/// The configuration ETS int-0 writes: delete `/0` and `/1`, then a NoSec account on our
/// LwM2M Server (Security 0 with SSID 1, Server 0 with lifetime 86400 and binding U).
#[given("the bootstrap server provisions the client with an account on the LwM2M server")]
fn provisions_account(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let (security, server) = server_account(w);
    provision(w, security, server)
}

/// ETS int-1: the int-0 configuration with a PSK account (Security mode 0) on the LwM2M
/// Server's DTLS listener: `coaps://`, the endpoint name as PSK identity, a key the server
/// knows.
#[given("the bootstrap server provisions a PSK account on the LwM2M server")]
fn provisions_psk_account(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let (security, server) = secure_account(w)?;
    let name = w.current()?;
    let key = super::security::psk_key(w, &name);
    w.backend()
        .add_psk(ServerRole::Lwm2m, &name, name.as_bytes(), &key)?;
    let security = SecurityInstance {
        mode: SecurityMode::Psk,
        identity: name,
        secret_key: hex(&key),
        ..security
    };
    provision(w, security, server)
}

/// ETS int-2: the int-0 configuration with a certificate account (Security mode 2):
/// `coaps://`, a client certificate for the endpoint name from the run's test CA
/// (/0/0/3) and its private key (/0/0/5), the CA certificate as the server's trust anchor
/// (/0/0/4).
#[given("the bootstrap server provisions a certificate account on the LwM2M server")]
fn provisions_certificate_account(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let (security, server) = secure_account(w)?;
    let name = w.current()?;
    let pki = crate::bdd::secure::pki()?;
    let issued = pki
        .ca
        .issue(&name, &[], Purpose::Client, Validity::Current)?;
    let security = SecurityInstance {
        mode: SecurityMode::X509,
        identity: hex(&issued.certificate),
        server_public_key: hex(pki.ca.certificate()),
        secret_key: hex(&issued.private_key),
        ..security
    };
    provision(w, security, server)
}

/// The int-0 account pointed at the LwM2M Server's DTLS listener (DTLS needed).
fn secure_account(w: &mut Lwm2mWorld) -> anyhow::Result<(SecurityInstance, ServerInstance)> {
    w.require(Capability::Dtls);
    let (security, server) = server_account(w);
    let Some(secure) = w.backend().secure_address(ServerRole::Lwm2m) else {
        return Err(anyhow::anyhow!("the LwM2M Server has no DTLS listener"));
    };
    Ok((
        SecurityInstance {
            uri: format!("coaps://{secure}"),
            ..security
        },
        server,
    ))
}

/// The account the Bootstrap Server wrote points at the LwM2M Server's DTLS address
/// (`coaps://` where it listens: ours in process, or the server under test's).
#[then(expr = "the client's value of {path} is the LwM2M server's DTLS URI")]
fn client_value_is_secure_uri(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    let Some(secure) = w.backend().secure_address(ServerRole::Lwm2m) else {
        return Err(anyhow::anyhow!("the LwM2M Server has no DTLS listener"));
    };
    let expected = format!("coaps://{secure}");
    let name = w.current()?;
    match w.client_machine(&name)?.tree().get(&path.0).cloned() {
        Some(Value::String(uri)) if uri == expected => Ok(()),
        Some(v) => Err(w.fail(format!(
            "{name:?} holds {v:?} at {}, not {expected:?}",
            path.0
        ))),
        None => Err(w.fail(format!("{name:?} holds no value at {}", path.0))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The int-0 configuration with `security` and `server` as the account.
fn provision(
    w: &mut Lwm2mWorld,
    security: SecurityInstance,
    server: ServerInstance,
) -> anyhow::Result<()> {
    let name = w.current()?;
    let config = BootstrapConfig {
        security: BTreeMap::from([(0, security)]),
        servers: BTreeMap::from([(0, server)]),
        ..BootstrapConfig::default()
    };
    let config = BootstrapConfig {
        delete: vec![Lwm2mPath::object(0), Lwm2mPath::object(1)],
        ..config
    };
    commit(w, &name, config);
    Ok(())
}

/// An inconsistent configuration (ETS int-9): only a Server instance with a lifetime of
/// 86400 s, no Security instance for it, so no usable server account.
#[given("the bootstrap server provisions the client with only a server lifetime")]
fn provisions_inconsistent(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    let (_, server) = server_account(w);
    let config = BootstrapConfig {
        delete: Vec::new(),
        servers: BTreeMap::from([(0, server)]),
        ..BootstrapConfig::default()
    };
    commit(w, &name, config);
    Ok(())
}

/// A fallback configuration for every endpoint name matching a pattern (`sensor-*`).
#[given(expr = "the bootstrap server provisions every client matching {string}")]
fn provisions_pattern(w: &mut Lwm2mWorld, pattern: String) -> anyhow::Result<()> {
    let (security, server) = server_account(w);
    let config = BootstrapConfig {
        delete: vec![Lwm2mPath::object(0), Lwm2mPath::object(1)],
        security: BTreeMap::from([(0, security)]),
        servers: BTreeMap::from([(0, server)]),
        ..BootstrapConfig::default()
    };
    w.backend().add_bootstrap_config(&pattern, config);
    Ok(())
}

/// The session starts with a Bootstrap-Discover of `/` (LwM2M 1.1).
#[given("the bootstrap configuration starts with a Bootstrap-Discover")]
fn with_discover(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    amend(w, |c| c.discover = true)
}

/// The session reads these paths after writing (Bootstrap-Read, LwM2M 1.1).
#[given(expr = "the bootstrap configuration reads {paths}")]
fn with_reads(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    amend(w, |c| c.read = paths.0)
}

/// The session deletes these paths first.
#[given(expr = "the bootstrap configuration deletes {paths}")]
fn with_deletes(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    amend(w, |c| c.delete = paths.0)
}

/// The session also writes an Access Control instance for `/3/0` owned by SSID 1 with
/// every right (ETS int-8: `/2/0`, 0 = 3, 1 = 0, 2/1 = 31, 3 = 1).
#[given("the bootstrap configuration writes an access control instance for the device")]
fn with_acl(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    amend(w, |c| {
        c.acl.insert(
            0,
            AclInstance {
                object_id: 3,
                instance_id: 0,
                acl: BTreeMap::from([(1, 31)]),
                owner: 1,
            },
        );
    })
}

/// Server-initiated bootstrap: the Bootstrap Server runs its sequence without waiting for
/// a Bootstrap-Request (Core TS 1.1 §5.2).
#[when("the bootstrap server starts a bootstrap of the client")]
fn server_initiated(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    w.mark();
    w.backend()
        .start_bootstrap(&name)
        .map_err(|e| w.fail(format!("the bootstrap of {name:?} did not start: {e}")))
}

/// The Bootstrap Server accepted a Bootstrap-Request (answered 2.04) from the client.
#[then(expr = "the client requests a bootstrap within {duration}")]
fn requests_bootstrap(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    w.wait_for(within.0, &format!("a Bootstrap-Request from {name:?}"), |t| {
        matches!(&t.happening, Happening::Bootstrap(BootstrapEvent::SessionStarted { endpoint, initiated_by_client: true, .. }) if *endpoint == name)
    })?;
    Ok(())
}

/// No Bootstrap-Request from the client reaches the Bootstrap Server.
#[then(expr = "the client does not request a bootstrap within {duration}")]
fn no_bootstrap(w: &mut Lwm2mWorld, during: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    w.expect_none(during.0, &format!("a Bootstrap-Request from {name:?}"), |t| {
        matches!(&t.happening, Happening::Bootstrap(BootstrapEvent::SessionStarted { endpoint, .. } | BootstrapEvent::Refused { endpoint: Some(endpoint), .. }) if *endpoint == name)
    })
}

/// Bootstrap-Finish was answered 2.04.
#[then(expr = "the bootstrap session finishes within {duration}")]
fn finishes(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    let t = w.wait_for(within.0, &format!("the bootstrap of {name:?} finishing"), |t| {
        matches!(&t.happening, Happening::Bootstrap(BootstrapEvent::Finished { endpoint, .. } | BootstrapEvent::Failed { endpoint, .. }) if *endpoint == name)
    })?;
    match t.happening {
        Happening::Bootstrap(BootstrapEvent::Failed { step, reason, .. }) => {
            Err(w.fail(format!("the bootstrap session failed at {step}: {reason}")))
        }
        _ => Ok(()),
    }
}

/// The session failed at a step with the client's answer `code`.
#[then(expr = "the bootstrap session fails at {string} with {code} within {duration}")]
fn fails_at(
    w: &mut Lwm2mWorld,
    kind: String,
    code: Code,
    within: DurationParam,
) -> anyhow::Result<()> {
    let name = w.current()?;
    let t = w.wait_for(within.0, &format!("the bootstrap of {name:?} failing"), |t| {
        matches!(&t.happening, Happening::Bootstrap(BootstrapEvent::Failed { endpoint, .. }) if *endpoint == name)
    })?;
    match t.happening {
        Happening::Bootstrap(BootstrapEvent::Failed {
            step: s,
            reason: FailureReason::Code { code: c, .. },
            ..
        }) if s == kind && c == code.0 => Ok(()),
        Happening::Bootstrap(BootstrapEvent::Failed {
            step: s, reason, ..
        }) => Err(w.fail(format!(
            "the bootstrap failed at {s} ({reason}), not at {kind} with {code}"
        ))),
        _ => Err(w.fail("not a bootstrap failure")),
    }
}

/// One answered step of a bootstrap session.
struct Answered {
    path: Option<Lwm2mPath>,
    code: (u8, u8),
    detail: Option<String>,
}

/// The answers to one kind of step (`discover`, `delete`, `write`, `read`, `finish`).
fn steps_of(w: &mut Lwm2mWorld, kind: &str) -> anyhow::Result<Vec<Answered>> {
    let name = w.current()?;
    Ok(w.timeline_all()
        .into_iter()
        .filter_map(|t| match t.happening {
            Happening::Bootstrap(BootstrapEvent::Step {
                endpoint,
                step,
                path,
                code,
                detail,
            }) if endpoint == name && step == kind => Some(Answered { path, code, detail }),
            _ => None,
        })
        .collect())
}

/// Every step of a kind got `code`, and there was at least one.
#[then(expr = "every bootstrap {string} was answered {code}")]
fn every_step(w: &mut Lwm2mWorld, kind: String, code: Code) -> anyhow::Result<()> {
    let steps = steps_of(w, &kind)?;
    if steps.is_empty() {
        return Err(w.fail(format!("the session had no {kind:?} step answered")));
    }
    match steps.iter().find(|a| a.code != code.0) {
        None => Ok(()),
        Some(a) => Err(w.fail(format!(
            "bootstrap {kind} of {:?} was answered {}, not {code}",
            a.path,
            Code(a.code)
        ))),
    }
}

/// The Bootstrap-Discover answer holds these links (with at least these parameters).
#[then(expr = "the bootstrap discover lists {string}")]
fn discover_lists(w: &mut Lwm2mWorld, expected: String) -> anyhow::Result<()> {
    let steps = steps_of(w, "discover")?;
    let Some(payload) = steps.last().and_then(|a| a.detail.clone()) else {
        return Err(w.fail("the session had no Bootstrap-Discover answer"));
    };
    let actual = lwm2m_proto::codec::link::parse_links(&payload).map_err(|e| {
        w.fail(format!(
            "the Bootstrap-Discover answer {payload:?} is not link format: {e}"
        ))
    })?;
    let missing = links_missing(&expected, &actual)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(w.fail(format!(
            "the Bootstrap-Discover answer {payload:?} lacks {}",
            missing.join(", ")
        )))
    }
}

/// A Bootstrap-Read of `path` was answered `code`.
#[then(expr = "the bootstrap read of {path} was answered {code}")]
fn read_answered(
    w: &mut Lwm2mWorld,
    path: crate::bdd::params::PathParam,
    code: Code,
) -> anyhow::Result<()> {
    let steps = steps_of(w, "read")?;
    match steps.iter().find(|a| a.path == Some(path.0)) {
        Some(a) if a.code == code.0 => Ok(()),
        Some(a) => Err(w.fail(format!(
            "the Bootstrap-Read of {} was answered {}, not {code}",
            path.0,
            Code(a.code)
        ))),
        None => Err(w.fail(format!("no Bootstrap-Read of {} was answered", path.0))),
    }
}
