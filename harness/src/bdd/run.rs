//! Running the feature suite: cucumber with our World and steps, its JUnit and JSON
//! writers teed behind the console writer, and a collector that turns every scenario into
//! [`CaseResult`]s of a [`RunReport`] (one per case tag: `@int-101`, `@core-6.2.1`, ...).
//!
//! Four verdicts: passed, failed, not supported, not applicable. A step that finds the case
//! beyond the subject unwinds with a [`NotApplicable`] payload, one that sees the subject
//! refuse an optional feature with the code the specification requires unwinds with a
//! [`NotSupported`] payload. The collector reports the case with that verdict and the
//! reason; [`NotApplicableAsSkipped`] shows that step to cucumber's own writers as skipped,
//! so neither their JUnit nor their JSON counts the case as passed or failed.
//!
//! A run that tested nothing (no case matched, or every case was not applicable) is not a
//! success ([`SuiteOutcome::is_success`], [`RunReport::nothing_tested`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use cucumber::event::{self, ScenarioFinished, StepError};
use cucumber::gherkin;
use cucumber::parser;
use cucumber::writer::{self, Verbosity};
use cucumber::{Event, World as _, Writer, WriterExt as _, cli};
use futures::FutureExt as _;
use futures::stream::{self, StreamExt as _};

use super::backend::Subject;
use super::exchange::ExchangeLog;
use super::fleet::Library;
use super::world::{Lwm2mWorld, NotApplicable, NotSupported, Setting};
use crate::record::{Latencies, PcapRecorder};
use crate::report::{self, CaseResult, RunReport, Status};

/// The description of our simulated ETS device, relative to the workspace root: the
/// in-process subject's configured values.
pub const SIMULATED_DEVICE_DESCRIPTION: &str = "features/devices/ets-simulated.yaml";

/// The marker in a case's message when the case asked the device under test to reboot:
/// whoever runs the device (a launcher) restarts it if it exited; the world's
/// [`Lwm2mWorld::device_rebooted`] says the same during the run.
pub const DEVICE_REBOOTED: &str = "device_rebooted";

/// The seed of a run that names none.
pub const DEFAULT_SEED: u64 = 20_170_830;

/// What to run and where to report.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The workspace root: `scenarios/`, `features/profiles`, `features/objects` are read
    /// from here, and feature paths are reported relative to it.
    pub root: PathBuf,
    /// Feature files or folders (default: `ROOT/features`).
    pub features: Vec<PathBuf>,
    /// Extra folders of DDF XML object definitions to load.
    pub ddf: Vec<PathBuf>,
    /// A cucumber tag expression (`@int-101 or @bootstrap and not @scale`).
    pub tags: Option<String>,
    /// The subject under test.
    pub subject: Subject,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Where the reports go.
    pub report_dir: PathBuf,
    /// The run's name (the report folder's name).
    pub run: String,
    /// Print cucumber's progress to stdout.
    pub console: bool,
    /// The device description (`--device-profile`): configured values the cases expect.
    /// `None`: for the in-process subject `features/devices/ets-simulated.yaml`, for a
    /// device none (configuration values are checked for presence and type only).
    pub device_profile: Option<PathBuf>,
    /// With a [`Subject::Device`]: the harness starts and stops the device itself
    /// ([`super::device`]).
    pub device: Option<super::device::DeviceLaunch>,
}

/// What a run produced.
#[derive(Debug)]
pub struct SuiteOutcome {
    /// The report (also written to the report folder).
    pub report: RunReport,
    /// Scenarios with no case tag (`feature: scenario`): every scenario must have one.
    pub untagged: Vec<String>,
    /// Feature files cucumber could not parse.
    pub parsing_errors: usize,
}

impl SuiteOutcome {
    /// True when no case failed, at least one case was tested, and everything parsed.
    pub fn is_success(&self) -> bool {
        self.report.counts().failed == 0
            && self.report.nothing_tested().is_none()
            && self.parsing_errors == 0
            && self.untagged.is_empty()
    }
}

