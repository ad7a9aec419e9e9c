//! The run folder: report.json/html, junit.xml, run.pcap, exchanges.log, histograms and
//! the network-usage tables (with DTLS: keys.log, written by the server as it goes, and
//! the DTLS accounting).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use lwm2m_proto::admission::{InterfaceRequest, classify};
use lwm2m_proto::coap::{Counters, message};
use lwm2m_simulator::fleet::{CountersSnapshot, FleetReport};

use super::metrics::{self, Collected, Shared};
use super::{Plan, RunOptions, RunOutcome};
use crate::record::Latencies;
use crate::record::capture::{self, Captured};
use crate::report::charts::{Charts, ClientsPoint, SecondLatency, TimelineMark};
use crate::report::dtls::{self as dtls_usage, DtlsUsage, Listener};
use crate::report::merge::{
    ENDPOINTS_FILE, FAILURES_FILE, FAILURES_SECTION, Failure, failures_text,
};
use crate::report::usage::{self, ExchangeUsage};
use crate::report::{self, CaseResult, RunReport, Subject, ThroughputPoint};

/// Where the servers were.
pub struct ServerInfo {
    pub server: SocketAddr,
    pub dtls: Option<SocketAddr>,
    pub server_in_process: bool,
    pub bootstrap: Option<SocketAddr>,
    /// The in-process Bootstrap Server's DTLS listener.
    pub bootstrap_dtls: Option<SocketAddr>,
    pub bootstrap_in_process: bool,
}

impl ServerInfo {
    /// The DTLS listeners, the LwM2M Server's first.
    fn listeners(&self) -> Vec<(Listener, SocketAddr)> {
        [
            (Listener::Server, self.dtls),
            (Listener::Bootstrap, self.bootstrap_dtls),
        ]
        .into_iter()
        .filter_map(|(l, a)| Some((l, a?)))
        .collect()
    }
}

/// Everything a finished run hands to the report.
pub struct Run<'a> {
    pub plan: &'a Plan,
    pub options: &'a RunOptions,
    pub started: SystemTime,
    /// The run's time origin (when the fleet started): 0 s of the interval log, the
    /// charts and `exchanges.csv`.
    pub origin: SystemTime,
    /// The same moment on the monotonic clock.
    pub t0: Instant,
    pub elapsed: Duration,
    pub servers: ServerInfo,
    pub fleets: &'a [FleetReport],
    pub server_counters: Option<Counters>,
    /// The CoAP counters of the DTLS listener's machine (plaintext CoAP).
    pub secure_counters: Option<Counters>,
    /// The CoAP counters of the Bootstrap Server's DTLS machine (plaintext CoAP).
    pub bootstrap_secure_counters: Option<Counters>,
    pub collected: Collected,
    pub shared: &'a Shared,
    pub packets: Vec<Captured>,
    /// DTLS plaintext records the capture could not pair with a datagram.
    pub unpaired: u64,
    pub endpoints: &'a [Vec<String>],
    pub cases: Vec<CaseResult>,
    /// The fleet's clients, sampled while the run went on.
    pub clients: Vec<ClientsPoint>,
}

/// Adds one to `map[key][second]`.
fn count(map: &mut BTreeMap<String, Vec<u32>>, key: &str, second: usize) {
    let v = map.entry(key.to_owned()).or_default();
    if v.len() <= second {
        v.resize(second + 1, 0);
    }
    if let Some(n) = v.get_mut(second) {
        *n += 1;
    }
}

/// The charts' data: percentile distributions and per-second percentiles of the
/// latencies, requests on the wire per second by operation and by group, the clients over
/// time and the timeline's actions.
fn charts(
    latencies: &Latencies,
    exchanges: &[usage::Exchange],
    groups: &[Option<&str>],
    origin: Duration,
    run: &Run<'_>,
) -> Charts {
    let mut c = Charts::default();
    for op in latencies.operations() {
        let points = latencies.distribution(op);
        c.distribution.insert(
            op.to_owned(),
            points.into_iter().map(|(p, v)| [p, v]).collect(),
        );
    }
    for interval in latencies.intervals() {
        for (tag, h) in interval.histograms {
            if tag.starts_with("group=") {
                continue;
            }
            let point = SecondLatency::of(interval.second, &h);
            c.over_time.entry(tag).or_default().push(point);
        }
    }
    for (x, group) in exchanges.iter().zip(groups) {
        let second = usize::try_from(x.at.saturating_sub(origin).as_secs()).unwrap_or(usize::MAX);
        if second > 7 * 24 * 3600 {
            continue;
        }
        count(&mut c.requests_by_operation, &x.usage.operation, second);
        count(
            &mut c.requests_by_group,
            group.unwrap_or("(unknown client)"),
            second,
        );
    }
    c.clients = run.clients.clone();
    c.events = run
        .plan
        .steps
        .iter()
        .map(|s| TimelineMark {
            t_s: s.at.as_secs_f64(),
            label: s.title.clone(),
        })
        .collect();
    c
}

