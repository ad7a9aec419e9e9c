//! The device under test started by the harness (`test --device-cmd TEMPLATE`).
//!
//! A [`DeviceLaunch`] is a command template run through `sh -c` with placeholders the
//! harness fills for each start of the device: `{endpoint}`, `{server_host}`,
//! `{server_port}`, `{server_uri}`, `{bootstrap_uri}`, `{local_port}`, `{psk_identity}`,
//! `{psk_key}` (hex). The process gets its own process group; the harness ends it by that
//! group (never by name). Its standard input is a pipe held open until the harness ends it;
//! the stop line (`--device-stop`), if any, is written there first and the harness waits
//! briefly ([`STOP_GRACE`]) for the device to exit (after de-registering) before it ends the
//! group with SIGTERM, then SIGKILL. Standard output and error go to
//! `REPORT/device/NNN-ENDPOINT.stdout.log` and `.stderr.log`, linked from each case that
//! started or ran that process.
//!
//! When the device starts ([`Restart`]): fresh for every case (the default: each case
//! begins from the device's factory state, as the ETS asks), once per feature file, or once
//! for the run. A device that exits during a case (a Reboot that ends the process) is
//! started again at once; the next case starts it again if it is not running.
//!
//! The launcher lives for the whole process, like the servers of the network backend (one
//! device per process; several devices are run one after the other by `test`, each in its
//! own `lwm2m-harness test` process).
//!
//! What it does not do: certificates in the template (the DTLS certificate cases stay not
//! applicable to a launched device); a device on another machine (the command runs here;
//! point a remote device at `LWM2M_HARNESS_BIND` and use `--device EP`).

use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a stopping device has to exit by itself after its stop line (a third of it
/// after only the end of its standard input) before its process group gets SIGTERM, and
/// again before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// How many starts in a row without a Register make the remaining cases fail at once.
pub const GIVE_UP_AFTER: u32 = 2;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 8] = [
    "endpoint",
    "server_host",
    "server_port",
    "server_uri",
    "bootstrap_uri",
    "local_port",
    "psk_identity",
    "psk_key",
];

/// When the harness starts the device afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// For every case (its factory state for each).
    #[default]
    PerCase,
    /// For every feature file.
    PerFeature,
    /// Once; again only when it exits.
    Never,
}

impl FromStr for Restart {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "per-case" => Ok(Self::PerCase),
            "per-feature" => Ok(Self::PerFeature),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "{other:?}: expected per-case, per-feature or never"
            )),
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PerCase => "per-case",
            Self::PerFeature => "per-feature",
            Self::Never => "never",
        })
    }
}

/// How to run the device under test (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLaunch {
    /// The command template.
    pub template: String,
    /// When to start it afresh.
    pub restart: Restart,
    /// A line written to its standard input to ask it to stop.
    pub stop: Option<String>,
    /// How long a started device has to register before the case fails.
    pub register_wait: Duration,
    /// Where its output goes (`REPORT/device`).
    pub log_dir: PathBuf,
}

impl DeviceLaunch {
    /// True when the template names a PSK: our LwM2M Server then listens on DTLS with the
    /// device's generated identity and key, and `{server_uri}` is `coaps://`.
    pub fn uses_psk(&self) -> bool {
        self.template.contains("{psk_identity}") || self.template.contains("{psk_key}")
    }

    /// True when the template gives the device only the Bootstrap Server: it bootstraps,
    /// and our Bootstrap Server provisions its LwM2M Server account.
    pub fn bootstrap_only(&self) -> bool {
        self.template.contains("{bootstrap_uri}")
            && !["{server_uri}", "{server_host}", "{server_port}"]
                .iter()
                .any(|p| self.template.contains(p))
    }

