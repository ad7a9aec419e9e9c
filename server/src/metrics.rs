//! Prometheus metrics of `serve` (`GET /metrics`, text exposition format 0.0.4), and the
//! INFO log lines of registrations, updates, de-registrations and refusals.
//!
//! A collector task subscribes to the [`EventBus`] and counts what the drivers report:
//! machine events, DTLS security events, and every plain-CoAP datagram (COAPLOG), whose
//! requests are matched to their answers by peer and token for the counts by operation and
//! code and the latency histograms. CoAP inside DTLS is encrypted on the socket and so is
//! not in the request counts (its handshakes are).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use lwm2m_proto::coap::MessageClass;
use lwm2m_proto::coap::message::decode;
use lwm2m_proto::hash::HashMap;
use lwm2m_proto::interface::RequestKind;
use lwm2m_proto::server::ServerEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::driver::ServerHandle;
use crate::events::{Direction, Event, EventBus, Role, SecurityEvent};

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Requests waiting for their answer kept at most; older ones are dropped beyond that.
const MAX_PENDING: usize = 10_000;
/// A request unanswered for this long is forgotten (counted with code `none`).
const PENDING_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Counters {
    registrations: u64,
    updates: u64,
    address_changes: u64,
    deregistrations: BTreeMap<&'static str, u64>,
    refusals: BTreeMap<&'static str, u64>,
    notifications: u64,
    sends: u64,
    requests: BTreeMap<(&'static str, &'static str, String), u64>,
    latency: BTreeMap<(&'static str, &'static str), Histogram>,
    pending: HashMap<(SocketAddr, Vec<u8>), (&'static str, &'static str, SystemTime)>,
    handshakes: BTreeMap<&'static str, u64>,
    handshake_failures: BTreeMap<&'static str, u64>,
    events_dropped: u64,
}

/// The counters behind `/metrics`.
pub struct Metrics {
    counters: Mutex<Counters>,
    server: ServerHandle,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Server => "server",
        Role::Bootstrap => "bootstrap",
    }
}

/// The LwM2M operation of a CoAP request, from its method, path and options (Core TS 1.1
/// §8.2 table 8.2.6-1 for the client interfaces, §6 for the server's own).
fn operation(role: Role, dir: Direction, p: &lwm2m_proto::coap::Packet) -> &'static str {
    use RequestKind as K;
    let Some(kind) = RequestKind::of(p) else {
        return "other";
    };
    match (role, dir) {
        (Role::Server, Direction::In) => match kind {
            K::Register => "register",
            K::Send => "send",
            K::Update => "update",
            K::Deregister => "deregister",
            _ => "other",
        },
        (Role::Bootstrap, Direction::In) => match kind {
            K::BootstrapRequest => "bootstrap_request",
            K::BootstrapPack => "bootstrap_pack",
            _ => "other",
        },
        (Role::Server, Direction::Out) => match kind {
            K::Observe => "observe",
            K::CancelObservation => "cancel_observe",
            K::Discover => "discover",
            K::Read => "read",
            K::ObserveComposite => "observe_composite",
            K::CancelObserveComposite => "cancel_observe_composite",
            K::ReadComposite => "read_composite",
            K::WriteComposite => "write_composite",
            K::WriteAttributes => "write_attributes",
            K::Write => "write",
            K::Create => "create",
            K::Execute => "execute",
            K::Delete => "delete",
            _ => "other",
        },
        (Role::Bootstrap, Direction::Out) => match kind {
            K::Read | K::Discover => "bootstrap_discover_or_read",
            K::Write => "bootstrap_write",
            K::Delete => "bootstrap_delete",
            K::BootstrapFinish => "bootstrap_finish",
            _ => "other",
        },
    }
}

