//! The `scenarios/` folder: every YAML file found and loaded by the folder it sits in
//! (design convention 10: every example is loaded by a test).
//!
//! `quirks/` holds quirk packs, `networks/` network models, `profiles/` device profiles
//! (subfolders allowed; a file's name is its stem, unique within its folder kind). YAML
//! files elsewhere are returned as skipped, for other loaders to claim.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, file_stem};
use crate::network::{NetworkModel, load_network};
use crate::profile::{Profile, load_profile};
use crate::quirks::{QuirkPacks, load_quirk_pack};

/// The folders under `scenarios/` this crate loads, in load order.
pub const SCENARIO_FOLDERS: [&str; 3] = ["quirks", "networks", "profiles"];

/// Everything loaded from a scenarios folder.
#[derive(Debug, Default)]
pub struct Scenarios {
    /// Quirk packs by name.
    pub quirk_packs: QuirkPacks,
    /// Network models by name.
    pub networks: BTreeMap<String, NetworkModel>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// YAML files outside [`SCENARIO_FOLDERS`], not loaded here.
    pub skipped: Vec<PathBuf>,
}

/// Every `*.yaml` / `*.yml` file under `dir`, recursively, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        file: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The [`SCENARIO_FOLDERS`] entry `file` sits under, relative to `dir`.
fn folder_of(dir: &Path, file: &Path) -> Option<&'static str> {
    let first = file.strip_prefix(dir).ok()?.components().next()?;
    let first = first.as_os_str();
    // A file directly in `dir` has no folder.
    if file.parent() == Some(dir) {
        return None;
    }
    SCENARIO_FOLDERS.into_iter().find(|f| first == *f)
}

fn insert<T>(
    map: &mut BTreeMap<String, (PathBuf, T)>,
    path: &Path,
    name: String,
    value: T,
) -> Result<(), ConfigError> {
    if let Some((other, _)) = map.get(&name) {
        return Err(ConfigError::Invalid {
            file: path.display().to_string(),
            line: 1,
            column: 1,
            message: format!("name `{name}` is already used by {}", other.display()),
        });
    }
    map.insert(name, (path.to_owned(), value));
    Ok(())
}

fn without_paths<T>(map: BTreeMap<String, (PathBuf, T)>) -> BTreeMap<String, T> {
    map.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Loads every file under `dir` by folder: quirk packs first (profiles refer to them),
/// then network models, then profiles. Returns every error found, not just the first.
pub fn load_all_scenario_files(dir: &Path) -> Result<Scenarios, Vec<ConfigError>> {
    let files = yaml_files(dir).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut by_folder: BTreeMap<&str, Vec<&PathBuf>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for f in &files {
        match folder_of(dir, f) {
            Some(folder) => by_folder.entry(folder).or_default().push(f),
            None => skipped.push(f.clone()),
        }
    }
    let of = |folder| by_folder.get(folder).cloned().unwrap_or_default();

    let mut packs = BTreeMap::new();
    for path in of("quirks") {
        let r = load_quirk_pack(path).and_then(|(name, pack)| insert(&mut packs, path, name, pack));
        errors.extend(r.err());
    }
    let quirk_packs = without_paths(packs);

    let mut networks = BTreeMap::new();
    for path in of("networks") {
        let r =
            load_network(path).and_then(|(name, model)| insert(&mut networks, path, name, model));
        errors.extend(r.err());
    }

    let mut profiles = BTreeMap::new();
    for path in of("profiles") {
        let r = load_profile(path, &quirk_packs)
            .and_then(|p| insert(&mut profiles, path, file_stem(path), p));
        errors.extend(r.err());
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Scenarios {
        quirk_packs,
        networks: without_paths(networks),
        profiles: without_paths(profiles),
        skipped,
    })
}
