//! Clients of a device profile: the profile's template typed once against the registry,
//! then one [`ClientSpec`] per client with its own seeds, endpoint name and servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lwm2m_proto::client::{ClientConfig, ObjectTree};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::value::Value;
use lwm2m_proto::{InstanceId, Lwm2mPath, ObjectDef, ObjectId, ResourceValue, coap};

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
    /// One shared definition per object.
    definitions: BTreeMap<ObjectId, Arc<ObjectDef>>,
    /// The period of each generated resource.
    periods: BTreeMap<Lwm2mPath, Duration>,
    network: NetworkModel,
    targets: Targets,
    endpoint_prefix: String,
}

/// Object 0 Security (Core TS 1.1 Appendix E.1): resource 0 LwM2M Server URI, resource 1
/// Bootstrap-Server.
const SECURITY: ObjectId = ObjectId(0);

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
        Ok(Self {
            profile,
            template,
            definitions,
            periods,
            network,
            targets,
            endpoint_prefix,
        })
    }

    /// Endpoint names become `prefix` and the client number (instead of the profile's
    /// `endpoint_prefix`).
    pub fn with_endpoint_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.endpoint_prefix);
        self
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
        let mut tree = ObjectTree::new();
        for (&id, o) in &self.template.objects {
            match self.definitions.get(&id) {
                Some(def) => tree.add_object(def.clone(), o.max_instances),
                None => tree.add_unknown_object(id),
            }
        }
        for (id, instances) in values.instances {
            for (iid, instance) in instances {
                tree.put_instance(id, iid, instance);
            }
        }
        self.point_security_at_targets(&mut tree);
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
}