impl Metrics {
    /// Counters for `server`, fed by a task subscribed to `bus` from now on (it ends when
    /// the bus closes or the counters are dropped). Outside a tokio runtime there is no
    /// task: only the gauges read from the server move.
    pub fn start(server: ServerHandle, bus: &EventBus) -> Arc<Self> {
        let m = Arc::new(Self {
            counters: Mutex::default(),
            server,
        });
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("metrics: no tokio runtime, event counters stay at zero");
            return m;
        };
        let mut rx = bus.subscribe();
        let weak = Arc::downgrade(&m);
        runtime.spawn(async move {
            loop {
                let event = rx.recv().await;
                let Some(m) = weak.upgrade() else { return };
                match event {
                    Ok(e) => m.record(&e),
                    Err(RecvError::Lagged(n)) => m.lock().events_dropped += n,
                    Err(RecvError::Closed) => return,
                }
            }
        });
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, event: &Event) {
        match event {
            Event::Server(e) => self.server_event(e),
            Event::Bootstrap(e) => {
                use lwm2m_proto::bootstrap::server::BootstrapEvent as B;
                if let B::Refused { .. } = e {
                    tracing::info!("bootstrap refused: {e:?}");
                    *self.lock().refusals.entry("bootstrap").or_default() += 1;
                }
            }
            Event::Security(role, s) => {
                let mut c = self.lock();
                match s {
                    SecurityEvent::Established { .. } => {
                        *c.handshakes.entry(role_name(*role)).or_default() += 1;
                    }
                    SecurityEvent::HandshakeFailed { .. } => {
                        *c.handshake_failures.entry(role_name(*role)).or_default() += 1;
                    }
                    SecurityEvent::IdentityMismatch {
                        identity, endpoint, ..
                    } => {
                        tracing::info!(
                            "{}: refused {endpoint}: DTLS identity {identity} belongs elsewhere",
                            role.name()
                        );
                        *c.refusals.entry("identity_mismatch").or_default() += 1;
                    }
                    SecurityEvent::Insecure { peer, endpoint } => {
                        tracing::info!(
                            "{}: refused plain-CoAP Register of {endpoint} from {peer}: it has credentials",
                            role.name()
                        );
                        *c.refusals.entry("insecure").or_default() += 1;
                    }
                    _ => {}
                }
            }
            Event::CoapLog(d) => self.datagram(d),
            // Counted by the instance it happened on.
            Event::Remote { .. } => {}
        }
    }

    fn server_event(&self, e: &ServerEvent) {
        let mut c = self.lock();
        match e {
            ServerEvent::Registered {
                registration: r, ..
            } => {
                tracing::info!(
                    "registered {} ({}) from {}, lifetime {}s",
                    r.endpoint,
                    r.id,
                    r.address,
                    r.lifetime
                );
                c.registrations += 1;
            }
            ServerEvent::Updated {
                registration: r,
                previous_address,
            } => {
                c.updates += 1;
                match previous_address {
                    Some(prev) => {
                        c.address_changes += 1;
                        tracing::info!("update of {}: address {prev} -> {}", r.endpoint, r.address);
                    }
                    None => tracing::debug!("update of {}", r.endpoint),
                }
            }
            ServerEvent::Deregistered { registration: r } => {
                tracing::info!("de-registered {} ({})", r.endpoint, r.id);
                *c.deregistrations.entry("deregistered").or_default() += 1;
            }
            ServerEvent::Expired { registration: r } => {
                tracing::info!("registration of {} ({}) expired", r.endpoint, r.id);
                *c.deregistrations.entry("expired").or_default() += 1;
            }
            ServerEvent::RegistrationRefused { peer, code, reason } => {
                tracing::info!(
                    "refused a Register from {peer}: {}.{:02} {reason}",
                    code.0,
                    code.1
                );
                *c.refusals.entry("registration").or_default() += 1;
            }
            ServerEvent::RequestRefused { peer, code, reason } => {
                tracing::info!(
                    "refused a request from {peer}: {}.{:02} {reason}",
                    code.0,
                    code.1
                );
                *c.refusals.entry("request").or_default() += 1;
            }
            ServerEvent::Notification { .. } => c.notifications += 1,
            ServerEvent::Send { .. } => c.sends += 1,
            _ => {}
        }
    }

    fn datagram(&self, d: &crate::events::Datagram) {
        let Ok(p) = decode(&d.bytes) else { return };
        let key = (d.peer, p.get_token().to_vec());
        let mut c = self.lock();
        match p.header.code {
            MessageClass::Request(_) => {
                let op = operation(d.role, d.direction, &p);
                if c.pending.len() >= MAX_PENDING {
                    let now = SystemTime::now();
                    let stale: Vec<_> = c
                        .pending
                        .iter()
                        .filter(|(_, (_, _, at))| {
                            now.duration_since(*at).unwrap_or_default() > PENDING_TTL
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in stale {
                        if let Some((role, op, _)) = c.pending.remove(&k) {
                            *c.requests.entry((role, op, "none".into())).or_default() += 1;
                        }
                    }
                    if c.pending.len() >= MAX_PENDING {
                        return;
                    }
                }
                // A retransmission keeps the first send time.
                c.pending
                    .entry(key)
                    .or_insert((role_name(d.role), op, d.at));
            }
            MessageClass::Response(_) => {
                if let Some((role, op, at)) = c.pending.remove(&key) {
                    let code = code_text(u8::from(p.header.code));
                    *c.requests.entry((role, op, code)).or_default() += 1;
                    let secs = d.at.duration_since(at).unwrap_or_default().as_secs_f64();
                    c.latency.entry((role, op)).or_default().observe(secs);
                }
            }
            _ => {}
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let regs = self.server.registrations().all();
        let sleeping = regs.iter().filter(|e| e.sleeping).count();
        let c = self.lock();
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "lwm2m_registrations",
            "gauge",
            "Clients registered now.",
        );
        let _ = writeln!(o, "lwm2m_registrations {}", regs.len());
        head(
            &mut o,
            "lwm2m_sleeping_clients",
            "gauge",
            "Queue-mode clients asleep now.",
        );
        let _ = writeln!(o, "lwm2m_sleeping_clients {sleeping}");
        head(
            &mut o,
            "lwm2m_registrations_total",
            "counter",
            "Registers accepted.",
        );
        let _ = writeln!(o, "lwm2m_registrations_total {}", c.registrations);
        head(
            &mut o,
            "lwm2m_updates_total",
            "counter",
            "Registration Updates accepted.",
        );
        let _ = writeln!(o, "lwm2m_updates_total {}", c.updates);
        head(
            &mut o,
            "lwm2m_address_changes_total",
            "counter",
            "Updates from a new address.",
        );
        let _ = writeln!(o, "lwm2m_address_changes_total {}", c.address_changes);
        head(
            &mut o,
            "lwm2m_deregistrations_total",
            "counter",
            "Registrations ended, by reason.",
        );
        for reason in ["deregistered", "expired"] {
            let n = c.deregistrations.get(reason).copied().unwrap_or(0);
            let _ = writeln!(o, "lwm2m_deregistrations_total{{reason=\"{reason}\"}} {n}");
        }
        head(
            &mut o,
            "lwm2m_refusals_total",
            "counter",
            "Requests refused, by kind.",
        );
        for (k, n) in &c.refusals {
            let _ = writeln!(o, "lwm2m_refusals_total{{kind=\"{k}\"}} {n}");
        }
        head(
            &mut o,
            "lwm2m_notifications_total",
            "counter",
            "Notifications received.",
        );
        let _ = writeln!(o, "lwm2m_notifications_total {}", c.notifications);
        head(
            &mut o,
            "lwm2m_sends_total",
            "counter",
            "Send operations received.",
        );
        let _ = writeln!(o, "lwm2m_sends_total {}", c.sends);
        head(
            &mut o,
            "lwm2m_requests_total",
            "counter",
            "Plain-CoAP requests answered, by server, operation and response code (none: never answered).",
        );
        for ((role, op, code), n) in &c.requests {
            let _ = writeln!(
                o,
                "lwm2m_requests_total{{server=\"{role}\",operation=\"{op}\",code=\"{code}\"}} {n}"
            );
        }
        head(
            &mut o,
            "lwm2m_requests_pending",
            "gauge",
            "Plain-CoAP requests sent or received and not answered yet (queued for the peer or in flight).",
        );
        let _ = writeln!(o, "lwm2m_requests_pending {}", c.pending.len());
        head(
            &mut o,
            "lwm2m_request_duration_seconds",
            "histogram",
            "Time from a request to its answer, by server and operation.",
        );
        for ((role, op), h) in &c.latency {
            let labels = format!("server=\"{role}\",operation=\"{op}\"");
            for (b, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    o,
                    "lwm2m_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                o,
                "lwm2m_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "lwm2m_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "lwm2m_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        head(
            &mut o,
            "lwm2m_dtls_handshakes_total",
            "counter",
            "DTLS handshakes completed, by server.",
        );
        for role in ["server", "bootstrap"] {
            let n = c.handshakes.get(role).copied().unwrap_or(0);
            let _ = writeln!(o, "lwm2m_dtls_handshakes_total{{server=\"{role}\"}} {n}");
        }
        head(
            &mut o,
            "lwm2m_dtls_handshake_failures_total",
            "counter",
            "DTLS handshakes failed, by server.",
        );
        for role in ["server", "bootstrap"] {
            let n = c.handshake_failures.get(role).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "lwm2m_dtls_handshake_failures_total{{server=\"{role}\"}} {n}"
            );
        }
        head(
            &mut o,
            "lwm2m_events_dropped_total",
            "counter",
            "Events the metrics collector lost because it fell behind the event bus.",
        );
        let _ = writeln!(o, "lwm2m_events_dropped_total {}", c.events_dropped);
        o
    }
}

fn code_text(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

/// `GET /metrics`, to merge into the API router (behind its token).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
                    .into_response()
            }),
        )
        .with_state(metrics)
}

/// Serves `GET /metrics` with whatever `render` answers (text exposition format), without
/// a token, on `listener` until the task is dropped: the `--metrics ADDR` of `simulate`.
pub async fn serve_text(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<()> {
    let render = Arc::new(render);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(2.0);
        assert_eq!(h.counts[0], 0);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BUCKETS.len() - 1], 2);
        assert_eq!(h.count, 2);
        assert_eq!(code_text(0x45), "2.05");
        assert_eq!(code_text(0x84), "4.04");
    }

    #[tokio::test]
    async fn serve_text_answers_the_rendered_text() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_text(listener, || "x_total 7\n".to_owned()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        task.abort();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
        assert!(answer.ends_with("x_total 7\n"), "{answer}");
    }
}
