//! Clients of a device profile: the profile's template typed once against the registry,
//! then one [`ClientSpec`] per client with its own seeds, endpoint name and servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use lwm2m_proto::client::{ClientConfig, ObjectTree};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::value::Value;
use lwm2m_proto::{InstanceId, Lwm2mPath, ObjectDef, ObjectId, ResourceId, ResourceValue, coap};

use super::{ClientSpec, GeneratedResource};
use crate::config::ConfigError;
use crate::network::NetworkModel;
use crate::profile::{DeviceTemplate, Profile, ResourceSpec, instances_for};
use crate::seed;

/// The servers a client is configured with (factory configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    /// The LwM2M Server.
    pub server: Option<SocketAddr>,
    /// The LwM2M Bootstrap Server (client-initiated bootstrap, Core TS 1.1 §6.1.4).
    pub bootstrap: Option<SocketAddr>,
}

/// Makes the clients of one profile.
#[derive(Debug, Clone)]
pub struct ProfileClients {
    profile: Profile,
    template: DeviceTemplate,
    /// The period of each generated resource.
    periods: BTreeMap<Lwm2mPath, Duration>,
    network: NetworkModel,
    targets: Targets,
    endpoint_prefix: String,
    psk: Option<PskPattern>,
    /// The bootstrap account's identity pattern and its one key.
    bootstrap_psk: Option<(String, Vec<u8>)>,
    /// Add a bootstrap-server account when the profile has none.
    bootstrap_account: bool,
    /// The profile's objects with the template's values: every client's tree starts as a
    /// clone of it, so the objects a client never changes are one copy for all
    /// ([`ObjectTree`] shares objects between clones until one changes).
    base: ObjectTree,
}

/// Per-client PSK credentials generated from a pattern (Security Mode 0, Core TS 1.1
/// Appendix E.1: /0/x/3 identity, /0/x/5 key): the identity is [`PskPattern::identity`]
/// with `{n}` the client number and `{ep}` the endpoint name; the key is 16 bytes drawn
/// from ChaCha8 seeded with `seed` and the identity, so a server can be provisioned with
/// the same credentials without talking to the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PskPattern {
    /// The identity pattern, e.g. `ep-{n}` or `{ep}`.
    pub identity: String,
    /// The seed of every key.
    pub seed: u64,
}

impl PskPattern {
    /// The PSK identity of client `n` named `endpoint`.
    pub fn identity(&self, n: u64, endpoint: &str) -> String {
        expand(&self.identity, n, endpoint)
    }

    /// The 16-byte key of `identity`.
    pub fn key(&self, identity: &str) -> [u8; 16] {
        let bytes = identity.as_bytes();
        let mut words = vec![self.seed, bytes.len() as u64];
        words.extend(bytes.chunks(8).map(|c| {
            let mut w = [0u8; 8];
            w.iter_mut().zip(c).for_each(|(d, s)| *d = *s);
            u64::from_le_bytes(w)
        }));
        let mut key = [0u8; 16];
        seed::rng(seed::mix(&words)).fill_bytes(&mut key);
        key
    }

    /// Client `n`'s identity and key.
    pub fn credentials(&self, n: u64, endpoint: &str) -> (String, [u8; 16]) {
        let identity = self.identity(n, endpoint);
        let key = self.key(&identity);
        (identity, key)
    }
}

/// An identity pattern with `{n}` the client number and `{ep}` the endpoint name.
fn expand(pattern: &str, n: u64, endpoint: &str) -> String {
    pattern
        .replace("{n}", &n.to_string())
        .replace("{ep}", endpoint)
}

/// Object 0 Security (Core TS 1.1 Appendix E.1): resource 0 LwM2M Server URI, resource 1
/// Bootstrap-Server.
const SECURITY: ObjectId = ObjectId(0);