    /// Checks the template: not empty, and every `{name}` of a placeholder shape is one of
    /// [`PLACEHOLDERS`] (shell `${VAR}` is left alone).
    pub fn check(&self) -> Result<(), DeviceCommandError> {
        if self.template.trim().is_empty() {
            return Err(DeviceCommandError::Empty);
        }
        let bytes = self.template.as_bytes();
        let mut rest = self.template.as_str();
        let mut offset = 0;
        while let Some(open) = rest.find('{') {
            let at = offset + open;
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            let name = &after[..close];
            let shell_variable = at > 0 && bytes.get(at - 1) == Some(&b'$');
            let shaped = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit());
            if shaped && !shell_variable && !PLACEHOLDERS.contains(&name) {
                return Err(DeviceCommandError::UnknownPlaceholder {
                    name: name.to_owned(),
                });
            }
            offset += open + 1 + close + 1;
            rest = &after[close + 1..];
        }
        Ok(())
    }
}

/// Why a `--device-cmd` template, or the endpoint name it is given, cannot launch a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceCommandError {
    /// The template is blank.
    #[error("the device command is empty")]
    Empty,
    /// A `{name}` that is none of [`PLACEHOLDERS`].
    #[error(
        "the device command has an unknown placeholder {{{name}}}; known: {}",
        PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
    )]
    UnknownPlaceholder {
        /// The name between the braces.
        name: String,
    },
    /// An endpoint name the shell could not carry unquoted.
    #[error("endpoint {endpoint:?}: use 1 to 64 letters, digits, '-', '_', '.', ':'")]
    Endpoint {
        /// The endpoint name.
        endpoint: String,
    },
}

/// An endpoint name a template can carry unquoted through `sh -c`.
pub fn check_endpoint(endpoint: &str) -> Result<(), DeviceCommandError> {
    let ok = !endpoint.is_empty()
        && endpoint.len() <= 64
        && endpoint
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(DeviceCommandError::Endpoint {
            endpoint: endpoint.to_owned(),
        })
    }
}

/// The endpoint a launched device gets when none is given: `dut-N-XXXXXX`, `N` the device's
/// position among the `--device-cmd`s (from 1) and `XXXXXX` six hex digits of the run seed
/// mixed with it, so that runs with one seed repeat and devices of one run differ.
pub fn generated_endpoint(position: usize, seed: u64) -> String {
    let h = lwm2m_simulator::seed::mix(&[seed, position as u64, 0x6465_7669_6365]);
    format!("dut-{position}-{:06x}", h & 0xff_ffff)
}

/// The device's PSK towards our LwM2M Server: identity `ENDPOINT-psk` and 16 bytes derived
/// from the run seed and the endpoint.
pub fn generated_psk(endpoint: &str, seed: u64) -> (String, Vec<u8>) {
    let base = endpoint.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut key = Vec::with_capacity(16);
    for i in 0..2 {
        key.extend_from_slice(
            &lwm2m_simulator::seed::mix(&[seed, base, 0x70_736b, i]).to_be_bytes(),
        );
    }
    (format!("{endpoint}-psk"), key)
}

/// The values of one start of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    /// `{endpoint}`.
    pub endpoint: String,
    /// `{server_host}`.
    pub server_host: String,
    /// `{server_port}`.
    pub server_port: u16,
    /// `{server_uri}`: `coap://HOST:PORT`, or `coaps://` with a PSK.
    pub server_uri: String,
    /// `{bootstrap_uri}`.
    pub bootstrap_uri: String,
    /// `{local_port}`: a UDP port free when the device starts.
    pub local_port: u16,
    /// `{psk_identity}` (empty without a PSK).
    pub psk_identity: String,
    /// `{psk_key}`, hex (empty without a PSK).
    pub psk_key: String,
}

impl Placeholders {
    /// The template with every placeholder replaced.
    pub fn expand(&self, template: &str) -> String {
        let values: [(&str, String); 8] = [
            ("endpoint", self.endpoint.clone()),
            ("server_host", self.server_host.clone()),
            ("server_port", self.server_port.to_string()),
            ("server_uri", self.server_uri.clone()),
            ("bootstrap_uri", self.bootstrap_uri.clone()),
            ("local_port", self.local_port.to_string()),
            ("psk_identity", self.psk_identity.clone()),
            ("psk_key", self.psk_key.clone()),
        ];
        values.iter().fold(template.to_owned(), |t, (name, value)| {
            t.replace(&format!("{{{name}}}"), value)
        })
    }
}

