//! The scenario file (`scenarios/*.yaml`, `scenarios/experiments/*.yaml`): what to start,
//! which clients, and a timeline of actions. Unknown keys are refused; every error names the
//! file, the line and the key (design convention 10).
//!
//! ```yaml
//! name: quickstart                  # letters, digits, '.', '_', '-' (the report folder)
//! description: ...                  # optional
//! seed: 42                          # optional, default 1; `run --seed` overrides it
//! duration: 30s                     # from the start of the fleet to the stop
//! servers:                          # optional; both default to `in-process`
//!   server: in-process              # or coap://HOST:PORT, coaps://HOST:PORT (an external
//!                                   # LwM2M Server; coaps: every group has `security`, and
//!                                   # `run --export-credentials` gives the keys to load)
//!   bootstrap: in-process           # or coap://HOST:PORT, or none
//!   queue_awake_time: 93s           # how long the in-process server deems a queue-mode
//!                                   # client awake after its last message (Core TS 1.1 §6.5)
//!   dtls:                           # optional: DTLS 1.2 listeners (RFC 6347, Core TS 1.1 §7.1)
//!     server: true                  # the in-process LwM2M Server also listens for coaps://
//!     bootstrap: false              # the in-process Bootstrap Server too (bootstrap over
//!                                   # coaps://; needs servers.bootstrap: in-process)
//!     handshake_timeout: 10s        # longest handshake (flights repeat every second)
//! bootstrap:                        # optional bootstrap configurations (Core TS 1.1 §6.1.7)
//!   patterns:                       # fallback by endpoint-name pattern; `{ep}` is the
//!     "*":                          # endpoint name, `{server}` the LwM2M Server's HOST:PORT
//!       security: { 0: { uri: "coap://{server}", mode: nosec, short_server_id: 1 } }
//!       servers: { 0: { short_server_id: 1, lifetime: 300 } }
//!   endpoints: {}                   # by endpoint name
//! fleet:
//!   - name: meters                  # endpoints are meters-0, meters-1, ...
//!     profile: wakaama-like         # a name under scenarios/profiles/, or a .yaml path
//!     count: 600
//!     ramp: 400                     # clients started per second (default: all at once)
//!     network: home-nat             # a name under scenarios/networks/, or a .yaml path
//!     bootstrap: true               # client-initiated bootstrap first (Core TS 1.1 §6.1.4)
//!   - name: secure
//!     profile: sensor-1.1
//!     count: 50
//!     security:                     # coaps:// to the LwM2M Server's DTLS listener
//!       mode: psk                   # Security Mode 0, TLS_PSK_WITH_AES_128_CCM_8 (§7.1.7)
//!       identity: "{ep}"            # per client: `{ep}` endpoint name, `{n}` client number
//!       key_seed: 7                 # 16-byte keys from this seed and the identity
//!                                   # (default: the run's seed); the in-process server's
//!                                   # security store holds every client's key
//!   - name: certified
//!     profile: wakaama-like
//!     count: 10
//!     security: { mode: x509 }      # Security Mode 2: a certificate per client from the
//!                                   # run's test CA, CN the endpoint name (§7.1.8); with
//!                                   # bootstrap, another for the Bootstrap Server; `ca`,
//!                                   # `ca_key` (files): a CA of your own issues them
//!                                   # (external servers); `server_ca`: the server's anchor
//!   - name: secure-bs
//!     profile: wakaama-like
//!     count: 20
//!     bootstrap: true               # bootstraps over DTLS (servers.dtls.bootstrap: true)
//!     security:
//!       mode: psk
//!       identity: "{ep}"            # the LwM2M Server PSK the Bootstrap Server hands out
//!       bootstrap_identity: "bs-{ep}"  # the factory bootstrap-server account's PSK
//!                                   # (default "bs-{ep}"; its key from the same seed)
//! compare: thesis-2017              # optional: print the 2017 thesis's whole-device read
//!                                   # figures beside the first group's sample client
//! timeline:
//!   - { at: 5s, action: read, group: meters, path: /3/0, format: tlv }
//!   - { at: 6s, action: write, group: meters, path: /1/0/1, value: 120 }
//!   - { at: 8s, action: nat-timeout, group: meters, clients: 100 }
//! ```
//!
//! Actions: `read`, `discover`, `observe` (a path, or a list of paths done one after the
//! other per client), `write` (`value`: a scalar at a resource, a map of resource id to value
//! at an instance), `execute` (`value`: the argument text, optional), `create` (`path` /O or
//! /O/I, `value` a map of resource id to value), `delete` (/O/I), and for the fleet
//! `nat-timeout`, `sleep` (`duration`), `wake`, `update`. Every action takes `clients` (the
//! first N of the group; default all), `expect` (the CoAP code every client must answer;
//! defaults per operation), `timeout` (per client, default 30s) and `title`.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lwm2m_dtls::pki::TestCa;
use lwm2m_proto::coap::uri::{CoapUriError, split_coap_uri};
use lwm2m_proto::content::ContentFormat;
use lwm2m_proto::node::Node;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::Operation;
use lwm2m_proto::{InstanceId, Lwm2mPath};
use lwm2m_server::store::BootstrapDoc;
use lwm2m_simulator::config::{ConfigError, Origin, file_stem};
use lwm2m_simulator::fleet::{ProfileClients, PskPattern, Shard, Targets};
use lwm2m_simulator::network::{NetworkModel, load_network};
use lwm2m_simulator::profile::{Profile, load_profile};
use lwm2m_simulator::quirks::{QuirkPacks, load_quirk_pack};
use lwm2m_simulator::scenarios::yaml_files;
use serde::de::{self, Deserializer, Visitor};

mod position;
pub use position::locate;

