//! The Registration interface (Core TS 1.1 §6.2): Register, Update, De-register, lifetimes,
//! queue mode, and what the server makes of what clients send.
//!
//! ```gherkin
//! Then the client registers within 10s
//! And the registration has lifetime 86400
//! And the registration has LwM2M version 1.1
//! And the registration lists /1/0, /3/0
//! And the registration does not list /0
//! Then the client sends an Update within 25s
//! And the last Update carried "lt=20"
//! Then the registration expires within 30s
//! When a spoofed De-register of the client reaches the server
//! Then the server answers an Update with 4.04 within 120s
//! ```

use std::time::Duration;

use cucumber::{then, when};
use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::client::{ClientEvent, ClientState};
use lwm2m_proto::coap::{CoapOption, MessageClass, RequestType, message};
use lwm2m_proto::server::{Registration, ServerEvent};

use crate::bdd::backend::{Happening, ServerView};
use crate::bdd::params::{Code, DurationParam, Paths, Version};
use crate::bdd::world::Lwm2mWorld;

fn registration(w: &mut Lwm2mWorld) -> anyhow::Result<(String, Registration)> {
    let name = w.current()?;
    match w.backend().registration(&name) {
        Some(r) => {
            // What the device sent (its Register and Updates) is what the step checks,
            // with what the server tolerated in it.
            w.device_evidence = true;
            for f in crate::bdd::world::registration_findings(&r) {
                w.add_finding(f);
            }
            Ok((name, r))
        }
        None => Err(w.fail(format!("the server has no registration for {name:?}"))),
    }
}

/// The server registers the client.
#[then(expr = "the client registers within {duration}")]
fn registers_within(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    registers(w, &name, within.0)
}

/// The server registers a named client.
#[then(expr = "{string} registers within {duration}")]
fn named_registers_within(
    w: &mut Lwm2mWorld,
    name: String,
    within: DurationParam,
) -> anyhow::Result<()> {
    registers(w, &name, within.0)
}

/// The client registers once more (after a reboot, a lost registration, a bootstrap).
#[then(expr = "the client registers again within {duration}")]
fn registers_again(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    if w.device_rebooted {
        // A device rebooting takes the time the case gives it, in real time.
        let name = w.current()?;
        let seen = w.wait_in_full(within.0, &format!("{name:?} registering again"), |t| {
            matches!(&t.happening, Happening::Server(ServerEvent::Registered { registration, .. }) if registration.endpoint == name)
        });
        if seen.is_err() {
            crate::bdd::world::not_applicable(format!(
                "the device acknowledged the reboot but did not register again within {:?}; \
                 a device the harness did not start is not restarted by it",
                within.0
            ));
        }
        return Ok(());
    }
    registers_within(w, within)
}

fn registers(w: &mut Lwm2mWorld, name: &str, within: Duration) -> anyhow::Result<()> {
    // A server under test shows only on the wire: its 2.01 to the Register.
    let ours = w.server_is_ours();
    w.wait_for(
        within,
        &format!("a registration of {name:?}"),
        |t| match &t.happening {
            Happening::Server(ServerEvent::Registered { registration, .. }) => {
                ours && registration.endpoint == name
            }
            Happening::Client {
                endpoint,
                event: ClientEvent::Registered { .. },
            } => !ours && endpoint == name,
            _ => false,
        },
    )?;
    Ok(())
}

