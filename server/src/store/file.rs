//! Crash-safe persistence of one YAML document: atomic replace (write a temporary file in
//! the same folder, fsync, rename over the old one, fsync the folder), and a loader that
//! refuses a corrupt file with its name, line and column, never overwriting it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// A YAML file holding one value of type `T`.
#[derive(Debug, Clone)]
pub struct YamlFile {
    path: PathBuf,
}

impl YamlFile {
    /// A file at `path` (not read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the temporary files a killed process left beside the file
    /// (`.NAME.tmp-PID` of [`YamlFile::save`]; never the file itself). Returns how many.
    pub fn remove_leftovers(&self) -> usize {
        let Some(name) = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return 0;
        };
        let prefix = format!(".{name}.tmp-");
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let Ok(entries) = fs::read_dir(dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let leftover = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            if leftover && fs::remove_file(entry.path()).is_ok() {
                tracing::info!(
                    "removed {} (left by a stopped process)",
                    entry.path().display()
                );
                removed += 1;
            }
        }
        removed
    }

    /// The file's text, if it exists (for naming the line of an entry).
    pub fn text(&self) -> Option<String> {
        fs::read_to_string(&self.path).ok()
    }

    /// Reads the value; `Ok(None)` if the file does not exist. A file that exists but does
    /// not parse is an error naming the file, line and column.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&self.path, e)),
        };
        serde_yaml::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                file: self.path.clone(),
                line: e.location().map_or(0, |l| l.line()),
                column: e.location().map_or(0, |l| l.column()),
                reason: e.to_string(),
            })
    }

    /// Writes the value atomically: readers and a crash see the old or the new file whole.
    pub fn save<T: Serialize>(&self, value: &T) -> Result<(), StoreError> {
        let text = serde_yaml::to_string(value).map_err(|e| StoreError::Corrupt {
            file: self.path.clone(),
            line: 0,
            column: 0,
            reason: format!("cannot serialize: {e}"),
        })?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".into());
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            // The stores hold keys: readable by the owner only.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            // Make the rename itself durable.
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io(&self.path, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip_and_corrupt_file_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let f = YamlFile::new(dir.path().join("x.yaml"));
        assert_eq!(f.load::<BTreeMap<String, u32>>().unwrap(), None);
        let m: BTreeMap<String, u32> = [("a".to_string(), 1)].into();
        f.save(&m).unwrap();
        assert_eq!(f.load::<BTreeMap<String, u32>>().unwrap(), Some(m));
        fs::write(f.path(), "a: 1\nb: [unclosed\n").unwrap();
        let err = f.load::<BTreeMap<String, u32>>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.yaml") && msg.contains("line"), "{msg}");
        assert_eq!(
            fs::read_to_string(f.path()).unwrap(),
            "a: 1\nb: [unclosed\n"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }
}
