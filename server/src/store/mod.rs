//! Stores: security credentials and bootstrap configurations, persisted so that a restart
//! or a crash loses nothing; behind traits so that a networked store can replace them.

mod file;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::bootstrap::config::{pattern_matches, pattern_specificity};

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
        let doc: SecurityDoc = file.load()?.unwrap_or_default();
        let store = Self {
            file: None,
            inner: RwLock::default(),
        };
        for info in doc.clients {
            store.put(info).map_err(|e| StoreError::Corrupt {
                file: file.path().to_path_buf(),
                line: 0,
                column: 0,
                reason: e.to_string(),
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

/// A [`BootstrapStore`] in memory, optionally persisted to a YAML file on every change.
#[derive(Debug)]
pub struct FileBootstrapStore {
    file: Option<YamlFile>,
    inner: RwLock<BootstrapDoc>,
}

impl FileBootstrapStore {
    /// A store that forgets everything on exit, starting from `doc`.
    pub fn in_memory(doc: BootstrapDoc) -> Self {
        Self {
            file: None,
            inner: RwLock::new(doc),
        }
    }

    /// Opens (or starts) the store persisted at `path`; a corrupt file is refused.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let file = YamlFile::new(path);
        let doc = file.load()?.unwrap_or_default();
        Ok(Self {
            file: Some(file),
            inner: RwLock::new(doc),
        })
    }

    fn update<R>(&self, f: impl FnOnce(&mut BootstrapDoc) -> R) -> Result<R, StoreError> {
        let mut doc = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut next = doc.clone();
        let r = f(&mut next);
        if let Some(file) = &self.file {
            file.save(&next)?;
        }
        *doc = next;
        Ok(r)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BootstrapDoc> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl BootstrapStore for FileBootstrapStore {
    fn lookup(&self, endpoint: &str) -> Option<(ConfigKey, BootstrapConfig)> {
        let doc = self.read();
        if let Some(c) = doc.endpoints.get(endpoint) {
            return Some((
                ConfigKey::Endpoint(endpoint.to_owned()),
                c.for_endpoint(endpoint),
            ));
        }
        doc.patterns
            .iter()
            .filter(|(p, _)| pattern_matches(p, endpoint))
            // Most literal characters wins; ties go to the pattern that sorts first.
            .max_by(|(a, _), (b, _)| {
                pattern_specificity(a)
                    .cmp(&pattern_specificity(b))
                    .then(b.cmp(a))
            })
            .map(|(p, c)| (ConfigKey::Pattern(p.clone()), c.for_endpoint(endpoint)))
    }

    fn get(&self, key: &ConfigKey) -> Option<BootstrapConfig> {
        let doc = self.read();
        match key {
            ConfigKey::Endpoint(e) => doc.endpoints.get(e).cloned(),
            ConfigKey::Pattern(p) => doc.patterns.get(p).cloned(),
        }
    }

    fn put(&self, key: ConfigKey, config: BootstrapConfig) -> Result<(), StoreError> {
        self.update(|doc| match key {
            ConfigKey::Endpoint(e) => {
                doc.endpoints.insert(e, config);
            }
            ConfigKey::Pattern(p) => {
                doc.patterns.insert(p, config);
            }
        })
    }

    fn remove(&self, key: &ConfigKey) -> Result<Option<BootstrapConfig>, StoreError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.update(|doc| match key {
            ConfigKey::Endpoint(e) => doc.endpoints.remove(e),
            ConfigKey::Pattern(p) => doc.patterns.remove(p),
        })
    }

    fn all(&self) -> Vec<(ConfigKey, BootstrapConfig)> {
        let doc = self.read();
        doc.endpoints
            .iter()
            .map(|(e, c)| (ConfigKey::Endpoint(e.clone()), c.clone()))
            .chain(
                doc.patterns
                    .iter()
                    .map(|(p, c)| (ConfigKey::Pattern(p.clone()), c.clone())),
            )
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
