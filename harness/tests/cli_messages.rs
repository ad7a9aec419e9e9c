//! What the command line says: `{n}` in `simulate --help` as written, each cause of an
//! error said once, the bad-URI error of `simulate --server` naming only what it takes,
//! and `run --report-dir` (the name `test` uses) beside the former `run --out`.

use std::process::{Command, Output};

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn simulate_help_shows_the_n_placeholder() {
    let out = harness(&["simulate", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("`{n}` standing for the client number"),
        "{help}"
    );
    assert!(help.contains("e.g. `ep-{n}`"), "{help}");
    assert!(
        !help.contains('\u{1b}'),
        "escape codes in piped help:\n{help}"
    );
}

#[test]
fn errors_say_each_cause_once() {
    let missing = std::env::temp_dir().join(format!("no-such-{}", std::process::id()));
    let missing = missing.to_string_lossy();
    for args in [
        vec!["run", &*missing],
        vec!["--ddf", &*missing, "objects"],
        vec![
            "simulate",
            "--server",
            "coap://127.0.0.1:9",
            "--profile",
            "sensor-1.1",
            "--scenarios",
            &*missing,
        ],
    ] {
        let out = harness(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.matches("(os error 2)").count(), 1, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn a_bad_server_uri_names_what_simulate_takes() {
    let out = harness(&["simulate", "--server", "http://127.0.0.1", "--profile", "x"]);
    let err = stderr(&out);
    assert!(
        err.contains(
            "--server: \"http://127.0.0.1\": expected coap://HOST[:PORT] or coaps://HOST[:PORT]"
        ),
        "{err}"
    );
    assert!(!err.contains("in-process"), "{err}");
}

#[test]
fn run_takes_report_dir_and_still_out() {
    let help = harness(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--report-dir <DIR>"), "{help}");
    assert!(
        !help.contains("--out"),
        "the former name is hidden:\n{help}"
    );
    // Both are read (the scenario is missing, so the run stops there).
    for flag in ["--report-dir", "--out"] {
        let out = harness(&["run", "/no/such/scenario.yaml", flag, "x"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flag}: {err}");
        assert!(err.contains("scenario.yaml"), "{flag}: {err}");
    }
    let both = harness(&["run", "s.yaml", "--report-dir", "a", "--out", "b"]);
    assert_eq!(both.status.code(), Some(2));
}
