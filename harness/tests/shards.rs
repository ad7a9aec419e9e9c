//! A fleet in shards, without a cluster: one `lwm2m-harness serve` process, N `simulate
//! --shard K/N` processes against it, each in a network namespace of its own with its own
//! address (a veth pair on a bridge this test creates; the server listens on the bridge's
//! address), all starting on the same clock (`--start-at`). `report merge` of their run
//! folders must equal the single-process run of the same seed in counts and endpoint set.
//!
//! Where network namespaces cannot be created (not root, no `ip`, no veth), the shards run
//! as plain processes, each sending from its own slice of 127.0.0.0/8, and the test says
//! why on its output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

const CLIENTS: usize = 300;
const SHARDS: usize = 4;
const SEED: &str = "11";

/// The `serve` child process; killed when dropped.
struct Serve {
    child: Child,
    coap: SocketAddr,
    _rest: JoinHandle<()>,
}

impl Serve {
    fn start(ip: &str, data: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
            .args(["serve", "--coap", &format!("{ip}:0")])
            .args([
                "--bootstrap",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut banner = String::new();
        let coap = loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).expect("stdout readable") > 0,
                "serve exited before listening: {banner}"
            );
            banner.push_str(&line);
            if let Some(uri) = line.trim().strip_prefix("LwM2M Server")
                && let Some(addr) = uri.trim().strip_prefix("coap://")
            {
                break addr.parse().expect("a socket address");
            }
        };
        // Keep reading so that serve never writes into a closed pipe.
        let rest = std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        Serve {
            child,
            coap,
            _rest: rest,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ip ARGS`; its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip` not runnable: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A bridge and one network namespace per shard, each joined to the bridge by a veth
/// pair; everything is deleted when dropped.
struct Namespaces {
    bridge: String,
    /// The bridge's address: the server's.
    server_ip: String,
    names: Vec<String>,
}

impl Namespaces {
    fn create(n: usize) -> Result<Namespaces, String> {
        let pid = std::process::id();
        let subnet = format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 256);
        let mut ns = Namespaces {
            bridge: format!("fbr{pid}"),
            server_ip: format!("{subnet}.1"),
            names: Vec::new(),
        };
        ip(&["link", "add", &ns.bridge, "type", "bridge"])?;
        ip(&["link", "set", &ns.bridge, "up"])?;
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &ns.bridge])?;
        for k in 0..n {
            let name = format!("fleet{pid}s{k}");
            ip(&["netns", "add", &name])?;
            ns.names.push(name.clone());
            let (host, inside) = (format!("fv{pid}k{k}"), format!("fp{pid}k{k}"));
            ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &name])?;
            ip(&["link", "set", &host, "master", &ns.bridge])?;
            ip(&["link", "set", &host, "up"])?;
            let addr = format!("{subnet}.{}/24", k + 2);
            ip(&["-n", &name, "addr", "add", &addr, "dev", &inside])?;
            ip(&["-n", &name, "link", "set", &inside, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other.
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// `simulate` with `args`, in namespace `ns` when given; waits (60 s at most) and returns
/// its stdout, asserting success.
fn simulate(ns: Option<&str>, args: &[String]) -> Child {
    let bin = env!("CARGO_BIN_EXE_lwm2m-harness");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("simulate")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("simulate starts")
}

fn finish(mut child: Child, what: &str) -> String {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().expect("waitable") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran over 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    assert!(status.success(), "{what}: {status}\n{out}\n{err}");
    out
}

fn args(server: SocketAddr, out: &Path, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--server",
        &format!("coap://{server}"),
        "--profile",
        "minimal-1.0",
        "--clients",
        &CLIENTS.to_string(),
        "--seed",
        SEED,
        "--duration",
        "4s",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a.extend_from_slice(extra);
    a
}

fn report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("JSON")
}

fn endpoints(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("endpoints.txt"))
        .expect("endpoints.txt")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The counters a sharded fleet must reproduce exactly (not datagram counts: a
/// retransmission on a loaded machine would add one without changing the fleet).
const COUNTS: [&str; 9] = [
    "fleet.clients",
    "fleet.started",
    "fleet.clients_registered",
    "fleet.registrations",
    "fleet.deregistrations",
    "fleet.failures",
    "fleet.failed",
    "fleet.version_fallbacks",
    "fleet.dtls_handshakes",
];

fn counts(r: &serde_json::Value) -> BTreeMap<&'static str, u64> {
    COUNTS
        .iter()
        .map(|k| (*k, r["counters"][k].as_u64().unwrap_or(u64::MAX)))
        .collect()
}

#[test]
fn shards_in_network_namespaces_merge_into_the_single_process_run() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let namespaces = match Namespaces::create(SHARDS) {
        Ok(ns) => Some(ns),
        Err(why) => {
            println!(
                "network namespaces skipped ({why}): the {SHARDS} shards run as plain \
                 processes, each on its own slice of 127.0.0.0/8"
            );
            None
        }
    };
    let server_ip = namespaces
        .as_ref()
        .map_or("127.0.0.1", |n| n.server_ip.as_str());
    let serve = Serve::start(server_ip, &tmp.path().join("data"));

    // The shards, all starting 3 s from now on the same clock.
    let start_at = SystemTime::now() + Duration::from_secs(3);
    let secs = start_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let start_at = rfc3339(secs);
    let dirs: Vec<PathBuf> = (0..SHARDS)
        .map(|k| tmp.path().join(format!("shard-{k}")))
        .collect();
    let children: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(k, dir)| {
            let extra = [
                "--shard".to_owned(),
                format!("{k}/{SHARDS}"),
                "--start-at".to_owned(),
                start_at.clone(),
            ];
            let ns = namespaces
                .as_ref()
                .and_then(|n| n.names.get(k))
                .map(String::as_str);
            simulate(ns, &args(serve.coap, dir, &extra))
        })
        .collect();
    for (k, child) in children.into_iter().enumerate() {
        let out = finish(child, &format!("shard {k}"));
        assert!(
            out.contains(&format!(
                "shard {k}/{SHARDS}: {} of {CLIENTS}",
                CLIENTS / SHARDS
            )),
            "{out}"
        );
    }
    for (k, dir) in dirs.iter().enumerate() {
        // Shard K has the clients K, K+N, ...: the endpoint names they have in one process.
        let want: BTreeSet<String> = (k..CLIENTS)
            .step_by(SHARDS)
            .map(|n| format!("minimal-{n}"))
            .collect();
        assert_eq!(endpoints(dir), want, "shard {k}");
    }
    let merged = tmp.path().join("merged");
    let status = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["report", "merge"])
        .args(&dirs)
        .arg("--out")
        .arg(&merged)
        .stdout(Stdio::null())
        .status()
        .expect("report merge runs");
    assert!(status.success());

    // The same fleet in one process, same seed, same server.
    let single = tmp.path().join("single");
    finish(
        simulate(None, &args(serve.coap, &single, &[])),
        "the single process",
    );

    let (m, s) = (report(&merged), report(&single));
    assert_eq!(counts(&m), counts(&s));
    assert_eq!(counts(&m)["fleet.clients_registered"], CLIENTS as u64);
    assert_eq!(endpoints(&merged), endpoints(&single));
    assert_eq!(endpoints(&merged).len(), CLIENTS);
    // The latency histograms merged from the shards' interval logs hold every Register.
    assert_eq!(
        m["latencies"]["register"]["count"],
        s["latencies"]["register"]["count"]
    );
    let shards = m["sections"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(shards.lines().count(), SHARDS + 1, "{shards}");
    assert!(merged.join("latencies.hlog").is_file());
    drop(serve);
    drop(namespaces);
}

