//! Simulated clients: fleets from device profiles, quirks, what clients do by themselves,
//! and what their object trees hold.
//!
//! ```gherkin
//! Given a client "dev-1" with profile "ets-1.1"
//! Given a client "old-1" with profile "minimal-1.0" and quirks "pre-1.0-draft"
//! Given a client "dev-2" with profile "ets-1.1" that only knows the bootstrap server
//! Given 500 clients with profile "minimal-1.0"
//! Given the client is registered
//! When all clients start within 10s
//! When the value of /3303/0/5700 changes to "22.5"
//! Then the client's value of /1/0/1 is "20"
//! Then the client still holds its bootstrap account
//! ```

use anyhow::anyhow;
use cucumber::{given, then, when};
use lwm2m_proto::client::ClientEvent;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::server::ServerEvent;
use lwm2m_proto::{InstanceId, Lwm2mPath, ObjectId, ResourceId, ResourceValue, Schema as _, Value};
use lwm2m_simulator::Quirk;

use crate::bdd::backend::{ClientAction, Happening, Subject};
use crate::bdd::fleet::Provisioning;
use crate::bdd::params::{DurationParam, PathParam};
use crate::bdd::world::{Lwm2mWorld, not_applicable, show_value, value_matches};

/// How long `Given the client is registered` waits.
const REGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn add_client(
    w: &mut Lwm2mWorld,
    name: &str,
    profile: &str,
    quirks: &str,
    provisioning: fn(&Lwm2mWorld, std::net::SocketAddr, std::net::SocketAddr) -> Provisioning,
) -> anyhow::Result<()> {
    let ctx = w.ctx();
    let profile = ctx.library.profile(profile)?;
    let mut extra: Vec<Quirk> = Vec::new();
    let subject_quirks = match &ctx.subject {
        Subject::InProcess { quirks } => quirks.clone(),
        _ => Vec::new(),
    };
    let named = quirks.split(',').map(str::trim).filter(|q| !q.is_empty());
    for q in named.chain(subject_quirks.iter().map(String::as_str)) {
        extra.extend(ctx.library.quirks(q)?);
    }
    let (server, bootstrap) = {
        let b = w.backend();
        (b.server_address(), b.bootstrap_address())
    };
    if let Subject::Device { endpoint } = &ctx.subject {
        let provisioning = provisioning(w, server, bootstrap);
        device_fits(w, endpoint, profile, &extra, &provisioning)?;
    }
    let number = w.fleet.len() as u64;
    let spec = ctx.library.client(
        profile,
        name,
        number,
        w.seed,
        provisioning(w, server, bootstrap),
        &extra,
    )?;
    w.backend().add_client(spec)?;
    // With a device under test, the scenario's client is the device, by its own name.
    let name = match &ctx.subject {
        Subject::Device { endpoint } => endpoint.as_str(),
        _ => name,
    };
    w.fleet.push(name.to_owned());
    w.set_current(name);
    Ok(())
}

/// The tag prefix of a case whose behaviour later LwM2M versions changed: `@until-lwm2m-1.0`
/// applies to 1.0 devices only.
pub const UNTIL_VERSION_TAG: &str = "until-lwm2m-";

/// Tag `@since-lwm2m-X.Y`: the first LwM2M version whose clients a case applies to.
pub const SINCE_VERSION_TAG: &str = "since-lwm2m-";

/// ETS ids (`int-N`) that first appear in the ETS for LwM2M 1.1, and in the one for 1.2
/// (every other id is in the ETS for 1.0.1 already; the ids did not change between
/// versions).
const ETS_SINCE_1_1: [std::ops::RangeInclusive<u32>; 8] = [
    1..=9,
    105..=109,
    211..=212,
    221..=237,
    256..=257,
    261..=261,
    280..=281,
    304..=311,
];
const ETS_SINCE_1_2: [u32; 9] = [11, 12, 19, 110, 111, 264, 266, 312, 313];

