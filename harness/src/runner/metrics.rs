//! What the servers' events say during a run: latencies per operation, operations completed
//! per second, notifications, and the live state the timeline's checks wait on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2m_proto::bootstrap::server::BootstrapEvent;
use lwm2m_proto::server::{ObservationId, ServerEvent};
use lwm2m_server::events::Event;
use tokio::sync::{Notify, broadcast, oneshot};

use crate::record::Latencies;

/// One observation the timeline established.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The observed client's group (known from its first notification).
    pub group: Option<String>,
    /// When the Observe request was sent.
    pub started: Option<Instant>,
    /// The first notification after the Observe's answer.
    pub first: Option<Instant>,
    /// The latest notification.
    pub last: Option<Instant>,
}

/// State the timeline reads while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// The last Update of each endpoint: when, and whether it came from a new address
    /// (NAT rebinding).
    pub updates: HashMap<String, (Instant, bool)>,
    /// Endpoints whose bootstrap finished.
    pub bootstrapped: HashSet<String>,
    /// Observations.
    pub observations: HashMap<ObservationId, Observed>,
    /// Every address the watched endpoints were seen at.
    pub addresses: HashMap<String, Vec<SocketAddr>>,
}

/// The shared live state and the signal that it changed.
#[derive(Debug, Default)]
pub struct Shared {
    /// The state.
    pub live: Mutex<Live>,
    /// Woken after every Update and finished bootstrap.
    pub changed: Notify,
}

impl Shared {
    /// Locks the live state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the events added up to.
#[derive(Debug, Default)]
pub struct Collected {
    /// Latencies per operation (server side: request sent to response; bootstrap: session),
    /// each with its time and the client's group. Operations that waited in the server's
    /// queue for a sleeping client to wake are `OPERATION-queued` (`read-queued`).
    pub latencies: Latencies,
    /// Operations completed in each second of the run.
    pub throughput: Vec<u64>,
    /// Event counts.
    pub counters: BTreeMap<String, u64>,
}

/// Who the collector listens for: `watched` endpoints get their addresses recorded (the
/// sample clients of the network-usage table); `groups` names each endpoint's group.
#[derive(Debug, Default)]
pub struct Clients {
    /// The sample clients.
    pub watched: HashSet<String>,
    /// Endpoint to group.
    pub groups: HashMap<String, String>,
}

/// Gathers events until `stop` fires, then drains what is queued. Times are taken from
/// `t0`, the start of the run.
pub async fn collect(
    mut events: broadcast::Receiver<Arc<Event>>,
    shared: Arc<Shared>,
    clients: Clients,
    t0: Instant,
    mut stop: oneshot::Receiver<()>,
) -> Collected {
    let mut c = Collector {
        out: Collected::default(),
        shared,
        watched: clients.watched,
        groups: clients.groups,
        awake_since: HashMap::new(),
        t0,
    };
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => c.event(&e),
                Err(broadcast::error::RecvError::Lagged(n)) => c.count("events.lost", n),
                Err(broadcast::error::RecvError::Closed) => return c.out,
            },
            _ = &mut stop => break,
        }
    }
    loop {
        match events.try_recv() {
            Ok(e) => c.event(&e),
            Err(broadcast::error::TryRecvError::Lagged(n)) => c.count("events.lost", n),
            Err(_) => return c.out,
        }
    }
}

struct Collector {
    out: Collected,
    shared: Arc<Shared>,
    watched: HashSet<String>,
    groups: HashMap<String, String>,
    /// When each queue-mode client last woke (its first message after sleeping).
    awake_since: HashMap<String, Instant>,
    t0: Instant,
}

impl Collector {
    fn count(&mut self, name: &str, n: u64) {
        *self.out.counters.entry(name.to_owned()).or_default() += n;
    }

    fn completed_now(&mut self) {
        let second = usize::try_from(self.t0.elapsed().as_secs()).unwrap_or(usize::MAX);
        if second < 24 * 3600 {
            if self.out.throughput.len() <= second {
                self.out.throughput.resize(second + 1, 0);
            }
            if let Some(slot) = self.out.throughput.get_mut(second) {
                *slot += 1;
            }
        }
    }

    /// Records a latency completed `now` by a client of `endpoint`'s group.
    fn latency(&mut self, operation: &str, endpoint: &str, now: Instant, latency: Duration) {
        let group = self.groups.get(endpoint).map(String::as_str);
        let at = now.saturating_duration_since(self.t0);
        self.out.latencies.record_at(operation, group, at, latency);
    }

