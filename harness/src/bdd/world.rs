//! The cucumber World: one scenario's backend, the timeline of what happened, the last
//! operation's outcome, and the helpers every step file uses.
//!
//! Waiting is always bounded and always in the backend's time (virtual in-process): a step
//! that expects something "within 11s" runs the backend until it happens or 11 s have
//! passed, and fails with the exchange log of that span. A step that finds the case beyond
//! the subject calls [`not_applicable`]: the scenario stops there and is reported "not
//! applicable" with the reason, never "passed".

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::client::Lwm2mClient;
use lwm2m_proto::content::{format_text, parse_text};
use lwm2m_proto::server::{
    Content, ObservationId, OpError, OpId, Operation, Response, ServerEvent,
};
use lwm2m_proto::{DataType, Lwm2mPath, Record, Schema, Value};

use super::backend::{self, Backend, Capability, ClientAction, Happening, Timed};
use super::run::RunContext;
use crate::record::Latencies;

/// How long an operation step waits for its answer before it fails: beyond
/// MAX_TRANSMIT_WAIT (93 s, RFC 7252 §4.8.2), so a CoAP time-out shows as the error it is.
pub const OPERATION_WAIT: Duration = Duration::from_secs(120);

/// How many exchange-log lines a failure message shows.
const EXCHANGE_LINES: usize = 30;

/// The tag that lets a scenario (or feature) wait as long as it says in real time, over
/// the real wait limit of the network backends.
pub const LONG_WAIT_TAG: &str = "long-wait";

/// The panic payload of a step that found the case not applicable to the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplicable(pub String);

/// Ends the scenario as "not applicable" with `reason`. Unwinds without the panic hook,
/// so nothing is printed; the collector and the writers recognise the payload.
pub fn not_applicable(reason: impl Into<String>) -> ! {
    std::panic::resume_unwind(Box::new(NotApplicable(reason.into())))
}

/// An operation started and not answered yet.
#[derive(Debug, Clone)]
struct Pending {
    op: OpId,
    endpoint: String,
    target: Lwm2mPath,
    description: String,
    log_mark: usize,
}

/// The outcome of the last operation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What was asked, in words (`read /3/0 in TLV`).
    pub description: String,
    /// The operation's target (for flattening a node into records).
    pub target: Lwm2mPath,
    /// The answer, or why there was none.
    pub result: Result<Response, OpError>,
    /// Exchange-log mark at the start of the operation.
    pub log_mark: usize,
}

/// The World of the feature suite (see the module documentation).
#[derive(Default, cucumber::World)]
pub struct Lwm2mWorld {
    ctx: Option<Arc<RunContext>>,
    backend: Option<Box<dyn Backend>>,
    unavailable: Option<String>,
    /// The scenario's seed (from the run seed and the scenario's name).
    pub seed: u64,
    /// The client steps talk about when they name none.
    current: Option<String>,
    /// Every simulated client added, in order.
    pub fleet: Vec<String>,
    timeline: Vec<Timed>,
    /// Happenings a wait has matched already (a later wait looks for another one).
    consumed: Vec<bool>,
    /// Where waits start looking (see [`Lwm2mWorld::mark`]).
    mark_at: usize,
    last_match: Option<Duration>,
    log_mark: usize,
    pending: Option<Pending>,
    outcome: Option<Outcome>,
    /// Bootstrap configurations the steps built, by endpoint name.
    pub bootstrap: BTreeMap<String, BootstrapConfig>,
    /// Observations by their path list, as the steps started them.
    pub observations: BTreeMap<Vec<Lwm2mPath>, ObservationId>,
    /// The path list of the last observation started.
    pub last_observed: Option<Vec<Lwm2mPath>>,
    /// The last notification awaited, with the path it was decoded at.
    pub notification: Option<(Lwm2mPath, Response)>,
    /// The network model of each client, as the steps set it.
    pub networks: BTreeMap<String, lwm2m_simulator::NetworkModel>,
    /// The records of the last Send the server received.
    pub sent: Option<Vec<Record>>,
    started: HashMap<String, Duration>,
    /// Latencies per operation (`register`, `read`, ...), virtual time.
    pub latencies: Latencies,
    /// Wall-clock start of the scenario.
    pub wall_start: Option<Instant>,
    /// The scenario is tagged [`LONG_WAIT_TAG`]: real-time waits are not limited.
    pub long_waits: bool,
}