/// A scenario file as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name; the report folder ends with it.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// The seed of every random choice (design convention 9).
    #[serde(default = "one")]
    pub seed: u64,
    /// From the start of the fleet until it is stopped.
    #[serde(with = "lwm2m_simulator::duration")]
    pub duration: Duration,
    /// The LwM2M Server and the Bootstrap Server.
    #[serde(default)]
    pub servers: Servers,
    /// Processes the run starts first and ends (by PID) when it is over: external
    /// servers, a Redis, a cluster of `serve` instances.
    #[serde(default)]
    pub processes: Vec<ProcessSpec>,
    /// Bootstrap configurations for the in-process Bootstrap Server.
    #[serde(default)]
    pub bootstrap: Option<BootstrapDoc>,
    /// The groups of simulated clients.
    pub fleet: Vec<Group>,
    /// What happens when.
    #[serde(default)]
    pub timeline: Vec<Action>,
    /// Published figures the report prints beside the first group's sample client.
    #[serde(default)]
    pub compare: Option<Reference>,
}

/// Published figures a run can be compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Reference {
    /// The whole-device read of the 2017 thesis (Leshan server, Wakaama client, DTLS
    /// PSK: requests 85 bytes, responses 99-232, 1775 in all, ~857 per handshake;
    /// [`crate::report::dtls::thesis`]).
    #[serde(rename = "thesis-2017")]
    Thesis2017,
}

fn one() -> u64 {
    1
}

/// A process a run starts ([`Scenario::processes`]), each in its own process (its
/// output in the run folder's `processes/NAME.log`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// A name (the log file's).
    pub name: String,
    /// The program and its arguments; `{bin}` stands for this harness binary, `{run}`
    /// for the run folder.
    pub command: Vec<String>,
    /// Text the process prints on stdout or stderr once it is ready; the run waits for it
    /// (30 s at most). Without it, the run goes on at once.
    #[serde(default)]
    pub ready: Option<String>,
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Started by the run, on 127.0.0.1 and a free port.
    InProcess,
    /// Already running at this address: `coap://HOST:PORT`, or with `secure`
    /// `coaps://HOST:PORT` (CoAP over DTLS; the groups' PSKs must be loaded into it first,
    /// `run --export-credentials`).
    External {
        /// Where it listens.
        addr: SocketAddr,
        /// `coaps://`.
        secure: bool,
    },
    /// No such server (bootstrap only).
    None,
}

impl<'de> serde::Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "in-process" => Ok(Self::InProcess),
            "none" => Ok(Self::None),
            uri if !uri.starts_with("coap://") && !uri.starts_with("coaps://") => {
                Err(de::Error::custom(format!(
                    "{uri:?}: expected `in-process`, `none`, coap://HOST:PORT or coaps://HOST:PORT"
                )))
            }
            uri => parse_coap_uri(uri)
                .map(|(addr, secure)| Self::External { addr, secure })
                .map_err(de::Error::custom),
        }
    }
}

/// Why a server's URI gives no address to send to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// Not a `coap://` or `coaps://` URI.
    #[error(transparent)]
    Shape(#[from] CoapUriError),
    /// The host name does not resolve.
    #[error("{uri:?}: {reason}")]
    Resolve {
        /// The URI.
        uri: String,
        /// The resolver's error.
        reason: String,
    },
    /// The host name resolves to no address.
    #[error("{uri:?} resolves to no address")]
    NoAddress {
        /// The URI.
        uri: String,
    },
}

/// `coap://HOST[:PORT]` to a socket address (port 5683 by default, IPv4 preferred) and
/// false, `coaps://HOST[:PORT]` (port 5684) to one and true: the URI is taken apart by
/// [`split_coap_uri`], the host resolved here. (Not
/// [`lwm2m_proto::client::parse_coap_uri`]: that one, sans-IO, takes IP literals only;
/// scenarios and `simulate --server` also name hosts.)
pub fn parse_coap_uri(uri: &str) -> Result<(SocketAddr, bool), UriError> {
    let parts = split_coap_uri(uri)?;
    let addrs: Vec<SocketAddr> = (parts.host, parts.port)
        .to_socket_addrs()
        .map_err(|e| UriError::Resolve {
            uri: uri.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| (*a, parts.secure))
        .ok_or_else(|| UriError::NoAddress {
            uri: uri.to_owned(),
        })
}

/// The servers of a run.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Servers {
    /// The LwM2M Server.
    #[serde(default = "in_process")]
    pub server: Target,
    /// The LwM2M Bootstrap Server.
    #[serde(default = "in_process")]
    pub bootstrap: Target,
    /// How long the in-process server deems a queue-mode client awake after its last
    /// message; requests wait in its queue after that (Core TS 1.1 §6.5).
    #[serde(default = "awake_time", with = "lwm2m_simulator::duration")]
    pub queue_awake_time: Duration,
    /// DTLS listeners of the in-process servers.
    #[serde(default)]
    pub dtls: Option<DtlsListeners>,
}

/// Which in-process servers also listen for CoAP over DTLS (RFC 7252 §9, RFC 6347), with
/// the keys of the groups' `security` in their security store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtlsListeners {
    /// The LwM2M Server listens on a second socket for `coaps://` (default true).
    #[serde(default = "yes")]
    pub server: bool,
    /// The in-process Bootstrap Server listens on a second socket for `coaps://` too
    /// (default false): groups with `bootstrap` and `security` bootstrap over it.
    #[serde(default)]
    pub bootstrap: bool,
    /// Longest DTLS handshake (RFC 6347 §4.2.4; default 10 s).
    #[serde(default = "handshake_timeout", with = "lwm2m_simulator::duration")]
    pub handshake_timeout: Duration,
}

fn yes() -> bool {
    true
}

fn handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Servers {
    /// True when the in-process LwM2M Server listens for DTLS.
    pub fn server_dtls(&self) -> bool {
        self.server == Target::InProcess && self.dtls.as_ref().is_some_and(|d| d.server)
    }

    /// True when the in-process Bootstrap Server listens for DTLS.
    pub fn bootstrap_dtls(&self) -> bool {
        self.bootstrap == Target::InProcess && self.dtls.as_ref().is_some_and(|d| d.bootstrap)
    }
}