/// Everything scenarios share during a run.
#[derive(Debug)]
pub struct RunContext {
    /// What the world reads: profiles, quirk packs, networks and the registry; the subject
    /// under test; the device description.
    pub setting: Arc<Setting>,
    /// The run seed.
    pub seed: u64,
    /// The workspace root.
    pub root: PathBuf,
    /// The report folder.
    pub report_dir: PathBuf,
    /// Wall-clock start of the run, seconds since the Unix epoch (pcap timestamps).
    pub started_unix: Duration,
    /// The harness starts the device under test ([`super::device`]).
    launched: bool,
    collector: Mutex<Collector>,
}

/// Results gathered scenario by scenario.
#[derive(Debug, Default)]
struct Collector {
    cases: Vec<CaseResult>,
    latencies: Latencies,
    counters: BTreeMap<String, u64>,
    network_usage: Vec<report::ExchangeUsage>,
    untagged: Vec<String>,
    /// What cucumber.json needs from the feature files beyond what its writer puts there.
    gherkin: report::cucumber_json::Gherkin,
}

/// True for tags that name a case: an ETS case (`int-101`) or a specification clause
/// (`core-6.2.1`, `rfc7641-3.6`).
pub fn is_case_tag(tag: &str) -> bool {
    let digits_and_dots = |s: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_digit() || c == '.')
    };
    if let Some(n) = tag.strip_prefix("int-") {
        return !n.is_empty() && n.chars().all(|c| c.is_ascii_digit());
    }
    if let Some(clause) = tag.strip_prefix("core-") {
        return digits_and_dots(clause);
    }
    if let Some(rest) = tag.strip_prefix("rfc") {
        return rest
            .split_once('-')
            .is_some_and(|(n, clause)| digits_and_dots(n) && digits_and_dots(clause));
    }
    false
}