impl fmt::Debug for Lwm2mWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lwm2mWorld")
            .field("seed", &self.seed)
            .field("current", &self.current)
            .field("clients", &self.fleet.len())
            .field("happenings", &self.timeline.len())
            .field("outcome", &self.outcome.as_ref().map(|o| &o.description))
            .finish_non_exhaustive()
    }
}

impl Lwm2mWorld {
    /// Prepares the world for a scenario: its seed, and the backend for the run's subject
    /// (or the reason there is none).
    pub fn setup(&mut self, ctx: Arc<RunContext>, seed: u64) {
        self.seed = seed;
        self.wall_start = Some(Instant::now());
        match backend::open(&ctx.subject, seed, ctx.library.registry.clone()) {
            Ok(backend) => self.backend = Some(backend),
            Err(reason) => self.unavailable = Some(reason),
        }
        self.ctx = Some(ctx);
    }

    /// The run context.
    pub fn ctx(&self) -> Arc<RunContext> {
        match &self.ctx {
            Some(ctx) => ctx.clone(),
            None => panic!("the world was not set up (the before hook did not run)"),
        }
    }

    /// The backend; a subject no backend runs yet makes the case not applicable.
    pub fn backend(&mut self) -> &mut dyn Backend {
        if let Some(reason) = &self.unavailable {
            not_applicable(reason.clone());
        }
        match &mut self.backend {
            Some(b) => b.as_mut(),
            None => panic!("the world was not set up (the before hook did not run)"),
        }
    }

    /// Whether the LwM2M Server's registrations and events are visible: ours, or a server
    /// under test whose adapter reports them.
    pub fn server_is_ours(&self) -> bool {
        match &self.backend {
            Some(b) => b.server_view(backend::ServerView::Events).is_ok(),
            None => !matches!(
                self.ctx.as_ref().map(|c| &c.subject),
                Some(backend::Subject::Server { .. })
            ),
        }
    }

    /// Makes the case not applicable when the step needs to see `view` inside the LwM2M
    /// Server (`what` it looks at) and the server under test does not show it.
    pub fn require_our_server(&self, view: backend::ServerView, what: &str) {
        let shown = match &self.backend {
            Some(b) => b.server_view(view),
            None if self.server_is_ours() => Ok(()),
            None => Err(super::network::SERVER_NOT_OURS.to_owned()),
        };
        if let Err(why) = shown {
            not_applicable(format!("the step looks at {what}: {why}"));
        }
    }

    /// Whether the scenario's clients are our simulated ones (their state can be looked
    /// into), not a device under test.
    pub fn client_is_ours(&self) -> bool {
        !matches!(
            self.ctx.as_ref().map(|c| &c.subject),
            Some(backend::Subject::Device { .. })
        )
    }

    /// Why no backend runs the subject, if so.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// The backend, if the scenario got as far as having one.
    pub fn backend_ref(&self) -> Option<&dyn Backend> {
        self.backend.as_deref()
    }

    /// Makes the case not applicable unless the subject can do `capability`.
    pub fn require(&mut self, capability: Capability) {
        if let Err(reason) = self.backend().supports(capability) {
            not_applicable(format!("needs {capability}: {reason}"));
        }
    }

    /// The time since the scenario started (virtual in-process).
    pub fn now(&mut self) -> Duration {
        self.backend().now()
    }

    /// Sets the client later steps talk about.
    pub fn set_current(&mut self, endpoint: &str) {
        self.current = Some(endpoint.to_owned());
    }

    /// The client steps talk about.
    pub fn current(&self) -> anyhow::Result<String> {
        self.current
            .clone()
            .ok_or_else(|| anyhow!("no client yet: add one with `Given a client \"NAME\" ...`"))
    }