/// `run SCENARIO` with `args`; the child, stdout and stderr piped.
fn run(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts")
}

/// A scenario against the external server at `server`: two groups, a ramp, and a
/// timeline action on the first 10 clients of one group (each shard acts on its own
/// among them).
fn external_scenario(dir: &Path, server: SocketAddr) -> PathBuf {
    let file = dir.join("external.yaml");
    let text = format!(
        "name: external
duration: 4s
seed: 5
servers: {{ server: \"coap://{server}\", bootstrap: none }}
fleet:
  - name: meters
    profile: minimal-1.0
    count: 20
    ramp: 40
  - name: sensors
    profile: sensor-1.1
    count: 7
timeline:
  - {{ at: 2s, action: update, group: meters, clients: 10, timeout: 20s }}
"
    );
    std::fs::write(&file, text).expect("scenario written");
    file
}

/// `run SCENARIO --shard K/3` against one `serve` process, the three shards on one clock:
/// `report merge` of their run folders equals the single-process run of the same seed in
/// its counters and endpoint set, each shard ran the clients K, K+3, ... of each group,
/// and the timeline's Update of the first 10 meters was sent by the shards' meters among
/// them.
#[test]
fn run_shards_merge_into_the_single_process_run() {
    const N: usize = 3;
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let serve = Serve::start("127.0.0.1", &tmp.path().join("data"));
    let scenario = external_scenario(tmp.path(), serve.coap);
    let start_at = SystemTime::now() + Duration::from_secs(3);
    let start_at = rfc3339(
        start_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    );
    let dirs: Vec<PathBuf> = (0..N)
        .map(|k| tmp.path().join(format!("run-shard-{k}")))
        .collect();
    let children: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(k, dir)| {
            run(&[
                scenario.display().to_string(),
                "--shard".into(),
                format!("{k}/{N}"),
                "--start-at".into(),
                start_at.clone(),
                "--report-dir".into(),
                dir.display().to_string(),
                "--quiet".into(),
            ])
        })
        .collect();
    for (k, child) in children.into_iter().enumerate() {
        finish(child, &format!("run shard {k}"));
    }
    for (k, dir) in dirs.iter().enumerate() {
        let want: BTreeSet<String> = (k..20)
            .step_by(N)
            .map(|n| format!("meters-{n}"))
            .chain((k..7).step_by(N).map(|n| format!("sensors-{n}")))
            .collect();
        assert_eq!(endpoints(dir), want, "shard {k}");
        let r = report(dir);
        assert_eq!(r["seed"], 5, "the run seed in shard {k}'s report");
        let section = &r["sections"][0];
        assert_eq!(section["title"], "Shard");
        assert!(
            section["text"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("shard {k}/{N} of the fleet"))),
            "{section}"
        );
        // The first 10 meters are numbers 0..10: this shard's among them.
        let mine = (k..10).step_by(N).count() as u64;
        assert_eq!(r["counters"]["fleet.updates"], mine, "shard {k}");
    }
    let merged = tmp.path().join("run-merged");
    let status = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(["report", "merge"])
        .args(&dirs)
        .arg("--out")
        .arg(&merged)
        .stdout(Stdio::null())
        .status()
        .expect("report merge runs");
    assert!(status.success());

    let single = tmp.path().join("run-single");
    finish(
        run(&[
            scenario.display().to_string(),
            "--report-dir".into(),
            single.display().to_string(),
            "--quiet".into(),
        ]),
        "the single-process run",
    );
    let (m, s) = (report(&merged), report(&single));
    assert_eq!(counts(&m), counts(&s));
    assert_eq!(counts(&m)["fleet.clients_registered"], 27);
    assert_eq!(m["counters"]["fleet.updates"], 10);
    assert_eq!(
        m["counters"]["fleet.updates"],
        s["counters"]["fleet.updates"]
    );
    assert_eq!(endpoints(&merged), endpoints(&single));
    assert_eq!(endpoints(&merged).len(), 27);
    assert_eq!(
        m["latencies"]["register"]["count"],
        s["latencies"]["register"]["count"]
    );
    // The same cases, all passed, in the merged report and the single run.
    let cases = |r: &serde_json::Value| -> Vec<(String, String)> {
        r["cases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| (c["case"].to_string(), c["status"].to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(cases(&m), cases(&s));
    assert!(
        cases(&m).iter().all(|(_, st)| st == "\"passed\""),
        "{:?}",
        cases(&m)
    );

    // The charts are merged: requests per second summed over the shards, the clients over
    // time summed (all 27 registered at some sampled moment), the latency charts from the
    // merged histograms, the timeline's marks.
    let sum = |v: &serde_json::Value| -> u64 {
        v.as_array()
            .map_or(0, |a| a.iter().filter_map(serde_json::Value::as_u64).sum())
    };
    for key in ["requests_by_operation", "requests_by_group"] {
        let merged_charts = m["charts"][key].as_object().expect("merged requests chart");
        assert!(!merged_charts.is_empty(), "{key}");
        for (name, per_second) in merged_charts {
            let shards: u64 = dirs
                .iter()
                .map(|d| sum(&report(d)["charts"][key][name]))
                .sum();
            assert_eq!(sum(per_second), shards, "{key} {name}");
        }
    }
    let registered = |r: &serde_json::Value| {
        r["charts"]["clients"]
            .as_array()
            .and_then(|a| a.iter().filter_map(|p| p["registered"].as_u64()).max())
    };
    assert_eq!(registered(&m), Some(27));
    let over_time: u64 = m["charts"]["over_time"]["register"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|p| p["count"].as_u64()).sum());
    assert_eq!(over_time, 27);
    assert!(m["charts"]["distribution"]["register"].is_array());
    let labels = |r: &serde_json::Value| -> Vec<String> {
        r["charts"]["events"]
            .as_array()
            .map(|a| a.iter().map(|e| e["label"].to_string()).collect())
            .unwrap_or_default()
    };
    assert_eq!(labels(&m), labels(&s));
    assert_eq!(labels(&m).len(), 1);
    drop(serve);
}

/// A scenario whose servers run in process cannot be sharded (each shard would have its
/// own): `run --shard` says so in one line naming the scenario file, before it starts.
#[test]
fn run_shard_of_in_process_servers_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let refused = |name: &str, servers: &str, bootstrap: bool, why: &str| {
        let file = tmp.path().join(format!("{name}.yaml"));
        let text = format!(
            "name: {name}\nduration: 2s\nservers: {servers}\nfleet:\n  - name: meters\n    profile: minimal-1.0\n    count: 3\n    bootstrap: {bootstrap}\n"
        );
        std::fs::write(&file, text).expect("scenario written");
        let out = Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
            .arg("run")
            .arg(&file)
            .args(["--shard", "0/2", "--report-dir"])
            .arg(tmp.path().join(name))
            .output()
            .expect("run runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let line = stderr.trim_end();
        assert!(
            line.starts_with(&format!("error: {}: --shard: ", file.display())),
            "{line}"
        );
        assert!(line.contains(why), "{line}");
        assert!(
            !tmp.path().join(name).exists(),
            "no run folder: nothing ran"
        );
    };
    refused(
        "in-process",
        "{ server: in-process, bootstrap: none }",
        false,
        "LwM2M Server is in-process",
    );
    // An external LwM2M Server, but the group bootstraps from an in-process one.
    refused(
        "bootstraps",
        "{ server: \"coap://127.0.0.1:5683\", bootstrap: in-process }",
        true,
        "group meters bootstraps from the in-process Bootstrap Server",
    );
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the epoch.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
