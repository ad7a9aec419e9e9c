//! The feature suite (`features/**/*.feature`) against our own LwM2M Server, Bootstrap
//! Server and simulated clients, in process on a virtual clock. Every case must pass or be
//! not applicable, and every scenario must carry a case tag.
//!
//! Reports go to `$LWM2M_REPORT_DIR`, else `target/features-report/`: `report.json`,
//! `report.html`, `junit.xml` (the run report), `cucumber/junit.xml` and
//! `cucumber/cucumber.json` (cucumber's writers), and each scenario's exchange log and pcap
//! under `exchanges/`. `LWM2M_SEED` sets the seed, `LWM2M_TAGS` a tag expression.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lwm2m_harness::bdd::run::{self, DEFAULT_SEED, SuiteOptions};
use lwm2m_harness::bdd::Subject;

fn main() -> ExitCode {
    let root = run::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")));
    let report_dir = std::env::var_os("LWM2M_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/features-report"));
    let seed = match std::env::var("LWM2M_SEED") {
        Ok(s) => match s.parse() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("LWM2M_SEED={s:?}: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => DEFAULT_SEED,
    };
    let options = SuiteOptions {
        features: vec![root.join("features")],
        root,
        tags: std::env::var("LWM2M_TAGS").ok(),
        subject: Subject::InProcess,
        seed,
        report_dir: report_dir.clone(),
        run: "features".to_owned(),
        console: true,
    };
    let outcome = match run::run_suite(&options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("the feature suite did not run: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", run::summary(&outcome.report));
    for s in &outcome.untagged {
        eprintln!("scenario without a case tag (@int-NNN, @core-X.Y, @rfcNNNN-X.Y): {s}");
    }
    if outcome.parsing_errors > 0 {
        eprintln!("{} feature files did not parse", outcome.parsing_errors);
    }
    println!("report: {}", report_dir.join("report.html").display());
    if outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
