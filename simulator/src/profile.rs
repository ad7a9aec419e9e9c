//! Device profiles (`scenarios/profiles/*.yaml`): what a simulated client is — its LwM2M
//! version, binding, lifetime, content formats, objects with initial values or value
//! generators, and its quirks.
//!
//! ```yaml
//! name: sensor-1.1
//! description: LwM2M 1.1 temperature and humidity sensor
//! lwm2m_version: "1.1"
//! binding: U
//! queue_mode: true
//! lifetime: 5m
//! preferred_format: senml-cbor
//! supported_formats: [senml-cbor, senml-json, tlv, text, opaque, cbor]
//! response_delay: 20ms
//! version_fallback: true
//! quirks: [ignore-accept]
//! objects:
//!   3303:
//!     instances:
//!       0:
//!         5700: { generator: random_walk, start: 21.5, step: 0.2, min: 15, max: 30, period: 10s }
//!         5701: Cel
//! ```
//!
//! Loading parses with unknown keys refused, then checks the profile as a whole (version,
//! binding and quirks agree; formats exist in the version; durations are positive). Initial
//! values stay YAML until [`instances_for`] types them against the object registry.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lwm2m_proto::registration::{DEFAULT_LIFETIME, Lwm2mVersion};
use lwm2m_proto::{
    ContentFormat, DataType, Instance, InstanceId, Lwm2mPath, ObjectDef, ObjectId, Operations,
    ResourceDef, ResourceId, ResourceInstanceId, ResourceValue, Schema,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::config::{self, ConfigError, Origin};
use crate::generator::{Generator, GeneratorError, GeneratorSpec, YamlValueError, typed_value};
use crate::quirks::{self, Quirk, QuirkPacks, QuirkRef};
use crate::seed;

/// A device profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The profile's name; a profile file is named after it (`NAME.yaml`).
    pub name: String,
    /// What device the profile mirrors.
    #[serde(default)]
    pub description: String,
    /// The LwM2M version the client speaks (`lwm2m=` in Register).
    #[serde(deserialize_with = "lwm2m_version")]
    pub lwm2m_version: Lwm2mVersion,
    /// The binding `b=` (Core TS 1.1 §6.2.1): `U`, or `UQ` for 1.0 queue mode.
    #[serde(default = "default_binding")]
    pub binding: String,
    /// LwM2M 1.1+ queue mode (the `Q` parameter); 1.0 uses binding `UQ` instead.
    #[serde(default)]
    pub queue_mode: bool,
    /// After a Register answered 4.12 (the server does not speak `lwm2m_version`),
    /// register again as a client of the next older version, as real stacks do (1.2, then
    /// 1.1, then 1.0); `false`: the registration fails. Default `true`.
    #[serde(default = "default_version_fallback")]
    pub version_fallback: bool,
    /// Registration lifetime `lt=` (default 86400 s).
    #[serde(default = "default_lifetime", with = "crate::duration")]
    pub lifetime: Duration,
    /// Endpoint names are this prefix and the client number (default `sim-`).
    #[serde(default = "default_endpoint_prefix")]
    pub endpoint_prefix: String,
    /// The format the client answers in when the server sends no Accept.
    #[serde(deserialize_with = "content_format")]
    pub preferred_format: ContentFormat,
    /// The formats the client reads and writes (names of `ContentFormat::from_name`).
    #[serde(deserialize_with = "content_formats")]
    pub supported_formats: Vec<ContentFormat>,
    /// Delay before the client answers a request.
    #[serde(default, with = "crate::duration")]
    pub response_delay: Duration,
    /// Quirks and quirk packs, as written.
    #[serde(default)]
    pub quirks: Vec<QuirkRef>,
    /// Objects the registry does not know, with their resource types.
    #[serde(default)]
    pub custom_objects: BTreeMap<ObjectId, CustomObject>,
    /// The client's objects and instances.
    pub objects: BTreeMap<ObjectId, ObjectSpec>,
    #[serde(skip)]
    origin: Origin,
    #[serde(skip)]
    resolved_quirks: Vec<Quirk>,
}

