//! Information Reporting (Core TS 1.1 §6.4): Observe and Observe-Composite, notifications
//! and their timing, cancellation.
//!
//! ```gherkin
//! When the server observes /3/0/7
//! When the server observes the composite /1/0/1, /3/0/11/0 in SenML JSON
//! Then a notification of /3/0/7 arrives within 16s
//! Then a notification arrives between 30s and 45s later
//! Then at least 3 notifications of /3/0/7 arrive within 60s
//! Then no notification of /3/0/7 arrives within 40s
//! And the notification holds /1/0/1, /3/0/11/0
//! When the server cancels the observation of /3/0/7 with a Reset
//! When the server cancels the composite observation with Observe=1
//! ```

use std::time::Duration;

use anyhow::anyhow;
use cucumber::{then, when};
use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::server::{Content, ObservationId, Operation, ServerEvent};

use crate::bdd::backend::{Happening, Timed};
use crate::bdd::params::{DurationParam, FormatParam, PathParam, Paths, format_label};
use crate::bdd::world::{Lwm2mWorld, show_value, value_matches};

fn observe(
    w: &mut Lwm2mWorld,
    paths: Vec<Lwm2mPath>,
    operation: Operation,
    description: String,
) -> anyhow::Result<()> {
    w.operate(operation, description)?;
    let outcome = w.outcome()?;
    if let Ok(response) = &outcome.result
        && let Some(id) = response.observation
    {
        w.observations.insert(paths.clone(), id);
        let values = content_records(response.content.as_ref(), &outcome.target);
        remember(w, id, values);
    }
    w.last_observed = Some(paths);
    Ok(())
}

/// Observe (GET with Observe = 0).
#[when(expr = "the server observes {path}")]
fn observes(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    let op = Operation::Observe {
        path: path.0,
        format: None,
    };
    observe(w, vec![path.0], op, format!("Observe {}", path.0))
}

/// Observe in a format.
#[when(expr = "the server observes {path} in {format}")]
fn observes_in(w: &mut Lwm2mWorld, path: PathParam, format: FormatParam) -> anyhow::Result<()> {
    let op = Operation::Observe {
        path: path.0,
        format: Some(format.0),
    };
    let description = format!("Observe {} in {}", path.0, format_label(format.0));
    observe(w, vec![path.0], op, description)
}

/// Observe-Composite (FETCH `/` with Observe = 0, LwM2M 1.1+).
#[when(expr = "the server observes the composite {paths} in {format}")]
fn observes_composite(w: &mut Lwm2mWorld, paths: Paths, format: FormatParam) -> anyhow::Result<()> {
    let description = format!(
        "Observe-Composite {} in {}",
        show(&paths.0),
        format_label(format.0)
    );
    let op = Operation::ObserveComposite {
        paths: paths.0.clone(),
        format: Some(format.0),
    };
    observe(w, paths.0, op, description)
}