/// A stable 64-bit hash of a text (FNV-1a), for per-scenario seeds.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl RunContext {
    fn feature_label(&self, feature: &gherkin::Feature) -> String {
        feature.path.as_ref().map_or_else(
            || feature.name.clone(),
            |p| {
                let root = self
                    .root
                    .canonicalize()
                    .unwrap_or_else(|_| self.root.clone());
                // A shipped feature file is labelled as in a checkout.
                let shipped = crate::shipped::root()
                    .ok()
                    .and_then(|r| r.canonicalize().ok());
                let relative = p
                    .strip_prefix(&root)
                    .ok()
                    .or_else(|| shipped.as_ref().and_then(|s| p.strip_prefix(s).ok()));
                relative.unwrap_or(p).display().to_string()
            },
        )
    }

    /// The seed of one scenario: the run seed mixed with the scenario's feature and name,
    /// so that a scenario repeats whatever else runs.
    fn scenario_seed(&self, feature: &gherkin::Feature, scenario: &gherkin::Scenario) -> u64 {
        let key = format!("{}\n{}", self.feature_label(feature), scenario.name);
        lwm2m_simulator::seed::mix(&[self.seed, stable_hash(&key)])
    }

    /// Records a finished scenario.
    fn collect(
        &self,
        feature: &gherkin::Feature,
        rule: Option<&gherkin::Rule>,
        scenario: &gherkin::Scenario,
        finished: &ScenarioFinished,
        world: Option<&mut Lwm2mWorld>,
    ) {
        let feature_label = self.feature_label(feature);
        let mut cases: Vec<String> = scenario
            .tags
            .iter()
            .filter(|t| is_case_tag(t))
            .cloned()
            .collect();
        let mut collector = self
            .collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cases.is_empty() {
            collector
                .untagged
                .push(format!("{feature_label}: {}", scenario.name));
            cases.push(format!("untagged:{}", scenario.name));
        }
        let unavailable = world
            .as_ref()
            .and_then(|w| w.unavailable().map(str::to_owned));
        let (status, message) = match finished {
            ScenarioFinished::StepPassed => match unavailable {
                Some(reason) => (Status::NotApplicable, Some(reason)),
                None => (Status::Passed, None),
            },
            ScenarioFinished::StepSkipped => (
                Status::Failed,
                Some("a step matches no step definition: the vocabulary lacks it".to_owned()),
            ),
            ScenarioFinished::BeforeHookFailed(info) => (
                Status::Failed,
                Some(format!(
                    "the scenario could not start: {}",
                    panic_text(info)
                )),
            ),
            ScenarioFinished::StepFailed(_, _, error) => match verdict_of(error) {
                Some((status, reason)) => (status, Some(reason)),
                None => (Status::Failed, Some(error_text(error))),
            },
        };
        // A device case that exchanged nothing with the device and looked at nothing it
        // sent checked our own server (core-6.3.8: our server refuses a composite
        // operation for a 1.0 client without asking it): it is no verdict on the device.
        let (status, message) = match (&self.setting.subject, status, world.as_ref()) {
            (Subject::Device { .. }, Status::Passed, Some(w))
                if !w.device_evidence
                    && w.backend_ref()
                        .is_none_or(|b| b.exchange_log().sent().is_empty()) =>
            {
                (
                    Status::NotApplicable,
                    Some(
                        "the case exchanged nothing with the device under test and checked \
                         nothing it sent: what it checks is the harness's own server"
                            .to_owned(),
                    ),
                )
            }
            _ => (status, message),
        };
        // A reboot the case asked for: the launcher restarts a device that exits, and the
        // report says so (the device's state after the case is its rebooted one).
        let rebooted = world.as_ref().is_some_and(|w| w.device_rebooted);
        let message = match (rebooted, message) {
            (false, m) => m,
            (true, m) => Some(format!(
                "{}{DEVICE_REBOOTED}: the case asked the device to reboot (Execute /3/0/4)",
                m.map(|m| format!("{m}\n")).unwrap_or_default()
            )),
        };
        let duration_ms = world
            .as_ref()
            .and_then(|w| w.wall_start)
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
        let mut evidence = Vec::new();
        let mut world_findings = world
            .as_ref()
            .map(|w| w.findings.clone())
            .unwrap_or_default();
        if let Some(world) = world {
            collector.latencies.merge(&world.latencies);
            if let Some(backend) = world.backend_ref() {
                for (k, v) in backend.counters() {
                    *collector.counters.entry(k).or_default() += v;
                }
                let log = backend.exchange_log();
                let stem = evidence_stem(&cases[0], rule, scenario);
                let registration = match &self.setting.subject {
                    Subject::Device { endpoint } => backend.registration(endpoint),
                    _ => None,
                };
                // The device's Register and Updates are checked in every case it is tested in.
                if let Some(r) = &registration
                    && matches!(status, Status::Passed | Status::Failed)
                {
                    for f in super::world::registration_findings(r) {
                        if !world_findings.contains(&f) {
                            world_findings.push(f);
                        }
                    }
                }
                let registration = registration.as_ref().map(device_registration_text);
                match self.write_evidence(&stem, log, registration.as_deref()) {
                    Ok(files) => evidence = files,
                    Err(e) => eprintln!("evidence of {stem}: {e:#}"),
                }
                if scenario
                    .tags
                    .iter()
                    .chain(&feature.tags)
                    .any(|t| t == "network-usage")
                {
                    collector
                        .network_usage
                        .extend(report::usage::exchanges(&usage_datagrams(log)));
                }
            }
        }
        // The launched device's output, and what happened to its process.
        let (device_logs, device_notes) = if self.launched {
            super::device::end_case()
        } else {
            (Vec::new(), Vec::new())
        };
        evidence.extend(device_logs);
        let message = match (message, device_notes.is_empty()) {
            (Some(m), false) if status != Status::Passed => Some(format!(
                "{m}\n\ndevice under test:\n  {}",
                device_notes.join("\n  ")
            )),
            (m, _) => m,
        };
        let findings = world_findings;
        let title = match rule {
            Some(r) => format!("{} / {}", r.name, scenario.name),
            None => scenario.name.clone(),
        };
        let subject = self.setting.subject.id();
        for case in cases {
            collector.cases.push(CaseResult {
                case,
                title: title.clone(),
                feature: feature_label.clone(),
                subject: subject.clone(),
                status,
                message: message.clone(),
                evidence: evidence.clone(),
                findings: findings.clone(),
                duration_ms,
            });
        }
    }

    /// Writes a scenario's exchange log and pcap; returns their paths relative to the
    /// report folder.
    fn write_evidence(
        &self,
        stem: &str,
        log: &ExchangeLog,
        registration: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        if log.is_empty() && registration.is_none() {
            return Ok(Vec::new());
        }
        let dir = self.report_dir.join("exchanges");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pcap = format!("exchanges/{stem}.pcap");
        let mut files = Vec::new();
        let header = if log.key_log().is_empty() {
            stem.to_owned()
        } else {
            let keys = format!("exchanges/{stem}.keys.log");
            let mut lines = log.key_log().join("\n");
            lines.push('\n');
            std::fs::write(self.report_dir.join(&keys), lines)?;
            let header = format!(
                "{stem}\ndecrypt the DTLS datagrams: tshark -r {stem}.pcap -o \
                 tls.keylog_file:{stem}.keys.log -d udp.port==5684,dtls -d udp.port==5683,coap"
            );
            files.push(keys);
            header
        };
        let text = match registration {
            Some(r) => format!("{header}\n{r}\n{}", log.text()),
            None => format!("{header}\n{}", log.text()),
        };
        let txt = format!("exchanges/{stem}.txt");
        std::fs::write(self.report_dir.join(&txt), text)?;
        let mut recorder = PcapRecorder::create(&self.report_dir.join(&pcap))?;
        for d in log.sent() {
            recorder.record(self.started_unix + d.at, d.src, d.dst, &d.bytes)?;
        }
        recorder.finish()?;
        files.splice(0..0, [txt, pcap]);
        Ok(files)
    }
}

