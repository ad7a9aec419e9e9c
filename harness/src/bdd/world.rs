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
use lwm2m_proto::{DataType, InstanceId, Lwm2mPath, ObjectId, Record, Schema, Value};

use super::backend::{self, Backend, Capability, ClientAction, Happening, Subject, Timed};
use super::inprocess::InProcess;
use super::network::{DeviceBackend, ServerBackend};
use crate::record::Latencies;

/// How long an operation step waits for its answer before it fails: beyond
/// MAX_TRANSMIT_WAIT (93 s, RFC 7252 §4.8.2), so a CoAP time-out shows as the error it is.
pub const OPERATION_WAIT: Duration = Duration::from_secs(120);

/// How many exchange-log lines a failure message shows.
const EXCHANGE_LINES: usize = 30;

/// The tag that lets a scenario (or feature) wait as long as it says in real time, over
/// the real wait limit of the network backends.
pub const LONG_WAIT_TAG: &str = "long-wait";

pub use super::verdict::{NotApplicable, NotSupported, not_applicable, not_supported};

/// What every scenario of a run shares and the world reads (the run keeps it in its
/// [`super::run::RunContext`]).
#[derive(Debug)]
pub struct Setting {
    /// Profiles, quirk packs, networks, the registry.
    pub library: super::fleet::Library,
    /// The subject under test.
    pub subject: Subject,
    /// The device description the cases check configured values against, if any.
    pub device: Option<super::description::DeviceDescription>,
}

/// An operation started and not answered yet.
#[derive(Debug, Clone)]
struct Pending {
    op: OpId,
    endpoint: String,
    target: Lwm2mPath,
    description: String,
    log_mark: usize,
    operation: Operation,
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
    /// The operation as the case asked for it (paths as the case names them).
    pub operation: Operation,
}

/// The World of the feature suite (see the module documentation).
#[derive(Default, cucumber::World)]
pub struct Lwm2mWorld {
    ctx: Option<Arc<Setting>>,
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
    /// The tags of the scenario, its rule and its feature.
    pub tags: Vec<String>,
    /// The paths the scenario's steps name that the device must have before the case
    /// creates anything (see [`touched_paths`]).
    pub touched: Vec<Lwm2mPath>,
    /// A step looked at something the subject sent: a response to an operation, its
    /// registration. A device case that passes without it and without a datagram in its
    /// exchange log tested our own server, not the device (see `run`).
    pub device_evidence: bool,
    /// The pmin each Write-Attributes of the scenario set, by path (Core TS 1.1 §5.1.2).
    pub pmin_written: BTreeMap<Lwm2mPath, u32>,
    /// The change conditions (gt, lt, st) each Write-Attributes of the scenario set, by
    /// path (Core TS 1.1 §5.1.2).
    pub thresholds_written: BTreeMap<Lwm2mPath, Thresholds>,
    /// The values each observation last reported (its Observe answer, then each awaited
    /// notification), to tell a change notification from an unprompted one.
    pub observed_values: Vec<(ObservationId, Vec<Record>)>,
    /// What the harness tolerated in what the subject sent during the scenario (decoder
    /// findings of each response, the registration's deviations), each once.
    pub findings: Vec<String>,
    /// The case asked the device under test to reboot and it acknowledged (2.04 to
    /// Execute /3/0/4): its state after the case is a rebooted one, and a device whose
    /// reboot is a process exit needs restarting by whoever launched it.
    pub device_rebooted: bool,
    /// The device's Server instance of its account with our LwM2M Server, once found
    /// (see [`Lwm2mWorld::account_instance`]).
    account: Option<InstanceId>,
    /// Optional resources (by the registry) of the case's profile that its steps name: a
    /// device under test that answers 4.04 for one of them does not have it, which makes
    /// the case not applicable rather than failed (see [`Lwm2mWorld::finish`]).
    pub optional_needed: Vec<Lwm2mPath>,
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
    pub fn setup(&mut self, ctx: Arc<Setting>, seed: u64) {
        self.seed = seed;
        self.wall_start = Some(Instant::now());
        match open_backend(&ctx.subject, seed, ctx.library.registry.clone()) {
            Ok(backend) => self.backend = Some(backend),
            Err(reason) => self.unavailable = Some(reason.to_string()),
        }
        self.ctx = Some(ctx);
    }