/// `YYYY-MM-DDThh-mm-ss` in UTC (a file-name-safe ISO 8601).
pub fn utc_stamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d, h, mi, sec) = crate::report::civil_utc(i64::try_from(secs).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}T{h:02}-{mi:02}-{sec:02}")
}

/// `exchanges.csv`: one row per CoAP exchange of the capture (request and its answer),
/// for pandas and R. `time_s` is when the request was recorded, seconds since the run's
/// origin; `latency_ms` from the request to its first answer at the capture point (empty
/// without an answer); bytes are UDP payload (CoAP plus, over DTLS, the record overhead).
fn exchanges_csv(
    exchanges: &[usage::Exchange],
    endpoints: &[Option<String>],
    groups: &HashMap<&str, &str>,
    origin: Duration,
) -> String {
    let mut s = String::from(
        "time_s,group,endpoint,operation,path,code,latency_ms,request_bytes,response_bytes,datagrams\n",
    );
    for (x, ep) in exchanges.iter().zip(endpoints) {
        let ep = ep.as_deref().unwrap_or("");
        let _ = writeln!(
            s,
            "{:.6},{},{},{},{},{},{},{},{},{}",
            x.at.saturating_sub(origin).as_secs_f64(),
            csv_field(groups.get(ep).copied().unwrap_or("")),
            csv_field(ep),
            x.usage.operation,
            csv_field(&x.usage.path),
            x.code,
            x.latency
                .map(|l| format!("{:.3}", l.as_secs_f64() * 1000.0))
                .unwrap_or_default(),
            x.usage.request_wire,
            x.usage.response_wire,
            x.usage.datagrams
        );
    }
    s
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// The fleet counters by name, as the report's `fleet.*` and `group.*` counters have them.
pub fn snapshot_fields(c: &CountersSnapshot) -> [(&'static str, u64); 25] {
    [
        ("clients", c.clients),
        ("started", c.started),
        ("registered", c.registered),
        ("sleeping", c.sleeping),
        ("bootstrapping", c.bootstrapping),
        ("registering", c.registering),
        ("failed", c.failed),
        ("clients_registered", c.clients_registered),
        ("registrations", c.registrations),
        ("updates", c.updates),
        ("failures", c.failures),
        ("deregistrations", c.deregistrations),
        ("requests_served", c.requests_served),
        ("notifications_sent", c.notifications_sent),
        ("datagrams_in", c.datagrams_in),
        ("datagrams_out", c.datagrams_out),
        ("bytes_in", c.bytes_in),
        ("bytes_out", c.bytes_out),
        ("dropped_asleep", c.dropped_asleep),
        ("dropped_nat", c.dropped_nat),
        ("dropped_loss", c.dropped_loss),
        ("rebinds", c.rebinds),
        ("dtls_handshakes", c.dtls_handshakes),
        ("dtls_failures", c.dtls_failures),
        ("version_fallbacks", c.version_fallbacks),
    ]
}

/// The fleets' failures grouped by cause, most frequent first, one example exchange each
/// (`failures.json` and the run report's "Failures by cause" section).
pub(crate) fn failures_of(fleets: &[FleetReport]) -> Vec<Failure> {
    let mut all = Vec::new();
    for f in fleets {
        lwm2m_simulator::fleet::merge_causes(&mut all, &f.failures());
    }
    all.into_iter()
        .map(|c| Failure {
            cause: c.cause,
            count: c.count,
            example: c.example,
        })
        .collect()
}

/// One row of the per-operation table.
#[derive(Default)]
struct OpTotals {
    exchanges: usize,
    request: usize,
    response: usize,
    overhead: usize,
    handshake: usize,
    datagrams: usize,
}

/// Network usage per operation over the whole run: CoAP bytes, the DTLS record overhead
/// and handshake bytes in columns of their own (`dtls-handshake` rows, by cause).
fn per_operation(rows: &[ExchangeUsage]) -> String {
    let mut ops: BTreeMap<String, OpTotals> = BTreeMap::new();
    for r in rows {
        let name = if r.handshake > 0 {
            format!("{} ({})", r.operation, r.path)
        } else {
            r.operation.clone()
        };
        let t = ops.entry(name).or_default();
        t.exchanges += 1;
        t.request += r.request_coap;
        t.response += r.response_coap;
        t.handshake += r.handshake;
        t.overhead += (r.request_wire + r.response_wire)
            .saturating_sub(r.request_coap + r.response_coap + r.handshake);
        t.datagrams += r.datagrams;
    }
    let mut s = format!(
        "{:<32} {:>9} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>9}\n",
        "operation",
        "exchanges",
        "req mean",
        "resp mean",
        "req total",
        "resp total",
        "DTLS ovh",
        "handshake",
        "dgrams"
    );
    let mean = |total: usize, n: usize| total as f64 / n.max(1) as f64;
    for (op, t) in &ops {
        let _ = writeln!(
            s,
            "{op:<32} {:>9} {:>10.1} {:>10.1} {:>12} {:>12} {:>10} {:>10} {:>9}",
            t.exchanges,
            mean(t.request, t.exchanges),
            mean(t.response, t.exchanges),
            t.request,
            t.response,
            t.overhead,
            t.handshake,
            t.datagrams
        );
    }
    s
}

/// The datagrams, for the DTLS accounting of a listener.
fn dtls_wire(packets: &[Captured]) -> Vec<dtls_usage::Wire<'_>> {
    packets
        .iter()
        .map(|p| dtls_usage::Wire {
            src: p.src,
            dst: p.dst,
            bytes: &p.bytes,
            plaintext_records: p.plaintext.len(),
            plaintext_bytes: p.plaintext.iter().map(|b| b.len()).sum(),
            identity: p.identity.as_deref(),
        })
        .collect()
}

/// The addresses `endpoint`'s Registers (`POST /rd?ep=NAME`, in clear or inside DTLS
/// records) came from, in order, among the capture's `datagrams`.
fn register_sources(datagrams: &[usage::Datagram], endpoint: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for d in datagrams {
        let Ok(packet) = message::decode(&d.coap) else {
            continue;
        };
        let register = match classify(&packet) {
            Some(Ok(InterfaceRequest::Register(params))) => Some(params.endpoint),
            _ => None,
        };
        if register.as_deref() == Some(endpoint) && !out.contains(&d.src) {
            out.push(d.src);
        }
    }
    out
}

/// The exchanges of one client: the datagrams to and from any address it was seen at, with
/// a `dtls-handshake` row before the exchanges of each of its DTLS sessions. Each DTLS
/// listener's datagrams are split into sessions on their own (the servers' tasks record
/// concurrently: the Bootstrap Server's last response may be recorded after the client's
/// first handshake datagram to the LwM2M Server); the sessions, and the plain datagrams,
/// are then listed in the order of their first datagram.
fn client_exchanges(
    packets: &[Captured],
    addresses: &[SocketAddr],
    listeners: &[(Listener, SocketAddr)],
) -> Vec<ExchangeUsage> {
    let set: HashSet<&SocketAddr> = addresses.iter().collect();
    let mine: Vec<&Captured> = packets
        .iter()
        .filter(|p| set.contains(&p.src) || set.contains(&p.dst))
        .collect();
    let rows_of = |at: &[usize]| {
        let segment: Vec<Captured> = at
            .iter()
            .filter_map(|&i| mine.get(i).copied().cloned())
            .collect();
        usage::exchanges(&crate::report::usage::of_captured(&segment))
    };
    // (first datagram, rows) per session, and one for the plain datagrams.
    let mut segments: Vec<(usize, Vec<ExchangeUsage>)> = Vec::new();
    let on = |server: SocketAddr, p: &Captured| p.src == server || p.dst == server;
    for &(listener, server) in listeners {
        let at: Vec<usize> = (0..mine.len())
            .filter(|&i| mine.get(i).is_some_and(|p| on(server, p)))
            .collect();
        let wire: Vec<Captured> = at
            .iter()
            .filter_map(|&i| mine.get(i).copied().cloned())
            .collect();
        let handshakes = dtls_usage::account(server, &dtls_wire(&wire)).handshakes;
        // Sessions split the listener's datagrams: a handshake, then what it carried.
        let mut starts: Vec<usize> = handshakes.iter().map(|h| h.first).collect();
        starts.insert(0, 0);
        starts.push(at.len());
        for (k, w) in starts.windows(2).enumerate() {
            let mut rows = Vec::new();
            if let Some(h) = k.checked_sub(1).and_then(|i| handshakes.get(i)) {
                rows.push(dtls_usage::handshake_row(listener, h));
            }
            let chunk = at.get(w[0]..w[1]).unwrap_or_default();
            rows.extend(rows_of(chunk));
            if let (Some(&first), false) = (chunk.first(), rows.is_empty()) {
                segments.push((first, rows));
            }
        }
    }
    let plain: Vec<usize> = (0..mine.len())
        .filter(|&i| {
            mine.get(i)
                .is_some_and(|p| !listeners.iter().any(|&(_, server)| on(server, p)))
        })
        .collect();
    if let Some(&first) = plain.first() {
        segments.push((first, rows_of(&plain)));
    }
    segments.sort_by_key(|(first, _)| *first);
    segments.into_iter().flat_map(|(_, rows)| rows).collect()
}

fn csv(rows: &[ExchangeUsage]) -> String {
    let mut s = String::from(
        "operation,path,request_coap,response_coap,request_wire,response_wire,handshake,datagrams\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{}",
            r.operation,
            r.path,
            r.request_coap,
            r.response_coap,
            r.request_wire,
            r.response_wire,
            r.handshake,
            r.datagrams
        );
    }
    s
}