    /// A simulated client's machine.
    pub fn client_machine(&mut self, endpoint: &str) -> anyhow::Result<&Lwm2mClient> {
        let backend = self.backend();
        backend
            .client(endpoint)
            .ok_or_else(|| anyhow!("{endpoint:?} is not a simulated client of this scenario"))
    }

    /// Starts looking at what happens from now on: later waits only see newer happenings,
    /// failure messages show the exchange from here.
    pub fn mark(&mut self) {
        self.drain();
        self.mark_at = self.timeline.len();
        self.log_mark = self.backend().exchange_log().len();
    }

    /// Moves what the backend reported into the timeline, recording latencies.
    fn drain(&mut self) {
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        while let Some(t) = backend.poll_happening() {
            match &t.happening {
                Happening::Server(ServerEvent::Completed {
                    operation, latency, ..
                }) => self.latencies.record(operation, *latency),
                Happening::Server(ServerEvent::Registered { registration, .. }) => {
                    if let Some(start) = self.started.remove(&registration.endpoint) {
                        self.latencies
                            .record("register", t.at.saturating_sub(start));
                    }
                }
                _ => {}
            }
            self.timeline.push(t);
            self.consumed.push(false);
        }
    }

    /// The longest a step may wait, unless the backend has virtual time: longer waits
    /// make the case not applicable (see [`backend::Capability::VirtualTime`]).
    fn real_wait_limit(&mut self) -> Option<Duration> {
        let real = self.backend().supports(Capability::VirtualTime).is_err();
        (real && !self.long_waits).then(super::network::max_real_wait)
    }

    /// Lets `duration` pass (on a real-time backend, at most the real wait limit).
    pub fn run_for(&mut self, duration: Duration) {
        if let Some(limit) = self.real_wait_limit()
            && duration > limit
        {
            not_applicable(format!(
                "the step waits {duration:?} in real time, over the {limit:?} limit \
                 (LWM2M_HARNESS_MAX_WAIT, or tag the scenario @long-wait)"
            ));
        }
        let target = self.now() + duration;
        loop {
            self.backend().step(target);
            self.drain();
            if self.now() >= target {
                return;
            }
        }
    }

