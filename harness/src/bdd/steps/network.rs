//! Time and the network: letting time pass (virtual in-process), NAT idle timeouts and
//! rebinding, latency and loss, sleeping radios and queue mode (Core TS 1.1 §6.5).
//!
//! ```gherkin
//! When 45s pass
//! Given the client is behind a NAT that forgets mappings after 30s
//! Given the client's link loses 10% of datagrams
//! Given the client's link has a latency of 200ms
//! Given the client is on the "home-nat" network
//! Then the server reaches the client at its new address
//! Then the client is asleep
//! Then the server considers the client asleep
//! Then the server holds 1 request for the client
//! ```

use cucumber::{given, then, when};
use lwm2m_proto::client::ClientState;
use lwm2m_proto::server::ServerEvent;
use lwm2m_simulator::network::{ImpairmentConfig, NatConfig, NetworkModel};

use crate::bdd::backend::Happening;
use crate::bdd::params::DurationParam;
use crate::bdd::world::Lwm2mWorld;

/// Time passes (in-process: virtual time, nothing sleeps).
#[when(expr = "{duration} pass(es)")]
fn time_passes(w: &mut Lwm2mWorld, d: DurationParam) {
    w.mark();
    w.run_for(d.0);
}

fn change_network(
    w: &mut Lwm2mWorld,
    change: impl FnOnce(&mut NetworkModel),
) -> anyhow::Result<()> {
    let name = w.current()?;
    let mut model = w.networks.get(&name).cloned().unwrap_or_default();
    change(&mut model);
    w.backend().set_network(&name, &model)?;
    w.networks.insert(name, model);
    Ok(())
}

/// A NAT in front of the client forgets its mapping after `idle` without outbound traffic.
#[given(expr = "the client is behind a NAT that forgets mappings after {duration}")]
fn behind_nat(w: &mut Lwm2mWorld, idle: DurationParam) -> anyhow::Result<()> {
    change_network(w, |m| {
        m.nat = Some(NatConfig {
            idle_timeout: idle.0,
            inbound_refresh: false,
        });
    })
}

/// Seeded loss on both directions of the client's link.
#[given(expr = "the client's link loses {int}% of datagrams")]
fn lossy(w: &mut Lwm2mWorld, percent: u32) -> anyhow::Result<()> {
    let loss = f64::from(percent.min(100)) / 100.0;
    change_network(w, |m| {
        m.uplink.loss = loss;
        m.downlink.loss = loss;
    })
}

/// A one-way latency on both directions of the client's link.
#[given(expr = "the client's link has a latency of {duration}")]
fn latency(w: &mut Lwm2mWorld, delay: DurationParam) -> anyhow::Result<()> {
    change_network(w, |m| {
        m.uplink = ImpairmentConfig {
            delay: delay.0,
            ..m.uplink.clone()
        };
        m.downlink = ImpairmentConfig {
            delay: delay.0,
            ..m.downlink.clone()
        };
    })
}

/// A network model of `scenarios/networks`.
#[given(expr = "the client is on the {string} network")]
fn on_network(w: &mut Lwm2mWorld, name: String) -> anyhow::Result<()> {
    let model = w.ctx().library.network(&name)?.clone();
    change_network(w, |m| *m = model)
}

/// The server saw the client come back from a new address and now sends to it there.
#[then("the server reaches the client at its new address")]
fn new_address(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let name = w.current()?;
    let moved = w.timeline_all().into_iter().any(|t| {
        matches!(&t.happening, Happening::Server(ServerEvent::Updated { registration, previous_address: Some(_) }) if registration.endpoint == name)
    });
    if !moved {
        return Err(w.fail(format!(
            "the server never saw {name:?} move to a new address"
        )));
    }
    let (registered, current) = {
        let b = w.backend();
        (
            b.registration(&name).map(|r| r.address),
            b.public_address(&name),
        )
    };
    if registered.is_some() && registered == current {
        Ok(())
    } else {
        Err(w.fail(format!(
            "the server holds {name:?} at {registered:?}, but it is at {current:?}"
        )))
    }
}

fn client_state(w: &mut Lwm2mWorld) -> anyhow::Result<(String, ClientState)> {
    let name = w.current()?;
    let state = w.client_machine(&name)?.state();
    Ok((name, state))
}

/// The queue-mode client has gone to sleep (its radio is off).
#[then("the client is asleep")]
fn client_asleep(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let (name, state) = client_state(w)?;
    if state == ClientState::Sleeping {
        Ok(())
    } else {
        Err(w.fail(format!("{name:?} is {state:?}, not asleep")))
    }
}

/// The server treats the queue-mode client as unreachable (Core TS 1.1 §6.5).
#[then("the server considers the client asleep")]
fn server_sees_asleep(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    server_sees(w, false)
}

/// The server treats the client as reachable.
#[then("the server considers the client awake")]
fn server_sees_awake(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    server_sees(w, true)
}

fn server_sees(w: &mut Lwm2mWorld, awake: bool) -> anyhow::Result<()> {
    let name = w.current()?;
    w.require_our_server(
        crate::bdd::backend::ServerView::QueueState,
        "whether the server sees the client asleep",
    );
    if w.backend().server_sees_awake(&name) == awake {
        Ok(())
    } else {
        let what = if awake { "asleep" } else { "awake" };
        Err(w.fail(format!("the server considers {name:?} {what}")))
    }
}

/// Requests the server holds for the sleeping client.
#[then(expr = "the server holds {int} request(s) for the client")]
fn held(w: &mut Lwm2mWorld, n: usize) -> anyhow::Result<()> {
    let name = w.current()?;
    let queued = w.backend().queued(&name);
    if queued == n {
        Ok(())
    } else {
        Err(w.fail(format!(
            "the server holds {queued} requests for {name:?}, not {n}"
        )))
    }
}

/// The pending operation completes once the client wakes up.
#[then(expr = "the held request is answered within {duration}")]
fn held_answered(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    if !w.has_pending() {
        return Err(w.fail("no request was held"));
    }
    w.finish(within.0)
}