/// The device's registration as our server holds it (from its last Register and
/// Updates): parameters, links, and what the server tolerated in them; evidence of every
/// device case.
fn device_registration_text(r: &lwm2m_proto::server::Registration) -> String {
    let mut s = format!(
        "registration of {} ({}): lwm2m={} lt={} b={}{} from {}\n  links: {}\n",
        r.endpoint,
        r.id,
        r.version,
        r.lifetime,
        r.binding,
        if r.queue_mode { " Q" } else { "" },
        r.address,
        r.links
    );
    for f in &r.findings {
        let _ = writeln!(s, "  finding: {f} ({})", f.clause());
    }
    for n in &r.link_notes {
        let _ = writeln!(s, "  link note: {n} ({})", n.clause());
    }
    s
}

fn usage_datagrams(log: &ExchangeLog) -> Vec<report::usage::Datagram> {
    log.sent()
        .iter()
        .map(|d| report::usage::Datagram {
            at: d.at,
            src: d.src,
            dst: d.dst,
            coap: d.coap.clone().unwrap_or_default(),
            wire_len: d.bytes.len(),
        })
        .collect()
}

/// A file-name-safe stem for a scenario's evidence: its case and line.
fn evidence_stem(case: &str, rule: Option<&gherkin::Rule>, scenario: &gherkin::Scenario) -> String {
    let safe: String = case
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let line = scenario.position.line;
    match rule {
        Some(r) => format!("{safe}-r{}-l{line}", r.position.line),
        None => format!("{safe}-l{line}"),
    }
}

/// The verdict a step's unwinding carries (not applicable or not supported) and its
/// reason; `None` for a failure.
fn verdict_of(error: &StepError) -> Option<(Status, String)> {
    match error {
        StepError::Panic(info) => info
            .downcast_ref::<NotApplicable>()
            .map(|n| (Status::NotApplicable, n.0.clone()))
            .or_else(|| {
                info.downcast_ref::<NotSupported>()
                    .map(|n| (Status::NotSupported, n.0.clone()))
            }),
        _ => None,
    }
}

/// The verdict and reason of a step that unwound as not applicable or not supported, as
/// one line for cucumber's writers.
fn not_applicable_reason(error: &StepError) -> Option<String> {
    verdict_of(error).map(|(status, reason)| format!("{}: {reason}", status.label()))
}