    /// The run context.
    pub fn ctx(&self) -> Arc<Setting> {
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

    /// Records a finding once (see [`Lwm2mWorld::findings`]).
    pub fn add_finding(&mut self, finding: String) {
        if !self.findings.contains(&finding) {
            self.findings.push(finding);
        }
    }

    /// Whether the scenario, its rule or its feature carries `tag` (without `@`).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
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

    /// [`Lwm2mWorld::wait_for`] for as long as `within`, whatever the real wait limit: for
    /// what a case must wait for in full (a device rebooting).
    pub fn wait_in_full(
        &mut self,
        within: Duration,
        what: &str,
        matches: impl FnMut(&Timed) -> bool,
    ) -> anyhow::Result<Timed> {
        self.wait_bounded(within, None, what, matches)
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
        if let Operation::WriteAttributes { path, attributes } = &operation {
            if let Some(pmin) = attributes.set.pmin {
                self.pmin_written.insert(*path, pmin);
            } else if attributes
                .unset
                .iter()
                .any(|n| *n == lwm2m_proto::codec::link::AttributeName::Pmin)
            {
                self.pmin_written.remove(path);
            }
        }
        if let Operation::WriteAttributes { path, attributes } = &operation {
            use lwm2m_proto::codec::link::AttributeName;
            let t = self.thresholds_written.entry(*path).or_default();
            let set = &attributes.set;
            t.gt = set.gt.or(t.gt);
            t.lt = set.lt.or(t.lt);
            t.st = set.st.or(t.st);
            for name in &attributes.unset {
                match name {
                    AttributeName::Gt => t.gt = None,
                    AttributeName::Lt => t.lt = None,
                    AttributeName::St => t.st = None,
                    _ => {}
                }
            }
        }
        let account = self.account_instance(endpoint, &operation)?;
        let asleep = !self.backend().server_sees_awake(endpoint);
        let sent = match account {
            Some(k) => map_operation(operation.clone(), |p| swap_account(p, k)),
            None => operation.clone(),
        };
        match self.hand_over(endpoint, sent, operation.clone(), description.clone()) {
            Ok(()) if asleep => {}
            Ok(()) => self.finish(OPERATION_WAIT)?,
            Err(error) => {
                self.pending = None;
                self.outcome = Some(Outcome {
                    description,
                    target: target_of(&operation),
                    result: Err(error),
                    log_mark: self.log_mark,
                    operation,
                });
            }
        }
        Ok(())
    }

    /// Hands `sent` (the case's `operation`, or it with the account swapped in) to the
    /// backend: pending until its answer ([`Lwm2mWorld::finish`]), from a fresh log mark.
    fn hand_over(
        &mut self,
        endpoint: &str,
        sent: Operation,
        operation: Operation,
        description: String,
    ) -> Result<(), OpError> {
        self.mark();
        let op = self.backend().request(endpoint, sent)?;
        self.pending = Some(Pending {
            op,
            endpoint: endpoint.to_owned(),
            target: target_of(&operation),
            description,
            log_mark: self.log_mark,
            operation,
        });
        self.outcome = None;
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
        if let Happening::Server(ServerEvent::Completed { mut result, .. }) = done.happening {
            if let (Some(k), Ok(response)) = (self.account, result.as_mut()) {
                unswap_response(response, k, pending.target);
            }
            self.device_evidence |= result.is_ok();
            if let Ok(response) = &result
                && response.code == (4, 4)
                && !self.client_is_ours()
                && let Some(resource) = self
                    .optional_needed
                    .iter()
                    .find(|p| p.is_prefix_of(&pending.target))
            {
                not_applicable(format!(
                    "the case needs {resource}, a resource its object makes optional, and the \
                     device under test answered 4.04 Not Found to {}",
                    pending.description
                ));
            }
            if let Ok(response) = &result {
                for f in &response.findings {
                    self.add_finding(format!("{}: {f} ({})", pending.description, f.clause()));
                }
            }
            self.pending = None;
            self.outcome = Some(Outcome {
                description: pending.description,
                target: pending.target,
                result,
                log_mark: pending.log_mark,
                operation: pending.operation,
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

impl Lwm2mWorld {
    /// The Server instance of the device's account with our LwM2M Server when it is not
    /// /1/0 (`None`: /1/0, or not a device under test, or `operation` does not touch the
    /// Server object). The cases name the account /1/0 as the ETS does; for a device the
    /// steps address the instance whose Short Server ID (1/x/0) is the account's (Core TS
    /// 1.1 E.2): the only /1 instance the device announces, or, when it announces
    /// several, the one holding the SSID its device description declares.
    fn account_instance(
        &mut self,
        endpoint: &str,
        operation: &Operation,
    ) -> anyhow::Result<Option<InstanceId>> {
        let device = matches!(
            self.ctx.as_ref().map(|c| &c.subject),
            Some(backend::Subject::Device { .. })
        );
        let mut touches = false;
        let _ = map_operation(operation.clone(), |p| {
            touches |= p.object_id() == Some(ObjectId(1));
            p
        });
        if !device || !touches {
            return Ok(None);
        }
        if let Some(k) = self.account {
            return Ok((k.0 != 0).then_some(k));
        }
        let Some(registration) = self.backend().registration(endpoint) else {
            return Ok(None);
        };
        let instances: Vec<InstanceId> = registration
            .links
            .objects
            .get(&ObjectId(1))
            .map(|o| o.instances.iter().copied().collect())
            .unwrap_or_default();
        let ssid = self.ctx().device.as_ref().and_then(|d| d.short_server_id);
        let found = match (instances.as_slice(), ssid) {
            ([], _) => not_applicable(
                "the case uses the device's LwM2M Server account (object 1), and the device \
                 announces no Server instance in its Register",
            ),
            ([only], _) => *only,
            (several, Some(ssid)) => {
                let mut hit = None;
                for &k in several {
                    let path = Lwm2mPath::resource(1, k.0, 0);
                    self.operate_raw(endpoint, Operation::Read { path, format: None })?;
                    let value = match self.outcome.as_ref().map(|o| &o.result) {
                        Some(Ok(r)) => match &r.content {
                            Some(Content::Node(n)) => n
                                .to_records(&path)
                                .into_iter()
                                .find(|r| r.path == path)
                                .and_then(|r| r.value),
                            _ => None,
                        },
                        _ => None,
                    };
                    if value.is_some_and(|v| value_matches(&v, &ssid.to_string())) {
                        hit = Some(k);
                        break;
                    }
                }
                match hit {
                    Some(k) => k,
                    None => {
                        return Err(self.fail(format!(
                            "no Server instance of the device ({}) holds the Short Server ID \
                             {ssid} its device description declares (1/x/0, Core TS 1.1 E.2)",
                            show_instances(several)
                        )));
                    }
                }
            }
            (several, None) => not_applicable(format!(
                "the device announces several Server instances ({}); give the Short Server \
                 ID of its account with our server (short_server_id in --device-profile)",
                show_instances(several)
            )),
        };
        self.account = Some(found);
        Ok((found.0 != 0).then_some(found))
    }

    /// Starts an operation as is (no account mapping) and waits for its answer.
    fn operate_raw(&mut self, endpoint: &str, operation: Operation) -> anyhow::Result<()> {
        let target = target_of(&operation);
        let description = format!("Read {target} (looking for the account's Server instance)");
        if let Err(e) = self.hand_over(endpoint, operation.clone(), operation, description.clone())
        {
            return Err(self.fail(format!("{description}: {e}")));
        }
        self.finish(OPERATION_WAIT)
    }
}

fn show_instances(instances: &[InstanceId]) -> String {
    instances
        .iter()
        .map(|k| format!("/1/{}", k.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The change conditions of an observed numeric resource (Core TS 1.1 §5.1.2): Greater
/// Than, Less Than, Step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// Greater Than.
    pub gt: Option<f64>,
    /// Less Than.
    pub lt: Option<f64>,
    /// Step.
    pub st: Option<f64>,
}

impl Thresholds {
    /// Whether any condition is set.
    pub fn any(&self) -> bool {
        self.gt.is_some() || self.lt.is_some() || self.st.is_some()
    }

    /// Whether a change from `a` to `b` meets a condition: crossing gt or lt, or a step of
    /// at least st.
    pub fn met(&self, a: f64, b: f64) -> bool {
        self.gt.is_some_and(|g| (a > g) != (b > g))
            || self.lt.is_some_and(|l| (a < l) != (b < l))
            || self.st.is_some_and(|st| (b - a).abs() >= st)
    }
}

/// What the server tolerated in a client's Register and Updates (its query and its link
/// payload), each with its clause: findings of every case of a device under test, as a
/// response's decoder findings are of the case that read it.
pub fn registration_findings(r: &lwm2m_proto::server::Registration) -> Vec<String> {
    let name = &r.endpoint;
    let query = r
        .findings
        .iter()
        .map(|f| format!("Register/Update of {name:?}: {f} ({})", f.clause()));
    let links = r
        .link_notes
        .iter()
        .map(|n| format!("Register links of {name:?}: {n} ({})", n.clause()));
    query.chain(links).collect()
}

/// `path` with the Server instances 0 and `k` swapped (the cases' /1/0 is the device's
/// /1/k, and the other way round).
fn swap_account(path: Lwm2mPath, k: InstanceId) -> Lwm2mPath {
    let mut ids = path.ids();
    if ids.first() == Some(&1) && ids.len() >= 2 {
        if ids[1] == 0 {
            ids[1] = k.0;
        } else if ids[1] == k.0 {
            ids[1] = 0;
        }
        return Lwm2mPath::from_ids(&ids).unwrap_or(path);
    }
    path
}

/// `operation` with `f` applied to every path it names.
fn map_operation(operation: Operation, mut f: impl FnMut(Lwm2mPath) -> Lwm2mPath) -> Operation {
    match operation {
        Operation::Read { path, format } => Operation::Read {
            path: f(path),
            format,
        },
        Operation::Discover { path } => Operation::Discover { path: f(path) },
        Operation::Write {
            path,
            node,
            replace,
            format,
        } => Operation::Write {
            path: f(path),
            node,
            replace,
            format,
        },
        Operation::WriteAttributes { path, attributes } => Operation::WriteAttributes {
            path: f(path),
            attributes,
        },
        Operation::Execute { path, args } => Operation::Execute {
            path: f(path),
            args,
        },
        Operation::Delete { path } => Operation::Delete { path: f(path) },
        Operation::ReadComposite { paths, format } => Operation::ReadComposite {
            paths: paths.into_iter().map(&mut f).collect(),
            format,
        },
        Operation::WriteComposite { records, format } => Operation::WriteComposite {
            records: records
                .into_iter()
                .map(|r| Record {
                    path: f(r.path),
                    ..r
                })
                .collect(),
            format,
        },
        Operation::Observe { path, format } => Operation::Observe {
            path: f(path),
            format,
        },
        Operation::ObserveComposite { paths, format } => Operation::ObserveComposite {
            paths: paths.into_iter().map(&mut f).collect(),
            format,
        },
        other => other,
    }
}

/// Maps the device's Server instance `k` back to the cases' /1/0 in a response.
fn unswap_response(response: &mut Response, k: InstanceId, target: Lwm2mPath) {
    match &mut response.content {
        Some(Content::Records(records)) => {
            for r in records {
                r.path = swap_account(r.path, k);
            }
        }
        Some(Content::Links(links)) => {
            for l in links {
                l.path = swap_account(l.path, k);
            }
        }
        Some(Content::Node(lwm2m_proto::Node::Object(instances)))
            if target == Lwm2mPath::object(1) =>
        {
            let swapped = std::mem::take(instances)
                .into_iter()
                .map(|(i, inst)| {
                    let p = swap_account(Lwm2mPath::instance(1, i.0), k);
                    (p.instance_id().unwrap_or(i), inst)
                })
                .collect();
            *instances = swapped;
        }
        _ => {}
    }
}

/// The paths a scenario's steps name (background first), in step order, leaving out the
/// instances of an object named after a step that creates an instance of it: those the
/// case makes itself. Applicability checks these against what the device announces.
pub fn touched_paths<'a>(steps: impl IntoIterator<Item = &'a str>) -> Vec<Lwm2mPath> {
    let mut created: Vec<ObjectId> = Vec::new();
    let mut out: Vec<Lwm2mPath> = Vec::new();
    for text in steps {
        // What the Register lists is checked by that step itself (optional objects there
        // are configuration), not a precondition of the case.
        if text.contains("the registration lists") {
            continue;
        }
        let mut paths = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('/') {
            let tail = &rest[at..];
            let len = tail
                .char_indices()
                .skip(1)
                .find(|(_, c)| !(c.is_ascii_digit() || *c == '/'))
                .map_or(tail.len(), |(i, _)| i);
            let candidate = tail[..len].trim_end_matches('/');
            let preceded_ok = rest[..at]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == ':' || c == '.'));
            if candidate.len() > 1
                && preceded_ok
                && let Ok(p) = candidate.parse::<Lwm2mPath>()
            {
                paths.push(p);
            }
            rest = &tail[len.max(1)..];
        }
        for p in paths {
            let Some(o) = p.object_id() else { continue };
            if p.instance_id().is_some() && created.contains(&o) {
                continue;
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if text.contains("creates an instance of") {
            for p in text
                .split_whitespace()
                .filter_map(|w| w.parse::<Lwm2mPath>().ok())
            {
                if let Some(o) = p.object_id() {
                    created.push(o);
                }
            }
        }
    }
    out
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
    operation.path().unwrap_or(Lwm2mPath::Root)
}

/// The backend that runs `subject`, seeded with `seed`; `Err` says why no backend can run
/// the subject (every case is then not applicable: the device never registered, a socket
/// could not be bound).
pub fn open_backend(
    subject: &Subject,
    seed: u64,
    registry: Arc<lwm2m_proto::registry::Registry>,
) -> Result<Box<dyn Backend>, crate::bdd::network::BackendError> {
    Ok(match subject {
        Subject::InProcess { .. } => Box::new(InProcess::new(subject.clone(), seed, registry)),
        Subject::Device { .. } => Box::new(DeviceBackend::open(subject, registry)?),
        Subject::Server { .. } => Box::new(ServerBackend::open(subject, registry)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_paths_leave_out_created_instances_and_uris() {
        let steps = [
            "a client \"ets-dev\" with profile \"ets-1.1\"",
            "the server reads /3/0/0 in plain text",
            "the server writes \"coap://example.com:5683\" to /0/0/0 in plain text",
            "the server reads the composite /1/0, /16/0/0/1 in SenML JSON",
            "the server creates an instance of /16 in TLV with:",
            "the value of /16/1/0/0 is \"x\"",
            "the server deletes /16/0",
        ];
        let got: Vec<String> = touched_paths(steps)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            ["/3/0/0", "/0/0/0", "/1/0", "/16/0/0/1", "/16"],
            "the created /16/1 and the URI's path are left out"
        );
    }

    #[test]
    fn change_conditions() {
        let t = Thresholds {
            gt: Some(10.0),
            lt: None,
            st: Some(5.0),
        };
        assert!(t.any());
        assert!(t.met(9.0, 11.0), "crosses gt");
        assert!(t.met(1.0, 6.0), "a step of st");
        assert!(!t.met(1.0, 4.0), "neither");
        assert!(!Thresholds::default().any());
    }

    #[test]
    fn the_account_swaps_with_instance_0() {
        let k = InstanceId(1);
        let p = |s: &str| s.parse::<Lwm2mPath>().unwrap();
        assert_eq!(swap_account(p("/1/0/1"), k), p("/1/1/1"));
        assert_eq!(swap_account(p("/1/1/1"), k), p("/1/0/1"));
        assert_eq!(swap_account(p("/1/2"), k), p("/1/2"));
        assert_eq!(swap_account(p("/3/0/1"), k), p("/3/0/1"));
        assert_eq!(swap_account(p("/1"), k), p("/1"));
    }

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