/// A tree of `template`'s objects (with `definitions`) and its instances.
fn base_tree(
    template: &DeviceTemplate,
    definitions: &BTreeMap<ObjectId, Arc<ObjectDef>>,
) -> ObjectTree {
    let mut tree = ObjectTree::new();
    for (&id, o) in &template.objects {
        match definitions.get(&id) {
            Some(def) => tree.add_object(def.clone(), o.max_instances),
            None => tree.add_unknown_object(id),
        }
        for (&iid, instance) in &o.instances {
            tree.put_instance(id, iid, instance.clone());
        }
    }
    tree
}

impl ProfileClients {
    /// Types `profile` against `registry` (errors name the profile file, line and key);
    /// its clients sit behind `network` and talk to `targets`.
    pub fn new(
        profile: Profile,
        registry: &Registry,
        network: NetworkModel,
        targets: Targets,
    ) -> Result<Self, ConfigError> {
        let template = instances_for(&profile, registry)?;
        let definitions = template
            .objects
            .iter()
            .filter_map(|(&id, o)| {
                let def = o.definition.clone().or_else(|| {
                    let def = match &o.version {
                        Some(v) => registry.object_version(id, v),
                        None => registry.object(id),
                    };
                    def.cloned().map(Arc::new)
                })?;
                Some((id, def))
            })
            .collect();
        let periods = profile
            .objects
            .iter()
            .flat_map(|(&o, spec)| {
                spec.instances.iter().flat_map(move |(&i, resources)| {
                    resources.iter().filter_map(move |(&r, spec)| match spec {
                        ResourceSpec::Generator(g) => {
                            Some((Lwm2mPath::Resource(o, i, r), g.period()))
                        }
                        ResourceSpec::Value(_) => None,
                    })
                })
            })
            .collect();
        let endpoint_prefix = profile.endpoint_prefix.clone();
        let base = base_tree(&template, &definitions);
        Ok(Self {
            base,
            profile,
            template,
            periods,
            network,
            targets,
            endpoint_prefix,
            psk: None,
            bootstrap_psk: None,
            bootstrap_account: false,
        })
    }