/// The first LwM2M version a case applies to (later versions inherit it): its
/// `@since-lwm2m-X.Y` tag; else the version whose ETS first has the case's `@int-N` id (the
/// earliest of several); else `written_for`, the version of the profile its steps name.
pub fn case_since(tags: &[String], written_for: Lwm2mVersion) -> Lwm2mVersion {
    if let Some(v) = tags.iter().find_map(|t| {
        t.strip_prefix(SINCE_VERSION_TAG)
            .and_then(Lwm2mVersion::parse)
    }) {
        return v;
    }
    tags.iter()
        .filter_map(|t| t.strip_prefix("int-")?.parse::<u32>().ok())
        .map(|n| {
            if ETS_SINCE_1_2.contains(&n) {
                Lwm2mVersion::V1_2
            } else if ETS_SINCE_1_1.iter().any(|r| r.contains(&n)) {
                Lwm2mVersion::V1_1
            } else {
                Lwm2mVersion::V1_0
            }
        })
        .min()
        .unwrap_or(written_for)
}

/// A case written for a client of `profile` applies to the device under test if the device
/// is such a client as far as the case goes (an object the device lacks makes only the
/// cases that touch it not applicable):
///
/// - its LwM2M version is the case's first ([`case_since`]) or newer (a 1.2 device runs the 1.0 and 1.1
///   cases), unless the case is tagged `@until-lwm2m-X.Y` and the device is newer than X.Y;
/// - it announces, in its Register, every object the case's steps name that the profile
///   has, and every instance of them the case names that the profile has (a bare `</16>`
///   does not make /16/0 cases applicable); paths the profile lacks are ones the case
///   expects absent; the Security object is never announced (Core TS 1.1 §6.2.1), and the
///   Server account is found by its Short Server ID (see `Lwm2mWorld::account_instance`);
/// - no quirks are asked for, queue mode if the case is about it, and it starts with a server
///   account (a case that starts from a bootstrap-only factory state needs the device reset
///   into it).
fn device_fits(
    w: &mut Lwm2mWorld,
    device: &str,
    profile: &lwm2m_simulator::Profile,
    quirks: &[Quirk],
    provisioning: &Provisioning,
) -> anyhow::Result<()> {
    let not_ours = crate::bdd::network::DEVICE_NOT_OURS;
    if !quirks.is_empty() {
        not_applicable("the case is about a client with quirks; the device under test is as it is");
    }
    let launched = crate::bdd::device::launch();
    let bootstrap_device = launched.as_ref().is_some_and(|l| l.bootstrap_only());
    match provisioning {
        Provisioning::Server(_) => {}
        // Started with only {bootstrap_uri}: the device starts from a bootstrap-only state.
        Provisioning::BootstrapOnly(_) if bootstrap_device => {}
        _ if launched.is_some() => not_applicable(
            "the case starts from a factory configuration with only a Bootstrap-Server \
             account: give the device a --device-cmd with {bootstrap_uri} and no {server_uri}",
        ),
        _ => {}
    }
    if !matches!(provisioning, Provisioning::Server(_)) && launched.is_none() {
        not_applicable(format!(
            "the case starts from a factory bootstrap configuration: the device would have to \
             be reset into it ({not_ours})"
        ));
    }
    // A device the harness restarts is judged by what it announced when it last registered;
    // before the first case it has seen, the harness starts it once to learn that.
    let known = w
        .backend()
        .registration(device)
        .or_else(crate::bdd::device::last_registration);
    let Some(r) = known.or_else(|| launched.as_ref().and_then(|_| w.backend().probe_device()))
    else {
        return Ok(());
    };
    let since = case_since(&w.tags, profile.lwm2m_version);
    if r.version < since {
        not_applicable(format!(
            "the case is for LwM2M {since} clients and later; the device under test registered \
             as {}",
            r.version
        ));
    }
    let until = w.tags.iter().find_map(|t| {
        t.strip_prefix(UNTIL_VERSION_TAG)
            .and_then(Lwm2mVersion::parse)
    });
    if let Some(until) = until
        && r.version > until
    {
        not_applicable(format!(
            "the case checks LwM2M {until} behaviour that later versions changed; the device \
             under test registered as {}",
            r.version
        ));
    }
    // A queue-mode device runs the other cases too: it is awake after its Register and
    // after each exchange (Core TS 1.1 §6.5), and our server holds requests while it sleeps.
    if profile.queue_mode && !r.queue_mode {
        not_applicable(
            "the case is about queue mode; the device under test registered without queue mode",
        );
    }
    let registry = w.ctx().library.registry.clone();
    w.optional_needed = w
        .touched
        .iter()
        .filter_map(|p| {
            let (o, i, r) = (p.object_id()?, p.instance_id()?, p.resource_id()?);
            let in_profile = profile.objects.get(&o)?.instances.get(&i)?.contains_key(&r);
            (in_profile && registry.resource(o, r).is_some_and(|d| !d.mandatory))
                .then(|| Lwm2mPath::resource(o.0, i.0, r.0))
        })
        .collect();
    let description = w.ctx().device.clone();
    let declared = |p: &Lwm2mPath| description.as_ref().is_some_and(|d| d.declares_instance(p));
    let mut missing: Vec<String> = Vec::new();
    for path in &w.touched {
        let Some(o) = path.object_id() else { continue };
        // Security is never in a Register; the account (object 1) is found by its SSID.
        if o.0 == 0 || o.0 == 1 {
            continue;
        }
        let Some(spec) = profile.objects.get(&o) else {
            continue;
        };
        let Some(announced) = r.links.objects.get(&o) else {
            if declared(path) {
                anyhow::bail!(
                    "the device description declares {path}, but the device's Register does \
                     not announce object /{} (Core TS 1.1 §6.2.1: it lists its objects and \
                     instances)",
                    o.0
                );
            }
            let m = format!("object /{}", o.0);
            if !missing.contains(&m) {
                missing.push(m);
            }
            continue;
        };
        if let Some(i) = path.instance_id()
            && spec.instances.contains_key(&i)
            && !announced.instances.contains(&i)
        {
            if declared(path) {
                anyhow::bail!(
                    "the device description declares /{}/{}, but the device's Register does \
                     not announce it (Core TS 1.1 §6.2.1: it lists its objects and instances)",
                    o.0,
                    i.0
                );
            }
            let bare = if announced.instances.is_empty() {
                format!(" (it announces </{}> without instances)", o.0)
            } else {
                String::new()
            };
            let m = format!("instance /{}/{}{bare}", o.0, i.0);
            if !missing.contains(&m) {
                missing.push(m);
            }
        }
    }
    if !missing.is_empty() {
        not_applicable(format!(
            "the case needs {} that the device under test does not announce in its Register",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// A simulated client made from a profile, with a server account on our LwM2M Server.
#[given(expr = "a client {string} with profile {string}")]
fn client_with_profile(w: &mut Lwm2mWorld, name: String, profile: String) -> anyhow::Result<()> {
    add_client(w, &name, &profile, "", |_, s, _| Provisioning::Server(s))
}

/// The same, with extra quirks or quirk packs (comma-separated names).
#[given(expr = "a client {string} with profile {string} and quirks {string}")]
fn client_with_quirks(
    w: &mut Lwm2mWorld,
    name: String,
    profile: String,
    quirks: String,
) -> anyhow::Result<()> {
    add_client(w, &name, &profile, &quirks, |_, s, _| {
        Provisioning::Server(s)
    })
}

/// A client whose factory configuration holds only a Bootstrap-Server account (ETS C.13).
#[given(expr = "a client {string} with profile {string} that only knows the bootstrap server")]
fn client_bootstrap_only(w: &mut Lwm2mWorld, name: String, profile: String) -> anyhow::Result<()> {
    add_client(w, &name, &profile, "", |_, _, b| {
        Provisioning::BootstrapOnly(b)
    })
}

/// A client with a server account and a Bootstrap-Server account.
#[given(expr = "a client {string} with profile {string} that also knows the bootstrap server")]
fn client_with_both(w: &mut Lwm2mWorld, name: String, profile: String) -> anyhow::Result<()> {
    add_client(w, &name, &profile, "", |_, server, bootstrap| {
        Provisioning::ServerAndBootstrap { server, bootstrap }
    })
}

/// A fleet of `n` clients named after the profile's endpoint prefix and their number.
#[given(expr = "{int} clients with profile {string}")]
fn fleet(w: &mut Lwm2mWorld, n: usize, profile: String) -> anyhow::Result<()> {
    let prefix = w.ctx().library.profile(&profile)?.endpoint_prefix.clone();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        add_client(w, &name, &profile, "", |_, s, _| Provisioning::Server(s))?;
    }
    Ok(())
}

/// A fleet of `n` clients that only know the Bootstrap Server.
#[given(expr = "{int} clients with profile {string} that only know the bootstrap server")]
fn fleet_bootstrap(w: &mut Lwm2mWorld, n: usize, profile: String) -> anyhow::Result<()> {
    let prefix = w.ctx().library.profile(&profile)?.endpoint_prefix.clone();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        add_client(w, &name, &profile, "", |_, _, b| {
            Provisioning::BootstrapOnly(b)
        })?;
    }
    Ok(())
}

/// Makes a named client the one later steps talk about.
#[given(expr = "{string} is the client")]
fn make_current(w: &mut Lwm2mWorld, name: String) -> anyhow::Result<()> {
    w.client_machine(&name)?;
    w.set_current(&name);
    Ok(())
}

/// Starts the client and waits until the server has registered it (60 s at most).
#[given("the client is registered")]
fn client_is_registered(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    registered(w, &name)
}

/// Starts a named client and waits until the server has registered it.
#[given(expr = "{string} is registered")]
fn named_is_registered(w: &mut Lwm2mWorld, name: String) -> anyhow::Result<()> {
    registered(w, &name)
}

fn registered(w: &mut Lwm2mWorld, name: &str) -> anyhow::Result<()> {
    w.client_action(name, ClientAction::Start)?;
    // A server under test is not ours to ask: its 2.01 to the Register is the evidence.
    if w.server_is_ours() {
        w.wait_for(REGISTER_WAIT, &format!("registration of {name:?}"), |t| {
            matches!(&t.happening, Happening::Server(ServerEvent::Registered { registration, .. }) if registration.endpoint == name)
        })?;
    }
    w.wait_for(REGISTER_WAIT, &format!("{name:?} learning it is registered"), |t| {
        matches!(&t.happening, Happening::Client { endpoint, event: ClientEvent::Registered { .. } } if endpoint == name)
    })?;
    w.mark();
    Ok(())
}

/// The client starts: it bootstraps or registers.
#[when("the client starts")]
fn client_starts(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    w.client_action(&name, ClientAction::Start)
}

/// A named client starts.
#[when(expr = "{string} starts")]
fn named_starts(w: &mut Lwm2mWorld, name: String) -> anyhow::Result<()> {
    w.client_action(&name, ClientAction::Start)
}

/// Every client starts, spread evenly over a ramp-up time.
#[when(expr = "all clients start within {duration}")]
fn fleet_starts(w: &mut Lwm2mWorld, ramp: DurationParam) -> anyhow::Result<()> {
    let names = w.fleet.clone();
    let gap = ramp.0 / u32::try_from(names.len().max(1))?;
    w.mark();
    for name in names {
        w.backend().client_action(&name, ClientAction::Start)?;
        let now = w.now();
        w.note_start(&name, now);
        w.run_for(gap);
    }
    Ok(())
}

/// A resource value changes on the device (a sensor reading).
#[when(expr = "the value of {path} changes to {string}")]
fn value_changes(w: &mut Lwm2mWorld, path: PathParam, value: String) -> anyhow::Result<()> {
    let name = w.current()?;
    let v = w.typed(&path.0, &value)?;
    w.client_action(&name, ClientAction::SetValue(path.0, v))
}

/// The client sends an Update (a queue-mode client wakes up).
#[when(expr = "the client sends an Update")]
fn client_updates(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    w.client_action(&name, ClientAction::Update)
}

/// A queue-mode client wakes up: it sends an Update and listens.
#[when("the client wakes up")]
fn client_wakes(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    client_updates(w)
}

/// The client de-registers.
#[when("the client de-registers")]
fn client_deregisters(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    w.client_action(&name, ClientAction::Deregister)
}

/// A value in the client's own object tree.
#[then(expr = "the client's value of {path} is {string}")]
fn client_value(w: &mut Lwm2mWorld, path: PathParam, expected: String) -> anyhow::Result<()> {
    let name = w.current()?;
    let value: Option<Value> = w.client_machine(&name)?.tree().get(&path.0).cloned();
    match value {
        Some(v) if value_matches(&v, &expected) => Ok(()),
        Some(v) => Err(w.fail(format!(
            "{name:?} holds {} at {}, not {expected:?}",
            show_value(&v),
            path.0
        ))),
        None => Err(w.fail(format!("{name:?} holds no value at {}", path.0))),
    }
}

/// Whether the client's tree has an object instance.
#[then(expr = "the client holds the instance {path}")]
fn client_holds(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    instance_presence(w, path, true)
}

/// Whether the client's tree lacks an object instance.
#[then(expr = "the client holds no instance {path}")]
fn client_lacks(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    instance_presence(w, path, false)
}

fn instance_presence(w: &mut Lwm2mWorld, path: PathParam, expected: bool) -> anyhow::Result<()> {
    let (Some(o), Some(i)) = (path.0.object_id(), path.0.instance_id()) else {
        return Err(anyhow!("{} is not an object instance path", path.0));
    };
    let name = w.current()?;
    let present = w.client_machine(&name)?.tree().instance(o, i).is_some();
    if present == expected {
        Ok(())
    } else {
        let what = if expected { "lacks" } else { "still holds" };
        Err(w.fail(format!("{name:?} {what} the instance {}", path.0)))
    }
}

/// The Bootstrap-Server account survives a Bootstrap-Delete (Core TS 1.1 §5.2.7.5).
#[then("the client still holds its bootstrap account")]
fn bootstrap_account_kept(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    let machine = w.client_machine(&name)?;
    let tree = machine.tree();
    let kept = tree
        .instance_ids(ObjectId(0))
        .into_iter()
        .any(|i: InstanceId| {
            tree.instance(ObjectId(0), i).is_some_and(|inst| {
                matches!(
                    inst.get(&ResourceId(1)),
                    Some(ResourceValue::Single(Value::Boolean(true)))
                )
            })
        });
    if kept {
        Ok(())
    } else {
        Err(w.fail(format!("{name:?} lost its Bootstrap-Server account")))
    }
}

/// How many observations the client serves.
#[then(expr = "the client serves {int} observation(s)")]
fn client_observations(w: &mut Lwm2mWorld, expected: usize) -> anyhow::Result<()> {
    let name = w.current()?;
    let count = w.client_machine(&name)?.observation_count();
    if count == expected {
        Ok(())
    } else {
        Err(w.fail(format!(
            "{name:?} serves {count} observations, not {expected}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn a_case_applies_from_the_version_whose_ets_first_has_it() {
        let v11 = Lwm2mVersion::V1_1;
        // In the ETS for 1.0.1: a 1.0 device runs it, whatever profile the case names.
        assert_eq!(
            case_since(&tags(&["device_management", "int-203"]), v11),
            Lwm2mVersion::V1_0
        );
        // First in 1.1 (Read in CBOR, Send) and in 1.2.
        assert_eq!(case_since(&tags(&["int-211"]), Lwm2mVersion::V1_0), v11);
        assert_eq!(case_since(&tags(&["int-306"]), Lwm2mVersion::V1_0), v11);
        assert_eq!(case_since(&tags(&["int-312"]), v11), Lwm2mVersion::V1_2);
        // The earliest of several ids; an explicit tag wins; no id: the profile's version.
        assert_eq!(
            case_since(&tags(&["int-270", "int-1630"]), v11),
            Lwm2mVersion::V1_0
        );
        assert_eq!(
            case_since(&tags(&["int-203", "since-lwm2m-1.2"]), v11),
            Lwm2mVersion::V1_2
        );
        assert_eq!(case_since(&tags(&["core-6.2.1"]), v11), v11);
    }
}
