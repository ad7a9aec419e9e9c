//! `lwm2m-harness test`: the Gherkin feature suite against a subject, with a report under
//! `reports/<run>/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use lwm2m_harness::bdd::Subject;
use lwm2m_harness::bdd::device::{self, DeviceLaunch, Restart};
use lwm2m_harness::bdd::run::{self, DEFAULT_SEED, SuiteOptions};
use lwm2m_harness::report::matrix::Matrix;

/// Arguments of `lwm2m-harness test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Feature files or folders (default: features/).
    features: Vec<PathBuf>,
    /// Only scenarios matching a tag expression, e.g. "@int-101 or @bootstrap and not @scale".
    #[arg(long, value_name = "EXPR")]
    tags: Option<String>,
    /// A real device under test, by endpoint name: it registers with our servers.
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "server")]
    device: Option<String>,
    /// A server under test, coap://HOST:PORT: our simulated clients register with it
    /// (coaps://HOST:PORT: a server that takes CoAP over DTLS only).
    #[arg(long, value_name = "URI")]
    server: Option<String>,
    /// The server under test's CoAP over DTLS address, coaps://HOST:PORT, beside a coap://
    /// --server: the DTLS cases' clients handshake there with PSKs the adapter stores.
    #[arg(long, value_name = "URI", requires = "server")]
    server_coaps: Option<String>,
    /// How the suite drives the server under test: lwm2m-harness+http://HOST:PORT?token=T,
    /// leshan+http://HOST:PORT or exec:'COMMAND' (a driver speaking JSON lines; README
    /// "Testing your own server"). Without it only what shows on the wire is checked.
    #[arg(long, value_name = "SPEC", requires = "server")]
    server_api: Option<String>,
    /// A Bootstrap Server under test, coap://HOST:PORT (or coaps://HOST:PORT): the
    /// bootstrap cases' clients bootstrap from it (with --server).
    #[arg(long, value_name = "URI", requires = "server")]
    bootstrap_server: Option<String>,
    /// The Bootstrap Server under test's coaps://HOST:PORT beside a coap://
    /// --bootstrap-server.
    #[arg(long, value_name = "URI", requires = "bootstrap_server")]
    bootstrap_server_coaps: Option<String>,
    /// How the suite stores bootstrap configurations in, and hears from, the Bootstrap
    /// Server under test (same forms as --server-api; default: --server-api).
    #[arg(long, value_name = "SPEC", requires = "bootstrap_server")]
    bootstrap_api: Option<String>,
    /// Quirks or quirk packs (scenarios/quirks) every simulated client gets, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "NAMES", conflicts_with_all = ["device", "server"])]
    quirks: Vec<String>,
    /// The seed every random choice derives from (recorded in the report).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Where the report goes (default: reports/<run>).
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// The project folder holding features/ and scenarios/.
    #[arg(long, value_name = "DIR", default_value = ".")]
    root: PathBuf,
    /// Print only the summary, not cucumber's step-by-step output.
    #[arg(long)]
    quiet: bool,
    /// The device under test's description (YAML: configured values, the Short Server ID
    /// of its account): cases that read configuration values expect these; without it
    /// they check presence and type only.
    #[arg(long, value_name = "FILE")]
    device_profile: Option<PathBuf>,
    /// A case that passed with findings (an encoding or Register deviation the harness
    /// tolerated) counts as failed for the exit status.
    #[arg(long)]
    strict: bool,
    /// The device under test, started by the harness: a command run through `sh -c` with
    /// the placeholders {endpoint}, {server_host}, {server_port}, {server_uri},
    /// {bootstrap_uri}, {local_port}, {psk_identity}, {psk_key} (hex). Give it several
    /// times for an interoperability matrix (the devices run one after the other).
    #[arg(long = "device-cmd", value_name = "TEMPLATE", conflicts_with_all = ["device", "server", "quirks"])]
    device_cmd: Vec<String>,
    /// The endpoint name of the --device-cmd at the same position (default:
    /// dut-N-XXXXXX from the position and the seed).
    #[arg(
        long = "device-endpoint",
        value_name = "ENDPOINT",
        requires = "device_cmd"
    )]
    device_endpoint: Vec<String>,
    /// When the harness starts the device afresh: per-case, per-feature or never (only
    /// when it exits).
    #[arg(long, value_name = "WHEN", default_value = "per-case")]
    device_restart: Restart,
    /// A line written to the device's standard input to make it stop (e.g. de-register and
    /// quit); it then has a few seconds before its process group is ended.
    #[arg(long, value_name = "TEXT", requires = "device_cmd")]
    device_stop: Option<String>,
    /// Seconds a started device has to register before its case fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    device_wait: f64,
}