    /// Endpoint names become `prefix` and the client number (instead of the profile's
    /// `endpoint_prefix`).
    pub fn with_endpoint_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.endpoint_prefix);
        self
    }

    /// Every client's LwM2M Server account (the non-bootstrap Security instances) becomes
    /// `coaps://` in Security Mode 0 with the pattern's identity and key.
    pub fn with_psk(mut self, psk: PskPattern) -> Self {
        self.psk = Some(psk);
        self
    }

    /// Every client's bootstrap-server account (the Security instance with /0/x/1 true,
    /// added when the profile has none) becomes `coaps://` toward the Bootstrap Server in
    /// Security Mode 0, with the identity `identity` (`{n}` the client number, `{ep}` the
    /// endpoint name) and the one `key`: what a fallback bootstrap configuration with a
    /// `bs-{ep}`-style identity and its group key expects. The LwM2M Server credentials
    /// then come from the Bootstrap Server.
    pub fn with_bootstrap_psk(mut self, identity: &str, key: &[u8]) -> Self {
        self.bootstrap_psk = Some((identity.to_owned(), key.to_vec()));
        self
    }

    /// Every client gets a bootstrap-server account (/0/x/1 true, NoSec, toward the
    /// Bootstrap Server) when the profile has none, for credentials of the caller's own.
    pub fn with_bootstrap_account(mut self) -> Self {
        self.bootstrap_account = true;
        self
    }

    /// The PSK identity and key of client `n`, if the clients use generated PSKs.
    pub fn psk_credentials(&self, n: u64) -> Option<(String, [u8; 16])> {
        let psk = self.psk.as_ref()?;
        Some(psk.credentials(n, &self.endpoint(n)))
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The endpoint name of client `n`.
    pub fn endpoint(&self, n: u64) -> String {
        format!("{}{n}", self.endpoint_prefix)
    }

    /// Client number `n` of a fleet seeded with `seed`: endpoint `prefix` + `n`, its own
    /// CoAP seed and generator seeds, the profile's objects with the Security object's
    /// server URIs pointing at the targets.
    pub fn spec(&self, n: u64, seed: u64) -> ClientSpec {
        let p = &self.profile;
        let values = self.template.instantiate(seed, n);
        // The template's objects, with this client's generated values at time zero.
        let mut tree = self.base.clone();
        for (path, _) in &values.generators {
            if let Lwm2mPath::Resource(o, i, r) = *path
                && let Some(value) = values
                    .instances
                    .get(&o)
                    .and_then(|m| m.get(&i))
                    .and_then(|inst| inst.get(&r))
            {
                let _ = tree.set(path, value.clone());
            }
        }
        if self.bootstrap_psk.is_some() || self.bootstrap_account {
            add_bootstrap_account(&mut tree);
        }
        self.point_security_at_targets(&mut tree);
        if let Some((identity, key)) = &self.bootstrap_psk {
            set_psk(
                &mut tree,
                true,
                &expand(identity, n, &self.endpoint(n)),
                key,
            );
        }
        if let Some((identity, key)) = self.psk_credentials(n) {
            set_psk(&mut tree, false, &identity, &key);
        }
        let generators = values
            .generators
            .into_iter()
            .map(|(path, generator)| GeneratedResource {
                period: self.periods.get(&path).copied().unwrap_or_default(),
                path,
                generator,
            })
            .collect();
        let lifetime = u32::try_from(p.lifetime.as_secs())
            .unwrap_or(u32::MAX)
            .max(1);
        let config = ClientConfig {
            endpoint: self.endpoint(n),
            version: p.lwm2m_version,
            binding: p.binding.clone(),
            queue_mode: p.is_queue_mode(),
            lifetime,
            server: self.targets.server,
            bootstrap_server: self.targets.bootstrap,
            preferred_format: p.preferred_format,
            supported_formats: p.supported_formats.clone(),
            response_delay: p.response_delay,
            update_margin: update_margin(lifetime),
            reboot_silence: Duration::from_secs(5),
            quirks: crate::quirks::client_quirks(p.effective_quirks()),
            coap: coap::Config {
                seed: seed::mix(&[seed, n, 0]),
                ..coap::Config::default()
            },
            version_fallback: p.version_fallback,
        };
        ClientSpec {
            config,
            tree,
            generators,
            network: self.network.clone(),
        }
    }

    /// Security instances (object 0) get the target URIs: the bootstrap account the
    /// bootstrap server's, the others the server's.
    fn point_security_at_targets(&self, tree: &mut ObjectTree) {
        for iid in tree.instance_ids(SECURITY) {
            let bootstrap = matches!(
                tree.get(&Lwm2mPath::Resource(SECURITY, iid, 1.into())),
                Some(Value::Boolean(true))
            );
            let target = if bootstrap {
                self.targets.bootstrap
            } else {
                self.targets.server
            };
            if let Some(addr) = target {
                set_uri(tree, iid, addr);
            }
        }
    }
}

/// Points the instance's URI at `addr`, keeping its scheme (`coaps://` stays secure).
fn set_uri(tree: &mut ObjectTree, iid: InstanceId, addr: SocketAddr) {
    let path = Lwm2mPath::Resource(SECURITY, iid, 0.into());
    let scheme = match tree.get(&path) {
        Some(Value::String(uri)) if uri.starts_with("coaps://") => "coaps",
        _ => "coap",
    };
    let uri = ResourceValue::Single(Value::String(format!("{scheme}://{addr}")));
    // The profile's Security object has resource 0; a failure leaves the profile's URI.
    let _ = tree.set(&path, uri);
}