impl Servers {
    /// True when no server is external (a bootstrap server of `none` counts as absent).
    pub fn all_in_process(&self) -> bool {
        !matches!(self.server, Target::External { .. })
            && !matches!(self.bootstrap, Target::External { .. })
    }

    /// True when the LwM2M Server is external and `coaps://`.
    pub fn external_secure(&self) -> bool {
        matches!(self.server, Target::External { secure: true, .. })
    }
}

fn in_process() -> Target {
    Target::InProcess
}

fn awake_time() -> Duration {
    Duration::from_secs(93)
}

impl Default for Servers {
    fn default() -> Self {
        Self {
            server: Target::InProcess,
            bootstrap: Target::InProcess,
            queue_awake_time: awake_time(),
            dtls: None,
        }
    }
}

/// A group of clients of one profile.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The group's name (cases and counters use it).
    pub name: String,
    /// A profile name under `profiles/`, or a `.yaml` path relative to the scenario file.
    pub profile: String,
    /// How many clients.
    pub count: usize,
    /// Clients started per second; all at once when absent.
    #[serde(default)]
    pub ramp: Option<f64>,
    /// A network model name under `networks/`, or a `.yaml` path; a perfect network when
    /// absent.
    #[serde(default)]
    pub network: Option<String>,
    /// The clients bootstrap first (their factory server account is removed).
    #[serde(default)]
    pub bootstrap: bool,
    /// Endpoint names are this prefix and the client number (default `NAME-`).
    #[serde(default)]
    pub endpoint_prefix: Option<String>,
    /// UDP sockets the group's clients share.
    #[serde(default = "sockets")]
    pub sockets: usize,
    /// The clients talk CoAP over DTLS with credentials of their own.
    #[serde(default)]
    pub security: Option<GroupSecurity>,
    /// This group's LwM2M Server, `coap://HOST:PORT`, instead of the scenario's (e.g. one
    /// instance of a cluster each, as a load balancer would spread them).
    #[serde(default)]
    pub server: Option<String>,
}

/// How a group's clients secure their LwM2M Server account (Core TS 1.1 §7.1, Security
/// object resource 2 "Security Mode").
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSecurity {
    /// The security mode.
    pub mode: SecurityMode,
    /// The PSK identity pattern: `{ep}` is the endpoint name, `{n}` the client number
    /// (default `{ep}`; PSK only: a certificate's identity is its subject CN, the endpoint
    /// name).
    #[serde(default)]
    pub identity: Option<String>,
    /// The PSK identity pattern of the factory bootstrap-server account, for a group that
    /// bootstraps (default `bs-{ep}`); its key comes from `key_seed` and this identity. The
    /// Bootstrap Server then hands out the LwM2M Server account with `identity`'s PSK.
    #[serde(default)]
    pub bootstrap_identity: Option<String>,
    /// The seed of the 16-byte keys (default: the run's seed).
    #[serde(default)]
    pub key_seed: Option<u64>,
    /// Certificate groups: the CA certificate (PEM or DER, a path relative to the scenario
    /// file) that issues the clients' certificates instead of the run's test CA: the one
    /// an external server trusts. Needs `ca_key`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The `ca` certificate's private key (PKCS#8, PEM or DER).
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    /// The certificate the server's chain must lead to (default: the run's test CA with
    /// the in-process server, `ca` with an external one).
    #[serde(default)]
    pub server_ca: Option<PathBuf>,
}

fn endpoint_pattern() -> String {
    "{ep}".to_owned()
}

fn bootstrap_pattern() -> String {
    "bs-{ep}".to_owned()
}

/// Security modes a group can use (Core TS 1.1 Appendix E.1, resource /0/x/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityMode {
    /// Mode 0, pre-shared key: TLS_PSK_WITH_AES_128_CCM_8 (Core TS 1.1 §7.1.7).
    Psk,
    /// Mode 2, certificate: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (Core TS 1.1 §7.1.8), each
    /// client's certificate issued by the run's test CA with the endpoint name as its
    /// subject CN.
    X509,
}

fn sockets() -> usize {
    4
}

impl Group {
    /// The endpoint name prefix.
    pub fn prefix(&self) -> String {
        self.endpoint_prefix
            .clone()
            .unwrap_or_else(|| format!("{}-", self.name))
    }
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Read (Core TS 1.1 §5.4.1).
    Read,
    /// Discover (Core TS 1.1 §5.4.2).
    Discover,
    /// Write (Core TS 1.1 §5.4.3).
    Write,
    /// Execute (Core TS 1.1 §5.4.5).
    Execute,
    /// Create (Core TS 1.1 §5.4.6).
    Create,
    /// Delete (Core TS 1.1 §5.4.7).
    Delete,
    /// Observe (Core TS 1.1 §5.5.1).
    Observe,
    /// The clients' NAT mappings expire now.
    NatTimeout,
    /// The clients' radios go off for `duration`.
    Sleep,
    /// The clients wake up now (and send an Update).
    Wake,
    /// The clients send an Update now (Core TS 1.1 §6.2.2).
    Update,
}

impl ActionKind {
    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Discover => "discover",
            Self::Write => "write",
            Self::Execute => "execute",
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Observe => "observe",
            Self::NatTimeout => "nat-timeout",
            Self::Sleep => "sleep",
            Self::Wake => "wake",
            Self::Update => "update",
        }
    }

    fn is_request(self) -> bool {
        matches!(
            self,
            Self::Read
                | Self::Discover
                | Self::Write
                | Self::Execute
                | Self::Create
                | Self::Delete
                | Self::Observe
        )
    }

    /// The success code of the operation (Core TS 1.1 §5.4, §5.5).
    fn default_expect(self) -> (u8, u8) {
        match self {
            Self::Read | Self::Discover | Self::Observe => (2, 5),
            Self::Create => (2, 1),
            Self::Delete => (2, 2),
            _ => (2, 4),
        }
    }
}

/// One or more paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Paths(pub Vec<Lwm2mPath>);