fn panic_text(info: &event::Info) -> String {
    if let Some(s) = info.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = info.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "a panic with a payload that is not text".to_owned()
    }
}

fn error_text(error: &StepError) -> String {
    match error {
        StepError::Panic(info) => panic_text(info),
        e => e.to_string(),
    }
}

/// Shows the not-applicable step of a scenario to the wrapped writers as skipped, with the
/// reason as a log line, instead of as a failure (see the module documentation).
#[derive(Debug)]
pub struct NotApplicableAsSkipped<Wr>(pub Wr);

impl<Wr: Writer<Lwm2mWorld>> Writer<Lwm2mWorld> for NotApplicableAsSkipped<Wr> {
    type Cli = Wr::Cli;

    async fn handle_event(
        &mut self,
        event: parser::Result<Event<event::Cucumber<Lwm2mWorld>>>,
        cli: &Self::Cli,
    ) {
        use event::{Cucumber, Feature, RetryableScenario, Rule, Scenario, Step};

        /// The reason, if the event is a step failing as not applicable.
        fn reason(ev: &Scenario<Lwm2mWorld>) -> Option<String> {
            match ev {
                Scenario::Step(_, Step::Failed(_, _, _, e))
                | Scenario::Background(_, Step::Failed(_, _, _, e)) => not_applicable_reason(e),
                _ => None,
            }
        }
        fn skipped(ev: Scenario<Lwm2mWorld>) -> Scenario<Lwm2mWorld> {
            match ev {
                Scenario::Step(s, _) => Scenario::Step(s, Step::Skipped),
                Scenario::Background(s, _) => Scenario::Background(s, Step::Skipped),
                ev => ev,
            }
        }

        let mut log = None;
        let event = event.map(|outer| {
            outer.map(|ev| match ev {
                Cucumber::Feature(f, Feature::Scenario(sc, rs)) => match reason(&rs.event) {
                    Some(r) => {
                        let retries = rs.retries;
                        log = Some((f.clone(), None, sc.clone(), r, retries));
                        let event = skipped(rs.event);
                        Cucumber::Feature(
                            f,
                            Feature::Scenario(sc, RetryableScenario { event, retries }),
                        )
                    }
                    None => Cucumber::Feature(f, Feature::Scenario(sc, rs)),
                },
                Cucumber::Feature(f, Feature::Rule(r, Rule::Scenario(sc, rs))) => {
                    match reason(&rs.event) {
                        Some(why) => {
                            let retries = rs.retries;
                            log = Some((f.clone(), Some(r.clone()), sc.clone(), why, retries));
                            let event = skipped(rs.event);
                            let rs = RetryableScenario { event, retries };
                            Cucumber::Feature(f, Feature::Rule(r, Rule::Scenario(sc, rs)))
                        }
                        None => Cucumber::Feature(f, Feature::Rule(r, Rule::Scenario(sc, rs))),
                    }
                }
                ev => ev,
            })
        });
        if let Some((f, r, sc, why, retries)) = log {
            let line = Scenario::Log(format!("{why}\n")).with_retries(retries);
            let ev = Event::new(event::Cucumber::scenario(f, r, sc, line));
            self.0.handle_event(Ok(ev), cli).await;
        }
        self.0.handle_event(event, cli).await;
    }
}

impl<Wr: writer::Normalized> writer::Normalized for NotApplicableAsSkipped<Wr> {}

/// Feature files and folders as one cucumber input.
#[derive(Debug, Clone, Copy, Default)]
struct FeatureFiles;

impl parser::Parser<Vec<PathBuf>> for FeatureFiles {
    type Cli = cli::Empty;
    type Output = stream::Iter<std::vec::IntoIter<parser::Result<gherkin::Feature>>>;

    fn parse(self, input: Vec<PathBuf>, _: Self::Cli) -> Self::Output {
        let mut all = Vec::new();
        for path in input {
            let mut features =
                parser::Parser::parse(parser::Basic::new(), path, Default::default());
            // The basic parser's stream is an iterator: every poll is ready.
            while let Some(Some(feature)) = features.next().now_or_never() {
                all.push(feature);
            }
        }
        stream::iter(all)
    }
}