/// Adds a bootstrap-server account (NoSec, no URI yet) when the tree has none.
fn add_bootstrap_account(tree: &mut ObjectTree) {
    let ids = tree.instance_ids(SECURITY);
    let is_bootstrap = |iid| {
        tree.get(&Lwm2mPath::Resource(SECURITY, iid, 1.into())) == Some(&Value::Boolean(true))
    };
    if ids.iter().any(|i| is_bootstrap(*i)) {
        return;
    }
    let free = (0..=u16::MAX)
        .map(InstanceId)
        .find(|i| !ids.contains(i))
        .unwrap_or(InstanceId(0));
    let mut account = lwm2m_proto::Instance::default();
    for (r, v) in [
        (0, Value::String(String::new())),
        (1, Value::Boolean(true)),
        (2, Value::Integer(3)),
        (3, Value::Opaque(Vec::new())),
        (4, Value::Opaque(Vec::new())),
        (5, Value::Opaque(Vec::new())),
    ] {
        account.insert(ResourceId(r), ResourceValue::Single(v));
    }
    tree.put_instance(SECURITY, free, account);
}

/// The server accounts (non-bootstrap Security instances), or with `bootstrap` the
/// bootstrap-server account, go `coaps://` in mode PSK with `identity` and `key`.
fn set_psk(tree: &mut ObjectTree, bootstrap: bool, identity: &str, key: &[u8]) {
    const MODE_PSK: i64 = 0;
    for iid in tree.instance_ids(SECURITY) {
        let res = |r: u16| Lwm2mPath::Resource(SECURITY, iid, r.into());
        if (tree.get(&res(1)) == Some(&Value::Boolean(true))) != bootstrap {
            continue;
        }
        let uri = match tree.get(&res(0)) {
            Some(Value::String(uri)) => uri.split_once("://").map_or(uri.as_str(), |(_, a)| a),
            _ => "localhost:5684",
        };
        let uri = format!("coaps://{uri}");
        for (r, v) in [
            (0, Value::String(uri)),
            (2, Value::Integer(MODE_PSK)),
            (3, Value::Opaque(identity.as_bytes().to_vec())),
            (5, Value::Opaque(key.to_vec())),
        ] {
            // The instance exists (listed above): setting its resources cannot fail.
            let _ = tree.set(&res(r), ResourceValue::Single(v));
        }
    }
}