    /// Waits up to `within` for a happening that `matches`: the first since the current
    /// mark that no earlier wait matched.
    pub fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        matches: impl FnMut(&Timed) -> bool,
    ) -> anyhow::Result<Timed> {
        let limit = self.real_wait_limit().filter(|l| within > *l);
        self.wait_bounded(within, limit, what, matches)
    }

    /// [`Lwm2mWorld::wait_for`], giving up (not applicable) after `limit` if set.
    fn wait_bounded(
        &mut self,
        within: Duration,
        limit: Option<Duration>,
        what: &str,
        mut matches: impl FnMut(&Timed) -> bool,
    ) -> anyhow::Result<Timed> {
        let deadline = self.now() + limit.unwrap_or(within);
        loop {
            self.drain();
            let found = (self.mark_at..self.timeline.len())
                .find(|&i| !self.consumed[i] && matches(&self.timeline[i]));
            if let Some(i) = found {
                self.consumed[i] = true;
                let t = self.timeline[i].clone();
                self.last_match = Some(t.at);
                return Ok(t);
            }
            if self.now() >= deadline {
                if let Some(limit) = limit {
                    not_applicable(format!(
                        "{what} did not happen within {limit:?} of real time; the case \
                         allows {within:?}, over the real wait limit (LWM2M_HARNESS_MAX_WAIT, or tag \
                         the scenario @long-wait)"
                    ));
                }
                return Err(self.fail(format!("{what} did not happen within {within:?}")));
            }
            self.backend().step(deadline);
        }
    }

    /// Lets `during` pass and fails if a happening that `matches` occurs meanwhile (or
    /// occurred since the mark).
    pub fn expect_none(
        &mut self,
        during: Duration,
        what: &str,
        mut matches: impl FnMut(&Timed) -> bool,
    ) -> anyhow::Result<()> {
        // Every absence the steps check is a server-side one: a server under test would
        // pass it without looking.
        self.require_our_server(
            backend::ServerView::Absence,
            &format!("what the server saw ({what})"),
        );
        self.run_for(during);
        let found = (self.mark_at..self.timeline.len())
            .find(|&i| !self.consumed[i] && matches(&self.timeline[i]));
        match found.map(|i| &self.timeline[i]) {
            Some(t) => Err(self.fail(format!(
                "{what} happened at +{:.3}s, within {during:?}: {:?}",
                t.at.as_secs_f64(),
                t.happening
            ))),
            None => Ok(()),
        }
    }

    /// Everything that happened in the scenario so far.
    pub fn timeline_all(&mut self) -> Vec<Timed> {
        self.drain();
        self.timeline.clone()
    }

    /// When the last awaited happening happened.
    pub fn last_match(&self) -> Option<Duration> {
        self.last_match
    }

    /// A failure message with the exchange since the last mark.
    pub fn fail(&self, message: impl fmt::Display) -> anyhow::Error {
        self.fail_since(self.log_mark, message)
    }

    /// A failure message with the exchange since `log_mark`.
    pub fn fail_since(&self, log_mark: usize, message: impl fmt::Display) -> anyhow::Error {
        let exchange = self
            .backend
            .as_ref()
            .map(|b| b.exchange_log().since(log_mark, EXCHANGE_LINES))
            .unwrap_or_default();
        if exchange.is_empty() {
            anyhow!("{message}\n  (no datagrams exchanged)")
        } else {
            anyhow!("{message}\n  exchange:\n{exchange}")
        }
    }

    /// Starts the registration latency clock of `endpoint` at `at`.
    pub fn note_start(&mut self, endpoint: &str, at: Duration) {
        self.started.insert(endpoint.to_owned(), at);
    }

    /// Makes a simulated client act; `Start` also starts the registration latency clock.
    pub fn client_action(&mut self, endpoint: &str, action: ClientAction) -> anyhow::Result<()> {
        self.mark();
        if action == ClientAction::Start {
            let now = self.now();
            self.started.insert(endpoint.to_owned(), now);
        }
        self.backend().client_action(endpoint, action)
    }

    /// Starts an operation on the current client and waits for its answer, unless the
    /// server holds it for a sleeping queue-mode client (then [`Lwm2mWorld::outcome`]
    /// waits for it later).
    pub fn operate(&mut self, operation: Operation, description: String) -> anyhow::Result<()> {
        let endpoint = self.current()?;
        self.operate_on(&endpoint, operation, description)
    }

    /// [`Lwm2mWorld::operate`] on a named client.
    pub fn operate_on(
        &mut self,
        endpoint: &str,
        operation: Operation,
        description: String,
    ) -> anyhow::Result<()> {
        self.mark();
        let target = target_of(&operation);
        let log_mark = self.log_mark;
        let asleep = !self.backend().server_sees_awake(endpoint);
        match self.backend().request(endpoint, operation) {
            Ok(op) => {
                self.pending = Some(Pending {
                    op,
                    endpoint: endpoint.to_owned(),
                    target,
                    description,
                    log_mark,
                });
                self.outcome = None;
                if !asleep {
                    self.finish(OPERATION_WAIT)?;
                }
            }
            Err(error) => {
                self.pending = None;
                self.outcome = Some(Outcome {
                    description,
                    target,
                    result: Err(error),
                    log_mark,
                });
            }
        }
        Ok(())
    }

    /// Waits up to `within` for the pending operation's answer.
    pub fn finish(&mut self, within: Duration) -> anyhow::Result<()> {
        let Some(pending) = self.pending.clone() else {
            return Ok(());
        };
        let what = format!(
            "the answer to {} on {:?}",
            pending.description, pending.endpoint
        );
        // An answer is awaited in full even in real time: no answer is a failure.
        let done = self.wait_bounded(within, None, &what, |t| {
            matches!(&t.happening, Happening::Server(ServerEvent::Completed { op, .. }) if *op == pending.op)
        });
        let done = done.map_err(|_| {
            self.fail_since(pending.log_mark, format!("{what}: none within {within:?}"))
        })?;
        if let Happening::Server(ServerEvent::Completed { result, .. }) = done.happening {
            self.pending = None;
            self.outcome = Some(Outcome {
                description: pending.description,
                target: pending.target,
                result,
                log_mark: pending.log_mark,
            });
        }
        Ok(())
    }

    /// Whether an operation is waiting for its answer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The last operation's outcome (waiting for it if needed).
    pub fn outcome(&mut self) -> anyhow::Result<Outcome> {
        self.finish(OPERATION_WAIT)?;
        self.outcome
            .clone()
            .ok_or_else(|| anyhow!("no operation yet: a `When the server ...` step comes first"))
    }

    /// The last operation's response; an operation that got none fails with why.
    pub fn response(&mut self) -> anyhow::Result<(Outcome, Response)> {
        let outcome = self.outcome()?;
        match &outcome.result {
            Ok(r) => Ok((outcome.clone(), r.clone())),
            Err(e) => Err(self.fail_since(
                outcome.log_mark,
                format!("{} got no response: {e}", outcome.description),
            )),
        }
    }

    /// The values the last response carried, flat.
    pub fn response_records(&mut self) -> anyhow::Result<(Outcome, Vec<Record>)> {
        let (outcome, response) = self.response()?;
        let records = match &response.content {
            Some(Content::Node(node)) => node.to_records(&outcome.target),
            Some(Content::Records(records)) => records.clone(),
            Some(Content::Links(_)) | None => Vec::new(),
        };
        Ok((outcome, records))
    }

    /// `text` as a value of the resource at `path` (typed by the registry; strings for
    /// resources it does not know). Booleans may be `true`/`false` or `1`/`0`.
    pub fn typed(&self, path: &Lwm2mPath, text: &str) -> anyhow::Result<Value> {
        let ty = match (path.object_id(), path.resource_id()) {
            (Some(o), Some(r)) => self
                .ctx()
                .library
                .registry
                .resource(o, r)
                .map_or(DataType::String, |d| d.data_type),
            _ => DataType::String,
        };
        let text = match (ty, text) {
            (DataType::Boolean, "true") => "1",
            (DataType::Boolean, "false") => "0",
            (_, t) => t,
        };
        parse_text(ty, text).map_err(|e| anyhow!("{path}: {e}"))
    }
}

