//! Simulated clients from the `scenarios/` folder: device profiles, quirk packs and network
//! models, plus the ETS device profiles and extra object definitions of `features/`.
//!
//! [`Library::client`] turns a profile into a [`ClientSpec`]: the profile's objects typed
//! against the registry become the factory object tree, the Security object is pointed at
//! our servers (`coap://IP:port`), and the profile's quirks become the client's
//! [`Quirks`](lwm2m_proto::client::Quirks).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lwm2m_proto::client::{ClientConfig, ObjectTree};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::{Instance, InstanceId, ObjectId, ResourceId, ResourceValue, Value, coap};
use lwm2m_simulator::network::NetworkModel;
use lwm2m_simulator::{Profile, Quirk, QuirkPack, instances_for, load_profile, seed};

use super::backend::ClientSpec;

/// Everything clients are made from, loaded once per run.
#[derive(Debug)]
pub struct Library {
    /// The object registry: the shipped objects plus `features/objects/*.xml`.
    pub registry: Arc<Registry>,
    /// Device profiles by name (`scenarios/profiles`, `features/profiles`).
    pub profiles: BTreeMap<String, Profile>,
    /// Quirk packs by name (`scenarios/quirks`).
    pub quirk_packs: BTreeMap<String, QuirkPack>,
    /// Network models by name (`scenarios/networks`).
    pub networks: BTreeMap<String, NetworkModel>,
}

/// Where a new client's factory configuration points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// A server account for the LwM2M Server (the profile's Security and Server instances).
    Server(SocketAddr),
    /// Only a Bootstrap-Server account (ETS configuration C.13): no Server instance, the
    /// Security object holds the bootstrap account as instance 1.
    BootstrapOnly(SocketAddr),
    /// Both: a server account and a Bootstrap-Server account (Security instance 1).
    ServerAndBootstrap {
        /// The LwM2M Server.
        server: SocketAddr,
        /// The Bootstrap Server.
        bootstrap: SocketAddr,
    },
}

impl Library {
    /// Loads the shipped scenarios (quirk packs, networks, profiles), profiles
    /// (`features/profiles`) and object definitions (`features/objects`), then `ROOT`'s,
    /// which add to them and override those of the same name (`ROOT/features/objects`,
    /// when there, replaces the shipped definitions), then the `ddf` folders.
    pub fn load(root: &Path, ddf: &[PathBuf]) -> anyhow::Result<Self> {
        let shipped = crate::shipped::root()?;
        let mut roots = vec![shipped];
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same(root, shipped) {
            roots.push(root);
        }
        let mut registry = Registry::embedded();
        let objects = roots
            .iter()
            .rev()
            .map(|r| r.join("features/objects"))
            .find(|d| d.is_dir());
        for dir in objects.iter().chain(ddf) {
            crate::load_ddf_dir(&mut registry, dir)
                .with_context(|| format!("loading {}", dir.display()))?;
        }
        let (mut profiles, mut quirk_packs, mut networks) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for r in &roots {
            let scenarios_dir = r.join("scenarios");
            if !scenarios_dir.is_dir() {
                continue;
            }
            let scenarios =
                lwm2m_simulator::load_all_scenario_files(&scenarios_dir).map_err(|errors| {
                    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!("{}", text.join("; "))
                })?;
            profiles.extend(scenarios.profiles);
            quirk_packs.extend(scenarios.quirk_packs);
            networks.extend(scenarios.networks);
        }
        for r in &roots {
            let dir = r.join("features/profiles");
            if !dir.is_dir() {
                continue;
            }
            for path in yaml_files(&dir)? {
                let profile = load_profile(&path, &quirk_packs)?;
                profiles.insert(profile.name.clone(), profile);
            }
        }
        Ok(Self {
            registry: Arc::new(registry),
            profiles,
            quirk_packs,
            networks,
        })
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> anyhow::Result<&Profile> {
        self.profiles.get(name).with_context(|| {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            format!("no profile {name:?}; known: {}", known.join(", "))
        })
    }

    /// The network model called `name`.
    pub fn network(&self, name: &str) -> anyhow::Result<&NetworkModel> {
        self.networks.get(name).with_context(|| {
            let known: Vec<&str> = self.networks.keys().map(String::as_str).collect();
            format!("no network model {name:?}; known: {}", known.join(", "))
        })
    }

    /// The quirks of pack `name`, or the single quirk of that name.
    pub fn quirks(&self, name: &str) -> anyhow::Result<Vec<Quirk>> {
        if let Some(pack) = self.quirk_packs.get(name) {
            return Ok(pack.quirks.clone());
        }
        Quirk::from_name(name).map(|q| vec![q]).with_context(|| {
            let packs: Vec<&str> = self.quirk_packs.keys().map(String::as_str).collect();
            format!(
                "{name:?} is neither a quirk ({}) nor a quirk pack ({})",
                Quirk::NAMES.join(", "),
                packs.join(", ")
            )
        })
    }

    /// Client number `number` of a fleet seeded with `seed`, made from `profile`, called
    /// `endpoint`, provisioned as `provisioning` says, with `extra` quirks on top of the
    /// profile's.
    pub fn client(
        &self,
        profile: &Profile,
        endpoint: &str,
        number: u64,
        seed: u64,
        provisioning: Provisioning,
        extra: &[Quirk],
    ) -> anyhow::Result<ClientSpec> {
        let template = instances_for(profile, &*self.registry)?;
        let values = template.instantiate(seed, number);
        let mut tree = ObjectTree::new();
        for (&id, object) in &template.objects {
            match (&object.definition, self.registry.object(id)) {
                (Some(def), _) => tree.add_object(def.clone(), object.max_instances),
                (None, Some(def)) => tree.add_object(Arc::new(def.clone()), object.max_instances),
                (None, None) => tree.add_unknown_object(id),
            }
        }
        for (&object, instances) in &values.instances {
            for (&instance, values) in instances {
                tree.put_instance(object, instance, values.clone());
            }
        }
        let (server, bootstrap) = match provisioning {
            Provisioning::Server(s) => (Some(s), None),
            Provisioning::BootstrapOnly(b) => (None, Some(b)),
            Provisioning::ServerAndBootstrap { server, bootstrap } => {
                (Some(server), Some(bootstrap))
            }
        };
        point_security_at(&mut tree, server, bootstrap);
        let quirks =
            lwm2m_simulator::quirks::client_quirks(profile.effective_quirks().iter().chain(extra));
        let config = ClientConfig {
            endpoint: endpoint.to_owned(),
            version: profile.lwm2m_version,
            binding: profile.binding.replace('Q', ""),
            queue_mode: profile.is_queue_mode(),
            lifetime: u32::try_from(profile.lifetime.as_secs()).unwrap_or(u32::MAX),
            server,
            bootstrap_server: bootstrap,
            preferred_format: profile.preferred_format,
            supported_formats: profile.supported_formats.clone(),
            response_delay: profile.response_delay,
            update_margin: Duration::from_secs(10),
            reboot_silence: Duration::from_secs(5),
            quirks,
            coap: coap::Config {
                seed: seed::mix(&[seed, number, 0x636c_6965_6e74]),
                ..coap::Config::default()
            },
            version_fallback: false,
        };
        Ok(ClientSpec { config, tree })
    }
}

/// `*.yaml` files of a folder, sorted; none when the folder does not exist.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn uri(addr: SocketAddr) -> Value {
    Value::String(format!("coap://{addr}"))
}