/// Every client of the fleet is registered, waiting up to `within`.
#[then(expr = "all clients are registered within {duration}")]
fn all_registered(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let deadline = w.now() + within.0;
    loop {
        let missing: Vec<String> = {
            let names = w.fleet.clone();
            let b = w.backend();
            names
                .into_iter()
                .filter(|n| b.registration(n).is_none())
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let now = w.now();
        if now >= deadline {
            let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
            return Err(w.fail(format!(
                "{} of {} clients are not registered after {:?}: {}...",
                missing.len(),
                w.fleet.len(),
                within.0,
                shown.join(", ")
            )));
        }
        w.run_for((deadline - now).min(Duration::from_secs(1)));
    }
}

/// What a registration parameter the ETS configures (C.3: lifetime 86400, binding U) is
/// expected to be: for our simulated clients the case's value; for a device under test the
/// value its description declares at the Server resource `path`, or `None` (the ETS's
/// values are configuration, not conformance: any well-formed value passes).
fn configured(w: &Lwm2mWorld, path: &str, ets: String) -> Option<String> {
    if w.client_is_ours() {
        return Some(ets);
    }
    let path = path.parse().ok()?;
    w.ctx().device.as_ref().and_then(|d| d.value(&path))
}

/// The registration's lifetime (`lt`), seconds.
#[then(expr = "the registration has lifetime {int}")]
fn has_lifetime(w: &mut Lwm2mWorld, lifetime: u32) -> anyhow::Result<()> {
    let (name, r) = registration(w)?;
    let Some(lifetime) = configured(w, "/1/0/1", lifetime.to_string())
        .map(|v| v.parse::<u32>())
        .transpose()?
    else {
        return Ok(());
    };
    if r.lifetime == lifetime {
        Ok(())
    } else {
        Err(w.fail(format!(
            "{name:?} is registered with lifetime {}, not {lifetime}",
            r.lifetime
        )))
    }
}

/// The registration's enabler version (`lwm2m=`).
#[then(expr = "the registration has LwM2M version {version}")]
fn has_version(w: &mut Lwm2mWorld, version: Version) -> anyhow::Result<()> {
    let (name, r) = registration(w)?;
    // A device runs every case of its version and the earlier ones (see `device_fits`).
    let since = super::clients::case_since(&w.tags, version.0);
    if r.version == version.0 || (!w.client_is_ours() && r.version >= since) {
        Ok(())
    } else {
        let flagged: Vec<String> = r.findings.iter().map(ToString::to_string).collect();
        let flagged = if flagged.is_empty() {
            String::new()
        } else {
            format!("; the server flagged: {}", flagged.join("; "))
        };
        Err(w.fail(format!(
            "{name:?} registered as LwM2M {}, not {}{flagged}",
            r.version, version.0
        )))
    }
}

/// The registration's binding (`b=`, without the queue-mode letter).
#[then(expr = "the registration has binding {string}")]
fn has_binding(w: &mut Lwm2mWorld, binding: String) -> anyhow::Result<()> {
    let (name, r) = registration(w)?;
    let Some(binding) = configured(w, "/1/0/7", binding) else {
        return Ok(());
    };
    if r.binding == binding {
        Ok(())
    } else {
        Err(w.fail(format!(
            "{name:?} registered with binding {:?}, not {binding:?}",
            r.binding
        )))
    }
}

/// The server marks the client as a queue-mode client (Core TS 1.1 §6.5).
#[then("the registration is in queue mode")]
fn in_queue_mode(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    queue_mode(w, true)
}

/// The server does not treat the client as a queue-mode client.
#[then("the registration is not in queue mode")]
fn not_in_queue_mode(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    queue_mode(w, false)
}

fn queue_mode(w: &mut Lwm2mWorld, expected: bool) -> anyhow::Result<()> {
    let (name, r) = registration(w)?;
    if r.queue_mode == expected {
        Ok(())
    } else {
        Err(w.fail(format!(
            "queue mode of {name:?} is {}, expected {expected}",
            r.queue_mode
        )))
    }
}

fn lists(r: &Registration, path: &Lwm2mPath) -> bool {
    match (path.object_id(), path.instance_id()) {
        (Some(o), None) => r.links.objects.contains_key(&o),
        (Some(o), Some(i)) => r
            .links
            .objects
            .get(&o)
            .is_some_and(|info| info.instances.contains(&i)),
        _ => false,
    }
}

/// The registration's link list names these objects or instances.
#[then(expr = "the registration lists {paths}")]
fn registration_lists(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let (name, r) = registration(w)?;
    // The cases' /1/0 is a device's account, whichever Server instance holds it.
    let device = !w.client_is_ours();
    let account = |p: &Lwm2mPath| {
        device
            && *p == Lwm2mPath::instance(1, 0)
            && r.links
                .objects
                .get(&lwm2m_proto::ObjectId(1))
                .is_some_and(|o| !o.instances.is_empty())
    };
    // The ETS device's optional objects (C.3 has the Portfolio /16/0) are configuration: a
    // device under test must list the mandatory ones, and those its description declares.
    let registry = w.ctx().library.registry.clone();
    let description = w.ctx().device.clone();
    let optional = |p: &Lwm2mPath| {
        device
            && !description.as_ref().is_some_and(|d| d.declares_instance(p))
            && p.object_id()
                .and_then(|o| registry.object(o))
                .is_some_and(|d| !d.mandatory)
    };
    let missing: Vec<String> = paths
        .0
        .iter()
        .filter(|p| !lists(&r, p) && !account(p) && !optional(p))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(w.fail(format!(
            "{name:?} registered without {}; its links: {}",
            missing.join(", "),
            r.links
        )))
    }
}