/// One object of a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectSpec {
    /// The object version announced in the registration (`ver=`, Core TS 1.1 §6.2.1),
    /// e.g. `"1.1"`; absent means the default (1.0).
    #[serde(default, deserialize_with = "optional_version_text")]
    pub version: Option<String>,
    /// A definition that differs from the registry's (see [`ObjectVariant`]).
    #[serde(default)]
    pub variant: Option<ObjectVariant>,
    /// The most instances Create may make (absent: no limit).
    #[serde(default)]
    pub max_instances: Option<usize>,
    /// Instances by id, each resource by id.
    pub instances: BTreeMap<InstanceId, BTreeMap<ResourceId, ResourceSpec>>,
}

/// A historical definition of an object, for peers that still use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ObjectVariant {
    /// `pre-1.0`: Location (6) as in the April 2016 candidate ([`quirks::pre_1_0_location`]);
    /// needs the `pre-1-0-location` quirk.
    #[serde(rename = "pre-1.0")]
    Pre1_0,
}

/// The value of one resource in a profile: an initial value, typed later by
/// [`instances_for`] — a YAML scalar; for a multiple-instance resource a list (resource
/// instances 0, 1, ...) or a mapping from resource instance id to value — or a mapping with
/// a `generator:` key.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceSpec {
    /// An initial value, as written.
    Value(serde_yaml::Value),
    /// A value generator.
    Generator(GeneratorSpec),
}

/// An object the registry does not know, declared in the profile (e.g. the thesis's
/// test object 1024).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomObject {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Object version (default `1.0`).
    #[serde(default = "default_object_version", deserialize_with = "version_text")]
    pub version: String,
    /// Whether the object has several instances (default true).
    #[serde(default = "yes")]
    pub multiple: bool,
    /// Resources by id.
    pub resources: BTreeMap<ResourceId, CustomResource>,
}

/// A resource of a [`CustomObject`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomResource {
    /// Name.
    pub name: String,
    /// Data type: `string`, `integer`, `unsigned`, `float`, `boolean`, `opaque`, `time`,
    /// `objlnk`, `corelnk`, `none`.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Operations: `R`, `W`, `RW`, `E` or `None`.
    pub operations: Operations,
    /// Multiple-instance resource (default false).
    #[serde(default)]
    pub multiple: bool,
    /// Mandatory (default false).
    #[serde(default)]
    pub mandatory: bool,
    /// Units (default none).
    #[serde(default)]
    pub units: String,
}

fn default_version_fallback() -> bool {
    true
}

fn default_binding() -> String {
    "U".to_owned()
}
fn default_lifetime() -> Duration {
    Duration::from_secs(u64::from(DEFAULT_LIFETIME))
}
fn default_endpoint_prefix() -> String {
    "sim-".to_owned()
}
fn default_object_version() -> String {
    "1.0".to_owned()
}
fn yes() -> bool {
    true
}

/// Reads a version written as a string or as a YAML number (`1.1`, `"1.1"`), then maps it
/// (inside the visitor, so that errors carry the value's position).
struct VersionText<T, Er>(fn(&str) -> Result<T, Er>);

impl<T, Er: fmt::Display> Visitor<'_> for VersionText<T, Er> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a version such as \"1.1\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let mut parts = v.split('.');
        let number = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if !(number(parts.next()) && number(parts.next()) && parts.next().is_none()) {
            return Err(E::custom(format!(
                "invalid version {v:?}: write MAJOR.MINOR, e.g. \"1.1\""
            )));
        }
        (self.0)(v).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&format!("{v:?}"))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&format!("{v}.0"))
    }
}

fn version_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(VersionText(|v| {
        Ok::<_, std::convert::Infallible>(v.to_owned())
    }))
}

fn optional_version_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    version_text(d).map(Some)
}

fn lwm2m_version<'de, D: Deserializer<'de>>(d: D) -> Result<Lwm2mVersion, D::Error> {
    d.deserialize_any(VersionText(|v| {
        Lwm2mVersion::parse(v).ok_or_else(|| UnsupportedVersion {
            version: v.to_owned(),
        })
    }))
}