/// Update ahead of expiry: a tenth of the lifetime, 1 s at least and 60 s at most.
fn update_margin(lifetime: u32) -> Duration {
    Duration::from_secs(u64::from(lifetime / 10).clamp(1, 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quirks::QuirkPacks;

    const PROFILE: &str = "\
name: t
lwm2m_version: \"1.1\"
lifetime: 5m
endpoint_prefix: t-
preferred_format: senml-cbor
supported_formats: [senml-cbor, tlv, text]
quirks: [ignore-accept]
objects:
  0:
    instances:
      0: { 0: coap://localhost:5683, 1: false, 2: 3, 3: \"\", 4: \"\", 5: \"\", 10: 1 }
  1:
    instances:
      0: { 0: 1, 1: 300, 6: true, 7: U }
  3303:
    instances:
      0:
        5700: { generator: random_walk, start: 21.5, step: 0.2, min: 15, max: 30, period: 10s }
";

    #[test]
    fn specs_have_own_seeds_and_point_at_the_server() {
        let profile = Profile::from_yaml("t.yaml", PROFILE, &QuirkPacks::new()).unwrap();
        let server: SocketAddr = "127.0.0.1:5999".parse().unwrap();
        let clients = ProfileClients::new(
            profile,
            &Registry::embedded(),
            NetworkModel::default(),
            Targets {
                server: Some(server),
                bootstrap: None,
            },
        )
        .unwrap()
        .with_endpoint_prefix("x-");
        let a = clients.spec(0, 7);
        let b = clients.spec(1, 7);
        assert_eq!(a.config.endpoint, "x-0");
        assert_eq!(b.config.endpoint, "x-1");
        assert_ne!(a.config.coap.seed, b.config.coap.seed);
        assert_eq!(a.config.lifetime, 300);
        assert_eq!(a.config.server, Some(server));
        assert!(a.config.quirks.ignore_accept);
        assert_eq!(
            a.tree
                .get(&Lwm2mPath::Resource(SECURITY, 0.into(), 0.into())),
            Some(&Value::String("coap://127.0.0.1:5999".into()))
        );
        assert_eq!(a.generators.len(), 1);
        assert_eq!(a.generators[0].period, Duration::from_secs(10));
        assert_eq!(
            a.generators[0].path,
            Lwm2mPath::Resource(3303.into(), 0.into(), 5700.into())
        );
        assert_eq!(clients.spec(0, 7).config.coap.seed, a.config.coap.seed);
    }

    #[test]
    fn generated_psks_go_into_the_server_account() {
        let profile = Profile::from_yaml("t.yaml", PROFILE, &QuirkPacks::new()).unwrap();
        let server: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        let psk = PskPattern {
            identity: "id-{n}-{ep}".into(),
            seed: 7,
        };
        let clients = ProfileClients::new(
            profile,
            &Registry::embedded(),
            NetworkModel::default(),
            Targets {
                server: Some(server),
                bootstrap: None,
            },
        )
        .unwrap()
        .with_psk(psk.clone());
        let (identity, key) = clients.psk_credentials(3).unwrap();
        assert_eq!(identity, "id-3-t-3");
        assert_eq!(key, psk.key("id-3-t-3"));
        assert_ne!(key, psk.key("id-4-t-4"));
        assert_ne!(key, PskPattern { seed: 8, ..psk }.key("id-3-t-3"));
        let spec = clients.spec(3, 1);
        let get = |r: u16| {
            spec.tree
                .get(&Lwm2mPath::Resource(SECURITY, 0.into(), r.into()))
        };
        assert_eq!(
            get(0),
            Some(&Value::String("coaps://127.0.0.1:5684".into()))
        );
        assert_eq!(get(2), Some(&Value::Integer(0)));
        assert_eq!(get(3), Some(&Value::Opaque(b"id-3-t-3".to_vec())));
        assert_eq!(get(5), Some(&Value::Opaque(key.to_vec())));
    }

    #[test]
    fn a_bootstrap_psk_goes_into_a_bootstrap_account() {
        let profile = Profile::from_yaml("t.yaml", PROFILE, &QuirkPacks::new()).unwrap();
        let bs: SocketAddr = "127.0.0.1:5784".parse().unwrap();
        let clients = ProfileClients::new(
            profile,
            &Registry::embedded(),
            NetworkModel::default(),
            Targets {
                server: None,
                bootstrap: Some(bs),
            },
        )
        .unwrap()
        .with_bootstrap_psk("bs-{ep}", &[7; 16]);
        let spec = clients.spec(2, 1);
        // The profile's server account stays; a bootstrap account is added next to it.
        assert_eq!(spec.tree.instance_ids(SECURITY), [0.into(), 1.into()]);
        let get = |r: u16| {
            spec.tree
                .get(&Lwm2mPath::Resource(SECURITY, 1.into(), r.into()))
        };
        assert_eq!(get(0), Some(&Value::String(format!("coaps://{bs}"))));
        assert_eq!(get(1), Some(&Value::Boolean(true)));
        assert_eq!(get(2), Some(&Value::Integer(0)));
        assert_eq!(get(3), Some(&Value::Opaque(b"bs-t-2".to_vec())));
        assert_eq!(get(5), Some(&Value::Opaque(vec![7; 16])));
        let server = spec
            .tree
            .get(&Lwm2mPath::Resource(SECURITY, 0.into(), 2.into()));
        assert_eq!(
            server,
            Some(&Value::Integer(3)),
            "the server account is untouched"
        );
    }
}
