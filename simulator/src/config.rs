//! Errors of the YAML configuration, each naming the file, the line and the key.
//!
//! Parse errors carry the position serde_yaml_ng reports (its message names the key path,
//! e.g. `objects.3.instances: unknown field ...`). Checks that run after parsing (consistency
//! of version, binding and quirks, positive durations, ...) find the key's line again in
//! the source text with [`Origin::locate`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

/// A configuration file that could not be read or does not hold a valid configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML, does not fit the schema, or fails a check.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file (or source name).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, starting with the key path (`objects.6.variant: ...`).
        message: String,
    },
}

/// Where a configuration came from: its file name and text, to place errors found after
/// parsing.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    file: String,
    text: Arc<str>,
}

impl Origin {
    /// A source named `file` with contents `text`.
    pub fn new(file: impl Into<String>, text: &str) -> Self {
        Self {
            file: file.into(),
            text: text.into(),
        }
    }

    /// The file (or source) name.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// An error at key `key` (dotted path, e.g. `objects.6.variant`): the message is
    /// prefixed with the key and placed at the key's line.
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        let (line, column) = self.locate(key);
        ConfigError::Invalid {
            file: self.file.clone(),
            line,
            column,
            message: format!("{key}: {message}"),
        }
    }

    /// The 1-based line and column of the key at dotted path `key` in block-style YAML;
    /// when a segment is not found (flow style, or a default value), the deepest parent
    /// found, else 1:1.
    pub fn locate(&self, key: &str) -> (usize, usize) {
        let segments: Vec<&str> = key.split('.').filter(|s| !s.is_empty()).collect();
        let mut found = (1, 1);
        let mut depth = 0;
        let mut parent_indent: Option<usize> = None;
        for (n, line) in self.text.lines().enumerate() {
            let Some(want) = segments.get(depth) else {
                break;
            };
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') || content.starts_with("---") {
                continue;
            }
            let indent = line.len() - content.len();
            if parent_indent.is_some_and(|p| indent <= p) {
                break;
            }
            if mapping_key(content) == Some(want) {
                found = (n + 1, indent + 1);
                parent_indent = Some(indent);
                depth += 1;
            }
        }
        found
    }

    /// Parses `text` as a `T`, mapping serde_yaml_ng's error to a [`ConfigError`].
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_yaml::from_str(&self.text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let full = e.to_string();
            let suffix = format!(" at line {line} column {column}");
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
            ConfigError::Invalid {
                file: self.file.clone(),
                line,
                column,
                message,
            }
        })
    }
}

/// The key of a block mapping entry line (`key: ...` or `key:`), unquoted.
fn mapping_key(content: &str) -> Option<&str> {
    let (key, rest) = content.split_once(':')?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    Some(key.trim().trim_matches(['"', '\'']))
}

/// Reads a file into an [`Origin`] named by its path.
pub fn read(path: &Path) -> Result<Origin, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_owned(),
        source,
    })?;
    Ok(Origin::new(path.display().to_string(), &text))
}

/// The file name without its extension (`wakaama-2017` for `quirks/wakaama-2017.yaml`).
pub fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
name: x
objects:
  3:
    instances:
      0:
        '1': a
  6:
    variant: pre-1.0
quirks: [a]
";

    #[test]
    fn locates_nested_keys() {
        let o = Origin::new("f.yaml", TEXT);
        assert_eq!(o.locate("name"), (2, 1));
        assert_eq!(o.locate("objects.3.instances.0.1"), (7, 9));
        assert_eq!(o.locate("objects.6.variant"), (9, 5));
        assert_eq!(o.locate("quirks"), (10, 1));
        // Not under objects.3: the deepest parent found.
        assert_eq!(o.locate("objects.3.variant"), (4, 3));
        assert_eq!(o.locate("missing"), (1, 1));
    }

    #[test]
    fn error_names_file_line_and_key() {
        let e = Origin::new("f.yaml", TEXT).error("objects.6.variant", "bad");
        assert_eq!(e.to_string(), "f.yaml:9:5: objects.6.variant: bad");
    }
}