/// The registration's link list does not name these objects or instances.
#[then(expr = "the registration does not list {paths}")]
fn registration_omits(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let (name, r) = registration(w)?;
    let present: Vec<String> = paths
        .0
        .iter()
        .filter(|p| lists(&r, p))
        .map(ToString::to_string)
        .collect();
    if present.is_empty() {
        Ok(())
    } else {
        Err(w.fail(format!(
            "{name:?} registered with {}; links: {}",
            present.join(", "),
            r.links
        )))
    }
}

/// The server noticed a tolerated deviation in the Register or an Update (its text
/// contains `text`, e.g. "no lwm2m= parameter", "b=UQ", "pre-1.0 content format 1542").
#[then(expr = "the registration is flagged {string}")]
fn flagged(w: &mut Lwm2mWorld, text: String) -> anyhow::Result<()> {
    w.require_our_server(
        ServerView::RegistrationFindings,
        "the registration's findings",
    );
    let (name, r) = registration(w)?;
    let findings: Vec<String> = r.findings.iter().map(ToString::to_string).collect();
    if findings.iter().any(|f| f.contains(&text)) {
        Ok(())
    } else {
        Err(w.fail(format!(
            "the registration of {name:?} is not flagged {text:?}; findings: {findings:?}"
        )))
    }
}

/// The server noticed nothing odd in the Register.
#[then("the registration has no findings")]
fn no_findings(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    w.require_our_server(
        ServerView::RegistrationFindings,
        "the registration's findings",
    );
    let (_, r) = registration(w)?;
    let findings = crate::bdd::world::registration_findings(&r);
    if findings.is_empty() {
        Ok(())
    } else {
        Err(w.fail(findings.join("; ")))
    }
}

/// The client's next Update reaches the server and is accepted.
#[then(expr = "the client sends an Update within {duration}")]
fn update_within(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    let ours = w.server_is_ours();
    w.wait_for(
        within.0,
        &format!("an Update from {name:?}"),
        |t| match &t.happening {
            Happening::Server(ServerEvent::Updated { registration, .. }) => {
                ours && registration.endpoint == name
            }
            Happening::Client {
                endpoint,
                event: ClientEvent::Updated,
            } => !ours && *endpoint == name,
            _ => false,
        },
    )?;
    Ok(())
}

/// The query of the last Update the client sent (from the exchange log).
fn last_update_query(w: &mut Lwm2mWorld) -> anyhow::Result<Vec<String>> {
    let (name, r) = registration(w)?;
    let target = format!("/rd/{}", r.id);
    let found = w
        .backend()
        .exchange_log()
        .sent()
        .iter()
        .rev()
        .filter_map(|d| message::decode(d.coap.as_deref()?).ok())
        .find(|p| {
            p.header.code == MessageClass::Request(RequestType::Post)
                && message::uri_path(p) == target
        });
    match found {
        Some(p) => Ok(p
            .get_option(CoapOption::UriQuery)
            .into_iter()
            .flatten()
            .map(|q| String::from_utf8_lossy(q).into_owned())
            .collect()),
        None => Err(w.fail(format!("{name:?} sent no Update to {target}"))),
    }
}

/// The last Update carried no parameters (Core TS 1.1 §6.2.2: only what changed).
#[then("the last Update carried no parameters")]
fn update_without_parameters(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let query = last_update_query(w)?;
    if query.is_empty() {
        Ok(())
    } else {
        Err(w.fail(format!("the last Update carried {}", query.join("&"))))
    }
}

/// The last Update carried a parameter (`lt=20`, `b=U`).
#[then(expr = "the last Update carried {string}")]
fn update_with(w: &mut Lwm2mWorld, parameter: String) -> anyhow::Result<()> {
    let query = last_update_query(w)?;
    if query.contains(&parameter) {
        Ok(())
    } else {
        Err(w.fail(format!(
            "the last Update carried {:?}, not {parameter:?}",
            query.join("&")
        )))
    }
}

/// Whether the client holds a registration the server under test accepted (the wire's
/// evidence when the server is not ours: its last answer to a Register, Update or
/// De-register).
fn client_registered(w: &mut Lwm2mWorld, name: &str) -> anyhow::Result<bool> {
    let state = w.client_machine(name)?.state();
    Ok(matches!(
        state,
        ClientState::Registered | ClientState::Sleeping
    ))
}