impl<'de> serde::Deserialize<'de> for Paths {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PathsVisitor;
        impl<'de> Visitor<'de> for PathsVisitor {
            type Value = Paths;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an LwM2M path such as /3/0, or a list of paths")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Paths, E> {
                v.parse()
                    .map(|p| Paths(vec![p]))
                    .map_err(|e| E::custom(format!("{v:?}: {e}")))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Paths, A::Error> {
                let mut out = Vec::new();
                while let Some(p) = seq.next_element::<Lwm2mPath>()? {
                    out.push(p);
                }
                Ok(Paths(out))
            }
        }
        d.deserialize_any(PathsVisitor)
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    lwm2m_simulator::duration::deserialize(d).map(Some)
}

/// One entry of the timeline.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// When, from the start of the fleet.
    #[serde(with = "lwm2m_simulator::duration")]
    pub at: Duration,
    /// What.
    pub action: ActionKind,
    /// To which group.
    pub group: String,
    /// The first N clients of the group (default all).
    #[serde(default)]
    pub clients: Option<usize>,
    /// The target path(s) of a request.
    #[serde(default)]
    pub path: Option<Paths>,
    /// The Content-Format (`tlv`, `senml-cbor`, ... or a number); default: the best the
    /// client announced.
    #[serde(default)]
    pub format: Option<String>,
    /// The value of a write or create, the arguments of an execute.
    #[serde(default)]
    pub value: Option<serde_yaml::Value>,
    /// How long a `sleep` lasts.
    #[serde(default, deserialize_with = "opt_duration")]
    pub duration: Option<Duration>,
    /// The CoAP code every client must answer, e.g. "2.05".
    #[serde(default)]
    pub expect: Option<serde_yaml::Value>,
    /// How long each client may take (the whole path list for a list).
    #[serde(default = "timeout", with = "lwm2m_simulator::duration")]
    pub timeout: Duration,
    /// The case title in the report (default: made from the action).
    #[serde(default)]
    pub title: Option<String>,
}

fn timeout() -> Duration {
    Duration::from_secs(30)
}

/// A group ready to run.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// As written.
    pub spec: Group,
    /// Its profile.
    pub profile: Profile,
    /// Its network model (name, model).
    pub network: (String, NetworkModel),
    /// The CA of `security.ca` and `security.ca_key`, loaded.
    pub ca: Option<Arc<TestCa>>,
    /// The certificate of `security.server_ca` (DER), loaded.
    pub server_ca: Option<Vec<u8>>,
}

impl GroupPlan {
    /// The group's PSK credentials towards the LwM2M Server in a run seeded with `seed`,
    /// if it uses PSK.
    pub fn psk(&self, seed: u64) -> Option<PskPattern> {
        let security = self.spec.security.as_ref()?;
        match security.mode {
            SecurityMode::Psk => Some(PskPattern {
                identity: security.identity.clone().unwrap_or_else(endpoint_pattern),
                seed: security.key_seed.unwrap_or(seed),
            }),
            SecurityMode::X509 => None,
        }
    }

    /// True when the group's clients have certificates (Security Mode 2).
    pub fn certificates(&self) -> bool {
        self.spec
            .security
            .as_ref()
            .is_some_and(|s| s.mode == SecurityMode::X509)
    }

    /// The group's PSK credentials towards the Bootstrap Server (its factory
    /// bootstrap-server account), if it uses PSK and bootstraps.
    pub fn bootstrap_psk(&self, seed: u64) -> Option<PskPattern> {
        let security = self
            .spec
            .security
            .as_ref()
            .filter(|_| self.spec.bootstrap)?;
        let psk = self.psk(seed)?;
        Some(PskPattern {
            identity: security
                .bootstrap_identity
                .clone()
                .unwrap_or_else(bootstrap_pattern),
            ..psk
        })
    }

    /// The clients' maker, pointed at `targets`.
    pub fn clients(
        &self,
        registry: &Registry,
        targets: Targets,
    ) -> Result<ProfileClients, ConfigError> {
        Ok(ProfileClients::new(
            self.profile.clone(),
            registry,
            self.network.1.clone(),
            targets,
        )?
        .with_endpoint_prefix(&self.spec.prefix()))
    }
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Requests from the LwM2M Server, one after the other per client.
    Requests(Vec<Operation>),
    /// NAT mappings expire.
    NatTimeout,
    /// Radios off for a while.
    Sleep(Duration),
    /// Wake up.
    Wake,
    /// Send an Update.
    Update,
}

/// A timeline entry ready to run.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position in the timeline.
    pub number: usize,
    /// When.
    pub at: Duration,
    /// The action as written.
    pub action: ActionKind,
    /// Index of the group.
    pub group: usize,
    /// How many clients (the first of the group).
    pub clients: usize,
    /// What to do.
    pub kind: StepKind,
    /// The code each request must be answered with.
    pub expect: (u8, u8),
    /// Per client.
    pub timeout: Duration,
    /// Case title.
    pub title: String,
}

/// A scenario loaded, checked and resolved: profiles and networks read, operations built.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario file.
    pub file: PathBuf,
    /// As written.
    pub scenario: Scenario,
    /// The groups, in order.
    pub groups: Vec<GroupPlan>,
    /// The timeline, in order of `at` (stable).
    pub steps: Vec<Step>,
}

/// The folder with `profiles/`, `networks/` and `quirks/`: the nearest one at or above the
/// scenario file's folder, else the file's folder.
pub fn scenarios_root(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("."));
    dir.ancestors()
        .find(|d| d.join("profiles").is_dir())
        .unwrap_or(dir)
        .to_owned()
}

