//! Stores: security credentials and bootstrap configurations, persisted so that a restart
//! or a crash loses nothing; behind traits so that a networked store can replace them.

mod file;
pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::bootstrap::config::{SecurityInstance, SecurityMode, most_specific};

pub use file::YamlFile;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but is not a valid store; it is left untouched.
    #[error("{file}:{line}:{column}: corrupt store, refusing to use or overwrite it: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// What the parser said.
        reason: String,
    },
    /// A PSK identity already belongs to another endpoint.
    #[error("PSK identity {identity:?} already belongs to endpoint {owner:?}")]
    IdentityTaken {
        /// The identity.
        identity: String,
        /// The endpoint that holds it.
        owner: String,
    },
    /// The Redis store failed (unreachable, timed out, or an entry that does not decode).
    #[error("Redis: {reason}")]
    Redis {
        /// What went wrong.
        reason: String,
    },
    /// The input is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    fn io(file: &Path, source: std::io::Error) -> Self {
        Self::Io {
            file: file.to_path_buf(),
            source,
        }
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Credentials {
    /// Pre-shared key: identity and key (hex).
    Psk {
        /// PSK identity.
        identity: String,
        /// The key, hex.
        key: String,
    },
    /// Raw public key (hex, SubjectPublicKeyInfo DER).
    Rpk {
        /// The client's public key, hex.
        public_key: String,
    },
    /// X.509 certificate: the endpoint name is the certificate's CN.
    X509,
}

/// The credentials of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityInfo {
    /// Endpoint client name.
    pub endpoint: String,
    /// Its credentials.
    pub credentials: Credentials,
}

impl SecurityInfo {
    /// The PSK identity, if PSK.
    pub fn psk_identity(&self) -> Option<&str> {
        match &self.credentials {
            Credentials::Psk { identity, .. } => Some(identity),
            _ => None,
        }
    }

    /// A copy safe to show: keys replaced by `"<redacted>"`.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        if let Credentials::Psk { key, .. } = &mut c.credentials {
            *key = "<redacted>".into();
        }
        c
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.endpoint.is_empty() {
            return Err(StoreError::Invalid {
                what: "security info",
                reason: "empty endpoint name".into(),
            });
        }
        if let Credentials::Psk { identity, key } = &self.credentials {
            if identity.is_empty() {
                return Err(StoreError::Invalid {
                    what: "PSK",
                    reason: "empty identity".into(),
                });
            }
            if lwm2m_proto::value::parse_hex(key).is_none_or(|k| k.is_empty()) {
                return Err(StoreError::Invalid {
                    what: "PSK",
                    reason: format!("key of {:?} is not non-empty hex", self.endpoint),
                });
            }
        }
        Ok(())
    }
}

/// Security credentials by endpoint, with PSK identities unique across endpoints.
pub trait SecurityStore: Send + Sync {
    /// The credentials of an endpoint.
    fn by_endpoint(&self, endpoint: &str) -> Option<SecurityInfo>;
    /// The credentials that own a PSK identity.
    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo>;
    /// Adds or replaces an endpoint's credentials; its old PSK identity goes with the old
    /// credentials. Refused if the identity belongs to another endpoint.
    fn put(&self, info: SecurityInfo) -> Result<Option<SecurityInfo>, StoreError>;
    /// Removes an endpoint's credentials.
    fn remove(&self, endpoint: &str) -> Result<Option<SecurityInfo>, StoreError>;
    /// Every entry, by endpoint name.
    fn all(&self) -> Vec<SecurityInfo>;
}

/// Where a bootstrap configuration applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigKey {
    /// One endpoint by name.
    Endpoint(String),
    /// Every endpoint whose name matches the pattern (`*`, `?`) and has no config of its own.
    Pattern(String),
}

