//! The handle to a running fleet: live counters, commands, stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lwm2m_proto::Lwm2mPath;
use lwm2m_proto::client::ClientState;
use lwm2m_proto::value::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::counters::{CountersSnapshot, FailureCause, Latencies, ProfileStats, merge_causes};
use super::{FleetError, Selector};

/// A command to the driver task.
#[derive(Debug)]
pub(super) enum Command {
    SetValue {
        selector: Selector,
        path: Lwm2mPath,
        value: Value,
    },
    Send {
        selector: Selector,
        paths: Vec<Lwm2mPath>,
    },
    TriggerUpdate {
        selector: Selector,
    },
    Wake {
        selector: Selector,
    },
    ExpireNat {
        selector: Selector,
    },
    Sleep {
        selector: Selector,
        duration: Duration,
    },
    Clients {
        reply: oneshot::Sender<Vec<ClientInfo>>,
    },
    Stop {
        grace: Duration,
        reply: oneshot::Sender<FleetReport>,
    },
}

/// One client as the fleet sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    /// Endpoint Client Name.
    pub endpoint: String,
    /// Index of its profile in [`FleetHandle::profiles`].
    pub profile: usize,
    /// Its machine's state.
    pub state: ClientState,
    /// The public address the servers see; `None` before its first datagram and after its
    /// NAT mapping expired.
    pub address: Option<SocketAddr>,
    /// Its radio is off: datagrams to it are dropped.
    pub asleep: bool,
}

/// Counters and latencies of one profile.
#[derive(Debug, Clone)]
pub struct ProfileReport {
    /// The profile's name.
    pub profile: String,
    /// Its counters.
    pub counters: CountersSnapshot,
    /// Its Register and Update latencies.
    pub latencies: Latencies,
    /// Its failures by cause, most frequent first, one example exchange each.
    pub failures: Vec<FailureCause>,
}

/// Counters and latencies of a fleet, per profile.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// One entry per profile, in the order profiles were first added.
    pub profiles: Vec<ProfileReport>,
}

impl FleetReport {
    pub(super) fn collect(names: &[String], stats: &[ProfileStats]) -> Self {
        Self {
            profiles: names
                .iter()
                .zip(stats)
                .map(|(name, s)| ProfileReport {
                    profile: name.clone(),
                    counters: s.counters.snapshot(),
                    latencies: s.latencies(),
                    failures: s.causes(),
                })
                .collect(),
        }
    }

    /// The counters of all profiles added up.
    pub fn total(&self) -> CountersSnapshot {
        let mut total = CountersSnapshot::default();
        for p in &self.profiles {
            total += p.counters;
        }
        total
    }

    /// The failure causes of all profiles, most frequent first.
    pub fn failures(&self) -> Vec<FailureCause> {
        let mut all = Vec::new();
        for p in &self.profiles {
            merge_causes(&mut all, &p.failures);
        }
        all
    }

    /// The latencies of all profiles merged.
    pub fn latencies(&self) -> Latencies {
        let mut all = Latencies::default();
        for p in &self.profiles {
            all.merge(&p.latencies);
        }
        all
    }
}

/// The handle to a running fleet. Cloneable; the fleet stops (without de-registering) when
/// the last handle is dropped, or de-registers everyone on [`FleetHandle::stop`].
#[derive(Debug, Clone)]
pub struct FleetHandle {
    commands: mpsc::UnboundedSender<Command>,
    profiles: Arc<[String]>,
    stats: Arc<[ProfileStats]>,
    task: Arc<std::sync::Mutex<Option<JoinHandle<FleetReport>>>>,
}

impl FleetHandle {
    pub(super) fn new(
        commands: mpsc::UnboundedSender<Command>,
        profiles: Vec<String>,
        stats: Arc<[ProfileStats]>,
        task: JoinHandle<FleetReport>,
    ) -> Self {
        Self {
            commands,
            profiles: profiles.into(),
            stats,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }
    }

