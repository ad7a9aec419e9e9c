//! The binary works outside its checkout: copied into a temporary folder with no
//! `scenarios/` or `features/` around (as `cargo install --path harness` leaves it), it
//! runs `simulate --profile sensor-1.1` against a server started here, `test` with a tag
//! selecting a few cases, and a scenario of the user's that names a shipped profile; the
//! user's own folders add to the shipped profiles and override them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use lwm2m_proto::registry::Registry;
use lwm2m_server::driver::{ServerOptions, start_server};

/// The binary, copied into `dir/bin`.
fn installed(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("a bin folder");
    let exe = bin.join("lwm2m-harness");
    std::fs::copy(env!("CARGO_BIN_EXE_lwm2m-harness"), &exe).expect("the binary copied");
    exe
}

/// Runs the installed binary in `dir/work` (made), with its cache under `dir/cache` and no
/// Cargo variables.
fn run(exe: &Path, dir: &Path, args: &[&str]) -> Output {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("a work folder");
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .current_dir(&work)
        .env("XDG_CACHE_HOME", dir.join("cache"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CARGO") {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A folder with no checkout above it.
fn outside_the_checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for a in dir.path().ancestors() {
        assert!(
            !a.join("scenarios/profiles").is_dir() && !a.join("features").is_dir(),
            "{} is inside a checkout ({})",
            dir.path().display(),
            a.display()
        );
    }
    dir
}

#[test]
fn simulate_outside_the_checkout_uses_the_shipped_profiles() {
    let dir = outside_the_checkout();
    let exe = installed(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = runtime.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        start_server(ServerOptions::new(any, Arc::new(Registry::embedded())))
            .expect("the server starts")
    });
    let uri = format!("coap://{}", server.local_addr());
    let args = |profile: &'static str| {
        [
            "simulate",
            "--server",
            &uri,
            "--profile",
            profile,
            "--network",
            "home-nat",
            "--duration",
            "1s",
        ]
        .map(str::to_owned)
    };
    let a = args("sensor-1.1");
    let out = run(
        &exe,
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ever-registered=1"), "{}", text(&out));

    // An unknown profile: the error lists the shipped ones.
    let a = args("no-such");
    let out = run(
        &exe,
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("sensor-1.1, wakaama-like"),
        "{}",
        text(&out)
    );

    // The user's folder adds a profile and overrides a shipped one.
    let mine = dir.path().join("work/scenarios/profiles");
    std::fs::create_dir_all(&mine).expect("a profiles folder");
    let minimal = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/profiles/minimal-1.0.yaml"),
    )
    .expect("the minimal profile");
    std::fs::write(
        mine.join("mine.yaml"),
        minimal.replace("name: minimal-1.0", "name: mine"),
    )
    .expect("written");
    std::fs::write(mine.join("sensor-1.1.yaml"), "name: [not a profile\n").expect("written");
    let a = args("mine");
    let out = run(
        &exe,
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let a = args("sensor-1.1");
    let out = run(
        &exe,
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("scenarios/profiles/sensor-1.1.yaml"),
        "the user's file is the one read: {}",
        text(&out)
    );
}

#[test]
fn test_and_run_outside_the_checkout_use_the_shipped_features_and_profiles() {
    let dir = outside_the_checkout();
    let exe = installed(dir.path());
    let report = dir.path().join("report");
    let out = run(
        &exe,
        dir.path(),
        &[
            "test",
            "--quiet",
            "--tags",
            "@int-101 or @int-102 or @int-203",
            "--report-dir",
            &report.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    let cases = json["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3, "{json}");
    assert!(
        cases.iter().all(|c| c["status"] == "passed"
            && c["feature"]
                .as_str()
                .is_some_and(|f| f.starts_with("features/"))),
        "{json}"
    );

    // A scenario of the user's, outside any scenarios/ folder, naming a shipped profile.
    let scenario = dir.path().join("work/mine.yaml");
    std::fs::create_dir_all(dir.path().join("work")).expect("a work folder");
    std::fs::write(
        &scenario,
        "name: mine\nduration: 2s\nseed: 3\nfleet:\n  - name: m\n    profile: minimal-1.0\n    count: 3\n\
         timeline:\n  - { at: 1s, action: read, group: m, path: /3/0 }\n",
    )
    .expect("written");
    let run_dir = dir.path().join("run");
    let out = run(
        &exe,
        dir.path(),
        &[
            "run",
            "mine.yaml",
            "--quiet",
            "--report-dir",
            &run_dir.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(run_dir.join("report.json").is_file());
}