/// A run name: UTC time and `features`, e.g. `2026-11-24T08-00-00-features`.
fn run_name(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}-features",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn subject(args: &TestArgs) -> anyhow::Result<Subject> {
    if let Some(endpoint) = &args.device {
        anyhow::ensure!(!endpoint.is_empty(), "--device needs an endpoint name");
        return Ok(Subject::Device {
            endpoint: endpoint.clone(),
        });
    }
    if let Some(uri) = &args.server {
        let rest = uri
            .strip_prefix("coap://")
            .or_else(|| uri.strip_prefix("coaps://"))
            .ok_or_else(|| anyhow::anyhow!("--server {uri:?}: expected coap://HOST:PORT"))?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("--server {uri:?}: no port"))?;
        anyhow::ensure!(
            !host.is_empty() && port.parse::<u16>().is_ok(),
            "--server {uri:?}: expected coap://HOST:PORT"
        );
        for api in [&args.server_api, &args.bootstrap_api]
            .into_iter()
            .flatten()
        {
            lwm2m_harness::bdd::adapter::check_spec(api).map_err(anyhow::Error::msg)?;
        }
        if let Some(b) = &args.bootstrap_server {
            anyhow::ensure!(
                b.starts_with("coap://") || b.starts_with("coaps://"),
                "--bootstrap-server {b:?}: expected coap://HOST:PORT or coaps://HOST:PORT"
            );
        }
        // A companion gives the coaps:// address beside a coap:// one.
        let companions = [
            ("--server", uri, "--server-coaps", &args.server_coaps),
            (
                "--bootstrap-server",
                args.bootstrap_server.as_ref().unwrap_or(uri),
                "--bootstrap-server-coaps",
                &args.bootstrap_server_coaps,
            ),
        ];
        for (main_flag, main, flag, companion) in companions {
            let Some(c) = companion else { continue };
            anyhow::ensure!(
                c.starts_with("coaps://"),
                "{flag} {c:?}: expected coaps://HOST:PORT"
            );
            anyhow::ensure!(
                main.starts_with("coap://"),
                "{flag} goes beside a coap:// {main_flag}; {main:?} is coaps:// already"
            );
        }
        return Ok(Subject::Server {
            uri: uri.clone(),
            secure: args.server_coaps.clone(),
            api: args.server_api.clone(),
            bootstrap: args.bootstrap_server.clone(),
            bootstrap_secure: args.bootstrap_server_coaps.clone(),
            bootstrap_api: args.bootstrap_api.clone(),
        });
    }
    Ok(Subject::InProcess {
        quirks: args.quirks.clone(),
    })
}

/// The endpoint of the `i`th (from 0) --device-cmd.
fn device_endpoint(args: &TestArgs, i: usize) -> anyhow::Result<String> {
    let endpoint = args
        .device_endpoint
        .get(i)
        .cloned()
        .unwrap_or_else(|| device::generated_endpoint(i + 1, args.seed));
    device::check_endpoint(&endpoint).map_err(anyhow::Error::msg)?;
    Ok(endpoint)
}