/// A UDP port on 127.0.0.1 free right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_or(0, |a| a.port())
}

/// One start of the device: its process and output files.
#[derive(Debug)]
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    number: u32,
    started: Instant,
    /// Its stdout and stderr files, relative to the report folder.
    files: [String; 2],
}

/// The launcher of the run (see the module documentation).
#[derive(Debug)]
pub struct Launcher {
    launch: DeviceLaunch,
    endpoint: String,
    /// The device's PSK identity and key towards our LwM2M Server, if the template names one.
    psk: Option<(String, Vec<u8>)>,
    running: Option<Running>,
    starts: u32,
    /// Starts in a row after which the device never registered.
    silent_starts: u32,
    /// The device registered at least once.
    registered_once: bool,
    feature: Option<String>,
    /// Output files of the starts the current case saw.
    case_files: Vec<String>,
    /// What happened to the device process during the current case, for the report.
    notes: Vec<String>,
    /// Its latest registration with our LwM2M Server (what it announced).
    last_registration: Option<lwm2m_proto::server::Registration>,
}

static LAUNCHER: OnceLock<Mutex<Option<Launcher>>> = OnceLock::new();

fn slot() -> std::sync::MutexGuard<'static, Option<Launcher>> {
    LAUNCHER
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Installs the run's launcher for the device `endpoint` (replacing and stopping any
/// earlier one); its PSK, if the template names one, derives from `seed`.
pub fn install(launch: DeviceLaunch, endpoint: &str, seed: u64) {
    let mut slot = slot();
    if let Some(mut old) = slot.take() {
        old.stop();
    }
    let psk = launch.uses_psk().then(|| generated_psk(endpoint, seed));
    *slot = Some(Launcher {
        launch,
        endpoint: endpoint.to_owned(),
        psk,
        running: None,
        starts: 0,
        silent_starts: 0,
        registered_once: false,
        feature: None,
        case_files: Vec::new(),
        notes: Vec::new(),
        last_registration: None,
    });
}

/// Runs `f` on the launcher, if the run has one.
pub fn with<T>(f: impl FnOnce(&mut Launcher) -> T) -> Option<T> {
    slot().as_mut().map(f)
}

/// The run's launch settings, if the harness starts the device.
pub fn launch() -> Option<DeviceLaunch> {
    with(|l| l.launch.clone())
}

/// What the launched device announced when it last registered (its process may be gone:
/// the harness stops it after each case), if it ever did.
pub fn last_registration() -> Option<lwm2m_proto::server::Registration> {
    with(|l| l.last_registration.clone()).flatten()
}

/// A case of `feature` begins: the device is stopped if the restart policy wants a fresh
/// one (it starts when the case starts its client).
pub fn begin_case(feature: &str) {
    with(|l| {
        l.case_files.clear();
        l.notes.clear();
        let new_feature = l.feature.as_deref() != Some(feature);
        l.feature = Some(feature.to_owned());
        let fresh = match l.launch.restart {
            Restart::PerCase => true,
            Restart::PerFeature => new_feature,
            Restart::Never => false,
        };
        if fresh {
            l.stop();
        } else if let Some(r) = &l.running {
            // The case shows the output of the process it runs against.
            let files = r.files.clone();
            l.case_files.extend(files);
        }
    });
}

/// The case ended: stops a per-case device; returns the device's output files the case
/// saw and what happened to the process, for the case's evidence and message.
pub fn end_case() -> (Vec<String>, Vec<String>) {
    with(|l| {
        if l.launch.restart == Restart::PerCase {
            l.stop();
        }
        (
            std::mem::take(&mut l.case_files),
            std::mem::take(&mut l.notes),
        )
    })
    .unwrap_or_default()
}

/// The run ended: stops the device.
pub fn finish() {
    if let Some(mut l) = slot().take() {
        l.stop();
    }
}