    /// The profile names, in the order they were first added.
    pub fn profiles(&self) -> &[String] {
        &self.profiles
    }

    /// The live counters of each profile, read now.
    pub fn counters(&self) -> Vec<(String, CountersSnapshot)> {
        self.profiles
            .iter()
            .zip(self.stats.iter())
            .map(|(p, s)| (p.clone(), s.counters.snapshot()))
            .collect()
    }

    /// The live counters of all profiles added up.
    pub fn total(&self) -> CountersSnapshot {
        let mut total = CountersSnapshot::default();
        for s in self.stats.iter() {
            total += s.counters.snapshot();
        }
        total
    }

    /// The failure causes of all profiles now, most frequent first.
    pub fn failures(&self) -> Vec<FailureCause> {
        let mut all = Vec::new();
        for s in self.stats.iter() {
            merge_causes(&mut all, &s.causes());
        }
        all
    }

    /// Counters, latencies and failure causes now, per profile.
    pub fn report(&self) -> FleetReport {
        FleetReport::collect(&self.profiles, &self.stats)
    }

    fn send(&self, command: Command) -> Result<(), FleetError> {
        self.commands.send(command).map_err(|_| FleetError::Stopped)
    }

    /// Sets a resource value on the selected clients (a sensor reading); their observations
    /// are evaluated (Core TS 1.1 §6.4.2).
    pub fn set_value(
        &self,
        selector: Selector,
        path: Lwm2mPath,
        value: Value,
    ) -> Result<(), FleetError> {
        self.send(Command::SetValue {
            selector,
            path,
            value,
        })
    }

    /// The selected clients send the values at `paths` (Send operation, Core TS 1.1 §6.4.4).
    pub fn send_values(&self, selector: Selector, paths: Vec<Lwm2mPath>) -> Result<(), FleetError> {
        self.send(Command::Send { selector, paths })
    }

    /// The selected clients send an Update now (Core TS 1.1 §6.2.2).
    pub fn trigger_update(&self, selector: Selector) -> Result<(), FleetError> {
        self.send(Command::TriggerUpdate { selector })
    }

    /// Wakes the selected clients now: radio on, and their machines wake (queue mode,
    /// Core TS 1.1 §6.5).
    pub fn wake(&self, selector: Selector) -> Result<(), FleetError> {
        self.send(Command::Wake { selector })
    }

    /// Expires the NAT mappings of the selected clients now: datagrams to their current
    /// addresses are dropped and their next datagram leaves from a new address and port.
    pub fn expire_nat(&self, selector: Selector) -> Result<(), FleetError> {
        self.send(Command::ExpireNat { selector })
    }

    /// Turns the radio of the selected clients off for `duration`: datagrams to them are
    /// dropped; then they wake ([`lwm2m_proto::client::Lwm2mClient::wake`]).
    pub fn sleep(&self, selector: Selector, duration: Duration) -> Result<(), FleetError> {
        self.send(Command::Sleep { selector, duration })
    }

    /// Every client: endpoint, state, public address.
    pub async fn clients(&self) -> Result<Vec<ClientInfo>, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Clients { reply })?;
        rx.await.map_err(|_| FleetError::Stopped)
    }

    /// Stops the fleet: every registered client de-registers (Core TS 1.1 §6.2.3), the
    /// fleet waits until none is busy with a server or `grace` has passed, then its task
    /// ends. Returns the final counters. Calling it again (from a clone) waits for the same
    /// end.
    pub async fn stop(&self, grace: Duration) -> Result<FleetReport, FleetError> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Stop { grace, reply }).is_err() {
            return self.join().await;
        }
        match rx.await {
            Ok(report) => Ok(report),
            Err(_) => self.join().await,
        }
    }

    /// Waits for the driver task to end and returns its report.
    async fn join(&self) -> Result<FleetReport, FleetError> {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        match task {
            Some(t) => t.await.map_err(|_| FleetError::Stopped),
            None => Ok(self.report()),
        }
    }
}