impl Plan {
    /// Reads, checks and resolves the scenario at `file`; `registry` types written values.
    pub fn load(file: &Path, registry: &Registry) -> Result<Self, ConfigError> {
        let origin = lwm2m_simulator::config::read(file)?;
        let scenario: Scenario = origin.parse()?;
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
            file: file.to_owned(),
            source,
        })?;
        Checker {
            origin: &origin,
            text: &text,
            file,
            root: scenarios_root(file),
            registry,
        }
        .plan(scenario)
    }

    /// Every endpoint of group `g` in `shard` (one shard of one: the whole group), in
    /// client order.
    pub fn endpoints(&self, g: usize, shard: Shard) -> Vec<String> {
        self.groups.get(g).map_or_else(Vec::new, |gp| {
            let prefix = gp.spec.prefix();
            shard
                .numbers(gp.spec.count as u64)
                .map(|n| format!("{prefix}{n}"))
                .collect()
        })
    }

    /// Why this scenario cannot run as shards (`run --shard`), if it cannot: N shards are
    /// one fleet only when they all talk to the same servers, and an in-process server
    /// would be one per shard, each with a part of the clients.
    pub fn shard_refusal(&self) -> Option<String> {
        let servers = &self.scenario.servers;
        if servers.server == Target::InProcess {
            return Some(
                "the scenario's LwM2M Server is in-process (servers.server): each shard would \
                 run a server of its own for its part of the fleet; give the server \
                 everyone registers with as servers.server: coap://HOST:PORT (or coaps://)"
                    .to_owned(),
            );
        }
        if servers.bootstrap == Target::InProcess
            && let Some(g) = self.groups.iter().find(|g| g.spec.bootstrap)
        {
            return Some(format!(
                "group {} bootstraps from the in-process Bootstrap Server (servers.bootstrap): \
                 each shard would run a Bootstrap Server of its own; give an external one \
                 (coap://HOST:PORT)",
                g.spec.name
            ));
        }
        None
    }

    /// All clients of the run.
    pub fn clients(&self) -> usize {
        self.groups.iter().map(|g| g.spec.count).sum()
    }
}

struct Checker<'a> {
    origin: &'a Origin,
    text: &'a str,
    file: &'a Path,
    root: PathBuf,
    registry: &'a Registry,
}