impl Launcher {
    /// The device's endpoint name.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The launch settings.
    pub fn settings(&self) -> &DeviceLaunch {
        &self.launch
    }

    /// The device's PSK identity and key towards our LwM2M Server, if it has one.
    pub fn psk(&self) -> Option<(String, Vec<u8>)> {
        self.psk.clone()
    }

    /// Notes something that happened to the device during the case (for the report).
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The process id of the running device, if one runs (and has not exited).
    pub fn pid(&mut self) -> Option<u32> {
        self.poll_exit();
        self.running.as_ref().map(|r| r.child.id())
    }

    /// When the running device was started.
    pub fn started_at(&mut self) -> Option<Instant> {
        self.poll_exit();
        self.running.as_ref().map(|r| r.started)
    }

    /// Why the remaining cases are not run against the device, if it stopped registering:
    /// [`GIVE_UP_AFTER`] starts in a row without a Register.
    pub fn given_up(&self) -> Option<String> {
        (self.silent_starts >= GIVE_UP_AFTER).then(|| {
            format!(
                "the device under test did not register after its last {} starts (each \
                 waited {:?}{}); the remaining cases are not run against it: see its output \
                 in {}",
                self.silent_starts,
                self.launch.register_wait,
                if self.registered_once {
                    ""
                } else {
                    ", and it never registered in this run"
                },
                self.launch.log_dir.display()
            )
        })
    }

    /// The last start is not expected to register at once (the case bootstraps it, or gives
    /// it credentials that may be refused): it does not count towards giving up.
    pub fn excuse_silence(&mut self) {
        self.silent_starts = self.silent_starts.saturating_sub(1);
    }

    /// The device registered since its last start.
    pub fn registered(&mut self) {
        self.silent_starts = 0;
        self.registered_once = true;
    }

    /// The device registered with our LwM2M Server as `registration`.
    pub fn remember(&mut self, registration: lwm2m_proto::server::Registration) {
        self.registered();
        self.last_registration = Some(registration);
    }