/// A `lwm2m_version` this simulator does not speak.
#[derive(Debug, thiserror::Error)]
#[error("unsupported LwM2M version {version}: use 1.0, 1.1 or 1.2")]
struct UnsupportedVersion {
    /// The version as written.
    version: String,
}

/// A content format by name or number.
struct FormatName(ContentFormat);

impl<'de> Deserialize<'de> for FormatName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FormatName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a content format name or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FormatName, E> {
                ContentFormat::from_name(v).map(FormatName).ok_or_else(|| {
                    let names: Vec<&str> = ContentFormat::ALL.iter().map(|f| f.name()).collect();
                    E::custom(format!(
                        "unknown content format {v:?}; known: {}",
                        names.join(", ")
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FormatName, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

fn content_format<'de, D: Deserializer<'de>>(d: D) -> Result<ContentFormat, D::Error> {
    FormatName::deserialize(d).map(|f| f.0)
}

fn content_formats<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ContentFormat>, D::Error> {
    Vec::<FormatName>::deserialize(d).map(|v| v.into_iter().map(|f| f.0).collect())
}

impl<'de> Deserialize<'de> for ResourceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResourceSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value, a list of values, or a `{generator: ...}` mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResourceSpec, A::Error> {
                let mut entries = serde_yaml::Mapping::new();
                while let Some((k, v)) = map.next_entry::<serde_yaml::Value, serde_yaml::Value>()? {
                    entries.insert(k, v);
                }
                if entries.contains_key("generator") {
                    GeneratorSpec::deserialize(serde_yaml::Value::Mapping(entries))
                        .map(ResourceSpec::Generator)
                        .map_err(de::Error::custom)
                } else {
                    Ok(ResourceSpec::Value(serde_yaml::Value::Mapping(entries)))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ResourceSpec, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(ResourceSpec::Value(serde_yaml::Value::Sequence(items)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ResourceSpec, E> {
                Ok(ResourceSpec::Value(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ResourceSpec, E> {
                Ok(ResourceSpec::Value(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ResourceSpec, E> {
                Ok(ResourceSpec::Value(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ResourceSpec, E> {
                Ok(ResourceSpec::Value(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<ResourceSpec, E> {
                Ok(ResourceSpec::Value(v.into()))
            }
            fn visit_unit<E>(self) -> Result<ResourceSpec, E> {
                Ok(ResourceSpec::Value(serde_yaml::Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

impl CustomObject {
    /// The object definition of custom object `id`.
    pub fn definition(&self, id: ObjectId) -> ObjectDef {
        ObjectDef {
            id,
            name: self.name.clone(),
            description: self.description.clone(),
            urn: format!("urn:oma:lwm2m:x:{id}"),
            version: self.version.clone(),
            lwm2m_version: "1.0".to_owned(),
            multiple: self.multiple,
            mandatory: false,
            resources: self
                .resources
                .iter()
                .map(|(&rid, r)| {
                    let def = ResourceDef {
                        id: rid,
                        name: r.name.clone(),
                        operations: r.operations,
                        multiple: r.multiple,
                        mandatory: r.mandatory,
                        data_type: r.data_type,
                        range: String::new(),
                        units: r.units.clone(),
                        description: String::new(),
                    };
                    (rid, def)
                })
                .collect(),
        }
    }
}

/// The transport letters each version defines for the binding, besides the 1.0 queue
/// letter Q (Core TS 1.0 §5.3.1.1, 1.1 §6.2.1, 1.2 §6.2.1).
fn binding_letters(v: Lwm2mVersion) -> &'static str {
    match v {
        Lwm2mVersion::V1_0 => "US",
        Lwm2mVersion::V1_1 => "USNT",
        Lwm2mVersion::V1_2 => "USNTMH",
    }
}

/// The content formats each version defines (Core TS 1.0 §6.4, 1.1 §7.4, 1.2 §7.4).
fn version_formats(v: Lwm2mVersion) -> &'static [ContentFormat] {
    use ContentFormat::*;
    match v {
        Lwm2mVersion::V1_0 => &[Text, LinkFormat, Opaque, Tlv, OmaJson],
        Lwm2mVersion::V1_1 => &[Text, LinkFormat, Opaque, Cbor, SenmlJson, SenmlCbor, Tlv],
        Lwm2mVersion::V1_2 => &[
            Text, LinkFormat, Opaque, Cbor, SenmlJson, SenmlCbor, Tlv, Lwm2mCbor,
        ],
    }
}

impl Profile {
    /// Parses and checks a profile; quirk pack names resolve in `packs`. Errors name
    /// `source`, the line and the key.
    pub fn from_yaml(source: &str, text: &str, packs: &QuirkPacks) -> Result<Self, ConfigError> {
        Self::from_origin(Origin::new(source, text), packs)
    }

    fn from_origin(origin: Origin, packs: &QuirkPacks) -> Result<Self, ConfigError> {
        let mut profile: Self = origin.parse()?;
        profile.origin = origin;
        profile.check(packs)?;
        Ok(profile)
    }

    /// The profile with `extra` quirks and quirk packs in effect after its own (`simulate
    /// --quirks`). Where a quirk is a different spelling of something the profile already
    /// says, the profile is respelled as that quirk's client would: `legacy-queue-binding`
    /// turns 1.1+ queue mode into binding `UQ`, `legacy-content-formats` lists TLV and OMA
    /// JSON under their pre-1.0 numbers (1542, 1543), `pre-1-0-location` gives object 6 its
    /// April 2016 definition. What cannot be respelled (a quirk for a feature the profile
    /// lacks) is the profile's usual error.
    pub fn with_quirks(
        mut self,
        extra: &[QuirkRef],
        packs: &QuirkPacks,
    ) -> Result<Self, ConfigError> {
        self.quirks.extend(extra.iter().cloned());
        self.resolved_quirks = self.resolve_quirks(packs)?;
        if self.has_quirk("legacy-queue-binding")
            && self.queue_mode
            && self.lwm2m_version != Lwm2mVersion::V1_0
            && !self.binding.contains('Q')
        {
            self.binding.push('Q');
            self.queue_mode = false;
        }
        if self.has_quirk("legacy-content-formats") {
            let legacy = |f: ContentFormat| match f {
                ContentFormat::Tlv => ContentFormat::LegacyTlv,
                ContentFormat::OmaJson => ContentFormat::LegacyJson,
                f => f,
            };
            self.supported_formats = self.supported_formats.iter().map(|&f| legacy(f)).collect();
            self.preferred_format = legacy(self.preferred_format);
        }
        if self.has_quirk("pre-1-0-location")
            && let Some(location) = self.objects.get_mut(&ObjectId(6))
        {
            location.variant.get_or_insert(ObjectVariant::Pre1_0);
        }
        self.check(packs)?;
        Ok(self)
    }

    /// The file (or source) the profile was read from.
    pub fn source(&self) -> &str {
        self.origin.file()
    }

    /// The quirks in effect: single quirks and the quirks of the listed packs, in order,
    /// the first of each name kept.
    pub fn effective_quirks(&self) -> &[Quirk] {
        &self.resolved_quirks
    }

    /// True if quirk `name` (e.g. `ignore-accept`) is in effect.
    pub fn has_quirk(&self, name: &str) -> bool {
        self.resolved_quirks.iter().any(|q| q.name() == name)
    }

    /// True if the client uses queue mode (1.1+ `queue_mode`, or `Q` in the binding).
    pub fn is_queue_mode(&self) -> bool {
        self.queue_mode || self.binding.contains('Q')
    }

    /// The definitions the profile brings itself: custom objects and object variants.
    pub fn local_definitions(&self) -> BTreeMap<ObjectId, ObjectDef> {
        let mut defs: BTreeMap<ObjectId, ObjectDef> = self
            .custom_objects
            .iter()
            .map(|(&id, c)| (id, c.definition(id)))
            .collect();
        for (&id, spec) in &self.objects {
            if spec.variant == Some(ObjectVariant::Pre1_0) && id == ObjectId(6) {
                defs.insert(id, quirks::pre_1_0_location());
            }
        }
        defs
    }

    /// Checks the profile as a whole, after parsing: quirks resolve (later checks depend on
    /// them), then binding, lifetime, formats and objects agree with the version and quirks.
    fn check(&mut self, packs: &QuirkPacks) -> Result<(), ConfigError> {
        self.resolved_quirks = self.resolve_quirks(packs)?;
        self.check_binding()?;
        self.check_lifetime()?;
        self.check_formats()?;
        self.check_objects()
    }

    fn resolve_quirks(&self, packs: &QuirkPacks) -> Result<Vec<Quirk>, ConfigError> {
        let o = &self.origin;
        let mut resolved: Vec<Quirk> = Vec::new();
        for r in &self.quirks {
            let list = match r {
                QuirkRef::Quirk(q) => std::slice::from_ref(q),
                QuirkRef::Pack(name) => match packs.get(name) {
                    Some(pack) => pack.quirks.as_slice(),
                    None => {
                        let known: Vec<&str> = packs.keys().map(String::as_str).collect();
                        return Err(o.error(
                            "quirks",
                            format!(
                                "unknown quirk or quirk pack `{name}` (quirks: {}; packs: {})",
                                Quirk::NAMES.join(", "),
                                if known.is_empty() {
                                    "none loaded".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ));
                    }
                },
            };
            for q in list {
                if !resolved.iter().any(|have| have.name() == q.name()) {
                    resolved.push(q.clone());
                }
            }
        }

        Ok(resolved)
    }

    fn check_binding(&self) -> Result<(), ConfigError> {
        let (o, v) = (&self.origin, self.lwm2m_version);
        let letters = binding_letters(v);
        if self.binding.is_empty()
            || !self
                .binding
                .chars()
                .all(|c| letters.contains(c) || c == 'Q')
        {
            return Err(o.error(
                "binding",
                format!(
                    "{:?} is not a LwM2M {v} binding (letters {letters}, and Q for queue mode)",
                    self.binding
                ),
            ));
        }
        if !self.binding.contains('U') {
            return Err(o.error(
                "binding",
                "the simulator speaks CoAP over UDP: the binding must include U",
            ));
        }
        let legacy_q = self.binding.contains('Q') && v != Lwm2mVersion::V1_0;
        if legacy_q && !self.has_quirk("legacy-queue-binding") {
            return Err(o.error(
                "binding",
                format!("LwM2M {v} expresses queue mode with queue_mode: true; binding {} needs the quirk legacy-queue-binding", self.binding),
            ));
        }
        if !legacy_q && self.has_quirk("legacy-queue-binding") {
            return Err(o.error(
                "quirks",
                "legacy-queue-binding needs LwM2M 1.1 or 1.2 and a binding with Q (UQ)",
            ));
        }
        if self.queue_mode && v == Lwm2mVersion::V1_0 {
            return Err(o.error("queue_mode", "LwM2M 1.0 expresses queue mode as binding UQ"));
        }

        Ok(())
    }

    fn check_lifetime(&self) -> Result<(), ConfigError> {
        let o = &self.origin;
        if self.lifetime < Duration::from_secs(1)
            || self.lifetime.subsec_nanos() != 0
            || self.lifetime.as_secs() > u64::from(u32::MAX)
        {
            return Err(o.error(
                "lifetime",
                "must be a whole number of seconds, from 1s to 4294967295s",
            ));
        }
        if self.endpoint_prefix.is_empty() {
            return Err(o.error("endpoint_prefix", "must not be empty"));
        }

        Ok(())
    }

    fn check_formats(&self) -> Result<(), ConfigError> {
        let (o, v) = (&self.origin, self.lwm2m_version);
        let legacy_formats = self.has_quirk("legacy-content-formats");
        for (i, f) in self.supported_formats.iter().enumerate() {
            let key = "supported_formats";
            if self.supported_formats[..i].contains(f) {
                return Err(o.error(key, format!("{f} is listed twice")));
            }
            if f.is_legacy() && !legacy_formats {
                return Err(o.error(
                    key,
                    format!("{f} is a pre-1.0 number; it needs the quirk legacy-content-formats"),
                ));
            }
            if !f.is_legacy() && !version_formats(v).contains(f) {
                return Err(o.error(key, format!("{f} is not a LwM2M {v} content format")));
            }
        }
        if legacy_formats && !self.supported_formats.iter().any(|f| f.is_legacy()) {
            return Err(o.error(
                "quirks",
                "legacy-content-formats needs tlv-1542 or json-1543 in supported_formats",
            ));
        }
        if !self.supported_formats.contains(&self.preferred_format) {
            return Err(o.error(
                "preferred_format",
                format!("{} is not in supported_formats", self.preferred_format),
            ));
        }

        Ok(())
    }

    fn check_objects(&self) -> Result<(), ConfigError> {
        let o = &self.origin;
        let location = self.objects.get(&ObjectId(6));
        let pre_location = location.is_some_and(|l| l.variant == Some(ObjectVariant::Pre1_0));
        if self.has_quirk("pre-1-0-location") && !pre_location {
            return Err(o.error(
                "quirks",
                "pre-1-0-location needs object 6 with variant: pre-1.0",
            ));
        }
        for (id, obj) in &self.objects {
            let key = format!("objects.{id}");
            if obj.variant.is_some() {
                if *id != ObjectId(6) {
                    return Err(o.error(
                        &format!("{key}.variant"),
                        "variant pre-1.0 exists for the Location object (6) only",
                    ));
                }
                if !self.has_quirk("pre-1-0-location") {
                    return Err(o.error(
                        &format!("{key}.variant"),
                        "the pre-1.0 Location needs the quirk pre-1-0-location",
                    ));
                }
                if self.custom_objects.contains_key(id) {
                    return Err(o.error(
                        &format!("{key}.variant"),
                        "object 6 is both a variant and a custom object",
                    ));
                }
            }
            if let Some(max) = obj.max_instances
                && (max == 0 || obj.instances.len() > max)
            {
                return Err(o.error(
                    &format!("{key}.max_instances"),
                    format!(
                        "{max} is below the {} instances listed (or zero)",
                        obj.instances.len()
                    ),
                ));
            }
            for (iid, resources) in &obj.instances {
                let ikey = format!("{key}.instances.{iid}");
                if iid.0 == lwm2m_proto::ids::MAX_ID {
                    return Err(o.error(&ikey, "65535 is reserved (Core TS 1.1 §7.1)"));
                }
                for (rid, spec) in resources {
                    let rkey = format!("{ikey}.{rid}");
                    if rid.0 == lwm2m_proto::ids::MAX_ID {
                        return Err(o.error(&rkey, "65535 is reserved (Core TS 1.1 §7.1)"));
                    }
                    match spec {
                        ResourceSpec::Generator(g) => g.check().map_err(ResourceError::from),
                        ResourceSpec::Value(serde_yaml::Value::Mapping(m)) => {
                            resource_instances(m).map(drop)
                        }
                        ResourceSpec::Value(_) => Ok(()),
                    }
                    .map_err(|e| o.error(&rkey, e))?;
                }
            }
        }
        for (id, c) in &self.custom_objects {
            if c.resources.is_empty() {
                return Err(o.error(
                    &format!("custom_objects.{id}.resources"),
                    "a custom object needs resources",
                ));
            }
        }
        Ok(())
    }
}

/// Loads a profile file; its `name` must match the file stem.
pub fn load_profile(path: &Path, packs: &QuirkPacks) -> Result<Profile, ConfigError> {
    let profile = Profile::from_origin(config::read(path)?, packs)?;
    let stem = config::file_stem(path);
    if profile.name != stem {
        return Err(profile.origin.error(
            "name",
            format!("{:?} differs from the file name {stem:?}", profile.name),
        ));
    }
    Ok(profile)
}

/// A profile's objects with typed values: what every client of the profile starts from.
#[derive(Debug, Clone)]
pub struct DeviceTemplate {
    /// The objects by id.
    pub objects: BTreeMap<ObjectId, ObjectTemplate>,
    /// The generated resources, with generators seeded with 0 (see [`DeviceTemplate::instantiate`]).
    pub generators: Vec<(Lwm2mPath, Generator)>,
}

/// One object of a [`DeviceTemplate`].
#[derive(Debug, Clone)]
pub struct ObjectTemplate {
    /// The profile's own definition (custom object or variant); `None`: the registry's.
    pub definition: Option<Arc<ObjectDef>>,
    /// The object version to announce (`ver=`), if not the default.
    pub version: Option<String>,
    /// The most instances Create may make.
    pub max_instances: Option<usize>,
    /// The instances with typed initial values (generated resources hold the value at
    /// time zero of the template's generators).
    pub instances: BTreeMap<InstanceId, Instance>,
}

/// The starting values of one client.
#[derive(Debug, Clone)]
pub struct ClientValues {
    /// Instances by object, with the client's own generated values at time zero.
    pub instances: BTreeMap<ObjectId, BTreeMap<InstanceId, Instance>>,
    /// The client's generators, seeded from the fleet seed, the client number and the path.
    pub generators: Vec<(Lwm2mPath, Generator)>,
}

impl DeviceTemplate {
    /// The values of client number `client` in a fleet seeded with `seed`.
    pub fn instantiate(&self, seed: u64, client: u64) -> ClientValues {
        let mut instances: BTreeMap<ObjectId, BTreeMap<InstanceId, Instance>> = self
            .objects
            .iter()
            .map(|(&id, o)| (id, o.instances.clone()))
            .collect();
        let generators = self
            .generators
            .iter()
            .map(|(path, g)| {
                let mut g = g.reseeded(seed::seed_for(seed, client, path));
                if let Lwm2mPath::Resource(o, i, r) = *path
                    && let Some(inst) = instances.get_mut(&o).and_then(|m| m.get_mut(&i))
                {
                    inst.insert(r, ResourceValue::Single(g.next(Duration::ZERO)));
                }
                (*path, g)
            })
            .collect();
        ClientValues {
            instances,
            generators,
        }
    }
}

/// Looks up the profile's own definitions first, then the registry.
struct Overlay<'a> {
    local: &'a BTreeMap<ObjectId, ObjectDef>,
    registry: &'a dyn Schema,
}

impl Overlay<'_> {
    fn resource(
        &self,
        object: ObjectId,
        resource: ResourceId,
    ) -> Result<&ResourceDef, ResourceError> {
        match self.local.get(&object) {
            Some(def) => def
                .resource(resource)
                .ok_or(ResourceError::NotInProfile { object, resource }),
            None => self
                .registry
                .resource(object, resource)
                .ok_or(ResourceError::NotInRegistry { object, resource }),
        }
    }
}

/// Why a resource's entry in a profile (`objects.O.instances.I.R`) is not a value or a
/// generator of that resource. Reported through [`Origin::error`], which adds the file,
/// the line and the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
enum ResourceError {
    /// A resource the profile's own definition of the object does not have.
    #[error("object {object} of this profile has no resource {resource}")]
    NotInProfile {
        /// The object.
        object: ObjectId,
        /// The resource.
        resource: ResourceId,
    },
    /// A resource the registry does not define.
    #[error(
        "the registry does not define resource {object}/{resource} (declare unknown objects under custom_objects)"
    )]
    NotInRegistry {
        /// The object.
        object: ObjectId,
        /// The resource.
        resource: ResourceId,
    },
    /// A mapping key that is neither `generator` nor a resource instance id.
    #[error(
        "key {key}: a mapping is a generator (with a `generator:` key) or resource instance ids (0-65534) to values"
    )]
    InstanceKey {
        /// The key (YAML debug form).
        key: String,
    },
    /// A list longer than resource instance ids go.
    #[error("too many resource instances")]
    TooManyInstances,
    /// A value that is not of the resource's type.
    #[error("{source} (resource {name} is {ty})")]
    Value {
        /// Why the value does not fit.
        source: YamlValueError,
        /// The resource's name.
        name: String,
        /// The resource's type.
        ty: DataType,
    },
    /// One value for a multiple-instance resource.
    #[error("resource {name} is multiple-instance: give a list or an id mapping")]
    NeedsInstances {
        /// The resource's name.
        name: String,
    },
    /// Several values for a single-instance resource.
    #[error("resource {name} is single-instance: give one value")]
    NeedsOneValue {
        /// The resource's name.
        name: String,
    },
    /// A generator for a multiple-instance resource.
    #[error("generators drive single-instance resources only")]
    GeneratorOnMultiple,
    /// A generator whose parameters or values do not fit.
    #[error(transparent)]
    Generator(#[from] GeneratorError),
}

/// Types the profile's initial values and builds its generators against `registry` (the
/// object registry, or any [`Schema`]); the profile's custom objects and variants take
/// precedence. Errors name the profile's file, the line and the resource's key.
pub fn instances_for(
    profile: &Profile,
    registry: &dyn Schema,
) -> Result<DeviceTemplate, ConfigError> {
    let local = profile.local_definitions();
    let overlay = Overlay {
        local: &local,
        registry,
    };
    let mut objects = BTreeMap::new();
    let mut generators = Vec::new();
    for (&oid, spec) in &profile.objects {
        let mut instances = BTreeMap::new();
        for (&iid, resources) in &spec.instances {
            let mut instance = Instance::new();
            for (&rid, rspec) in resources {
                let key = format!("objects.{oid}.instances.{iid}.{rid}");
                let fail = |e: ResourceError| profile.origin.error(&key, e);
                let def = overlay.resource(oid, rid).map_err(fail)?;
                let value = match rspec {
                    ResourceSpec::Value(yaml) => typed_resource(def, yaml).map_err(fail)?,
                    ResourceSpec::Generator(g) => {
                        if def.multiple {
                            return Err(fail(ResourceError::GeneratorOnMultiple));
                        }
                        let mut generator =
                            Generator::new(g, def.data_type, 0).map_err(|e| fail(e.into()))?;
                        let first = generator.next(Duration::ZERO);
                        generators
                            .push((Lwm2mPath::Resource(oid, iid, rid), generator.reseeded(0)));
                        ResourceValue::Single(first)
                    }
                };
                instance.insert(rid, value);
            }
            instances.insert(iid, instance);
        }
        objects.insert(
            oid,
            ObjectTemplate {
                definition: local.get(&oid).cloned().map(Arc::new),
                version: spec.version.clone(),
                max_instances: spec.max_instances,
                instances,
            },
        );
    }
    Ok(DeviceTemplate {
        objects,
        generators,
    })
}

/// The entries of a resource-instance mapping (`{0: a, 5: b}`), by id.
fn resource_instances(
    m: &serde_yaml::Mapping,
) -> Result<Vec<(ResourceInstanceId, &serde_yaml::Value)>, ResourceError> {
    m.iter()
        .map(|(k, v)| {
            k.as_u64()
                .and_then(|id| u16::try_from(id).ok())
                .filter(|&id| id != lwm2m_proto::ids::MAX_ID)
                .map(|id| (ResourceInstanceId(id), v))
                .ok_or_else(|| ResourceError::InstanceKey {
                    key: format!("{k:?}"),
                })
        })
        .collect()
}

/// Types one initial value: a scalar for a single resource; a list or an id mapping for a
/// multiple one.
fn typed_resource(
    def: &ResourceDef,
    yaml: &serde_yaml::Value,
) -> Result<ResourceValue, ResourceError> {
    let ty = def.data_type;
    let with_type = |source| ResourceError::Value {
        source,
        name: def.name.clone(),
        ty,
    };
    let entries: Vec<(ResourceInstanceId, &serde_yaml::Value)> = match yaml {
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(n, item)| {
                u16::try_from(n)
                    .map(|id| (ResourceInstanceId(id), item))
                    .map_err(|_| ResourceError::TooManyInstances)
            })
            .collect::<Result<_, _>>()?,
        serde_yaml::Value::Mapping(m) => resource_instances(m)?,
        v if !def.multiple => {
            return typed_value(ty, v)
                .map(ResourceValue::Single)
                .map_err(with_type);
        }
        _ => {
            return Err(ResourceError::NeedsInstances {
                name: def.name.clone(),
            });
        }
    };
    if !def.multiple {
        return Err(ResourceError::NeedsOneValue {
            name: def.name.clone(),
        });
    }
    entries
        .into_iter()
        .map(|(id, v)| Ok((id, typed_value(ty, v).map_err(with_type)?)))
        .collect::<Result<_, ResourceError>>()
        .map(ResourceValue::Multiple)
}

#[cfg(test)]
mod tests;
