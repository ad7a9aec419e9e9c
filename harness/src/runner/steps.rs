//! Running the timeline: each step at its time, on the first N clients of its group, and its
//! outcome as a report case.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_proto::server::{OpError, Operation};
use lwm2m_server::driver::{DriverError, ServerHandle};
use lwm2m_simulator::fleet::{FleetHandle, Selector};
use tokio::task::JoinSet;

use super::metrics::Shared;
use super::scenario::{Step, StepKind, code_text};
use crate::report::{CaseResult, Status};

/// What the steps act on.
pub struct Context {
    /// The in-process LwM2M Server (`None` for an external one).
    pub server: Option<ServerHandle>,
    /// One fleet per group.
    pub fleets: Vec<FleetHandle>,
    /// Every endpoint of each group, in client order.
    pub endpoints: Vec<Vec<String>>,
    /// Group names (the case subjects).
    pub groups: Vec<String>,
    /// The live state of the run.
    pub shared: Arc<Shared>,
    /// The scenario file (the case's feature).
    pub feature: String,
}

/// The evidence every case points at.
pub fn evidence() -> Vec<String> {
    vec!["exchanges.log".into(), "run.pcap".into()]
}

impl Context {
    fn case(&self, step: &Step, status: Status, message: String, started: Instant) -> CaseResult {
        CaseResult {
            case: format!("step-{}", step.number),
            title: format!(
                "at {}: {}",
                lwm2m_simulator::duration::format(step.at),
                step.title
            ),
            feature: self.feature.clone(),
            subject: self.groups.get(step.group).cloned().unwrap_or_default(),
            status,
            message: Some(message),
            evidence: evidence(),
            findings: Vec::new(),
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }

    fn selector(&self, step: &Step) -> Selector {
        let count = self.endpoints.get(step.group).map_or(0, Vec::len);
        if step.clients >= count {
            Selector::All
        } else {
            Selector::Range(0..step.clients)
        }
    }

    /// Runs one step (already at its time) and reports it.
    pub async fn run(self: Arc<Self>, step: Step) -> CaseResult {
        let started = Instant::now();
        let Some(fleet) = self.fleets.get(step.group) else {
            return self.case(&step, Status::Failed, "no such group".into(), started);
        };
        let selector = self.selector(&step);
        let sent = match &step.kind {
            StepKind::Requests(ops) => return self.requests(&step, ops, started).await,
            StepKind::Update => return self.update(&step, fleet, selector, started).await,
            StepKind::NatTimeout => fleet.expire_nat(selector),
            StepKind::Sleep(d) => fleet.sleep(selector, *d),
            StepKind::Wake => fleet.wake(selector),
        };
        match sent {
            Ok(()) => self.case(
                &step,
                Status::Passed,
                format!("done for {} clients", step.clients),
                started,
            ),
            Err(e) => self.case(&step, Status::Failed, e.to_string(), started),
        }
    }

    /// Every selected client gets the operations one after the other; each must be answered
    /// with the expected code within the step's timeout (for the whole list).
    async fn requests(&self, step: &Step, ops: &[Operation], started: Instant) -> CaseResult {
        let Some(server) = self.server.clone() else {
            return self.case(
                step,
                Status::NotApplicable,
                "requests need the in-process LwM2M Server".into(),
                started,
            );
        };
        let endpoints: Vec<String> = self
            .endpoints
            .get(step.group)
            .map(|e| e.iter().take(step.clients).cloned().collect())
            .unwrap_or_default();
        let mut tasks = JoinSet::new();
        for endpoint in endpoints {
            let server = server.clone();
            let ops = ops.to_vec();
            let shared = self.shared.clone();
            let (expect, timeout) = (step.expect, step.timeout);
            tasks.spawn(async move {
                let deadline = tokio::time::Instant::now() + timeout;
                let mut latencies = Vec::new();
                for op in ops {
                    let path = op_path(&op);
                    let sent = Instant::now();
                    let outcome =
                        tokio::time::timeout_at(deadline, server.request(&endpoint, op)).await;
                    let (key, detail) = match outcome {
                        Err(_) => ("no answer in time".to_owned(), String::new()),
                        Ok(Err(DriverError::Op(OpError::Exchange { error, .. }))) => {
                            (format!("exchange failed: {error}"), String::new())
                        }
                        Ok(Err(e)) => (first_words(&e.to_string()), e.to_string()),
                        Ok(Ok(r)) => {
                            latencies.push(sent.elapsed());
                            if let Some(obs) = r.observation {
                                shared.lock().observations.entry(obs).or_default().started =
                                    Some(sent);
                            }
                            let code = code_text(r.code);
                            if r.code == expect {
                                continue;
                            }
                            (code, r.diagnostic.unwrap_or_default())
                        }
                    };
                    return (endpoint, Err((key, format!("{path}: {detail}"))), latencies);
                }
                (endpoint, Ok(()), latencies)
            });
        }
        let mut ok = 0usize;
        let mut failures: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let mut latencies: Vec<Duration> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(()), l)) => {
                    ok += 1;
                    latencies.extend(l);
                }
                Ok((endpoint, Err((key, detail)), l)) => {
                    latencies.extend(l);
                    failures.entry(key).or_default().push((endpoint, detail));
                }
                Err(e) => failures
                    .entry("task failed".into())
                    .or_default()
                    .push((String::new(), e.to_string())),
            }
        }
        latencies.sort();
        let pct = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        let mut message = format!(
            "{ok}/{} clients answered {} ({} requests; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
            step.clients,
            code_text(step.expect),
            latencies.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
        for (key, list) in &failures {
            message.push_str(&format!("\n{} clients: {key}", list.len()));
            for (endpoint, detail) in list.iter().take(3) {
                message.push_str(&format!("\n  {endpoint} {detail}"));
            }
        }
        let status = if failures.is_empty() {
            Status::Passed
        } else {
            Status::Failed
        };
        self.case(step, status, message, started)
    }

    /// The clients send an Update; the in-process server must receive one from each (the
    /// message counts those that came from a new address); with an external server, the
    /// fleet's count of successful Updates must grow by the number of clients.
    async fn update(
        &self,
        step: &Step,
        fleet: &FleetHandle,
        selector: Selector,
        started: Instant,
    ) -> CaseResult {
        let before = fleet.total().updates;
        if let Err(e) = fleet.trigger_update(selector) {
            return self.case(step, Status::Failed, e.to_string(), started);
        }
        let deadline = tokio::time::Instant::now() + step.timeout;
        let endpoints: Vec<String> = self
            .endpoints
            .get(step.group)
            .map(|e| e.iter().take(step.clients).cloned().collect())
            .unwrap_or_default();
        let want = endpoints.len();
        let tally = || -> (usize, usize) {
            if self.server.is_none() {
                let n = fleet.total().updates.saturating_sub(before);
                return (usize::try_from(n).unwrap_or(usize::MAX), 0);
            }
            let live = self.shared.lock();
            endpoints
                .iter()
                .filter_map(|e| live.updates.get(e))
                .filter(|(at, _)| *at >= started)
                .fold((0, 0), |(n, r), (_, rebound)| {
                    (n + 1, r + usize::from(*rebound))
                })
        };
        loop {
            let changed = self.shared.changed.notified();
            let (got, rebound) = tally();
            if got >= want {
                let msg = if self.server.is_some() {
                    format!(
                        "the server received an Update from all {want} clients, {rebound} of them from a new address (NAT rebinding)"
                    )
                } else {
                    format!("the fleet counted {got} successful Updates")
                };
                return self.case(step, Status::Passed, msg, started);
            }
            let poll = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                () = changed, if self.server.is_some() => {}
                () = poll, if self.server.is_none() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return self.case(
                        step,
                        Status::Failed,
                        format!("{got}/{want} Updates arrived within {}", lwm2m_simulator::duration::format(step.timeout)),
                        started,
                    );
                }
            }
        }
    }
}

fn op_path(op: &Operation) -> String {
    op.path()
        .map_or_else(|| op.name().to_owned(), |p| p.to_string())
}

/// An error message up to its first detail, to group failures by kind.
fn first_words(s: &str) -> String {
    s.split([':', '"']).next().unwrap_or(s).trim().to_owned()
}