/// Bootstrap configurations, by endpoint and by endpoint-name pattern (the fallback).
pub trait BootstrapStore: Send + Sync {
    /// The configuration for an endpoint: its own, else the most specific matching
    /// pattern's (with `{ep}` substituted), and the key that matched.
    fn lookup(&self, endpoint: &str) -> Option<(ConfigKey, BootstrapConfig)>;
    /// The configuration stored under a key, as stored.
    fn get(&self, key: &ConfigKey) -> Option<BootstrapConfig>;
    /// Adds or replaces.
    fn put(&self, key: ConfigKey, config: BootstrapConfig) -> Result<(), StoreError>;
    /// Removes.
    fn remove(&self, key: &ConfigKey) -> Result<Option<BootstrapConfig>, StoreError>;
    /// Every configuration.
    fn all(&self) -> Vec<(ConfigKey, BootstrapConfig)>;
    /// The client's credentials towards the Bootstrap Server whose PSK identity is
    /// `identity`: the bootstrap-server Security instance (`bootstrap_server: true`, mode
    /// `psk`) of the configuration that applies to the endpoint it names, as the endpoint
    /// and `Psk { identity, key }` (key hex). An endpoint's own configuration owns its
    /// identity; a pattern's identity is a template with `{ep}` (see
    /// [`FileBootstrapStore`]).
    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo>;
}

/// The bootstrap-server account (Security instance with `bootstrap_server: true`) of a
/// configuration, if it is PSK: the one the client handshakes with towards the Bootstrap
/// Server (Core TS 1.1 §7.1: its credentials differ from the LwM2M Server's).
pub fn bootstrap_psk(config: &BootstrapConfig) -> Option<&SecurityInstance> {
    config
        .security
        .values()
        .find(|s| s.bootstrap_server && s.mode == SecurityMode::Psk)
}

/// The credentials an endpoint authenticates with over PSK, as a security entry.
fn psk_info(endpoint: &str, account: &SecurityInstance) -> SecurityInfo {
    SecurityInfo {
        endpoint: endpoint.to_owned(),
        credentials: Credentials::Psk {
            identity: account.identity.clone(),
            key: hex(&account.secret_key_bytes()),
        },
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pattern's bootstrap PSK identity, split at its one `{ep}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    prefix: String,
    suffix: String,
}

impl Template {
    /// The template of a pattern configuration's bootstrap PSK identity; refused unless
    /// it holds `{ep}` exactly once (it must name the endpoint the key is used for).
    fn of(pattern: &str, config: &BootstrapConfig) -> Result<Option<Self>, StoreError> {
        let Some(account) = bootstrap_psk(config) else {
            return Ok(None);
        };
        match account.identity.split_once("{ep}") {
            Some((prefix, suffix)) if !suffix.contains("{ep}") => Ok(Some(Self {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
            })),
            _ => Err(StoreError::Invalid {
                what: "bootstrap configuration",
                reason: format!(
                    "pattern {pattern:?}: its bootstrap-server PSK identity {:?} must contain \
                     {{ep}} once, so that an identity names one endpoint",
                    account.identity
                ),
            }),
        }
    }

    /// The endpoint name an identity made from this template carries.
    fn endpoint<'a>(&self, identity: &'a str) -> Option<&'a str> {
        identity
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())
            .filter(|ep| !ep.is_empty())
    }
}

