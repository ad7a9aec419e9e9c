//! The processes a scenario starts before its run (`processes:`): external servers, a
//! Redis, the instances of a `serve` cluster, each a process of its own. Their output goes
//! to `processes/NAME.log` in the run folder; they are ended by PID when the run is over.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::scenario::ProcessSpec;

/// How long a process may take to print its ready text.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The started processes; dropping ends them (kill by PID, then wait).
pub(crate) struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        // The last started first: the instances before their Redis.
        for (name, child) in self.0.iter_mut().rev() {
            if let Err(e) = child.kill() {
                tracing::debug!("process {name}: {e}");
            }
            let _ = child.wait();
        }
    }
}

impl Processes {
    /// Starts every process in order, each once the one before is ready.
    pub(crate) fn start(specs: &[ProcessSpec], run: &Path) -> anyhow::Result<Processes> {
        let mut started = Processes(Vec::new());
        if specs.is_empty() {
            return Ok(started);
        }
        let logs = run.join("processes");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let bin = std::env::current_exe().context("finding this binary")?;
        for spec in specs {
            let args: Vec<String> = spec
                .command
                .iter()
                .map(|a| {
                    a.replace("{bin}", &bin.to_string_lossy())
                        .replace("{run}", &run.to_string_lossy())
                })
                .collect();
            let (program, rest) = args
                .split_first()
                .with_context(|| format!("process {}: an empty command", spec.name))?;
            let mut child = Command::new(program)
                .args(rest)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("process {}: starting {program:?}", spec.name))?;
            let log_path = logs.join(format!("{}.log", spec.name));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let (lines_tx, lines) = mpsc::channel::<String>();
            for stream in [
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            ]
            .into_iter()
            .flatten()
            {
                let mut log = log.try_clone().context("the process log")?;
                let tx = lines_tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        let _ = writeln!(log, "{line}");
                        let _ = tx.send(line);
                    }
                });
            }
            drop(lines_tx);
            let name = spec.name.clone();
            started.0.push((name, child));
            if let Some(ready) = &spec.ready {
                let deadline = Instant::now() + READY_WITHIN;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match lines.recv_timeout(left) {
                        Ok(line) if line.contains(ready.as_str()) => break,
                        Ok(_) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => anyhow::bail!(
                            "process {}: no {ready:?} within {READY_WITHIN:?} (see {})",
                            spec.name,
                            log_path.display()
                        ),
                        Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!(
                            "process {}: ended before printing {ready:?} (see {})",
                            spec.name,
                            log_path.display()
                        ),
                    }
                }
            }
            tracing::info!("process {} started", spec.name);
        }
        Ok(started)
    }
}