    fn seen_at(&mut self, endpoint: &str, address: SocketAddr) {
        if self.watched.contains(endpoint) {
            let mut live = self.shared.lock();
            let list = live.addresses.entry(endpoint.to_owned()).or_default();
            if !list.contains(&address) {
                list.push(address);
            }
        }
    }

    fn event(&mut self, e: &Event) {
        let now = Instant::now();
        match e {
            Event::Server(s) => self.server(now, s),
            Event::Bootstrap(b) => self.bootstrap(now, b),
            _ => {}
        }
    }

    fn server(&mut self, now: Instant, e: &ServerEvent) {
        match e {
            ServerEvent::Registered { registration, .. } => {
                self.count("server.registrations", 1);
                self.completed_now();
                self.seen_at(&registration.endpoint, registration.address);
            }
            ServerEvent::Updated {
                registration,
                previous_address,
            } => {
                self.count("server.updates", 1);
                if previous_address.is_some() {
                    self.count("server.rebindings", 1);
                }
                self.completed_now();
                self.seen_at(&registration.endpoint, registration.address);
                self.shared.lock().updates.insert(
                    registration.endpoint.clone(),
                    (now, previous_address.is_some()),
                );
                self.shared.changed.notify_waiters();
            }
            ServerEvent::Deregistered { .. } => {
                self.count("server.deregistrations", 1);
                self.completed_now();
            }
            ServerEvent::Expired { .. } => self.count("server.expirations", 1),
            ServerEvent::RegistrationRefused { .. } => {
                self.count("server.registrations_refused", 1)
            }
            ServerEvent::RequestRefused { .. } => self.count("server.requests_refused", 1),
            ServerEvent::Malformed { .. } => self.count("server.malformed", 1),
            ServerEvent::Sleeping { .. } => self.count("server.sleeping", 1),
            ServerEvent::Awake { endpoint } => {
                self.count("server.awake", 1);
                self.awake_since.insert(endpoint.clone(), now);
            }
            ServerEvent::Completed {
                endpoint,
                operation,
                result,
                latency,
                ..
            } => {
                self.completed_now();
                match result {
                    Ok(_) => {
                        self.count(&format!("server.{operation}.answered"), 1);
                        // Sent (or queued) before the client's latest wake-up: it waited
                        // in the queue while the client slept.
                        let sent = now.checked_sub(*latency);
                        let queued = match (sent, self.awake_since.get(endpoint)) {
                            (Some(sent), Some(&woke)) => woke > sent,
                            _ => false,
                        };
                        let name = match queued {
                            true => format!("{operation}-queued"),
                            false => (*operation).to_owned(),
                        };
                        self.latency(&name, endpoint, now, *latency);
                    }
                    Err(_) => self.count(&format!("server.{operation}.failed"), 1),
                }
            }
            ServerEvent::Notification {
                observation,
                endpoint,
                ..
            } => {
                self.count("server.notifications", 1);
                let mut live = self.shared.lock();
                let o = live.observations.entry(*observation).or_default();
                if let Some(last) = o.last {
                    let period = now.saturating_duration_since(last);
                    o.last = Some(now);
                    drop(live);
                    self.latency("notification-period", endpoint, now, period);
                } else {
                    o.first = Some(now);
                    o.last = Some(now);
                    o.group = self.groups.get(endpoint).cloned();
                }
            }
            ServerEvent::ObservationEnded { .. } => self.count("server.observations_ended", 1),
            _ => {}
        }
    }

    fn bootstrap(&mut self, now: Instant, e: &BootstrapEvent) {
        match e {
            BootstrapEvent::SessionStarted { endpoint, peer, .. } => {
                self.count("bootstrap.sessions", 1);
                self.seen_at(endpoint, *peer);
            }
            BootstrapEvent::Finished { endpoint, duration } => {
                self.count("bootstrap.finished", 1);
                self.completed_now();
                self.latency("bootstrap", endpoint, now, *duration);
                self.shared.lock().bootstrapped.insert(endpoint.clone());
                self.shared.changed.notify_waiters();
            }
            BootstrapEvent::Failed { .. } => self.count("bootstrap.failed", 1),
            BootstrapEvent::Refused { .. } => self.count("bootstrap.refused", 1),
            _ => {}
        }
    }
}

/// Adds "observe-to-first-notification": from each Observe the timeline sent to the first
/// notification that followed (timed from `t0`, the start of the run).
pub fn observe_to_first(shared: &Shared, latencies: &mut Latencies, t0: Instant) {
    let live = shared.lock();
    for o in live.observations.values() {
        if let (Some(started), Some(first)) = (o.started, o.first)
            && first >= started
        {
            latencies.record_at(
                "observe-to-first-notification",
                o.group.as_deref(),
                first.saturating_duration_since(t0),
                first - started,
            );
        }
    }
}