    /// If the device process has exited, reaps it and says how (noted for the case).
    pub fn poll_exit(&mut self) -> Option<String> {
        let r = self.running.as_mut()?;
        let status = match r.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(e) => {
                let note = format!("device process {} cannot be watched: {e}", r.child.id());
                self.notes.push(note.clone());
                return Some(note);
            }
        };
        let note = format!(
            "device process {} (start {}) exited: {status}",
            r.child.id(),
            r.number
        );
        // Whatever it left in its process group goes with it.
        kill_group(r.child.id(), "KILL");
        self.running = None;
        self.notes.push(note.clone());
        Some(note)
    }

    /// Starts the device with `values` (stopping any running one first); returns its
    /// process id.
    pub fn start(&mut self, values: &Placeholders) -> anyhow::Result<u32> {
        use anyhow::Context as _;
        use std::os::unix::process::CommandExt as _;
        self.stop();
        self.starts += 1;
        self.silent_starts += 1;
        let number = self.starts;
        std::fs::create_dir_all(&self.launch.log_dir)
            .with_context(|| format!("creating {}", self.launch.log_dir.display()))?;
        let stem = format!("{number:03}-{}", self.endpoint);
        let (out, err) = (
            format!("device/{stem}.stdout.log"),
            format!("device/{stem}.stderr.log"),
        );
        let command = values.expand(&self.launch.template);
        let mut stdout = File::create(self.launch.log_dir.join(format!("{stem}.stdout.log")))?;
        let stderr = File::create(self.launch.log_dir.join(format!("{stem}.stderr.log")))?;
        // The command first, so that the log says what ran (without the key).
        let shown = if values.psk_key.is_empty() {
            command.clone()
        } else {
            command.replace(&values.psk_key, "<psk key>")
        };
        writeln!(stdout, "# lwm2m-harness start {number}: sh -c {shown:?}")?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the device: sh -c {shown:?}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        self.notes.push(format!(
            "device started (start {number}, process {pid}, group {pid}): {shown}"
        ));
        self.case_files.extend([out.clone(), err.clone()]);
        self.running = Some(Running {
            child,
            stdin,
            number,
            started: Instant::now(),
            files: [out, err],
        });
        Ok(pid)
    }

    /// Stops the running device: its stop line, then the end of its standard input, then
    /// SIGTERM and SIGKILL to its process group, each after [`STOP_GRACE`] at most.
    pub fn stop(&mut self) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        let pid = r.child.id();
        if let (Some(line), Some(stdin)) = (&self.launch.stop, r.stdin.as_mut()) {
            // A device that already closed its input cannot be asked.
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
        // The end of input: device programs commonly quit on it.
        drop(r.stdin.take());
        let grace = if self.launch.stop.is_some() {
            STOP_GRACE
        } else {
            STOP_GRACE / 3
        };
        let mut exited = wait_exit(&mut r.child, grace);
        if !exited {
            kill_group(pid, "TERM");
            exited = wait_exit(&mut r.child, STOP_GRACE);
        }
        // Also whatever the shell started and left behind in the group.
        kill_group(pid, "KILL");
        if !exited {
            let _ = r.child.wait();
        }
        self.notes.push(format!(
            "device process {pid} (start {}) stopped{}",
            r.number,
            if exited { "" } else { " by SIGKILL" }
        ));
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to `grace` for `child` to exit; true if it did.
fn wait_exit(child: &mut Child, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Sends `signal` to the process group `pgid` (the device's: it leads its own group).
fn kill_group(pgid: u32, signal: &str) {
    // `kill -s SIG -- -PGID`: the POSIX utility; the workspace forbids unsafe code (libc).
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(template: &str) -> DeviceLaunch {
        DeviceLaunch {
            template: template.to_owned(),
            restart: Restart::PerCase,
            stop: None,
            register_wait: Duration::from_secs(1),
            log_dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn templates_are_checked_and_expanded() {
        assert!(
            launch("dev --ep {endpoint} --srv {server_uri}")
                .check()
                .is_ok()
        );
        assert!(launch("dev ${HOME} {endpoint}").check().is_ok());
        let e = launch("dev {endpiont}").check().unwrap_err();
        assert_eq!(
            e,
            DeviceCommandError::UnknownPlaceholder {
                name: "endpiont".into()
            }
        );
        let e = e.to_string();
        assert!(
            e.contains("{endpiont}") && e.contains("{server_uri}"),
            "{e}"
        );
        assert_eq!(launch("  ").check(), Err(DeviceCommandError::Empty));
        assert!(launch("x {psk_key}").uses_psk());
        assert!(!launch("x {server_uri}").uses_psk());
        assert!(launch("x {bootstrap_uri} {endpoint}").bootstrap_only());
        assert!(!launch("x {bootstrap_uri} {server_uri}").bootstrap_only());
        let p = Placeholders {
            endpoint: "ep".into(),
            server_host: "127.0.0.1".into(),
            server_port: 5683,
            server_uri: "coap://127.0.0.1:5683".into(),
            bootstrap_uri: "coap://127.0.0.1:5783".into(),
            local_port: 40000,
            psk_identity: "ep-psk".into(),
            psk_key: "0011".into(),
        };
        assert_eq!(
            p.expand("c {endpoint} {server_host}:{server_port} {server_uri} {bootstrap_uri} {local_port} {psk_identity} {psk_key} {endpoint}"),
            "c ep 127.0.0.1:5683 coap://127.0.0.1:5683 coap://127.0.0.1:5783 40000 ep-psk 0011 ep"
        );
    }

    #[test]
    fn endpoints_and_keys_come_from_the_seed() {
        assert_eq!(generated_endpoint(1, 7), generated_endpoint(1, 7));
        assert_ne!(generated_endpoint(1, 7), generated_endpoint(2, 7));
        assert_ne!(generated_endpoint(1, 7), generated_endpoint(1, 8));
        assert!(check_endpoint(&generated_endpoint(3, 9)).is_ok());
        assert!(check_endpoint("a b").is_err() && check_endpoint("x;rm").is_err());
        let (id, key) = generated_psk("ep", 1);
        assert_eq!((id.as_str(), key.len()), ("ep-psk", 16));
        assert_eq!(generated_psk("ep", 1).1, key);
        assert_ne!(generated_psk("ep", 2).1, key);
        assert_eq!("per-feature".parse::<Restart>(), Ok(Restart::PerFeature));
        assert!("sometimes".parse::<Restart>().is_err());
    }

    /// The one test of the process-wide launcher: the restart policy per feature.
    #[test]
    fn per_feature_keeps_the_device_within_a_feature() {
        let dir = tempfile::tempdir().unwrap();
        let launch = DeviceLaunch {
            template: "exec sleep 300".to_owned(),
            restart: Restart::PerFeature,
            stop: None,
            register_wait: Duration::from_secs(1),
            log_dir: dir.path().to_path_buf(),
        };
        install(launch, "ep2", 1);
        let values = Placeholders {
            endpoint: "ep2".into(),
            server_host: "127.0.0.1".into(),
            server_port: 1,
            server_uri: "coap://127.0.0.1:1".into(),
            bootstrap_uri: String::new(),
            local_port: 2,
            psk_identity: String::new(),
            psk_key: String::new(),
        };
        begin_case("a.feature");
        let pid = with(|l| l.start(&values).unwrap()).unwrap();
        let (files, _) = end_case();
        assert_eq!(files.len(), 2, "stdout and stderr of the start");
        begin_case("a.feature");
        assert_eq!(
            with(Launcher::pid).flatten(),
            Some(pid),
            "kept within the feature"
        );
        let (files, _) = end_case();
        assert_eq!(files.len(), 2, "the case ran against the same start");
        begin_case("b.feature");
        assert_eq!(
            with(Launcher::pid).flatten(),
            None,
            "stopped for the next feature"
        );
        end_case();
        finish();
        assert!(launch_is_gone());
    }

    fn launch_is_gone() -> bool {
        super::launch().is_none()
    }

    #[test]
    fn a_started_device_is_stopped_by_its_group_and_its_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Launcher {
            launch: DeviceLaunch {
                // A child of the shell that would outlive it, and a stop line it reads.
                template: "sleep 300 & echo up {endpoint}; read line; echo got $line; wait"
                    .to_owned(),
                restart: Restart::PerCase,
                stop: Some("quit".to_owned()),
                register_wait: Duration::from_secs(1),
                log_dir: dir.path().to_path_buf(),
            },
            endpoint: "ep1".to_owned(),
            psk: None,
            running: None,
            starts: 0,
            silent_starts: 0,
            registered_once: false,
            feature: None,
            case_files: Vec::new(),
            notes: Vec::new(),
            last_registration: None,
        };
        let values = Placeholders {
            endpoint: "ep1".into(),
            server_host: "127.0.0.1".into(),
            server_port: 1,
            server_uri: "coap://127.0.0.1:1".into(),
            bootstrap_uri: String::new(),
            local_port: 2,
            psk_identity: String::new(),
            psk_key: String::new(),
        };
        let pid = l.start(&values).unwrap();
        assert_eq!(l.pid(), Some(pid));
        l.stop();
        assert_eq!(l.pid(), None);
        let out = std::fs::read_to_string(dir.path().join("001-ep1.stdout.log")).unwrap();
        assert!(out.contains("up ep1") && out.contains("got quit"), "{out}");
        // The shell waited for its `sleep`: only the signal to the group ended it.
        assert!(
            l.notes
                .iter()
                .any(|n| n.contains(&format!("process {pid}"))),
            "{:?}",
            l.notes
        );
        assert_eq!(l.silent_starts, 1);
        let again = l.start(&values).unwrap();
        assert_ne!(again, pid);
        assert!(l.given_up().is_some(), "two starts without a Register");
        l.registered();
        assert!(l.given_up().is_none());
    }
}
