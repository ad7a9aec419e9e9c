//! Credentials and settings, and their translation into the DTLS library's configuration.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::crypto_provider::{
    CryptoError, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::keylog::KeyLog;
use crate::{DtlsError, Identity};

/// The server's source of pre-shared keys: PSK identity → key (RFC 4279 §2). The LwM2M
/// server's security store implements it; any `Fn(&[u8]) -> Option<Vec<u8>>` does too.
///
/// It is called synchronously during the handshake, once per ClientKeyExchange, so it
/// should answer from memory.
pub trait PskStore: Send + Sync {
    /// The key for `identity`, or `None` if the identity is unknown (the handshake then
    /// fails with [`crate::FailureReason::UnknownIdentity`]).
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>>;
}

impl<F: Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync> PskStore for F {
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        self(identity)
    }
}

/// An X.509 certificate chain with its private key, and the trust anchors that peers'
/// certificates must chain to (Security object mode 2, Core TS 1.1 §7.1.8; RFC 7925 §4.4).
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// Own chain, DER, end-entity certificate first. Its key must be ECDSA P-256 for
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`.
    pub chain: Vec<Vec<u8>>,
    /// The private key of the end-entity certificate, PKCS#8 DER.
    pub private_key: Vec<u8>,
    /// DER certificates the peer's chain must lead to. A server with trust anchors requires
    /// and verifies client certificates; a client always verifies the server's.
    pub trust_anchors: Vec<Vec<u8>>,
}

impl fmt::Debug for CertificateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateConfig")
            .field("chain", &self.chain.len())
            .field("private_key", &"<redacted>")
            .field("trust_anchors", &self.trust_anchors.len())
            .finish()
    }
}

/// What a client authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Pre-shared key (Security object mode 0): `TLS_PSK_WITH_AES_128_CCM_8`.
    Psk {
        /// PSK identity (Security object /0/x/3).
        identity: Vec<u8>,
        /// The key (Security object /0/x/5).
        key: Vec<u8>,
    },
    /// Certificate (Security object mode 2): `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`.
    Certificate {
        /// Own chain and key, and the trust anchors for the server's certificate.
        certificate: CertificateConfig,
        /// The name the server's certificate must carry (RFC 6125 matching on its
        /// subjectAltName).
        server_name: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Psk { identity, .. } => f
                .debug_struct("Psk")
                .field("identity", &String::from_utf8_lossy(identity))
                .field("key", &"<redacted>")
                .finish(),
            Credentials::Certificate {
                certificate,
                server_name,
            } => f
                .debug_struct("Certificate")
                .field("certificate", certificate)
                .field("server_name", server_name)
                .finish(),
        }
    }
}

/// Settings of a [`crate::DtlsServer`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Pre-shared keys; `None` disables PSK cipher suites.
    pub psk_store: Option<Arc<dyn PskStore>>,
    /// Own certificate and the trust anchors for client certificates; `None` disables
    /// certificate cipher suites. At least one of the two must be given.
    pub certificate: Option<CertificateConfig>,
    /// Longest time from a peer's first ClientHello to the end of its handshake. Default
    /// 10 s (flights are retransmitted every second).
    pub handshake_timeout: Duration,
    /// An established session from which nothing arrives for this long is dropped. Default
    /// 25 h: the Core TS 1.1 default registration lifetime (86,400 s) plus an hour. `None`
    /// keeps sessions until the peer closes or replaces them.
    pub idle_timeout: Option<Duration>,
    /// Handshakes in progress at once; further fresh ClientHellos are dropped (and counted)
    /// until one finishes. Default 1,024.
    pub max_handshakes: usize,
    /// Sessions (established or not) at once; ClientHellos from new peers beyond it are
    /// dropped. Default 1,000,000.
    pub max_sessions: usize,
    /// Where to write the secrets of every established session.
    pub key_log: Option<Arc<dyn KeyLog>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            psk_store: None,
            certificate: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(25 * 3600)),
            max_handshakes: 1024,
            max_sessions: 1_000_000,
            key_log: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("psk_store", &self.psk_store.is_some())
            .field("certificate", &self.certificate)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_sessions", &self.max_sessions)
            .field("key_log", &self.key_log.is_some())
            .finish()
    }
}

/// Settings of a [`crate::DtlsClient`]: credentials checked and compiled once, so that many
/// sessions (a fleet, or reconnections) share them. Cheap to clone.
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) handshake: Arc<HandshakeConfig>,
    pub(crate) identity: Identity,
    pub(crate) handshake_timeout: Duration,
    pub(crate) key_log: Option<Arc<dyn KeyLog>>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("identity", &self.identity)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("key_log", &self.key_log.is_some())
            .finish()
    }
}

impl ClientConfig {
    /// Compiles `credentials`; the handshake timeout is 10 s and there is no key log.
    pub fn new(credentials: &Credentials) -> Result<ClientConfig, DtlsError> {
        let provider = provider()?;
        let (builder, identity) = match credentials {
            Credentials::Psk { identity, key } => {
                let key = key.clone();
                let builder = ConfigBuilder::default()
                    .with_cipher_suites(vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8])
                    .with_psk(Some(Arc::new(move |_hint: &[u8]| Ok(key.clone()))))
                    .with_psk_identity_hint(Some(identity.clone()))
                    .with_roots_cas(psk_roots());
                (builder, Identity::Psk(identity.as_slice().into()))
            }
            Credentials::Certificate {
                certificate,
                server_name,
            } => {
                let own = own_certificate(certificate, provider.as_ref())?;
                let cn = certificate.chain.first().and_then(|der| common_name(der));
                let identity = Identity::Certificate(cn.unwrap_or_default().into());
                let builder = ConfigBuilder::default()
                    .with_cipher_suites(vec![CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8])
                    .with_certificates(vec![own])
                    .with_roots_cas(trust_store(&certificate.trust_anchors)?)
                    .with_server_name(server_name.clone());
                (builder, identity)
            }
        };
        let handshake = builder
            .with_crypto_provider(provider)
            .build(true, None)
            .map_err(|e| DtlsError::Config(e.to_string()))?;
        Ok(ClientConfig {
            handshake: Arc::new(handshake),
            identity,
            handshake_timeout: Duration::from_secs(10),
            key_log: None,
        })
    }

    /// Shorthand for PSK credentials.
    pub fn psk(identity: &[u8], key: &[u8]) -> Result<ClientConfig, DtlsError> {
        ClientConfig::new(&Credentials::Psk {
            identity: identity.to_vec(),
            key: key.to_vec(),
        })
    }

    /// Sets the longest time the handshake may take.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// Writes the secrets of every session established with this configuration to `key_log`.
    pub fn with_key_log(mut self, key_log: Arc<dyn KeyLog>) -> ClientConfig {
        self.key_log = Some(key_log);
        self
    }

    /// The identity this client authenticates with (PSK identity or own certificate CN).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// The result of the server's last PSK lookup, for the session that triggered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PskLookup {
    pub(crate) identity: Vec<u8>,
    pub(crate) found: bool,
}

/// Shared between the library's PSK callback and the router, which reads it after feeding a
/// datagram to one session (the router is single-threaded, so the slot is never contended).
pub(crate) type LookupSlot = Arc<Mutex<Option<PskLookup>>>;

/// The cookie the router verified, for the DTLS layer to take as its own; see
/// [`ServerRandom`].
pub(crate) type CookieSlot = Arc<Mutex<Option<Vec<u8>>>>;

/// The server's crypto provider: the default one, but the first random fill of the cookie's
/// length while the [`CookieSlot`] holds a cookie returns that cookie.
///
/// The router does the cookie exchange itself, statelessly (`cookie.rs`), before any session
/// exists; the DTLS layer has no switch to skip its own. So the router replays the exchange
/// to the fresh session: it feeds it the ClientHello without cookie, the session draws its
/// cookie (the first random draw of a server session) and gets the client's verified cookie,
/// its HelloVerifyRequest is discarded, and the client's ClientHello with that cookie is
/// then accepted as the answer to it. The handshake transcript is the client's, untouched.
struct ServerRandom {
    inner: Arc<dyn RTCCryptoProvider>,
    cookie: CookieSlot,
}

impl RTCCryptoProvider for ServerRandom {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self.inner.crypto()
    }

    fn random(&self) -> &dyn RTCRandom {
        self
    }
}

impl RTCRandom for ServerRandom {
    fn fill(&self, output: &mut [u8]) -> Result<(), CryptoError> {
        let preset = self
            .cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_if(|cookie| cookie.len() == output.len());
        match preset {
            Some(cookie) => {
                output.copy_from_slice(&cookie);
                Ok(())
            }
            None => self.inner.random().fill(output),
        }
    }
}

/// Compiles the server's settings into the library's configuration.
pub(crate) fn server_handshake(
    config: &ServerConfig,
    slot: &LookupSlot,
    cookie: &CookieSlot,
) -> Result<HandshakeConfig, DtlsError> {
    let provider: Arc<dyn RTCCryptoProvider> = Arc::new(ServerRandom {
        inner: provider()?,
        cookie: cookie.clone(),
    });
    let mut suites = Vec::new();
    let mut builder = ConfigBuilder::default();
    if let Some(store) = &config.psk_store {
        suites.push(CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8);
        let (store, slot) = (store.clone(), slot.clone());
        builder = builder.with_psk(Some(Arc::new(move |identity: &[u8]| {
            let key = store.psk(identity);
            let lookup = PskLookup {
                identity: identity.to_vec(),
                found: key.is_some(),
            };
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(lookup);
            key.ok_or_else(|| rtc_shared::error::Error::Other("unknown PSK identity".into()))
        })));
    }
    if let Some(certificate) = &config.certificate {
        suites.push(CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8);
        builder = builder.with_certificates(vec![own_certificate(certificate, provider.as_ref())?]);
        if !certificate.trust_anchors.is_empty() {
            builder = builder
                .with_client_auth(ClientAuthType::RequireAndVerifyClientCert)
                .with_client_cas(trust_store(&certificate.trust_anchors)?);
        }
    }
    if suites.is_empty() {
        return Err(DtlsError::Config(
            "a server needs a PSK store, a certificate or both".into(),
        ));
    }
    builder
        .with_cipher_suites(suites)
        .with_crypto_provider(provider)
        .build(false, None)
        .map_err(|e| DtlsError::Config(e.to_string()))
}

pub(crate) fn provider() -> Result<Arc<dyn RTCCryptoProvider>, DtlsError> {
    rtc_dtls::crypto_provider::default_provider().map_err(|e| DtlsError::Config(e.to_string()))
}

fn own_certificate(
    config: &CertificateConfig,
    provider: &dyn RTCCryptoProvider,
) -> Result<Certificate, DtlsError> {
    if config.chain.is_empty() {
        return Err(DtlsError::Config("the certificate chain is empty".into()));
    }
    let key = provider
        .crypto()
        .import_signing_key(SignatureScheme::EcdsaP256Sha256, &config.private_key)
        .map_err(|e| DtlsError::Config(format!("private key (PKCS#8 ECDSA P-256): {e}")))?;
    let chain = config
        .chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    Ok(Certificate::from_signing_key(chain, key))
}

/// The trust anchors of a PSK-only client: never consulted (a PSK handshake carries no
/// certificate, and the client offers no other suite), but rtc-dtls makes a P-256 key and a
/// self-signed root for every configuration built without any. One made per process
/// instead: a fleet builds a configuration per client.
fn psk_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(rtc_dtls::config::gen_self_signed_root_cert)
        .clone()
}

fn trust_store(anchors: &[Vec<u8>]) -> Result<RootCertStore, DtlsError> {
    let mut store = RootCertStore::empty();
    for der in anchors {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| DtlsError::Config(format!("trust anchor: {e}")))?;
    }
    Ok(store)
}

/// The subject common name of a DER certificate (RFC 5280 §4.1.2.6), if it has one.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = certificate.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
