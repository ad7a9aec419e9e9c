//! `lwm2m-harness`: the command line of the LwM2M conformance harness and device simulator.
//!
//! Subcommands: `decode` and `encode` (the codec tool for people), `objects` (the object
//! registry), `serve` (the servers and their REST API), `simulate` (a fleet of simulated
//! clients against a server), `test` (the Gherkin feature suite), `report` (render a run
//! again) and `run` (the main job).

mod codec_tool;
mod serve;
mod simulate;
mod test_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: glibc's malloc and free took a quarter of the CPU of a DTLS load (README,
/// Benchmarks, P2); small short-lived allocations are most of what the servers and the
/// fleet make.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The exit statuses, as `--help` shows them and the README lists them.
const EXIT_STATUS: &str = "\
Exit status:
  0  success: every case passed (test, run), every client registered within the
     thresholds (simulate), the command did what it was asked
  1  failure: a case failed; nothing was tested (no case matched --tags, or none
     applied); with --strict a case passed with findings; simulate: fewer clients
     registered than --min-registered (every client by default), or a p99 latency
     above --max-register-p99/--max-update-p99; or an error (a file that does not
     load, an address that cannot be bound), with one line on stderr
  2  the command line is wrong (an unknown option, a missing or invalid value)";

#[derive(Parser)]
#[command(
    name = "lwm2m-harness",
    version,
    about = "LwM2M conformance harness and device simulator",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// Extra folders of OMA DDF XML object definitions to load next to the shipped ones.
    #[arg(long = "ddf", global = true, value_name = "DIR")]
    ddf: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: in-process servers plus a simulated fleet, report under reports/.
    #[command(after_help = EXIT_STATUS)]
    Run(lwm2m_harness::runner::RunArgs),
    /// Run the Gherkin feature suite (features/) against a subject; report under reports/.
    #[command(after_help = EXIT_STATUS)]
    Test(test_cmd::TestArgs),
    /// Decode an LwM2M payload and print its nodes as JSON, named from the registry.
    Decode(codec_tool::DecodeArgs),
    /// Encode nodes given as JSON into an LwM2M payload (hex on stdout, or raw to a file).
    Encode(codec_tool::EncodeArgs),
    /// Render a run's report again (report.html, junit.xml) from its recorded report.json;
    /// `report matrix RUN_DIR...` puts several runs (devices) side by side instead;
    /// `report merge RUN_DIR... --out DIR` merges the run folders of the shards of one
    /// fleet (`simulate --shard K/N --out RUN_DIR`) into one.
    Report {
        /// The run folder, e.g. reports/2026-11-24T08-00-00-quickstart; or `matrix` and
        /// the run folders.
        #[arg(required = true, num_args = 1..)]
        run_dir: Vec<PathBuf>,
        /// Where `report matrix` writes matrix.html, matrix.json, matrix.txt and junit.xml
        /// (default: the current folder); the merged run folder of `report merge`.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Run the LwM2M Server, the Bootstrap Server and the REST API until SIGTERM or Ctrl-C.
    Serve(serve::ServeArgs),
    /// Simulate a fleet of LwM2M clients against a server: live counters each second,
    /// a summary with Register and Update latencies at the end.
    #[command(after_help = EXIT_STATUS)]
    Simulate(simulate::SimulateArgs),
    /// List the object registry, or show one object's resources.
    Objects {
        /// An object id; without it, every object is listed.
        id: Option<u16>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = codec_tool::registry(&cli.ddf).and_then(|registry| match cli.command {
        Command::Run(args) => lwm2m_harness::runner::main(registry, &args),
        Command::Test(args) => test_cmd::run(&args, &cli.ddf),
        Command::Decode(args) => codec_tool::decode(&registry, &args).map(|()| ExitCode::SUCCESS),
        Command::Encode(args) => codec_tool::encode(&registry, &args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::run(registry, &args).map(|()| ExitCode::SUCCESS),
        Command::Simulate(args) => simulate::run(registry, &args),
        Command::Objects { id } => codec_tool::objects(&registry, id).map(|()| ExitCode::SUCCESS),
        Command::Report { run_dir, out } if run_dir[0] == std::path::Path::new("merge") => {
            let out = anyhow::Context::context(
                out,
                "report merge needs --out DIR, the merged run folder",
            )?;
            let report = lwm2m_harness::report::merge::merge(&run_dir[1..], &out)?;
            println!(
                "{}: {} clients, {} registered, {} failures -> {}",
                report.title,
                report.counters.get("fleet.clients").copied().unwrap_or(0),
                report
                    .counters
                    .get("fleet.clients_registered")
                    .copied()
                    .unwrap_or(0),
                report.counters.get("fleet.failures").copied().unwrap_or(0),
                out.join("report.html").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { run_dir, out }
            if run_dir.len() > 1 || run_dir[0] == std::path::Path::new("matrix") =>
        {
            test_cmd::matrix(&run_dir, out.as_deref())
        }
        Command::Report { run_dir, .. } => {
            let run_dir = run_dir.into_iter().next().unwrap_or_default();
            let report = lwm2m_harness::report::RunReport::load(&run_dir)?;
            report.write(&run_dir)?;
            println!(
                "{}: {} -> {}",
                report.title,
                report.counts(),
                run_dir.join("report.html").display()
            );
            Ok(ExitCode::SUCCESS)
        }
    });
    match result {
        Ok(code) => code,
        // A closed pipe (`| head`) is not an error worth a message.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: many errors' messages already
/// end with their cause (`path: No such file or directory`), which `{:#}` would repeat,
/// and a context that names a path is dropped when the next cause starts with it.
fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        match parts.last_mut() {
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        // An error whose message already ends with its source.
        #[derive(Debug, thiserror::Error)]
        #[error("x.yaml: {source}")]
        struct Read {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Read { source: io() }).context("loading the scenario");
        assert_eq!(error_text(&e), "loading the scenario: x.yaml: No such file");
        // A context naming the path the next cause starts with.
        let e = anyhow::Error::new(Read { source: io() }).context("x.yaml");
        assert_eq!(error_text(&e), "x.yaml: No such file");
        // Distinct causes all stay.
        let e = anyhow::Error::new(io())
            .context("reading a")
            .context("the run");
        assert_eq!(error_text(&e), "the run: reading a: No such file");
    }
}