/// `ROOT/relative` when it is there, else the shipped one (an installed binary run outside
/// a checkout).
fn in_root_or_shipped(root: &Path, relative: &str) -> anyhow::Result<PathBuf> {
    let mine = root.join(relative);
    if mine.exists() {
        return Ok(mine);
    }
    Ok(crate::shipped::root()?.join(relative))
}

/// Runs the suite and writes `report.json`, `report.html`, `junit.xml` (the run report)
/// and `cucumber/junit.xml`, `cucumber/cucumber.json` (cucumber's writers) into the report
/// folder, with each scenario's exchange log and pcap under `exchanges/`.
pub fn run_suite(options: &SuiteOptions) -> anyhow::Result<SuiteOutcome> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let library = Library::load(&options.root, &options.ddf)?;
    // Evidence of an earlier run in the same folder would mix with this run's.
    let evidence = options.report_dir.join("exchanges");
    if evidence.is_dir() {
        std::fs::remove_dir_all(&evidence)
            .with_context(|| format!("clearing {}", evidence.display()))?;
    }
    let cucumber_dir = options.report_dir.join("cucumber");
    std::fs::create_dir_all(&cucumber_dir)
        .with_context(|| format!("creating {}", cucumber_dir.display()))?;
    let device_profile = options.device_profile.clone().or_else(|| {
        matches!(options.subject, Subject::InProcess { .. })
            .then(|| in_root_or_shipped(&options.root, SIMULATED_DEVICE_DESCRIPTION))
            .transpose()
            .ok()
            .flatten()
    });
    let device = device_profile
        .map(|p| super::description::DeviceDescription::load(&p))
        .transpose()?;
    let ctx = Arc::new(RunContext {
        setting: Arc::new(Setting {
            device,
            library,
            subject: options.subject.clone(),
        }),
        seed: options.seed,
        root: options.root.clone(),
        report_dir: options.report_dir.clone(),
        started_unix,
        launched: options.device.is_some(),
        collector: Mutex::new(Collector::default()),
    });
    let junit = std::fs::File::create(cucumber_dir.join("junit.xml"))?;
    let json = std::fs::File::create(cucumber_dir.join("cucumber.json"))?;
    let console: Box<dyn std::io::Write> = if options.console {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::io::sink())
    };
    let features = if options.features.is_empty() {
        vec![in_root_or_shipped(&options.root, "features")?]
    } else {
        options.features.clone()
    };
    let mut opts = cli::Opts::<cli::Empty, _, _, cli::Empty>::default();
    if let Some(tags) = &options.tags {
        let expr = tags
            .parse::<gherkin::tagexpr::TagOperation>()
            .map_err(|e| anyhow::anyhow!("tag expression {tags:?}: {e}"))?;
        opts.tags_filter = Some(expr);
    }
    if let (Some(launch), Subject::Device { endpoint }) = (&options.device, &options.subject) {
        launch.check().map_err(anyhow::Error::msg)?;
        super::device::check_endpoint(endpoint).map_err(anyhow::Error::msg)?;
        super::device::install(launch.clone(), endpoint, options.seed);
    }
    // However the run ends (an error below included), the device it started stops.
    let device_guard = options.device.is_some().then_some(DeviceGuard);
    let (before_ctx, after_ctx) = (ctx.clone(), ctx.clone());
    // Where the Before and After hooks below are, for cucumber.json's hook `match`.
    let hooks_at = concat!(file!(), ":", line!());
    let writer = NotApplicableAsSkipped(
        writer::Basic::raw(console, writer::Coloring::Never, Verbosity::Default)
            .summarized()
            .tee::<Lwm2mWorld, _>(writer::JUnit::for_tee(junit, Verbosity::Default))
            .tee::<Lwm2mWorld, _>(writer::Json::for_tee(json))
            .normalized(),
    );
    let finished = Lwm2mWorld::cucumber::<PathBuf>()
        .with_parser::<_, Vec<PathBuf>>(FeatureFiles)
        .with_writer(writer)
        // After the parser and the writer, which reset it; never the process's arguments.
        .with_cli(opts)
        .max_concurrent_scenarios(1)
        .before(move |feature, rule, scenario, world| {
            let ctx = before_ctx.clone();
            let seed = ctx.scenario_seed(feature, scenario);
            ctx.collector
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .gherkin
                .note(feature, rule, scenario);
            if ctx.launched {
                super::device::begin_case(&ctx.feature_label(feature));
            }
            world.setup(ctx.setting.clone(), seed);
            world.tags = scenario
                .tags
                .iter()
                .chain(rule.iter().flat_map(|r| &r.tags))
                .chain(&feature.tags)
                .cloned()
                .collect();
            let steps = feature
                .background
                .iter()
                .flat_map(|b| &b.steps)
                .chain(
                    rule.iter()
                        .flat_map(|r| r.background.iter().flat_map(|b| &b.steps)),
                )
                .chain(&scenario.steps);
            let mut texts: Vec<String> = Vec::new();
            for step in steps {
                texts.push(step.value.clone());
                if let Some(table) = &step.table {
                    texts.extend(table.rows.iter().map(|row| row.join(" ")));
                }
                if let Some(doc) = &step.docstring {
                    texts.push(doc.clone());
                }
            }
            world.touched = super::world::touched_paths(texts.iter().map(String::as_str));
            world.long_waits = scenario
                .tags
                .iter()
                .chain(&feature.tags)
                .any(|t| t == super::world::LONG_WAIT_TAG);
            async {}.boxed_local()
        })
        .after(move |feature, rule, scenario, finished, world| {
            after_ctx.collect(feature, rule, scenario, finished, world);
            async {}.boxed_local()
        })
        .run(features);
    let writer = futures::executor::block_on(finished);
    drop(device_guard);
    let parsing_errors = cucumber::writer::Stats::parsing_errors(&writer.0);
    let collector =
        std::mem::take(&mut *ctx.collector.lock().unwrap_or_else(PoisonError::into_inner));
    let json_path = cucumber_dir.join("cucumber.json");
    let written = std::fs::read_to_string(&json_path)
        .with_context(|| format!("reading {}", json_path.display()))?;
    let completed = report::cucumber_json::complete(&written, &collector.gherkin, hooks_at)
        .with_context(|| format!("{}: not cucumber's JSON", json_path.display()))?;
    std::fs::write(&json_path, completed)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let report = RunReport {
        schema: report::SCHEMA_VERSION,
        run: options.run.clone(),
        title: format!("LwM2M feature suite against {}", options.subject.id()),
        started_unix_s: started_unix.as_secs_f64(),
        duration_s: started.elapsed().as_secs_f64(),
        seed: options.seed,
        product_version: env!("CARGO_PKG_VERSION").to_owned(),
        git_revision: report::git_revision(),
        hostname: report::hostname(),
        subjects: vec![options.subject.report_subject()],
        latencies: collector
            .latencies
            .operations()
            .filter_map(|op| collector.latencies.summary(op).map(|s| (op.to_owned(), s)))
            .collect(),
        cases: collector.cases,
        throughput: Vec::new(),
        network_usage: collector.network_usage,
        network_usage_client: None,
        charts: Default::default(),
        counters: collector.counters,
        sections: device_section(options)
            .into_iter()
            .map(|(title, text)| report::Section::new(title, text))
            .collect(),
    };
    report.write(&options.report_dir)?;
    Ok(SuiteOutcome {
        report,
        untagged: collector.untagged,
        parsing_errors,
    })
}