/// Runs the suite; exit status 1 when a case failed or no case was tested (with
/// `--strict`, also when a case passed with findings).
pub fn run(args: &TestArgs, ddf: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let name = run_name(SystemTime::now());
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| args.root.join("reports").join(&name));
    anyhow::ensure!(
        args.device_endpoint.len() <= args.device_cmd.len(),
        "{} --device-endpoint for {} --device-cmd",
        args.device_endpoint.len(),
        args.device_cmd.len()
    );
    if args.device_cmd.len() > 1 {
        return run_devices(args, ddf, &report_dir);
    }
    // Outside a checkout the default root (`.`) has no features/: the shipped ones run.
    std::fs::read_dir(&args.root).with_context(|| format!("--root {}", args.root.display()))?;
    let mut subject = subject(args)?;
    let mut launch = None;
    if let Some(template) = args.device_cmd.first() {
        subject = Subject::Device {
            endpoint: device_endpoint(args, 0)?,
        };
        let register_wait = Duration::try_from_secs_f64(args.device_wait)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--device-wait: a positive number of seconds")?;
        let l = DeviceLaunch {
            template: template.clone(),
            restart: args.device_restart,
            stop: args.device_stop.clone(),
            register_wait,
            log_dir: report_dir.join("device"),
        };
        l.check().map_err(anyhow::Error::msg)?;
        launch = Some(l);
    }
    let options = SuiteOptions {
        root: args.root.clone(),
        features: args.features.clone(),
        ddf: ddf.to_vec(),
        tags: args.tags.clone(),
        subject,
        seed: args.seed,
        report_dir: report_dir.clone(),
        run: name,
        console: !args.quiet,
        device_profile: args.device_profile.clone(),
        device: launch,
    };
    let outcome = run::run_suite(&options)?;
    print!("{}", run::summary(&outcome.report));
    for s in &outcome.untagged {
        eprintln!("scenario without a case tag: {s}");
    }
    println!("report: {}", report_dir.join("report.html").display());
    if let Some(why) = outcome.report.nothing_tested() {
        eprintln!("nothing tested: {why}");
    }
    let with_findings = outcome.report.counts().with_findings;
    if args.strict && with_findings > 0 {
        eprintln!("--strict: {with_findings} cases passed with findings");
    }
    Ok(
        if outcome.is_success() && !(args.strict && with_findings > 0) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Several --device-cmd: each device in its own `lwm2m-harness test` process (our servers
/// serve one device per process), reporting into `REPORT/NN-ENDPOINT/`, then the matrix of
/// them all in `REPORT/`. Exit status 1 when any device's run failed.
fn run_devices(args: &TestArgs, ddf: &[PathBuf], report_dir: &Path) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the lwm2m-harness executable")?;
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    for (i, template) in args.device_cmd.iter().enumerate() {
        let endpoint = device_endpoint(args, i)?;
        let dir = report_dir.join(format!("{:02}-{endpoint}", i + 1));
        let mut cmd = std::process::Command::new(&exe);
        for d in ddf {
            cmd.arg("--ddf").arg(d);
        }
        cmd.arg("test").args(&args.features);
        if let Some(tags) = &args.tags {
            cmd.args(["--tags", tags]);
        }
        cmd.arg("--seed")
            .arg(args.seed.to_string())
            .arg("--root")
            .arg(&args.root)
            .arg("--report-dir")
            .arg(&dir)
            .args(["--device-cmd", template, "--device-endpoint", &endpoint])
            .arg("--device-restart")
            .arg(args.device_restart.to_string())
            .arg("--device-wait")
            .arg(args.device_wait.to_string());
        if let Some(stop) = &args.device_stop {
            cmd.args(["--device-stop", stop]);
        }
        if let Some(profile) = &args.device_profile {
            cmd.arg("--device-profile").arg(profile);
        }
        if args.strict {
            cmd.arg("--strict");
        }
        if args.quiet {
            cmd.arg("--quiet");
        }
        println!("device {} of {}: {endpoint}", i + 1, args.device_cmd.len());
        let status = cmd
            .status()
            .with_context(|| format!("running the suite against {endpoint}"))?;
        if !status.success() {
            failed.push(endpoint);
        }
        runs.push(dir);
    }
    let present: Vec<PathBuf> = runs
        .into_iter()
        .filter(|d| d.join("report.json").is_file())
        .collect();
    let matrix = Matrix::load(&present, report_dir)?;
    matrix.write(report_dir)?;
    print!("{}", matrix.text());
    println!("matrix: {}", report_dir.join("matrix.html").display());
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: the runs against {} did not succeed",
            failed.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `report matrix RUN_DIR...`: the runs side by side, written to `out` (default `.`).
pub fn matrix(args: &[PathBuf], out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let runs = match args.split_first() {
        Some((first, runs)) if first.as_path() == Path::new("matrix") && !runs.is_empty() => runs,
        _ => anyhow::bail!("give one run folder, or `matrix` and the run folders to compare"),
    };
    let out = out.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let matrix = Matrix::load(runs, &out)?;
    matrix.write(&out)?;
    print!("{}", matrix.text());
    println!("matrix: {}", out.join("matrix.html").display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn run_names_are_utc_times() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_507_200); // 2026-11-24 08:00:00 UTC
        assert_eq!(run_name(t), "2026-11-24T08-00-00-features");
        assert_eq!(run_name(UNIX_EPOCH), "1970-01-01T00-00-00-features");
    }
}
