//! The shipped `scenarios/` and `features/` folders (device profiles, quirk packs, network
//! models, scenarios, feature files, object definitions, device descriptions), embedded in
//! the binary by `build.rs`, so that an installed `lwm2m-harness` works from any folder.
//!
//! They are written out once per content into a cache folder
//! (`$XDG_CACHE_HOME/lwm2m-harness/shipped-VERSION-HASH`, else `~/.cache/...`, else the
//! temporary folder) and read from there like a checkout's. The user's folders (a
//! checkout's `scenarios/` and `features/`, `--scenarios`, `--root`) come first: a file of
//! theirs adds to the shipped ones, and one of the same name overrides the shipped one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;

mod table {
    include!(concat!(env!("OUT_DIR"), "/shipped.rs"));
}

/// Every shipped file: its path under the workspace (`scenarios/profiles/sensor-1.1.yaml`)
/// and its bytes.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    table::FILES
}

/// The names (file stems) of the shipped YAML files under `folder`, e.g.
/// `scenarios/profiles`, sorted.
pub fn names(folder: &str) -> Vec<String> {
    let prefix = format!("{}/", folder.trim_end_matches('/'));
    let mut names: Vec<String> = files()
        .iter()
        .filter_map(|(path, _)| path.strip_prefix(&prefix))
        .filter(|rest| !rest.contains('/'))
        .filter_map(|rest| {
            rest.strip_suffix(".yaml")
                .or_else(|| rest.strip_suffix(".yml"))
        })
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// FNV-1a over the paths and bytes: names the cache folder after the content.
fn content_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, bytes) in files() {
        for b in path
            .bytes()
            .chain([0])
            .chain(bytes.iter().copied())
            .chain([0])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Where cache folders go, most preferred first.
fn cache_bases() -> Vec<PathBuf> {
    let mut bases = Vec::new();
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        bases.push(PathBuf::from(x));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        bases.push(PathBuf::from(home).join(".cache"));
    }
    bases.push(std::env::temp_dir());
    bases
}

/// The marker written last: a folder without it is incomplete.
const COMPLETE: &str = ".complete";

/// Writes the shipped files under `base`; returns the folder.
fn materialize(base: &Path) -> std::io::Result<PathBuf> {
    let name = format!(
        "shipped-{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        content_hash()
    );
    let parent = base.join("lwm2m-harness");
    let dir = parent.join(&name);
    if dir.join(COMPLETE).is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&parent)?;
    // Written aside, then renamed into place: processes starting together do not see
    // half-written folders.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let staging = parent.join(format!("{name}.{}-{nanos}.tmp", std::process::id()));
    for (path, bytes) in files() {
        let target = staging.join(path);
        if let Some(folder) = target.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(target, bytes)?;
    }
    std::fs::write(staging.join(COMPLETE), b"")?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            // Another process put it there first.
            if dir.join(COMPLETE).is_file() {
                Ok(dir)
            } else {
                Err(e)
            }
        }
    }
}

/// The folder holding the shipped `scenarios/` and `features/`, written on first use.
pub fn root() -> anyhow::Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let mut failures = Vec::new();
        for base in cache_bases() {
            match materialize(&base) {
                Ok(dir) => return Ok(dir),
                Err(e) => failures.push(format!("{}: {e}", base.display())),
            }
        }
        Err(failures.join("; "))
    });
    match root {
        Ok(dir) => Ok(dir.as_path()),
        Err(why) => Err(anyhow::anyhow!(why.clone()))
            .context("writing the shipped scenarios and features to a cache folder"),
    }
}

/// `ROOT/folder` of the shipped files, e.g. `scenarios/profiles`.
pub fn folder(folder: &str) -> anyhow::Result<PathBuf> {
    Ok(root()?.join(folder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_folders_are_embedded_and_written_out() {
        assert!(names("scenarios/profiles").contains(&"sensor-1.1".to_owned()));
        assert!(names("scenarios/quirks").contains(&"wakaama-2017".to_owned()));
        assert!(
            files()
                .iter()
                .any(|(p, _)| p.starts_with("features/") && p.ends_with(".feature"))
        );
        let base = tempfile::tempdir().unwrap();
        let dir = materialize(base.path()).unwrap();
        for (path, bytes) in files() {
            assert_eq!(std::fs::read(dir.join(path)).unwrap(), *bytes, "{path}");
        }
        // A second time finds it complete.
        assert_eq!(materialize(base.path()).unwrap(), dir);
    }
}