/// The DTLS accounting of a listener as counters (report.json, `dtls.` for the LwM2M
/// Server's, `dtls.bootstrap.` for the Bootstrap Server's): records, overhead, handshakes
/// by cause.
fn dtls_counters(listener: Listener, u: &DtlsUsage, counters: &mut BTreeMap<String, u64>) {
    let n = |v: usize| v as u64;
    let mut put = |k: &str, v: u64| {
        counters.insert(format!("{}{k}", listener.counter_prefix()), v);
    };
    put("application_records", n(u.records));
    put("application_record_bytes", n(u.record_bytes));
    put("application_plaintext_bytes", n(u.plaintext_bytes));
    put("record_overhead_bytes", n(u.overhead_bytes()));
    put("unpaired_records", n(u.unpaired_records));
    put("alert_bytes", n(u.alert_bytes));
    put("handshakes", n(u.handshakes.len()));
    put(
        "handshake_bytes",
        n(u.handshakes.iter().map(dtls_usage::Handshake::bytes).sum()),
    );
    for cause in [
        dtls_usage::Cause::First,
        dtls_usage::Cause::NewAddress,
        dtls_usage::Cause::SameAddress,
        dtls_usage::Cause::Unfinished,
    ] {
        let of: Vec<&dtls_usage::Handshake> = u.of(cause).collect();
        let name = cause.name().replace('-', "_");
        put(&format!("handshakes.{name}"), n(of.len()));
        put(
            &format!("handshakes.{name}.bytes"),
            n(of.iter().map(|h| h.bytes()).sum()),
        );
        put(
            &format!("handshakes.{name}.lost_records"),
            n(of.iter().map(|h| h.lost_before.0).sum()),
        );
    }
    if let Some(h) = u.typical(None) {
        put("handshake.median_bytes", n(h.bytes()));
        put("handshake.median_datagrams", n(h.datagrams()));
    }
    for (kind, name) in dtls_usage::KINDS {
        if let Some(h) = u.typical(Some(kind)) {
            let name = name.to_lowercase();
            put(&format!("handshake.{name}.median_bytes"), n(h.bytes()));
            put(
                &format!("handshake.{name}.median_datagrams"),
                n(h.datagrams()),
            );
        }
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

/// Writes the run folder and returns the report.
pub fn write(dir: &Path, mut run: Run<'_>) -> anyhow::Result<RunReport> {
    let plan = run.plan;
    let s = &plan.scenario;
    // Latencies: the servers' (operations, bootstrap, notifications), the fleet's
    // (Register, Update), De-register at the server's socket.
    let mut latencies = std::mem::take(&mut run.collected.latencies);
    metrics::observe_to_first(run.shared, &mut latencies, run.t0);
    let since_origin = |at: SystemTime| at.duration_since(run.origin).unwrap_or_default();
    for f in run.fleets {
        for p in &f.profiles {
            for t in &p.latencies.samples {
                let name = if t.update { "update" } else { "register" };
                latencies.record_at(name, Some(&p.profile), since_origin(t.at), t.latency);
            }
        }
    }
    let groups: HashMap<&str, &str> = run
        .endpoints
        .iter()
        .zip(&plan.groups)
        .flat_map(|(eps, g)| eps.iter().map(|e| (e.as_str(), g.spec.name.as_str())))
        .collect();
    let origin = run.origin.duration_since(UNIX_EPOCH).unwrap_or_default();
    let datagrams = crate::report::usage::of_captured(&run.packets);
    let exchanges = usage::timed_exchanges(&datagrams);
    let exchange_endpoints = usage::endpoints(&exchanges);
    // The time of each De-register, request to response: at the server's socket when the
    // capture is the in-process servers', at the client's when it is the fleet's (the
    // fleet measures Register and Update itself, not De-register).
    let name = match plan.scenario.servers.all_in_process() {
        true => "deregister-at-server",
        false => "deregister",
    };
    for (x, ep) in exchanges.iter().zip(&exchange_endpoints) {
        if let ("deregister", Some(latency)) = (x.usage.operation.as_str(), x.latency) {
            let group = ep.as_deref().and_then(|e| groups.get(e).copied());
            latencies.record_at(name, group, x.at.saturating_sub(origin), latency);
        }
    }

    let decode_as = {
        let listeners = run.servers.listeners();
        let mut ports = vec![run.servers.server];
        ports.extend(run.servers.bootstrap);
        let mut ports: Vec<String> = ports
            .iter()
            .filter(|a| !listeners.iter().any(|(_, d)| d == *a))
            .map(|a| format!("-d udp.port=={},coap", a.port()))
            .collect();
        if !listeners.is_empty() {
            // The key log decrypts the records; `dtls.port` hands their plaintext to the
            // CoAP dissector (it only knows 5684 by itself).
            ports.push("-o tls.keylog_file:keys.log".to_owned());
        }
        for (_, d) in &listeners {
            ports.push(format!(
                "-d udp.port=={p},dtls -d dtls.port=={p},coap",
                p = d.port()
            ));
        }
        // Both servers on the standard ports give the same options: once each.
        let mut once = std::collections::HashSet::new();
        ports.retain(|p| once.insert(p.clone()));
        let i = &run.servers;
        let seen = match (
            i.server_in_process,
            i.bootstrap_in_process,
            i.bootstrap.is_some(),
        ) {
            (true, true, _) | (true, false, false) => {
                "every datagram at the in-process servers' sockets"
            }
            (true, false, true) => {
                "every datagram the simulated clients sent and received (the Bootstrap Server is external)"
            }
            (false, true, _) => {
                "every datagram the simulated clients sent and received (the LwM2M Server is external)"
            }
            (false, false, _) => {
                "every datagram the simulated clients sent and received (the servers are external)"
            }
        };
        let dtls: String = listeners
            .iter()
            .map(|(l, d)| {
                format!(
                    "\nThe {}'s DTLS listener {d}: records as they were on the wire (encrypted); keys.log (NSS key log) decrypts them, \
                     and each line below shows the CoAP inside",
                    l.server_name()
                )
            })
            .collect();
        format!(
            "lwm2m-harness run {}: {seen}{dtls}\nWireshark/tshark: decode the servers' ports as CoAP{}: tshark -r run.pcap {}",
            plan.file.display(),
            match listeners.len() {
                0 => "",
                1 => " (and the DTLS port as DTLS, with the key log)",
                _ => " (and the DTLS ports as DTLS, with the key log)",
            },
            ports.join(" ")
        )
    };
    capture::write_pcap(&dir.join("run.pcap"), &run.packets)?;
    capture::write_log(&dir.join("exchanges.log"), &run.packets, &decode_as)?;

    for op in latencies.operations() {
        if let Some(text) = latencies.hgrm(op) {
            write_file(dir, &format!("{op}.hgrm"), &text)?;
        }
    }
    let mut hlog = Vec::new();
    latencies.write_log(&mut hlog, run.origin)?;
    std::fs::write(dir.join("latencies.hlog"), hlog).context("writing latencies.hlog")?;
    write_file(
        dir,
        "exchanges.csv",
        &exchanges_csv(&exchanges, &exchange_endpoints, &groups, origin),
    )?;

    // Network usage.
    let mut all: Vec<ExchangeUsage> = exchanges.iter().map(|x| x.usage.clone()).collect();
    let listeners = run.servers.listeners();
    let wire = dtls_wire(&run.packets);
    let accounts: Vec<(Listener, SocketAddr, DtlsUsage)> = listeners
        .iter()
        .map(|&(l, d)| (l, d, dtls_usage::account(d, &wire)))
        .collect();
    for (l, _, u) in &accounts {
        all.extend(
            u.handshakes
                .iter()
                .map(|h| dtls_usage::handshake_row(*l, h)),
        );
    }
    // The LwM2M Server's: what the thesis comparison is about.
    let secure = accounts
        .iter()
        .find(|(l, _, _)| *l == Listener::Server)
        .map(|(_, _, u)| u);
    let by_operation = per_operation(&all);
    let mut text = format!(
        "Network usage, {} ({}; \"wire\" is UDP payload: CoAP plus, over DTLS, its records' header, nonce and tag)\n\nPer operation, all clients ({} exchanges):\n{}",
        plan.file.display(),
        if !accounts.is_empty() {
            "CoAP over UDP and over DTLS"
        } else {
            "plain CoAP over UDP: wire bytes are CoAP bytes"
        },
        all.len(),
        by_operation
    );
    let mut sections = vec![(
        format!(
            "Network usage by operation, all clients ({} exchanges)",
            all.len()
        ),
        by_operation,
    )];
    if !accounts.is_empty() {
        let section: String = accounts
            .iter()
            .map(|(l, d, u)| dtls_usage::render(*l, *d, u))
            .collect();
        let _ = write!(text, "\n{section}");
        sections.push(("DTLS".to_owned(), section));
    }
    let mut sample_rows = Vec::new();
    let mut sample_client = None;
    {
        let live = run.shared.lock();
        for (g, eps) in run.endpoints.iter().enumerate() {
            let Some(ep) = eps.first() else { continue };
            // The servers' events give the addresses; without them (external servers),
            // the sources of the client's Registers in the capture.
            let addresses = match live.addresses.get(ep) {
                Some(known) => known.clone(),
                None => register_sources(&datagrams, ep),
            };
            let rows = client_exchanges(&run.packets, &addresses, &listeners);
            let _ = write!(
                text,
                "\nEvery exchange of {ep} (group {}), like the whole-device read table:\n{}",
                plan.groups.get(g).map_or("", |gp| gp.spec.name.as_str()),
                usage::render_table(&rows)
            );
            if g == 0 {
                sample_rows = rows;
                sample_client = Some(format!(
                    "{ep} (group {})",
                    plan.groups.get(g).map_or("", |gp| gp.spec.name.as_str())
                ));
            }
        }
    }
    if plan.scenario.compare == Some(super::scenario::Reference::Thesis2017) {
        let table = dtls_usage::beside_thesis(&sample_rows, secure);
        let _ = write!(text, "\n{table}");
        sections.push(("Beside the 2017 thesis".to_owned(), table));
    }
    let server_addresses: Vec<SocketAddr> = [
        Some(run.servers.server),
        run.servers.dtls,
        run.servers.bootstrap,
        run.servers.bootstrap_dtls,
    ]
    .into_iter()
    .flatten()
    .collect();
    let resets = super::resets::analyse(&run.packets, &server_addresses);
    if let Some(explained) = super::resets::render(&resets) {
        sections.push(("Resets (RST) the servers sent".to_owned(), explained));
    }
    let failures = failures_of(run.fleets);
    if !failures.is_empty() {
        sections.push((FAILURES_SECTION.to_owned(), failures_text(&failures)));
    }
    write_file(
        dir,
        FAILURES_FILE,
        &serde_json::to_string_pretty(&failures).unwrap_or_default(),
    )?;
    write_file(dir, "network-usage.txt", &text)?;
    write_file(dir, "network-usage.csv", &csv(&all))?;
    // The run's clients (`report merge` unites the shards' lists).
    let endpoint_list: String = run
        .endpoints
        .iter()
        .flatten()
        .map(|e| format!("{e}\n"))
        .collect();
    write_file(dir, ENDPOINTS_FILE, &endpoint_list)?;
    if let Some(shard) = run.options.shard {
        let here: usize = run.endpoints.iter().map(Vec::len).sum();
        let groups: Vec<String> = plan
            .groups
            .iter()
            .zip(run.endpoints)
            .map(|(g, e)| format!("{} {} of {}", g.spec.name, e.len(), g.spec.count))
            .collect();
        sections.insert(
            0,
            (
                "Shard".to_owned(),
                format!(
                    "shard {shard} of the fleet of {} ({} clients): {here} clients here ({}; numbers {}, {}, ... of each group), seed {}, against {}",
                    plan.file.display(),
                    plan.clients(),
                    groups.join(", "),
                    shard.index,
                    shard.index + shard.count,
                    run.options.seed,
                    run.servers.server
                ),
            ),
        );
    }

    // Counters.
    let mut counters = std::mem::take(&mut run.collected.counters);
    for (k, v) in [
        ("server.resets_out", resets.total),
        (
            "server.resets_out.notifications_new_address",
            resets.notifications_from_new_addresses,
        ),
        (
            "server.resets_out.notifications_known_address",
            resets.notifications_from_known_addresses,
        ),
        ("server.resets_out.other", resets.other),
    ] {
        counters.insert(k.to_owned(), v);
    }
    let mut total = CountersSnapshot::default();
    for f in run.fleets {
        for p in &f.profiles {
            total += p.counters;
            for (k, v) in snapshot_fields(&p.counters) {
                if matches!(
                    k,
                    "clients_registered"
                        | "registrations"
                        | "failures"
                        | "version_fallbacks"
                        | "rebinds"
                        | "dropped_asleep"
                        | "dropped_nat"
                        | "requests_served"
                        | "notifications_sent"
                ) {
                    counters.insert(format!("group.{}.{k}", p.profile), v);
                }
            }
        }
    }
    for (k, v) in snapshot_fields(&total) {
        counters.insert(format!("fleet.{k}"), v);
    }
    for (prefix, c) in [
        ("server.coap", &run.server_counters),
        ("server.coaps", &run.secure_counters),
        ("bootstrap.coaps", &run.bootstrap_secure_counters),
    ] {
        let Some(c) = c else { continue };
        for (k, v) in [
            ("datagrams_in", c.datagrams_in),
            ("datagrams_out", c.datagrams_out),
            ("bytes_in", c.bytes_in),
            ("bytes_out", c.bytes_out),
            ("retransmissions", c.retransmissions),
            ("duplicates", c.duplicates),
            ("timeouts", c.timeouts),
            ("resets_in", c.resets_in),
        ] {
            counters.insert(format!("{prefix}.{k}"), v);
        }
    }
    for (l, _, u) in &accounts {
        dtls_counters(*l, u, &mut counters);
    }
    if !accounts.is_empty() {
        counters.insert("capture.unpaired_plaintext".into(), run.unpaired);
    }
    counters.insert("capture.datagrams".into(), run.packets.len() as u64);
    counters.insert(
        "capture.bytes".into(),
        run.packets.iter().map(|p| p.bytes.len() as u64).sum(),
    );

    // Subjects.
    let version = env!("CARGO_PKG_VERSION");
    let mut subjects = vec![Subject {
        id: "lwm2m-server".into(),
        kind: "server".into(),
        version: if run.servers.server_in_process {
            format!("lwm2m-server {version} (in process)")
        } else {
            "external".into()
        },
        address: Some(match run.servers.dtls {
            Some(d) => format!("coap://{} coaps://{d}", run.servers.server),
            None => format!("coap://{}", run.servers.server),
        }),
    }];
    if let Some(b) = run.servers.bootstrap {
        subjects.push(Subject {
            id: "bootstrap-server".into(),
            kind: "bootstrap-server".into(),
            version: if run.servers.bootstrap_in_process {
                format!("lwm2m-server {version} bootstrap (in process)")
            } else {
                "external".into()
            },
            address: Some(match run.servers.bootstrap_dtls {
                Some(d) => format!("coap://{b} coaps://{d}"),
                None => format!("coap://{b}"),
            }),
        });
    }
    for g in &plan.groups {
        subjects.push(Subject {
            id: g.spec.name.clone(),
            kind: "simulated-client".into(),
            version: format!(
                "lwm2m-simulator {version}: {} × profile {} (LwM2M {}), network {}{}{}",
                g.spec.count,
                g.profile.name,
                g.profile.lwm2m_version,
                g.network.0,
                if g.spec.bootstrap { ", bootstraps" } else { "" },
                if g.spec.security.is_some() {
                    ", coaps:// with PSK"
                } else {
                    ""
                }
            ),
            address: None,
        });
    }

    let exchange_groups: Vec<Option<&str>> = exchange_endpoints
        .iter()
        .map(|ep| ep.as_deref().and_then(|e| groups.get(e).copied()))
        .collect();
    let charts = charts(&latencies, &exchanges, &exchange_groups, origin, &run);
    let summaries = latencies
        .operations()
        .filter_map(|op| latencies.summary(op).map(|s| (op.to_owned(), s)))
        .collect();
    let throughput = run
        .collected
        .throughput
        .iter()
        .enumerate()
        .map(|(i, ops)| ThroughputPoint {
            t_s: (i + 1) as f64,
            ops: *ops,
        })
        .collect();
    let report = RunReport {
        schema: report::SCHEMA_VERSION,
        run: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        title: format!("Scenario {} ({})", s.name, plan.file.display()),
        started_unix_s: run
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        duration_s: run.elapsed.as_secs_f64(),
        seed: run.options.seed,
        product_version: version.into(),
        git_revision: report::git_revision(),
        hostname: report::hostname(),
        subjects,
        cases: std::mem::take(&mut run.cases),
        latencies: summaries,
        throughput,
        network_usage: sample_rows,
        network_usage_client: sample_client,
        charts,
        counters,
        sections: sections
            .into_iter()
            .map(|(title, text)| report::Section::new(title, text))
            .collect(),
    };
    report.write(dir)?;
    Ok(report)
}

/// What `run` prints at the end.
pub fn summary(outcome: &RunOutcome) -> String {
    let r = &outcome.report;
    let (p, f, n) = r.tally();
    let mut s = format!(
        "{}: {p} passed, {f} failed, {n} not applicable in {:.1} s (seed {})\n",
        r.title, r.duration_s, r.seed
    );
    for c in r
        .cases
        .iter()
        .filter(|c| c.status != report::Status::Passed)
    {
        let _ = writeln!(
            s,
            "  {:?} {} {}: {}",
            c.status,
            c.case,
            c.title,
            c.message.as_deref().unwrap_or("").replace('\n', "\n    ")
        );
    }
    for (op, l) in &r.latencies {
        let _ = writeln!(
            s,
            "  {op:<30} n={:<7} p50={:>9.3} ms  p99={:>9.3} ms",
            l.count, l.p50_ms, l.p99_ms
        );
    }
    let _ = writeln!(s, "report: {}", outcome.dir.join("report.html").display());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_section_groups_causes_across_fleets() {
        use lwm2m_simulator::fleet::{FailureCause, Latencies, ProfileReport};
        let fleet = |causes: Vec<FailureCause>| FleetReport {
            profiles: vec![ProfileReport {
                profile: "p".into(),
                counters: CountersSnapshot::default(),
                latencies: Latencies::default(),
                failures: causes,
            }],
        };
        let cause = |c: &str, n, e: &str| FailureCause {
            cause: c.into(),
            count: n,
            example: e.into(),
        };
        assert!(failures_of(&[fleet(vec![])]).is_empty());
        let text = failures_text(&failures_of(&[
            fleet(vec![cause(
                "register 4.03",
                2,
                "a: POST /rd -> answered 4.03",
            )]),
            fleet(vec![
                cause("register 4.03", 3, "b"),
                cause("DTLS: handshake timed out", 4, "c: handshake with x"),
            ]),
        ]));
        assert_eq!(
            text,
            "register 4.03 x5\n  e.g. a: POST /rd -> answered 4.03\n\
             DTLS: handshake timed out x4\n  e.g. c: handshake with x\n"
        );
    }

    #[test]
    fn stamps_are_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(utc_stamp(t), "2023-11-14T22-13-20");
        assert_eq!(utc_stamp(UNIX_EPOCH), "1970-01-01T00-00-00");
    }
}