/// Points the Security object at our servers: the server account's URI at `server`, or, for
/// a bootstrap-only client, no server account and no Server instance at all; a
/// Bootstrap-Server account (instance 1, NoSec) when `bootstrap` is given.
fn point_security_at(
    tree: &mut ObjectTree,
    server: Option<SocketAddr>,
    bootstrap: Option<SocketAddr>,
) {
    let security = ObjectId(0);
    let accounts: Vec<(InstanceId, Instance)> = tree
        .instance_ids(security)
        .into_iter()
        .filter_map(|i| tree.instance(security, i).map(|inst| (i, inst.clone())))
        .collect();
    let mut next_id = 0;
    for (id, mut instance) in accounts {
        let is_bootstrap = matches!(
            instance.get(&ResourceId(1)),
            Some(ResourceValue::Single(Value::Boolean(true)))
        );
        if is_bootstrap {
            continue;
        }
        next_id = next_id.max(id.0 + 1);
        if let Some(addr) = server {
            instance.insert(ResourceId(0), ResourceValue::Single(uri(addr)));
            tree.put_instance(security, id, instance);
        }
    }
    if server.is_none() {
        let _ = tree.bootstrap_delete(&lwm2m_proto::Lwm2mPath::object(0));
        let _ = tree.bootstrap_delete(&lwm2m_proto::Lwm2mPath::object(1));
    }
    if let Some(addr) = bootstrap {
        let account: Instance = [
            (ResourceId(0), ResourceValue::Single(uri(addr))),
            (ResourceId(1), ResourceValue::Single(Value::Boolean(true))),
            (ResourceId(2), ResourceValue::Single(Value::Integer(3))),
            (
                ResourceId(3),
                ResourceValue::Single(Value::Opaque(Vec::new())),
            ),
            (
                ResourceId(4),
                ResourceValue::Single(Value::Opaque(Vec::new())),
            ),
            (
                ResourceId(5),
                ResourceValue::Single(Value::Opaque(Vec::new())),
            ),
        ]
        .into_iter()
        .collect();
        tree.put_instance(security, InstanceId(next_id.max(1)), account);
    }
}
