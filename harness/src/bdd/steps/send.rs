//! The Send operation (Core TS 1.1 §6.4.3): the client pushes values to the server.
//!
//! ```gherkin
//! When the client sends /1/0/1, /3/0/11/0
//! Then the server receives a Send within 5s
//! And the sent value of /1/0/1 is "86400"
//! And the Send holds only /1/0/1, /3/0/11/0
//! And the client's Send is answered 2.04 within 5s
//! ```

use anyhow::anyhow;
use cucumber::{then, when};
use lwm2m_proto::Record;
use lwm2m_proto::client::ClientEvent;
use lwm2m_proto::server::ServerEvent;

use crate::bdd::backend::{ClientAction, Happening, ServerView};
use crate::bdd::params::{Code, DurationParam, PathParam, Paths};
use crate::bdd::world::{Lwm2mWorld, show_value, value_matches};

/// The client sends these paths with the Send operation.
#[when(expr = "the client sends {paths}")]
fn client_sends(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let name = w.current()?;
    w.client_action(&name, ClientAction::Send(paths.0))
}

/// A Send from the client reaches the server.
#[then(expr = "the server receives a Send within {duration}")]
fn server_receives(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    w.require_our_server(ServerView::Send, "the values a Send delivered");
    let t = w.wait_for(within.0, &format!("a Send from {name:?}"), |t| {
        matches!(&t.happening, Happening::Server(ServerEvent::Send { endpoint, .. }) if *endpoint == name)
    })?;
    if let Happening::Server(ServerEvent::Send { records, .. }) = t.happening {
        w.sent = Some(records);
    }
    Ok(())
}

/// No Send reaches the server.
#[then(expr = "no Send reaches the server within {duration}")]
fn no_send(w: &mut Lwm2mWorld, during: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    w.expect_none(during.0, &format!("a Send from {name:?}"), |t| {
        matches!(&t.happening, Happening::Server(ServerEvent::Send { endpoint, .. }) if *endpoint == name)
    })
}

fn sent(w: &Lwm2mWorld) -> anyhow::Result<Vec<Record>> {
    w.sent
        .clone()
        .ok_or_else(|| anyhow!("no Send received yet: `Then the server receives a Send ...` first"))
}

/// A value the server received with Send.
#[then(expr = "the sent value of {path} is {string}")]
fn sent_value(w: &mut Lwm2mWorld, path: PathParam, expected: String) -> anyhow::Result<()> {
    let records = sent(w)?;
    match records
        .iter()
        .find(|r| r.path == path.0)
        .and_then(|r| r.value.as_ref())
    {
        Some(v) if value_matches(v, &expected) => Ok(()),
        Some(v) => Err(w.fail(format!(
            "the Send gave {} = {}, not {expected:?}",
            path.0,
            show_value(v)
        ))),
        None => Err(w.fail(format!("the Send carried no value for {}", path.0))),
    }
}

/// The Send carried values at these paths and nowhere else.
#[then(expr = "the Send holds only {paths}")]
fn send_holds_only(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let records = sent(w)?;
    let got: Vec<String> = records.iter().map(|r| r.path.to_string()).collect();
    let missing = paths
        .0
        .iter()
        .any(|p| !records.iter().any(|r| p.is_prefix_of(&r.path)));
    let extra = records
        .iter()
        .any(|r| !paths.0.iter().any(|p| p.is_prefix_of(&r.path)));
    if missing || extra {
        Err(w.fail(format!("the Send carried {}", got.join(", "))))
    } else {
        Ok(())
    }
}

/// The server's answer to the client's Send, as the client saw it.
#[then(expr = "the client's Send is answered {code} within {duration}")]
fn send_answered(w: &mut Lwm2mWorld, code: Code, within: DurationParam) -> anyhow::Result<()> {
    let name = w.current()?;
    let t = w.wait_for(within.0, &format!("the answer to {name:?}'s Send"), |t| {
        matches!(&t.happening, Happening::Client { endpoint, event: ClientEvent::Sent { .. } } if *endpoint == name)
    })?;
    match t.happening {
        Happening::Client {
            event: ClientEvent::Sent { code: c },
            ..
        } if c == code.0 => Ok(()),
        Happening::Client {
            event: ClientEvent::Sent { code: c },
            ..
        } => Err(w.fail(format!("the Send was answered {}, not {code}", Code(c)))),
        _ => Err(w.fail("not a Send answer")),
    }
}