/// Whether `value` reads as `expected`: the same text, or the same number, or the same
/// boolean (`true`/`false`/`1`/`0`).
pub fn value_matches(value: &Value, expected: &str) -> bool {
    let text = format_text(value);
    if text == expected {
        return true;
    }
    match value {
        Value::Boolean(b) => matches!((b, expected), (true, "true") | (false, "false")),
        Value::String(_) | Value::Corelnk(_) | Value::Opaque(_) => false,
        _ => match (text.parse::<f64>(), expected.parse::<f64>()) {
            (Ok(a), Ok(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            _ => false,
        },
    }
}

/// A value for messages: text form and type.
pub fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        v => format_text(v),
    }
}

/// The path an operation targets (the root for composite ones).
fn target_of(operation: &Operation) -> Lwm2mPath {
    match operation {
        Operation::Read { path, .. }
        | Operation::Discover { path }
        | Operation::Write { path, .. }
        | Operation::WriteAttributes { path, .. }
        | Operation::Execute { path, .. }
        | Operation::Delete { path }
        | Operation::Observe { path, .. } => *path,
        Operation::Create { object, .. } => Lwm2mPath::Object(*object),
        _ => Lwm2mPath::Root,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_by_text_number_and_boolean() {
        assert!(value_matches(&Value::String("ACME".into()), "ACME"));
        assert!(!value_matches(&Value::String("1".into()), "1.0"));
        assert!(value_matches(&Value::Integer(86400), "86400"));
        assert!(value_matches(&Value::Float(1.5), "1.50"));
        assert!(value_matches(&Value::Boolean(false), "false"));
        assert!(value_matches(&Value::Boolean(true), "1"));
        assert!(!value_matches(&Value::Integer(2), "3"));
    }
}