/// The report's section on the device under test: how the harness ran it, or, for a
/// device started by hand, what the harness cannot do with it.
fn device_section(options: &SuiteOptions) -> Vec<(String, String)> {
    let Subject::Device { endpoint } = &options.subject else {
        return Vec::new();
    };
    let text = match &options.device {
        Some(l) => format!(
            "{endpoint}, started by the harness: sh -c {:?}\nrestarted: {}; stop line: {}; \
             Register awaited for {:?} after each start\nits output: device/NNN-{endpoint}\
             .stdout.log and .stderr.log, linked from each case that ran against that start",
            l.template,
            l.restart,
            l.stop
                .as_deref()
                .map_or("none".to_owned(), |s| format!("{s:?}")),
            l.register_wait
        ),
        None => format!(
            "{endpoint}, started by hand (--device): the harness cannot reset it between \
             cases (each case sees what earlier ones wrote), start it again after a Reboot or \
             an exit (the cases after that wait for a device that is gone), or give it a \
             case's credentials (the DTLS cases are not applicable). `test --device-cmd` \
             does all three."
        ),
    };
    vec![("Device under test".to_owned(), text)]
}

/// A text summary of a report: counts of each verdict, the cases not passed, and why
/// the run tested nothing if so.
pub fn summary(report: &RunReport) -> String {
    let mut s = format!(
        "{}: {} (seed {})\n",
        report.title,
        report.counts(),
        report.seed
    );
    for c in &report.cases {
        let tag = match c.status {
            Status::Passed if c.findings.is_empty() => continue,
            Status::Passed => {
                let _ = writeln!(
                    s,
                    "  finds  {} {} ({}): {}",
                    c.case,
                    c.title,
                    c.feature,
                    c.findings.join("; ")
                );
                continue;
            }
            Status::Failed => "FAILED",
            Status::NotSupported => "unsup",
            Status::NotApplicable => "n/a",
        };
        let first = c
            .message
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        let _ = writeln!(
            s,
            "  {tag:6} {} {} ({}): {first}",
            c.case, c.title, c.feature
        );
    }
    if let Some(why) = report.nothing_tested() {
        let _ = writeln!(s, "NOTHING TESTED: {why}");
    }
    s
}