fn show(paths: &[Lwm2mPath]) -> String {
    paths
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn observation_of(w: &Lwm2mWorld, paths: &[Lwm2mPath]) -> anyhow::Result<ObservationId> {
    w.observations
        .get(paths)
        .copied()
        .ok_or_else(|| anyhow!("no observation of {} was established", show(paths)))
}

fn last_observed(w: &Lwm2mWorld) -> anyhow::Result<Vec<Lwm2mPath>> {
    w.last_observed.clone().ok_or_else(|| {
        anyhow!("no observation yet: a `When the server observes ...` step comes first")
    })
}

fn is_notification(t: &Timed, id: ObservationId) -> bool {
    matches!(&t.happening, Happening::Server(ServerEvent::Notification { observation, .. }) if *observation == id)
}

fn keep(w: &mut Lwm2mWorld, t: Timed) {
    if let Happening::Server(ServerEvent::Notification {
        observation,
        path,
        response,
        ..
    }) = t.happening
    {
        remember(
            w,
            observation,
            content_records(response.content.as_ref(), &path),
        );
        w.notification = Some((path, response));
    }
}

fn content_records(content: Option<&Content>, path: &Lwm2mPath) -> Vec<lwm2m_proto::Record> {
    match content {
        Some(Content::Node(node)) => node.to_records(path),
        Some(Content::Records(r)) => r.clone(),
        _ => Vec::new(),
    }
}

fn remember(w: &mut Lwm2mWorld, id: ObservationId, values: Vec<lwm2m_proto::Record>) {
    w.observed_values.retain(|(o, _)| *o != id);
    w.observed_values.push((id, values));
}

/// Whether a notification reports a change that allows it before pmax: its values differ
/// from what the observation reported last (times aside) and, for a numeric resource with
/// gt, lt or st written on it or above it, the change meets one of them (Core TS 1.1
/// §5.1.2).
fn changed(w: &Lwm2mWorld, id: ObservationId, t: &Timed) -> bool {
    let Happening::Server(ServerEvent::Notification { path, response, .. }) = &t.happening else {
        return false;
    };
    let now = content_records(response.content.as_ref(), path);
    let before = w
        .observed_values
        .iter()
        .find(|(o, _)| *o == id)
        .map(|(_, v)| v.as_slice())
        .unwrap_or_default();
    let number = |r: &lwm2m_proto::Record| {
        r.value
            .as_ref()
            .and_then(|v| lwm2m_proto::content::format_text(v).parse::<f64>().ok())
    };
    let key = |r: &lwm2m_proto::Record| (r.path, r.value.clone());
    if now.len() != before.len() {
        return true;
    }
    now.iter().any(|r| {
        let Some(old) = before.iter().find(|b| b.path == r.path) else {
            return true;
        };
        if key(old) == key(r) {
            return false;
        }
        let ids = r.path.ids();
        let thresholds = (0..=ids.len())
            .rev()
            .filter_map(|n| Lwm2mPath::from_ids(&ids[..n]))
            .find_map(|a| w.thresholds_written.get(&a).filter(|t| t.any()));
        match (thresholds, number(old), number(r)) {
            (Some(t), Some(a), Some(b)) => t.met(a, b),
            _ => true,
        }
    })
}

/// The pmin in force on `paths` (Core TS 1.1 §5.1.2): what the scenario wrote on each
/// path or its nearest ancestor; the smallest over the paths; 0 when none was written.
fn pmin_of(w: &Lwm2mWorld, paths: &[Lwm2mPath]) -> Duration {
    paths
        .iter()
        .map(|p| {
            let ids = p.ids();
            (0..=ids.len())
                .rev()
                .filter_map(|n| Lwm2mPath::from_ids(&ids[..n]))
                .find_map(|a| w.pmin_written.get(&a).copied())
                .unwrap_or(0)
        })
        .min()
        .map_or(Duration::ZERO, |s| Duration::from_secs(u64::from(s)))
}

fn notification_within(
    w: &mut Lwm2mWorld,
    paths: Vec<Lwm2mPath>,
    within: Duration,
) -> anyhow::Result<()> {
    let id = observation_of(w, &paths)?;
    let t = w.wait_for(
        within,
        &format!("a notification of {}", show(&paths)),
        |t| is_notification(t, id),
    )?;
    keep(w, t);
    Ok(())
}

/// A notification of an observed path arrives.
#[then(expr = "a notification of {path} arrives within {duration}")]
fn notification_of(
    w: &mut Lwm2mWorld,
    path: PathParam,
    within: DurationParam,
) -> anyhow::Result<()> {
    notification_within(w, vec![path.0], within.0)
}

/// A notification of the last observation (single or composite) arrives.
#[then(expr = "a notification arrives within {duration}")]
fn notification(w: &mut Lwm2mWorld, within: DurationParam) -> anyhow::Result<()> {
    let paths = last_observed(w)?;
    notification_within(w, paths, within.0)
}

/// The next notification of the last observation arrives in a window after the previous
/// awaited event (the notification before, or the Observe's answer): pmin/pmax timing.
#[then(expr = "a notification arrives between {duration} and {duration} later")]
fn notification_between(
    w: &mut Lwm2mWorld,
    min: DurationParam,
    max: DurationParam,
) -> anyhow::Result<()> {
    let paths = last_observed(w)?;
    let id = observation_of(w, &paths)?;
    let previous = w.last_match().unwrap_or_default();
    let now = w.now();
    let within = (previous + max.0).saturating_sub(now);
    let t = w.wait_for(
        within,
        &format!(
            "a notification of {} by {:?} after the previous",
            show(&paths),
            max.0
        ),
        |t| is_notification(t, id),
    )?;
    let gap = t.at.saturating_sub(previous);
    if gap < min.0 {
        // Earlier than the case's window is right for a changed value once pmin has
        // passed (a device whose values change by themselves notifies at pmin, Core TS
        // 1.1 §5.1.2); before pmin, or with nothing changed, it is not.
        let pmin = pmin_of(w, &paths);
        let why = if gap < pmin {
            Some(format!(
                "before pmin {pmin:?} (Core TS 1.1 §5.1.2: no notification sooner than pmin)"
            ))
        } else if !changed(w, id, &t) {
            Some(
                "with no change that meets gt/lt/st (Core TS 1.1 §5.1.2: before pmax, a \
                 notification follows a change that meets them)"
                    .to_owned(),
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err(w.fail(format!(
                "the notification came {gap:?} after the previous event, before {:?}, {why}",
                min.0
            )));
        }
    }
    keep(w, t);
    Ok(())
}

/// Notifications keep arriving.
#[then(expr = "at least {int} notifications of {path} arrive within {duration}")]
fn many_notifications(
    w: &mut Lwm2mWorld,
    n: usize,
    path: PathParam,
    within: DurationParam,
) -> anyhow::Result<()> {
    let id = observation_of(w, &[path.0])?;
    let deadline = w.now() + within.0;
    for k in 0..n {
        let left = deadline.saturating_sub(w.now());
        let t = w.wait_for(
            left,
            &format!("notification {} of {n} of {}", k + 1, path.0),
            |t| is_notification(t, id),
        )?;
        keep(w, t);
    }
    Ok(())
}

/// No notification of an observation arrives (it was cancelled).
#[then(expr = "no notification of {path} arrives within {duration}")]
fn no_notification(
    w: &mut Lwm2mWorld,
    path: PathParam,
    during: DurationParam,
) -> anyhow::Result<()> {
    let id = observation_of(w, &[path.0])?;
    w.mark();
    w.expect_none(during.0, &format!("a notification of {}", path.0), |t| {
        is_notification(t, id)
    })
}

/// No notification of the last observation arrives.
#[then(expr = "no notification arrives within {duration}")]
fn no_notification_last(w: &mut Lwm2mWorld, during: DurationParam) -> anyhow::Result<()> {
    let paths = last_observed(w)?;
    let id = observation_of(w, &paths)?;
    w.mark();
    w.expect_none(during.0, "a notification", |t| is_notification(t, id))
}

fn notification_records(w: &Lwm2mWorld) -> anyhow::Result<Vec<lwm2m_proto::Record>> {
    let (path, n) = w
        .notification
        .as_ref()
        .ok_or_else(|| anyhow!("no notification awaited yet"))?;
    Ok(match &n.content {
        Some(Content::Node(node)) => node.to_records(path),
        Some(Content::Records(r)) => r.clone(),
        _ => Vec::new(),
    })
}

/// The last notification carried values at or below each path.
#[then(expr = "the notification holds {paths}")]
fn notification_holds(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let records = notification_records(w)?;
    let missing: Vec<String> = paths
        .0
        .iter()
        .filter(|p| !records.iter().any(|r| p.is_prefix_of(&r.path)))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        let got: Vec<String> = records.iter().map(|r| r.path.to_string()).collect();
        Err(w.fail(format!(
            "the notification lacks {}; it holds {}",
            missing.join(", "),
            got.join(", ")
        )))
    }
}

/// The last notification carried nothing at or below these paths.
#[then(expr = "the notification does not hold {paths}")]
fn notification_lacks(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let records = notification_records(w)?;
    let present: Vec<String> = records
        .iter()
        .filter(|r| paths.0.iter().any(|p| p.is_prefix_of(&r.path)))
        .map(|r| r.path.to_string())
        .collect();
    if present.is_empty() {
        Ok(())
    } else {
        Err(w.fail(format!("the notification holds {}", present.join(", "))))
    }
}

/// A value the last notification carried.
#[then(expr = "the notification's value of {path} is {string}")]
fn notification_value(w: &mut Lwm2mWorld, path: PathParam, expected: String) -> anyhow::Result<()> {
    let records = notification_records(w)?;
    match records
        .iter()
        .find(|r| r.path == path.0)
        .and_then(|r| r.value.as_ref())
    {
        Some(v) if value_matches(v, &expected) => Ok(()),
        Some(v) => Err(w.fail(format!(
            "the notification gave {} = {}, not {expected:?}",
            path.0,
            show_value(v)
        ))),
        None => Err(w.fail(format!("the notification gave no value for {}", path.0))),
    }
}

fn cancel(w: &mut Lwm2mWorld, paths: Vec<Lwm2mPath>, active: bool) -> anyhow::Result<()> {
    let observation = observation_of(w, &paths)?;
    let how = if active {
        "with Observe=1"
    } else {
        "with a Reset"
    };
    w.operate(
        Operation::CancelObservation {
            observation,
            active,
        },
        format!("cancel the observation of {} {how}", show(&paths)),
    )
}

/// Passive cancellation: the server forgets the observation and answers the next
/// notification with a Reset (RFC 7641 §3.6).
#[when(expr = "the server cancels the observation of {path} with a Reset")]
fn cancel_reset(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    cancel(w, vec![path.0], false)
}

/// Active cancellation: GET with Observe = 1 (RFC 7641 §3.6).
#[when(expr = "the server cancels the observation of {path} with Observe=1")]
fn cancel_active(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    cancel(w, vec![path.0], true)
}

/// Active cancellation of the last (composite) observation: FETCH with Observe = 1 and
/// the same path list.
#[when("the server cancels the composite observation with Observe=1")]
fn cancel_composite(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let paths = last_observed(w)?;
    cancel(w, paths, true)
}

/// The server holds no observation of `path` on the client any more.
#[then(expr = "the server holds no observation of {path}")]
fn server_forgot(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    let name = w.current()?;
    let held = w.backend().observations(&name);
    if held.iter().any(|(_, paths)| paths.contains(&path.0)) {
        Err(w.fail(format!("the server still observes {} on {name:?}", path.0)))
    } else {
        Ok(())
    }
}