/// Checks an endpoint configuration's bootstrap PSK account: a non-empty identity and a
/// non-empty key.
fn check_bootstrap_psk(endpoint: &str, config: &BootstrapConfig) -> Result<(), StoreError> {
    match bootstrap_psk(config) {
        Some(account) => psk_info(endpoint, account).validate(),
        None => Ok(()),
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecurityDoc {
    #[serde(default)]
    clients: Vec<SecurityInfo>,
}

/// Credentials by endpoint, and the endpoint that owns each PSK identity.
#[derive(Debug, Default)]
struct SecurityMaps {
    by_endpoint: BTreeMap<String, SecurityInfo>,
    owner_of: HashMap<String, String>,
}

impl SecurityMaps {
    /// Adds or replaces an endpoint's credentials; its old identity goes with them.
    fn insert(&mut self, info: SecurityInfo) -> Option<SecurityInfo> {
        let endpoint = info.endpoint.clone();
        let identity = info.psk_identity().map(str::to_owned);
        let old = self.by_endpoint.insert(endpoint.clone(), info);
        if let Some(old_identity) = old.as_ref().and_then(SecurityInfo::psk_identity) {
            self.owner_of.remove(old_identity);
        }
        if let Some(identity) = identity {
            self.owner_of.insert(identity, endpoint);
        }
        old
    }

    fn remove(&mut self, endpoint: &str) -> Option<SecurityInfo> {
        let old = self.by_endpoint.remove(endpoint)?;
        if let Some(identity) = old.psk_identity() {
            self.owner_of.remove(identity);
        }
        Some(old)
    }
}

/// A [`SecurityStore`] in memory, optionally persisted to a YAML file on every change.
/// Look-ups by endpoint and by PSK identity are map look-ups (one per DTLS handshake).
#[derive(Debug)]
pub struct FileSecurityStore {
    file: Option<YamlFile>,
    inner: RwLock<SecurityMaps>,
}

impl FileSecurityStore {
    /// A store that forgets everything on exit.
    pub fn in_memory() -> Self {
        Self {
            file: None,
            inner: RwLock::default(),
        }
    }

    /// Opens (or starts) the store persisted at `path`. A corrupt file, or one that breaks
    /// the identity rule, is refused.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let file = YamlFile::new(path);
        file.remove_leftovers();
        let doc: SecurityDoc = file.load()?.unwrap_or_default();
        let store = Self {
            file: None,
            inner: RwLock::default(),
        };
        for info in doc.clients {
            let endpoint = info.endpoint.clone();
            store.put(info).map_err(|e| StoreError::Corrupt {
                file: file.path().to_path_buf(),
                line: file.text().map_or(0, |t| entry_line(&t, &endpoint, false)),
                column: 0,
                reason: format!("endpoint {endpoint:?}: {e}"),
            })?;
        }
        Ok(Self {
            file: Some(file),
            ..store
        })
    }

    fn persist(&self, maps: &SecurityMaps) -> Result<(), StoreError> {
        match &self.file {
            Some(f) => f.save(&SecurityDoc {
                clients: maps.by_endpoint.values().cloned().collect(),
            }),
            None => Ok(()),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SecurityMaps> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SecurityMaps> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl SecurityStore for FileSecurityStore {
    fn by_endpoint(&self, endpoint: &str) -> Option<SecurityInfo> {
        self.read().by_endpoint.get(endpoint).cloned()
    }

    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo> {
        let maps = self.read();
        let owner = maps.owner_of.get(identity)?;
        maps.by_endpoint.get(owner).cloned()
    }

    fn put(&self, info: SecurityInfo) -> Result<Option<SecurityInfo>, StoreError> {
        info.validate()?;
        let mut maps = self.write();
        if let Some(identity) = info.psk_identity()
            && let Some(owner) = maps.owner_of.get(identity)
            && *owner != info.endpoint
        {
            return Err(StoreError::IdentityTaken {
                identity: identity.to_owned(),
                owner: owner.clone(),
            });
        }
        let endpoint = info.endpoint.clone();
        let old = maps.insert(info);
        if let Err(e) = self.persist(&maps) {
            // Nothing changes when the file cannot be written.
            maps.remove(&endpoint);
            if let Some(old) = old {
                maps.insert(old);
            }
            return Err(e);
        }
        Ok(old)
    }

    fn remove(&self, endpoint: &str) -> Result<Option<SecurityInfo>, StoreError> {
        let mut maps = self.write();
        let Some(old) = maps.remove(endpoint) else {
            return Ok(None);
        };
        if let Err(e) = self.persist(&maps) {
            maps.insert(old);
            return Err(e);
        }
        Ok(Some(old))
    }

    fn all(&self) -> Vec<SecurityInfo> {
        self.read().by_endpoint.values().cloned().collect()
    }
}

/// The YAML document of bootstrap configurations: `endpoints:` by name and `patterns:` by
/// endpoint-name pattern.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapDoc {
    /// Configurations by endpoint name.
    #[serde(default)]
    pub endpoints: BTreeMap<String, BootstrapConfig>,
    /// Fallback configurations by endpoint-name pattern.
    #[serde(default)]
    pub patterns: BTreeMap<String, BootstrapConfig>,
}

/// The 1-based line of the entry named `name` in a store's YAML text (0 if not found): a
/// map key `name:` (`as_key`), else an `endpoint: name` field. A semantic error (a taken
/// identity, a pattern identity without `{ep}`) names the line as a syntax error does.
fn entry_line(text: &str, name: &str, as_key: bool) -> usize {
    let quoted = |q: char| format!("{q}{name}{q}");
    let forms = [name.to_owned(), quoted('"'), quoted('\'')];
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches("- ");
            forms.iter().any(|f| {
                if as_key {
                    line.strip_prefix(f.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with(':'))
                } else {
                    line.strip_prefix("endpoint:")
                        .is_some_and(|rest| rest.trim() == f)
                }
            })
        })
        .map_or(0, |i| i + 1)
}

impl BootstrapDoc {
    /// Parses a YAML document; errors name `source`, the line and the offending key.
    pub fn from_yaml(source: &str, text: &str) -> Result<Self, StoreError> {
        serde_yaml::from_str(text).map_err(|e| StoreError::Corrupt {
            file: PathBuf::from(source),
            line: e.location().map_or(0, |l| l.line()),
            column: e.location().map_or(0, |l| l.column()),
            reason: e.to_string(),
        })
    }
}

/// The configurations and the index of their bootstrap PSK identities, kept together.
#[derive(Debug, Default, Clone)]
struct BootstrapMaps {
    doc: BootstrapDoc,
    /// Bootstrap PSK identity → the endpoint whose own configuration holds it.
    owner_of: HashMap<String, String>,
    /// Pattern → the template of its bootstrap PSK identity.
    templates: BTreeMap<String, Template>,
}

impl BootstrapMaps {
    /// Indexes a document; `refused` decides what a refused entry (a taken identity, a
    /// pattern identity without `{ep}`) does: `Err` stops, `Ok` leaves it out.
    fn new(
        doc: BootstrapDoc,
        refused: impl Fn(&ConfigKey, StoreError) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let mut maps = Self::default();
        let entries = (doc
            .endpoints
            .into_iter()
            .map(|(e, c)| (ConfigKey::Endpoint(e), c)))
        .chain(
            doc.patterns
                .into_iter()
                .map(|(p, c)| (ConfigKey::Pattern(p), c)),
        );
        for (key, config) in entries {
            if let Err(e) = maps.insert(key.clone(), config) {
                refused(&key, e)?;
            }
        }
        Ok(maps)
    }

    fn get(&self, key: &ConfigKey) -> Option<&BootstrapConfig> {
        match key {
            ConfigKey::Endpoint(e) => self.doc.endpoints.get(e),
            ConfigKey::Pattern(p) => self.doc.patterns.get(p),
        }
    }

    /// Adds or replaces a configuration and its index entries; refused (nothing changes)
    /// when its bootstrap PSK identity is another endpoint's or a pattern's has no `{ep}`.
    fn insert(&mut self, key: ConfigKey, config: BootstrapConfig) -> Result<(), StoreError> {
        match key {
            ConfigKey::Endpoint(endpoint) => {
                check_bootstrap_psk(&endpoint, &config)?;
                let identity = bootstrap_psk(&config).map(|a| a.identity.clone());
                if let Some(identity) = &identity
                    && let Some(owner) = self.owner_of.get(identity)
                    && *owner != endpoint
                {
                    return Err(StoreError::IdentityTaken {
                        identity: identity.clone(),
                        owner: owner.clone(),
                    });
                }
                let old = self.doc.endpoints.insert(endpoint.clone(), config);
                if let Some(old) = old.as_ref().and_then(bootstrap_psk) {
                    self.owner_of.remove(&old.identity);
                }
                if let Some(identity) = identity {
                    self.owner_of.insert(identity, endpoint);
                }
            }
            ConfigKey::Pattern(pattern) => {
                match Template::of(&pattern, &config)? {
                    Some(t) => self.templates.insert(pattern.clone(), t),
                    None => self.templates.remove(&pattern),
                };
                self.doc.patterns.insert(pattern, config);
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: &ConfigKey) -> Option<BootstrapConfig> {
        match key {
            ConfigKey::Endpoint(e) => {
                let old = self.doc.endpoints.remove(e)?;
                if let Some(account) = bootstrap_psk(&old) {
                    self.owner_of.remove(&account.identity);
                }
                Some(old)
            }
            ConfigKey::Pattern(p) => {
                self.templates.remove(p);
                self.doc.patterns.remove(p)
            }
        }
    }

    /// The endpoint's own configuration, else the most specific matching pattern's (with
    /// `{ep}` substituted), and the key that matched.
    fn lookup(&self, endpoint: &str) -> Option<(ConfigKey, BootstrapConfig)> {
        if let Some(c) = self.doc.endpoints.get(endpoint) {
            return Some((
                ConfigKey::Endpoint(endpoint.to_owned()),
                c.for_endpoint(endpoint),
            ));
        }
        most_specific(&self.doc.patterns, endpoint)
            .map(|(p, c)| (ConfigKey::Pattern(p.clone()), c.for_endpoint(endpoint)))
    }

    /// An endpoint's own identity: one map look-up. A pattern's: the endpoint the
    /// identity names through a template, if that pattern is the configuration that
    /// applies to it (it has none of its own and no more specific pattern matches).
    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo> {
        if let Some(endpoint) = self.owner_of.get(identity) {
            let config = self.doc.endpoints.get(endpoint)?;
            return Some(psk_info(endpoint, bootstrap_psk(config)?));
        }
        self.templates.iter().find_map(|(pattern, template)| {
            let endpoint = template.endpoint(identity)?;
            let (ConfigKey::Pattern(applies), config) = self.lookup(endpoint)? else {
                return None;
            };
            let account = bootstrap_psk(&config)?;
            (applies == *pattern && account.identity == identity)
                .then(|| psk_info(endpoint, account))
        })
    }
}

/// A [`BootstrapStore`] in memory, optionally persisted to a YAML file on every change.
///
/// It indexes the bootstrap-server PSK accounts (see [`BootstrapStore::by_psk_identity`])
/// on every change, so a DTLS handshake with the Bootstrap Server costs one map look-up
/// (patterns: one template match per pattern with a PSK account). Like the security store,
/// an identity belongs to one endpoint: a configuration whose bootstrap PSK identity is
/// another endpoint's is refused ([`StoreError::IdentityTaken`]). A fallback (pattern)
/// configuration may carry a bootstrap PSK account only if its identity contains `{ep}`
/// exactly once (e.g. `bs-{ep}`): the identity then names the endpoint, and the key is the
/// configuration's, shared by every endpoint the pattern serves (a group key: whoever holds
/// it can bootstrap as any of them; give endpoints their own configurations for keys of
/// their own). Other pattern identities are refused ([`StoreError::Invalid`]).
#[derive(Debug)]
pub struct FileBootstrapStore {
    file: Option<YamlFile>,
    inner: RwLock<BootstrapMaps>,
}

impl FileBootstrapStore {
    /// A store that forgets everything on exit, starting from `doc`. Configurations the
    /// index refuses (see [`FileBootstrapStore`]) are left out, with a warning.
    pub fn in_memory(doc: BootstrapDoc) -> Self {
        let maps = BootstrapMaps::new(doc, |key, e| {
            tracing::warn!("bootstrap configuration {key:?} left out: {e}");
            Ok(())
        });
        Self {
            file: None,
            inner: RwLock::new(maps.unwrap_or_default()),
        }
    }

    /// Opens (or starts) the store persisted at `path`; a corrupt file, or one that breaks
    /// the identity rules, is refused.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let file = YamlFile::new(path);
        file.remove_leftovers();
        let doc = file.load()?.unwrap_or_default();
        let maps = BootstrapMaps::new(doc, |key, e| {
            let name = match key {
                ConfigKey::Endpoint(n) | ConfigKey::Pattern(n) => n,
            };
            Err(StoreError::Corrupt {
                file: file.path().to_path_buf(),
                line: file.text().map_or(0, |t| entry_line(&t, name, true)),
                column: 0,
                reason: format!("{name:?}: {e}"),
            })
        })?;
        Ok(Self {
            file: Some(file),
            inner: RwLock::new(maps),
        })
    }

    fn persist(&self, maps: &BootstrapMaps) -> Result<(), StoreError> {
        match &self.file {
            Some(f) => f.save(&maps.doc),
            None => Ok(()),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BootstrapMaps> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BootstrapMaps> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl BootstrapStore for FileBootstrapStore {
    fn lookup(&self, endpoint: &str) -> Option<(ConfigKey, BootstrapConfig)> {
        self.read().lookup(endpoint)
    }

    fn get(&self, key: &ConfigKey) -> Option<BootstrapConfig> {
        self.read().get(key).cloned()
    }

    fn put(&self, key: ConfigKey, config: BootstrapConfig) -> Result<(), StoreError> {
        let mut maps = self.write();
        let old = maps.get(&key).cloned();
        maps.insert(key.clone(), config)?;
        if let Err(e) = self.persist(&maps) {
            // Nothing changes when the file cannot be written.
            maps.remove(&key);
            if let Some(old) = old {
                let _ = maps.insert(key, old);
            }
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, key: &ConfigKey) -> Result<Option<BootstrapConfig>, StoreError> {
        let mut maps = self.write();
        let Some(old) = maps.remove(key) else {
            return Ok(None);
        };
        if let Err(e) = self.persist(&maps) {
            let _ = maps.insert(key.clone(), old);
            return Err(e);
        }
        Ok(Some(old))
    }

    fn all(&self) -> Vec<(ConfigKey, BootstrapConfig)> {
        let maps = self.read();
        maps.doc
            .endpoints
            .iter()
            .map(|(e, c)| (ConfigKey::Endpoint(e.clone()), c.clone()))
            .chain(
                maps.doc
                    .patterns
                    .iter()
                    .map(|(p, c)| (ConfigKey::Pattern(p.clone()), c.clone())),
            )
            .collect()
    }

    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo> {
        self.read().by_psk_identity(identity)
    }
}

/// The clients' credentials towards the Bootstrap Server, read from the bootstrap
/// configurations ([`BootstrapStore::by_psk_identity`]) as a read-only [`SecurityStore`]:
/// what the Bootstrap Server's DTLS listener looks PSK keys and identity owners up in
/// ([`crate::bootstrap::BootstrapOptions::dtls`]). Change the configurations to change
/// them: `put` and `remove` are refused.
#[derive(Clone)]
pub struct BootstrapCredentials(pub std::sync::Arc<dyn BootstrapStore>);

impl std::fmt::Debug for BootstrapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapCredentials")
            .finish_non_exhaustive()
    }
}

impl BootstrapCredentials {
    fn read_only() -> StoreError {
        StoreError::Invalid {
            what: "bootstrap credentials",
            reason: "they come from the bootstrap configurations: change those".into(),
        }
    }
}

impl SecurityStore for BootstrapCredentials {
    fn by_endpoint(&self, endpoint: &str) -> Option<SecurityInfo> {
        let (_, config) = self.0.lookup(endpoint)?;
        Some(psk_info(endpoint, bootstrap_psk(&config)?))
    }

    fn by_psk_identity(&self, identity: &str) -> Option<SecurityInfo> {
        self.0.by_psk_identity(identity)
    }

    fn put(&self, _: SecurityInfo) -> Result<Option<SecurityInfo>, StoreError> {
        Err(Self::read_only())
    }

    fn remove(&self, _: &str) -> Result<Option<SecurityInfo>, StoreError> {
        Err(Self::read_only())
    }

    /// The endpoints with configurations of their own (pattern endpoints are not known in
    /// advance).
    fn all(&self) -> Vec<SecurityInfo> {
        self.0
            .all()
            .into_iter()
            .filter_map(|(key, config)| match key {
                ConfigKey::Endpoint(e) => Some(psk_info(&e, bootstrap_psk(&config)?)),
                ConfigKey::Pattern(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk(ep: &str, id: &str) -> SecurityInfo {
        SecurityInfo {
            endpoint: ep.into(),
            credentials: Credentials::Psk {
                identity: id.into(),
                key: "0011".into(),
            },
        }
    }

    #[test]
    fn identity_belongs_to_one_endpoint_and_replacement_drops_the_old_one() {
        let s = FileSecurityStore::in_memory();
        s.put(psk("a", "id-a")).unwrap();
        assert!(matches!(
            s.put(psk("b", "id-a")),
            Err(StoreError::IdentityTaken { .. })
        ));
        s.put(psk("a", "id-a2")).unwrap();
        assert_eq!(s.by_psk_identity("id-a"), None, "no ghost identity");
        assert_eq!(s.by_psk_identity("id-a2").unwrap().endpoint, "a");
        s.put(psk("b", "id-a")).unwrap();
        assert_eq!(s.all().len(), 2);
        assert!(s.put(psk("c", "")).is_err());
        assert_eq!(
            psk("a", "x").redacted().credentials,
            Credentials::Psk {
                identity: "x".into(),
                key: "<redacted>".into()
            }
        );
    }

    #[test]
    fn persisted_stores_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("security.yaml");
        {
            let s = FileSecurityStore::open(&path).unwrap();
            s.put(psk("a", "id-a")).unwrap();
        }
        let s = FileSecurityStore::open(&path).unwrap();
        assert_eq!(s.by_endpoint("a"), Some(psk("a", "id-a")));

        let bpath = dir.path().join("bootstrap.yaml");
        {
            let b = FileBootstrapStore::open(&bpath).unwrap();
            b.put(
                ConfigKey::Pattern("sensor-*".into()),
                BootstrapConfig::default(),
            )
            .unwrap();
        }
        let b = FileBootstrapStore::open(&bpath).unwrap();
        assert_eq!(
            b.lookup("sensor-1").unwrap().0,
            ConfigKey::Pattern("sensor-*".into())
        );
        assert!(b.lookup("meter-1").is_none());
    }

    #[test]
    fn fallback_patterns_pick_the_most_specific() {
        let doc = BootstrapDoc::from_yaml(
            "test.yaml",
            r#"
endpoints:
  dev-1:
    servers: { 0: { short_server_id: 1, lifetime: 60 } }
patterns:
  "*": {}
  "dev-*":
    security:
      1: { uri: "coap://127.0.0.1:5683", mode: psk, identity: "{ep}", secret_key: "00" }
"#,
        )
        .unwrap();
        let b = FileBootstrapStore::in_memory(doc);
        assert_eq!(
            b.lookup("dev-1").unwrap().0,
            ConfigKey::Endpoint("dev-1".into())
        );
        let (key, cfg) = b.lookup("dev-2").unwrap();
        assert_eq!(key, ConfigKey::Pattern("dev-*".into()));
        assert_eq!(cfg.security[&1].identity, "dev-2");
        assert_eq!(b.lookup("other").unwrap().0, ConfigKey::Pattern("*".into()));
    }

    fn bs_config(identity: &str, key: &str) -> BootstrapConfig {
        BootstrapDoc::from_yaml(
            "t.yaml",
            &format!(
                "endpoints:\n  x:\n    security:\n      0: {{ uri: \"coaps://127.0.0.1:5784\", \
                 bootstrap_server: true, mode: psk, identity: \"{identity}\", secret_key: \"{key}\" }}\n      \
                 1: {{ uri: \"coaps://127.0.0.1:5684\", mode: psk, identity: lwm2m-id, secret_key: \"ff\" }}\n"
            ),
        )
        .unwrap()
        .endpoints
        .remove("x")
        .unwrap()
    }

    fn bs_psk(ep: &str, identity: &str, key: &str) -> Option<SecurityInfo> {
        Some(SecurityInfo {
            endpoint: ep.into(),
            credentials: Credentials::Psk {
                identity: identity.into(),
                key: key.into(),
            },
        })
    }

    #[test]
    fn bootstrap_psk_identities_are_indexed_on_every_change() {
        let b = FileBootstrapStore::in_memory(BootstrapDoc::default());
        let ep = |e: &str| ConfigKey::Endpoint(e.into());
        b.put(ep("ep1"), bs_config("bs-ep1", "0102")).unwrap();
        assert_eq!(b.by_psk_identity("bs-ep1"), bs_psk("ep1", "bs-ep1", "0102"));
        // The LwM2M Server account's identity is not the Bootstrap Server's.
        assert_eq!(b.by_psk_identity("lwm2m-id"), None);
        // Another endpoint may not take it; nothing changes then.
        let taken = b.put(ep("ep2"), bs_config("bs-ep1", "03")).unwrap_err();
        assert!(
            matches!(&taken, StoreError::IdentityTaken { owner, .. } if owner == "ep1"),
            "{taken}"
        );
        assert!(b.get(&ep("ep2")).is_none());
        // A new identity replaces the old one (no ghost); the freed one can be reused.
        b.put(ep("ep1"), bs_config("bs-ep1-v2", "0a")).unwrap();
        assert_eq!(b.by_psk_identity("bs-ep1"), None);
        assert_eq!(
            b.by_psk_identity("bs-ep1-v2"),
            bs_psk("ep1", "bs-ep1-v2", "0a")
        );
        b.put(ep("ep2"), bs_config("bs-ep1", "03")).unwrap();
        assert_eq!(b.by_psk_identity("bs-ep1"), bs_psk("ep2", "bs-ep1", "03"));
        b.remove(&ep("ep2")).unwrap();
        assert_eq!(b.by_psk_identity("bs-ep1"), None);
        // An empty key is refused.
        assert!(matches!(
            b.put(ep("ep3"), bs_config("bs-ep3", "")),
            Err(StoreError::Invalid { .. })
        ));
        let view = BootstrapCredentials(std::sync::Arc::new(b));
        assert_eq!(view.by_endpoint("ep1"), bs_psk("ep1", "bs-ep1-v2", "0a"));
        assert_eq!(view.all().len(), 1);
        assert!(view.put(psk("a", "b")).is_err());
    }

    #[test]
    fn pattern_identities_are_templates_naming_the_endpoint() {
        let b = FileBootstrapStore::in_memory(BootstrapDoc::default());
        let pattern = |p: &str| ConfigKey::Pattern(p.into());
        // Without {ep} (or with two) an identity would not name one endpoint: refused.
        for identity in ["shared", "{ep}-{ep}"] {
            let e = b
                .put(pattern("dev-*"), bs_config(identity, "01"))
                .unwrap_err();
            assert!(e.to_string().contains("{ep}"), "{e}");
        }
        b.put(pattern("dev-*"), bs_config("bs-{ep}", "01")).unwrap();
        b.put(pattern("dev-9*"), bs_config("bs9-{ep}", "09"))
            .unwrap();
        b.put(
            ConfigKey::Endpoint("dev-own".into()),
            bs_config("own", "0e"),
        )
        .unwrap();
        assert_eq!(
            b.by_psk_identity("bs-dev-1"),
            bs_psk("dev-1", "bs-dev-1", "01")
        );
        assert_eq!(
            b.by_psk_identity("bs9-dev-91"),
            bs_psk("dev-91", "bs9-dev-91", "09")
        );
        // The more specific pattern applies to dev-91: the other template does not.
        assert_eq!(b.by_psk_identity("bs-dev-91"), None);
        // An endpoint with its own configuration, or one no pattern matches: no.
        assert_eq!(b.by_psk_identity("bs-dev-own"), None);
        assert_eq!(b.by_psk_identity("bs-meter-1"), None);
        assert_eq!(b.by_psk_identity("bs-"), None);
        assert_eq!(b.by_psk_identity("own"), bs_psk("dev-own", "own", "0e"));
        b.remove(&pattern("dev-*")).unwrap();
        assert_eq!(b.by_psk_identity("bs-dev-1"), None);
    }

    #[test]
    fn a_file_breaking_the_identity_rule_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.yaml");
        let doc = BootstrapDoc {
            endpoints: [
                ("a".to_owned(), bs_config("same", "01")),
                ("b".to_owned(), bs_config("same", "02")),
            ]
            .into(),
            patterns: BTreeMap::new(),
        };
        std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
        let e = FileBootstrapStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("bootstrap.yaml") && e.contains("same"), "{e}");
        // In memory, the second one is left out.
        let b = FileBootstrapStore::in_memory(doc);
        assert_eq!(b.by_psk_identity("same").unwrap().endpoint, "a");
        assert!(b.get(&ConfigKey::Endpoint("b".into())).is_none());
    }

    #[test]
    fn semantic_errors_name_their_line_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let security = dir.path().join("security.yaml");
        std::fs::write(
            &security,
            "clients:\n- endpoint: a\n  credentials: { mode: psk, identity: same, key: '01' }\n\
             - endpoint: b\n  credentials: { mode: psk, identity: same, key: '02' }\n",
        )
        .unwrap();
        let err = FileSecurityStore::open(&security).unwrap_err().to_string();
        assert!(err.contains("security.yaml:4:"), "{err}");
        assert!(err.contains("\"b\""), "{err}");
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(
            &bootstrap,
            "patterns:\n  \"dev-*\":\n    security:\n      0: { uri: 'coaps://h:1', \
             bootstrap_server: true, mode: psk, identity: fixed, secret_key: '01' }\n",
        )
        .unwrap();
        let err = FileBootstrapStore::open(&bootstrap)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap.yaml:2:"), "{err}");
        // A killed process's temporary files are removed at start; others are not.
        std::fs::remove_file(&security).unwrap();
        for name in [
            ".security.yaml.tmp-4242",
            ".security.yaml.tmp-x",
            "keep.tmp-1",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        FileSecurityStore::open(&security).unwrap();
        assert!(!dir.path().join(".security.yaml.tmp-4242").exists());
        assert!(dir.path().join(".security.yaml.tmp-x").exists());
        assert!(dir.path().join("keep.tmp-1").exists());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = BootstrapDoc::from_yaml(
            "cfg.yaml",
            "endpoints:\n  d:\n    servers: {}\n    lifetmie: 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cfg.yaml:4") && err.contains("lifetmie"),
            "{err}"
        );
    }
}