/// Stops the run's device (if the harness started one) when dropped.
struct DeviceGuard;

impl Drop for DeviceGuard {
    fn drop(&mut self) {
        super::device::finish();
    }
}

/// The workspace root a test binary was built in (`CARGO_MANIFEST_DIR/..`).
pub fn workspace_root(manifest_dir: &Path) -> PathBuf {
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_tags() {
        for t in [
            "int-0",
            "int-101",
            "core-6.2.1",
            "rfc7641-3.6",
            "rfc7252-4.2",
        ] {
            assert!(is_case_tag(t), "{t}");
        }
        for t in [
            "int-", "int-1a", "scale", "core-", "rfc7641", "rfc-3.6", "nat",
        ] {
            assert!(!is_case_tag(t), "{t}");
        }
        assert_eq!(stable_hash("a"), stable_hash("a"));
        assert_ne!(stable_hash("a"), stable_hash("b"));
    }

    /// The exchange logs of a run, by file name.
    fn exchanges(seed: u64, dir: &Path) -> BTreeMap<String, String> {
        let root = workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")));
        let options = SuiteOptions {
            features: vec![root.join("features")],
            root,
            ddf: Vec::new(),
            // Lossy links, NAT ports, registration ids, tokens: everything seeded.
            tags: Some("@rfc7252-4.2 or @core-6.2.2 or @int-109".to_owned()),
            subject: Subject::in_process(),
            seed,
            report_dir: dir.to_path_buf(),
            run: "determinism".to_owned(),
            console: false,
            device_profile: None,
            device: None,
        };
        let outcome = run_suite(&options).unwrap();
        assert!(outcome.is_success(), "{}", summary(&outcome.report));
        assert_eq!(outcome.report.seed, seed);
        std::fs::read_dir(dir.join("exchanges"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect()
    }

    #[test]
    fn one_seed_one_run() {
        let tmp = tempfile::tempdir().unwrap();
        let a = exchanges(7, &tmp.path().join("a"));
        let b = exchanges(7, &tmp.path().join("b"));
        let c = exchanges(8, &tmp.path().join("c"));
        // One of them over DTLS (features/security/dtls.feature): its log repeats too.
        assert_eq!(a.len(), 5);
        assert_eq!(a, b, "the same seed must give the same exchanges");
        assert_ne!(a, c, "another seed gives other tokens, ids and losses");
    }
}
