//! Session secrets in the NSS key log format, so Wireshark / tshark can decrypt captures.
//!
//! One line per session: `CLIENT_RANDOM <64 hex digits> <96 hex digits>`, the ClientHello
//! random (RFC 5246 §7.4.1.2) and the 48-byte master secret (RFC 5246 §8.1). Wireshark's
//! DTLS dissector reads the file named in its `tls.keylog_file` preference.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use rkyv::{Archive, Deserialize, Serialize};
use rtc_dtls::state::State;

/// The secrets of one established session, as written to a key log.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecrets {
    /// The ClientHello random (RFC 5246 §7.4.1.2).
    pub client_random: [u8; 32],
    /// The master secret (RFC 5246 §8.1; RFC 7627 when the extended master secret is used).
    pub master_secret: Vec<u8>,
}

impl std::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("client_random", &hex::encode(self.client_random))
            .field("master_secret", &"<redacted>")
            .finish()
    }
}

impl SessionSecrets {
    /// The NSS key log line, without a trailing newline.
    pub fn key_log_line(&self) -> String {
        format!(
            "CLIENT_RANDOM {} {}",
            hex::encode(self.client_random),
            hex::encode(&self.master_secret)
        )
    }

    /// Reads the secrets of an established session out of the library's state.
    ///
    /// rtc-dtls keeps the master secret private but serializes it (with rkyv) for session
    /// migration; [`Exported`] mirrors that serialized layout field for field. The key log
    /// test (tshark decrypting a capture) guards the mirror against library changes.
    pub(crate) fn of_state(state: &State) -> Option<SessionSecrets> {
        let bytes = state.marshal_binary().ok()?;
        let exported = rkyv::access::<ArchivedExported, rkyv::rancor::Error>(&bytes).ok()?;
        let client_random = if exported.is_client {
            exported.local_random
        } else {
            exported.remote_random
        };
        Some(SessionSecrets {
            client_random,
            master_secret: exported.master_secret.to_vec(),
        })
        .filter(|s| s.master_secret.len() == 48)
    }
}

/// Mirror of rtc-dtls 0.21's private `SerializedState` (same fields, same order, same
/// types), read back from [`State::marshal_binary`].
#[derive(Archive, Serialize, Deserialize)]
struct Exported {
    local_epoch: u16,
    remote_epoch: u16,
    local_random: [u8; 32],
    remote_random: [u8; 32],
    cipher_suite_id: u16,
    master_secret: Vec<u8>,
    sequence_number: u64,
    srtp_protection_profile: u16,
    peer_certificates: Vec<Vec<u8>>,
    identity_hint: Vec<u8>,
    is_client: bool,
}

/// Where key log lines go. Implemented by [`KeyLogFile`]; any `Fn(&SessionSecrets)` works too.
pub trait KeyLog: Send + Sync {
    /// Records the secrets of a session whose handshake just completed.
    fn log(&self, secrets: &SessionSecrets);
}

impl<F: Fn(&SessionSecrets) + Send + Sync> KeyLog for F {
    fn log(&self, secrets: &SessionSecrets) {
        self(secrets)
    }
}

/// Appends key log lines to a file (the `SSLKEYLOGFILE` convention), one write per line.
#[derive(Debug)]
pub struct KeyLogFile {
    file: Mutex<File>,
}

impl KeyLogFile {
    /// Opens `path` for appending, creating it if needed.
    pub fn append(path: &Path) -> std::io::Result<KeyLogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(KeyLogFile {
            file: Mutex::new(file),
        })
    }
}

impl KeyLog for KeyLogFile {
    fn log(&self, secrets: &SessionSecrets) {
        let line = format!("{}\n", secrets.key_log_line());
        // A poisoned lock only means another writer panicked mid-line; keep logging.
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // The key log is a debugging aid: a failed write must not break the session.
        let _ = file.write_all(line.as_bytes());
    }
}