impl Checker<'_> {
    fn err(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        let (line, column) = locate(self.text, key);
        ConfigError::Invalid {
            file: self.origin.file().to_owned(),
            line,
            column,
            message: format!("{key}: {message}"),
        }
    }

    fn plan(&self, s: Scenario) -> Result<Plan, ConfigError> {
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(self.err(
                "name",
                format!(
                    "{:?}: use letters, digits, '.', '_' and '-' (it names the report folder)",
                    s.name
                ),
            ));
        }
        if s.duration.is_zero() {
            return Err(self.err("duration", "must be longer than 0s"));
        }
        if s.servers.server == Target::None {
            return Err(self.err(
                "servers.server",
                "a run needs an LwM2M Server: `in-process`, coap://HOST:PORT or coaps://HOST:PORT",
            ));
        }
        if matches!(s.servers.bootstrap, Target::External { secure: true, .. }) {
            return Err(self.err(
                "servers.bootstrap",
                "an external coaps:// Bootstrap Server is not supported in scenarios (`simulate --bootstrap coaps://` is); use coap://, in-process or none",
            ));
        }
        if let Some(dtls) = &s.servers.dtls {
            if s.servers.server != Target::InProcess && dtls.server {
                return Err(self.err(
                    "servers.dtls.server",
                    "only the in-process LwM2M Server can be given a DTLS listener",
                ));
            }
            if s.servers.bootstrap != Target::InProcess && dtls.bootstrap {
                return Err(self.err(
                    "servers.dtls.bootstrap",
                    "only the in-process Bootstrap Server can be given a DTLS listener",
                ));
            }
            if dtls.handshake_timeout.is_zero() {
                return Err(self.err("servers.dtls.handshake_timeout", "must be longer than 0s"));
            }
        }
        if s.bootstrap.is_some() && s.servers.bootstrap != Target::InProcess {
            return Err(self.err(
                "bootstrap",
                "bootstrap configurations are for the in-process Bootstrap Server",
            ));
        }
        if s.fleet.is_empty() || s.fleet.len() > 126 {
            return Err(self.err(
                "fleet",
                "1 to 126 client groups (each gets its own 127.G.0.0/16 addresses)",
            ));
        }
        let mut packs: Vec<(PathBuf, QuirkPacks)> = Vec::new();
        let mut names = HashSet::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut groups = Vec::new();
        for (i, g) in s.fleet.iter().enumerate() {
            let key = |k: &str| format!("fleet.{i}.{k}");
            if !names.insert(g.name.clone()) {
                return Err(self.err(&key("name"), format!("group {:?} twice", g.name)));
            }
            if g.count == 0 {
                return Err(self.err(&key("count"), "at least 1 client"));
            }
            if g.ramp.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(self.err(&key("ramp"), "clients per second: a positive number"));
            }
            if g.sockets == 0 {
                return Err(self.err(&key("sockets"), "at least 1 socket"));
            }
            if g.security.is_none() && s.servers.external_secure() {
                return Err(self.err(
                    &key("security"),
                    "the LwM2M Server is coaps://: the group needs `security` (mode: psk)",
                ));
            }
            if let Some(security) = &g.security {
                if !s.servers.server_dtls() && !s.servers.external_secure() {
                    return Err(self.err(
                        &key("security"),
                        match s.servers.server {
                            Target::External { .. } => {
                                "the group talks DTLS: give the external server as coaps://HOST:PORT"
                            }
                            _ => {
                                "the group talks DTLS: give the in-process server a listener (servers: { dtls: { server: true } })"
                            }
                        },
                    ));
                }
                if g.bootstrap && !s.servers.bootstrap_dtls() {
                    return Err(self.err(
                        &key("bootstrap"),
                        "the group bootstraps over DTLS: give the in-process Bootstrap Server a listener (servers: { dtls: { bootstrap: true } })",
                    ));
                }
                let own = |k: &str, pattern: &str| {
                    if pattern.contains("{ep}") || pattern.contains("{n}") {
                        Ok(())
                    } else {
                        Err(self.err(
                            &key(k),
                            format!(
                                "{pattern:?}: every client needs an identity of its own: put {{ep}} or {{n}} in it"
                            ),
                        ))
                    }
                };
                if security.mode == SecurityMode::X509 {
                    let refused = [
                        (
                            security.identity.is_some(),
                            "security.identity",
                            "a certificate client's identity is its certificate's subject CN, the endpoint name",
                        ),
                        (
                            security.key_seed.is_some(),
                            "security.key_seed",
                            "certificate keys are made with the run's test CA, not from a seed",
                        ),
                        (
                            security.bootstrap_identity.is_some(),
                            "security.bootstrap_identity",
                            "a certificate client's identity toward the Bootstrap Server is its certificate's subject CN too",
                        ),
                        (
                            s.servers.external_secure() && security.ca.is_none(),
                            "security.mode",
                            "against an external server a certificate group needs `ca` and `ca_key`: the CA that server trusts (the run's own test CA is made for the run)",
                        ),
                        (
                            security.ca.is_some() != security.ca_key.is_some(),
                            if security.ca.is_some() {
                                "security.ca"
                            } else {
                                "security.ca_key"
                            },
                            "`ca` and `ca_key` go together",
                        ),
                    ];
                    if let Some((_, at, why)) = refused.into_iter().find(|(bad, _, _)| *bad) {
                        return Err(self.err(&key(at), why));
                    }
                }
                if security.mode == SecurityMode::Psk {
                    for (given, at) in [
                        (security.ca.is_some(), "security.ca"),
                        (security.ca_key.is_some(), "security.ca_key"),
                        (security.server_ca.is_some(), "security.server_ca"),
                    ] {
                        if given {
                            return Err(self.err(&key(at), "for certificate groups (mode: x509)"));
                        }
                    }
                }
                let identity = security.identity.clone().unwrap_or_else(endpoint_pattern);
                own("security.identity", &identity)?;
                if security.bootstrap_identity.is_some() && !g.bootstrap {
                    return Err(self.err(
                        &key("security.bootstrap_identity"),
                        "the group does not bootstrap (bootstrap: true)",
                    ));
                }
                if g.bootstrap {
                    let bs = security
                        .bootstrap_identity
                        .clone()
                        .unwrap_or_else(bootstrap_pattern);
                    own("security.bootstrap_identity", &bs)?;
                    if bs == identity {
                        let (at, other) = match security.bootstrap_identity {
                            Some(_) => ("security.bootstrap_identity", "identity"),
                            None => ("security.identity", "bootstrap_identity (default)"),
                        };
                        return Err(self.err(
                            &key(at),
                            format!(
                                "{bs:?}: the same as {other}: the Bootstrap Server and the LwM2M Server need credentials of their own"
                            ),
                        ));
                    }
                }
            }
            if g.bootstrap && s.servers.bootstrap == Target::None {
                return Err(self.err(
                    &key("bootstrap"),
                    "the group bootstraps but servers.bootstrap is none",
                ));
            }
            let prefix = g.prefix();
            if let Some(other) = prefixes
                .iter()
                .find(|p| p.starts_with(&prefix) || prefix.starts_with(p.as_str()))
            {
                return Err(self.err(
                    &key("name"),
                    format!("endpoint prefix {prefix:?} overlaps {other:?} of another group"),
                ));
            }
            prefixes.push(prefix);
            let profile_file = self.find(&g.profile, "profiles", &key("profile"))?;
            // Quirk packs come from the profile's own scenarios folder.
            let root = scenarios_root(&profile_file);
            let at = match packs.iter().position(|(r, _)| *r == root) {
                Some(at) => at,
                None => {
                    packs.push((root.clone(), quirk_packs(&root)?));
                    packs.len() - 1
                }
            };
            let known = packs.get(at).map(|(_, p)| p.clone()).unwrap_or_default();
            let profile = load_profile(&profile_file, &known)?;
            let network = match &g.network {
                Some(n) => {
                    let f = self.find(n, "networks", &key("network"))?;
                    (file_stem(&f), load_network(&f)?.1)
                }
                None => ("perfect".to_owned(), NetworkModel::default()),
            };
            let (ca, server_ca) = self.certificates(g, &key)?;
            let plan = GroupPlan {
                spec: g.clone(),
                profile,
                network,
                ca,
                server_ca,
            };
            // Types the profile against the registry now, so its errors come before the run.
            plan.clients(self.registry, Targets::default())?;
            groups.push(plan);
        }
        let mut steps = s
            .timeline
            .iter()
            .enumerate()
            .map(|(i, a)| self.step(&s, &groups, i, a))
            .collect::<Result<Vec<_>, _>>()?;
        steps.sort_by_key(|st| st.at);
        Ok(Plan {
            file: self.file.to_owned(),
            scenario: s,
            groups,
            steps,
        })
    }

    /// A group's own CA and server trust anchor (`security.ca`, `ca_key`, `server_ca`),
    /// read from files relative to the scenario file.
    #[allow(clippy::type_complexity)]
    fn certificates(
        &self,
        g: &Group,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(Option<Arc<TestCa>>, Option<Vec<u8>>), ConfigError> {
        let Some(security) = &g.security else {
            return Ok((None, None));
        };
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let read = |path: &Path, labels: &[&str], at: &str| {
            crate::der_block(&dir.join(path), labels)
                .map_err(|e| self.err(&key(at), format!("{e:#}")))
        };
        let ca = match (&security.ca, &security.ca_key) {
            (Some(cert), Some(private)) => {
                let der = read(cert, &["CERTIFICATE"], "security.ca")?;
                let private = read(private, &["PRIVATE KEY"], "security.ca_key")?;
                let ca = TestCa::from_der(&der, &private)
                    .map_err(|e| self.err(&key("security.ca_key"), e.to_string()))?;
                Some(Arc::new(ca))
            }
            _ => None,
        };
        let server_ca = match &security.server_ca {
            Some(path) => Some(read(path, &["CERTIFICATE"], "security.server_ca")?),
            None => None,
        };
        Ok((ca, server_ca))
    }

    /// A `.yaml` path relative to the scenario file, or a name under `root/folder`.
    fn find(&self, name: &str, folder: &str, key: &str) -> Result<PathBuf, ConfigError> {
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            let p = self.file.parent().unwrap_or(Path::new(".")).join(name);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(self.err(key, format!("{} does not exist", p.display())))
            };
        }
        let dir = self.root.join(folder);
        let files = if dir.is_dir() {
            yaml_files(&dir)?
        } else {
            Vec::new()
        };
        if let Some(f) = files.iter().find(|f| file_stem(f) == name) {
            return Ok(f.clone());
        }
        // The shipped ones, for a scenario outside a checkout's scenarios/.
        let shipped_folder = format!("scenarios/{folder}");
        let shipped = crate::shipped::names(&shipped_folder);
        if shipped.iter().any(|n| n == name) {
            let dir = crate::shipped::folder(&shipped_folder)
                .map_err(|e| self.err(key, format!("{e:#}")))?;
            return Ok(dir.join(format!("{name}.yaml")));
        }
        let mut known: Vec<String> = files.iter().map(|f| file_stem(f)).collect();
        known.extend(shipped);
        known.sort();
        known.dedup();
        Err(self.err(
            key,
            format!(
                "no {name:?} under {}, nor shipped (nor a .yaml path); known: {}",
                dir.display(),
                known.join(", ")
            ),
        ))
    }

    fn step(
        &self,
        s: &Scenario,
        groups: &[GroupPlan],
        i: usize,
        a: &Action,
    ) -> Result<Step, ConfigError> {
        let key = |k: &str| format!("timeline.{i}.{k}");
        let group = groups
            .iter()
            .position(|g| g.spec.name == a.group)
            .ok_or_else(|| {
                let known: Vec<&str> = groups.iter().map(|g| g.spec.name.as_str()).collect();
                self.err(
                    &key("group"),
                    format!("no group {:?} (groups: {})", a.group, known.join(", ")),
                )
            })?;
        let count = groups.get(group).map_or(0, |g| g.spec.count);
        let clients = a.clients.unwrap_or(count);
        if clients == 0 || clients > count {
            return Err(self.err(
                &key("clients"),
                format!("between 1 and the group's {count} clients"),
            ));
        }
        if a.at > s.duration {
            return Err(self.err(
                &key("at"),
                format!(
                    "{} is after the end of the run ({})",
                    lwm2m_simulator::duration::format(a.at),
                    lwm2m_simulator::duration::format(s.duration)
                ),
            ));
        }
        let format = match &a.format {
            None => None,
            Some(f) => Some(ContentFormat::from_name(f).ok_or_else(|| {
                self.err(
                    &key("format"),
                    format!("unknown format {f:?} (tlv, text, opaque, cbor, json, senml-json, senml-cbor, lwm2m-cbor, link, or a number)"),
                )
            })?),
        };
        let expect = match &a.expect {
            None => a.action.default_expect(),
            Some(v) => parse_code(v).ok_or_else(|| {
                self.err(&key("expect"), "a CoAP code such as \"2.05\" or \"4.04\"")
            })?,
        };
        if a.timeout.is_zero() {
            return Err(self.err(&key("timeout"), "must be longer than 0s"));
        }
        let unused = |field: &str, present: bool| {
            if present {
                Err(self.err(&key(field), format!("{} takes no {field}", a.action.name())))
            } else {
                Ok(())
            }
        };
        let paths = a.path.as_ref().map(|p| p.0.clone()).unwrap_or_default();
        if a.action.is_request() {
            if s.servers.server != Target::InProcess {
                return Err(self.err(
                    &key("action"),
                    format!(
                        "{} needs the in-process LwM2M Server: the harness cannot ask an external server to send requests",
                        a.action.name()
                    ),
                ));
            }
            if paths.is_empty() {
                return Err(self.err(&key("path"), format!("{} needs a path", a.action.name())));
            }
            unused("duration", a.duration.is_some())?;
        } else {
            unused("path", a.path.is_some())?;
            unused("format", a.format.is_some())?;
            unused("value", a.value.is_some())?;
            unused("expect", a.expect.is_some())?;
            if a.action != ActionKind::Sleep {
                unused("duration", a.duration.is_some())?;
            }
        }
        let kind = match a.action {
            ActionKind::NatTimeout => StepKind::NatTimeout,
            ActionKind::Wake => StepKind::Wake,
            ActionKind::Update => StepKind::Update,
            ActionKind::Sleep => {
                StepKind::Sleep(a.duration.filter(|d| !d.is_zero()).ok_or_else(|| {
                    self.err(&key("duration"), "sleep needs a duration, e.g. 10s")
                })?)
            }
            _ => StepKind::Requests(
                paths
                    .iter()
                    .map(|p| self.operation(a, *p, format, &key("path"), &key("value")))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let title = a.title.clone().unwrap_or_else(|| {
            let who = if clients == count {
                format!("all {count} clients of {}", a.group)
            } else {
                format!("{clients} of the {count} clients of {}", a.group)
            };
            let paths: Vec<String> = paths.iter().map(ToString::to_string).collect();
            match &kind {
                StepKind::Requests(_) => format!(
                    "{} {} on {who} answers {}",
                    a.action.name(),
                    paths.join(" "),
                    code_text(expect)
                ),
                StepKind::Sleep(d) => {
                    format!("{who} sleep for {}", lwm2m_simulator::duration::format(*d))
                }
                StepKind::NatTimeout => format!("NAT mappings of {who} expire"),
                StepKind::Wake => format!("{who} wake up"),
                StepKind::Update => format!("{who} send an Update the server receives"),
            }
        });
        Ok(Step {
            number: i + 1,
            at: a.at,
            action: a.action,
            group,
            clients,
            kind,
            expect,
            timeout: a.timeout,
            title,
        })
    }

    fn operation(
        &self,
        a: &Action,
        path: Lwm2mPath,
        format: Option<ContentFormat>,
        path_key: &str,
        value_key: &str,
    ) -> Result<Operation, ConfigError> {
        let json = a
            .value
            .as_ref()
            .map(|v| serde_json::to_value(v).map_err(|e| self.err(value_key, e)))
            .transpose()?;
        let depth = path.depth();
        let level = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(self.err(
                    path_key,
                    format!("{} targets {what}, not {path}", a.action.name()),
                ))
            }
        };
        Ok(match a.action {
            ActionKind::Read => Operation::Read { path, format },
            ActionKind::Discover => Operation::Discover { path },
            ActionKind::Observe => Operation::Observe { path, format },
            ActionKind::Delete => {
                level(depth == 2, "an instance (/O/I)")?;
                Operation::Delete { path }
            }
            ActionKind::Execute => {
                level(depth == 3, "a resource (/O/I/R)")?;
                let args = match json {
                    None => None,
                    Some(serde_json::Value::String(s)) => Some(s),
                    Some(_) => {
                        return Err(
                            self.err(value_key, "execute arguments are text, e.g. \"0='v',1\"")
                        );
                    }
                };
                Operation::Execute { path, args }
            }
            ActionKind::Write => {
                level(depth >= 2, "an instance, a resource or a resource instance")?;
                let json = json.ok_or_else(|| self.err(value_key, "write needs a value"))?;
                let node = self.node(path, &json, value_key)?;
                Operation::Write {
                    path,
                    node,
                    replace: true,
                    format,
                }
            }
            ActionKind::Create => {
                level(
                    depth == 1 || depth == 2,
                    "an object (/O) or an instance (/O/I)",
                )?;
                let json = json.ok_or_else(|| {
                    self.err(
                        value_key,
                        "create needs the resources: {resource id: value}",
                    )
                })?;
                let (object, instance) = match path {
                    Lwm2mPath::Instance(o, i) => (o, Some(i)),
                    Lwm2mPath::Object(o) => (o, None),
                    _ => return Err(self.err(path_key, "create targets /O or /O/I")),
                };
                let at = Lwm2mPath::Instance(object, instance.unwrap_or(InstanceId(0)));
                let Node::Instance(resources) = self.node(at, &json, value_key)? else {
                    return Err(self.err(value_key, "create needs {resource id: value}"));
                };
                Operation::Create {
                    object,
                    instance,
                    resources,
                    format,
                }
            }
            _ => return Err(self.err(path_key, "not a request")),
        })
    }

    /// The node a value stands for at `path`: a scalar (or a map of resource instance id to
    /// value) at a resource, a map of resource id to value at an instance.
    fn node(
        &self,
        path: Lwm2mPath,
        json: &serde_json::Value,
        key: &str,
    ) -> Result<Node, ConfigError> {
        let body = match (path, json) {
            (Lwm2mPath::Instance(..), serde_json::Value::Object(m)) => {
                let records: serde_json::Map<String, serde_json::Value> = m
                    .iter()
                    .map(|(k, v)| (format!("{path}/{k}"), v.clone()))
                    .collect();
                serde_json::Value::Object(records)
            }
            (Lwm2mPath::Instance(..), _) => {
                return Err(self.err(key, "at an instance, give {resource id: value, ...}"));
            }
            (_, v) => serde_json::json!({ "value": v }),
        };
        lwm2m_server::json::node_from(self.registry, &path, &body).map_err(|e| self.err(key, e))
    }
}

