//! The REST API's bearer token: configured, or generated once from the OS random source
//! and kept in the data directory (`api-token`, readable by the owner only).

use std::io::Write;
use std::path::Path;

use crate::store::StoreError;

/// The name of the token file in the data directory.
pub const TOKEN_FILE: &str = "api-token";

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// Given by the user (flag or configuration file).
    Configured,
    /// Read from the data directory.
    Stored,
    /// Generated now and stored in the data directory.
    Generated,
}

/// A fresh token: 32 bytes from the OS random source, hex.
pub fn generate_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Invalid {
        what: "token",
        reason: format!("the OS random source failed: {e}"),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A seed for a machine's random generator (registration ids, tokens, message ids) from the
/// OS random source, so that a server's ids cannot be predicted from a fixed default (a
/// registration id is what an Update or De-register proves itself with). Reproducible
/// runs set their own seed instead. Should the OS source fail, std's per-process random
/// hash keys (themselves from the OS at start) stand in, with a warning.
pub fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(e) => {
            tracing::warn!("the OS random source failed ({e}); seeding from std's hash keys");
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
        }
    }
}

/// The token to use: `configured` if given, else the one stored in `data_dir`, else a new
/// one, stored there (written to a temporary file and renamed, mode 0600 on Unix).
pub fn load_or_create_token(
    data_dir: &Path,
    configured: Option<&str>,
) -> Result<(String, TokenSource), StoreError> {
    if let Some(t) = configured {
        if t.trim().is_empty() {
            return Err(StoreError::Invalid {
                what: "token",
                reason: "the configured token is empty".into(),
            });
        }
        return Ok((t.trim().to_owned(), TokenSource::Configured));
    }
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), TokenSource::Stored)),
        Ok(_) => {
            return Err(StoreError::Corrupt {
                file: path,
                line: 1,
                column: 1,
                reason: "the token file is empty; delete it to get a new token".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StoreError::Io {
                file: path,
                source: e,
            });
        }
    }
    let token = generate_token()?;
    let tmp = data_dir.join(format!(".{TOKEN_FILE}.tmp"));
    let io = |source| StoreError::Io {
        file: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(io)?;
    writeln!(f, "{token}").map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok((token, TokenSource::Generated))
}

/// Compares a presented token with the expected one in time independent of where they
/// differ.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    let (a, b) = (expected.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_and_configured_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, s1) = load_or_create_token(dir.path(), None).unwrap();
        assert_eq!(s1, TokenSource::Generated);
        assert_eq!(t1.len(), 64);
        let (t2, s2) = load_or_create_token(dir.path(), None).unwrap();
        assert_eq!((t2.as_str(), s2), (t1.as_str(), TokenSource::Stored));
        let (t3, s3) = load_or_create_token(dir.path(), Some("abc")).unwrap();
        assert_eq!((t3.as_str(), s3), ("abc", TokenSource::Configured));
        assert!(load_or_create_token(dir.path(), Some(" ")).is_err());
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "ab"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