/// The server holds a registration for the client.
#[then("the client is registered")]
fn is_registered(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    if !w.server_is_ours() {
        let name = w.current()?;
        return match client_registered(w, &name)? {
            true => Ok(()),
            false => Err(w.fail(format!(
                "the server under test did not keep {name:?} registered"
            ))),
        };
    }
    registration(w).map(|_| ())
}

/// The server holds no registration for the client.
#[then("the client is not registered")]
fn is_not_registered(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    if !w.server_is_ours() {
        return match client_registered(w, &name)? {
            false => Ok(()),
            true => Err(w.fail(format!("{name:?} still holds its registration"))),
        };
    }
    match w.backend().registration(&name) {
        None => Ok(()),
        Some(r) => Err(w.fail(format!("the server still holds {name:?} as {}", r.id))),
    }
}

/// After `duration` the server still holds the registration.
#[then(expr = "the client is still registered after {duration}")]
fn still_registered(w: &mut Lwm2mWorld, duration: DurationParam) -> anyhow::Result<()> {
    w.run_for(duration.0);
    is_registered(w)
}

/// The server drops the registration when its lifetime runs out.
#[then(expr = "the registration expires within {duration}")]
fn expires(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    w.require_our_server(ServerView::Expiry, "the server's registrations");
    w.wait_for(within.0, &format!("the registration of {name:?} expiring"), |t| {
        matches!(&t.happening, Happening::Server(ServerEvent::Expired { registration }) if registration.endpoint == name)
    })?;
    Ok(())
}

/// The client's De-register reaches the server.
#[then(expr = "the client de-registers within {duration}")]
fn deregisters(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    let ours = w.server_is_ours();
    w.wait_for(
        within.0,
        &format!("a De-register from {name:?}"),
        |t| match &t.happening {
            Happening::Server(ServerEvent::Deregistered { registration }) => {
                ours && registration.endpoint == name
            }
            Happening::Client {
                endpoint,
                event: ClientEvent::Deregistered,
            } => !ours && *endpoint == name,
            _ => false,
        },
    )?;
    Ok(())
}

/// A De-register the client did not send (spoofed from its address, as ETS int-105 does
/// on NoSec) makes the server forget the registration while the client does not know.
#[when("a spoofed De-register of the client reaches the server")]
fn spoofed_deregister(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let (name, r) = registration(w)?;
    w.mark();
    let packet = message::request(RequestType::Delete, &format!("/rd/{}", r.id));
    w.backend().spoof_to_server(&name, packet)
}

/// The server refuses a Register, Update or De-register with `code`.
#[then(expr = "the server answers an Update with {code} within {duration}")]
fn update_refused(w: &mut Lwm2mWorld, code: Code, within: DurationParam) -> anyhow::Result<()> {
    w.require_our_server(ServerView::Refusals, "the server's refusals");
    w.wait_for(within.0, &format!("a registration message answered {code}"), |t| {
        matches!(&t.happening, Happening::Server(ServerEvent::RegistrationRefused { code: c, .. }) if *c == code.0)
    })?;
    Ok(())
}

/// The client's own view: it learns it is registered (the server's answer reaches it).
#[then(expr = "the client knows it is registered within {duration}")]
fn client_knows(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    // A device under test cannot be looked into: its evidence is our 2.01 to its Register.
    let state = if w.client_is_ours() {
        let state = w.client_machine(&name)?.state();
        if matches!(state, ClientState::Registered | ClientState::Sleeping) {
            return Ok(());
        }
        format!("{state:?}")
    } else {
        "a device under test".to_owned()
    };
    w.wait_for(within.0, &format!("{name:?} learning it is registered ({state} now)"), |t| {
        matches!(&t.happening, Happening::Client { endpoint, event: ClientEvent::Registered { .. } } if *endpoint == name)
    })?;
    Ok(())
}

/// The client reboots (Execute 3/0/4 leaves it silent a while) and says so.
#[then(expr = "the client reboots within {duration}")]
fn client_reboots(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    if !w.client_is_ours() {
        // A device says nothing when it reboots: its 2.04 to Execute /3/0/4 (the step
        // before) is what shows, and its registering again (the step after). A device the
        // harness starts shows more: it exits, de-registers or registers anew (see
        // bdd::network), which the wait below sees.
        w.device_rebooted = true;
        if crate::bdd::device::launch().is_none() {
            return Ok(());
        }
    }
    w.wait_for(within.0, &format!("{name:?} rebooting"), |t| {
        matches!(&t.happening, Happening::Client { endpoint, event: ClientEvent::Rebooting } if *endpoint == name)
    })?;
    Ok(())
}