/// A CoAP code written as "2.05" (a YAML float 2.05 works too).
fn parse_code(v: &serde_yaml::Value) -> Option<(u8, u8)> {
    let text = match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => format!("{:.2}", n.as_f64()?),
        _ => return None,
    };
    let (c, d) = text.split_once('.')?;
    if d.len() != 2 {
        return None;
    }
    let (c, d): (u8, u8) = (c.parse().ok()?, d.parse().ok()?);
    ((2..=5).contains(&c) && d < 32).then_some((c, d))
}

/// `2.05`.
pub fn code_text((c, d): (u8, u8)) -> String {
    format!("{c}.{d:02}")
}

/// The quirk packs under `root/quirks/`.
fn quirk_packs(root: &Path) -> Result<QuirkPacks, ConfigError> {
    let mut packs = QuirkPacks::new();
    // The shipped packs first: the folder's own add to and override them.
    let shipped = crate::shipped::folder("scenarios/quirks").ok();
    for dir in shipped.into_iter().chain([root.join("quirks")]) {
        if dir.is_dir() {
            for f in yaml_files(&dir)? {
                let (name, pack) = load_quirk_pack(&f)?;
                packs.insert(name, pack);
            }
        }
    }
    Ok(packs)
}

/// Every scenario file: `*.yaml` directly in `dir` and under `dir/experiments/`.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for d in [dir.to_owned(), dir.join("experiments")] {
        if !d.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The bootstrap configurations to serve: the scenario's, or one fallback pattern `*`
/// that sends every client to the LwM2M Server (NoSec, Short Server ID 1, lifetime 300 s);
/// `{server}` in URIs becomes `server`.
pub fn bootstrap_doc(scenario: &Scenario, server: SocketAddr) -> BootstrapDoc {
    let mut doc = scenario.bootstrap.clone().unwrap_or_else(|| {
        let text = "patterns:\n  \"*\":\n    security:\n      0: { uri: \"coap://{server}\", mode: nosec, short_server_id: 1 }\n    servers:\n      0: { short_server_id: 1, lifetime: 300 }\n";
        BootstrapDoc::from_yaml("default bootstrap configuration", text).unwrap_or_default()
    });
    let addr = server.to_string();
    for config in doc.endpoints.values_mut().chain(doc.patterns.values_mut()) {
        for sec in config.security.values_mut() {
            sec.uri = sec.uri.replace("{server}", &addr);
        }
    }
    doc
}

#[cfg(test)]
mod tests;
