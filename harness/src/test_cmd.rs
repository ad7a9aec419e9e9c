//! `lwm2m-harness test`: the Gherkin feature suite against a subject, with a report under
//! `reports/<run>/`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use lwm2m_harness::bdd::Subject;
use lwm2m_harness::bdd::run::{self, DEFAULT_SEED, SuiteOptions};

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
    /// A server under test, coap://HOST:PORT: our simulated clients register with it.
    #[arg(long, value_name = "URI")]
    server: Option<String>,
    /// How the suite drives the server under test: lwm2m-harness+http://HOST:PORT?token=T,
    /// leshan+http://HOST:PORT or exec:'COMMAND' (a driver speaking JSON lines; README
    /// "Testing your own server"). Without it only what shows on the wire is checked.
    #[arg(long, value_name = "SPEC", requires = "server")]
    server_api: Option<String>,
    /// A Bootstrap Server under test, coap://HOST:PORT: the bootstrap cases' clients
    /// bootstrap from it (with --server).
    #[arg(long, value_name = "URI", requires = "server")]
    bootstrap_server: Option<String>,
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
                b.starts_with("coap://"),
                "--bootstrap-server {b:?}: expected coap://HOST:PORT (plain CoAP)"
            );
        }
        return Ok(Subject::Server {
            uri: uri.clone(),
            api: args.server_api.clone(),
            bootstrap: args.bootstrap_server.clone(),
            bootstrap_api: args.bootstrap_api.clone(),
        });
    }
    Ok(Subject::InProcess {
        quirks: args.quirks.clone(),
    })
}

/// Runs the suite; exit status 1 when a case failed.
pub fn run(args: &TestArgs, ddf: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let name = run_name(SystemTime::now());
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| args.root.join("reports").join(&name));
    let options = SuiteOptions {
        root: args.root.clone(),
        features: args.features.clone(),
        ddf: ddf.to_vec(),
        tags: args.tags.clone(),
        subject: subject(args)?,
        seed: args.seed,
        report_dir: report_dir.clone(),
        run: name,
        console: !args.quiet,
    };
    let outcome = run::run_suite(&options)?;
    print!("{}", run::summary(&outcome.report));
    for s in &outcome.untagged {
        eprintln!("scenario without a case tag: {s}");
    }
    println!("report: {}", report_dir.join("report.html").display());
    Ok(if outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
