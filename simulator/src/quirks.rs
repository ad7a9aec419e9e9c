//! Quirks: known deviations of real LwM2M clients that a simulated client can reproduce,
//! and quirk packs (`scenarios/quirks/*.yaml`) that group them with a note on where the
//! deviation was seen.
//!
//! In YAML a quirk is its kebab-case name, or a one-key mapping when it takes parameters:
//!
//! ```yaml
//! quirks:
//!   - ignore-accept
//!   - late-responses                  # default parameters
//!   - late-responses: { delay: 5s }   # explicit parameters
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use lwm2m_proto::{ObjectDef, ObjectId, Operations, ResourceDef, ResourceId};
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::config::{self, ConfigError, Origin};

/// One deviation from the specification a simulated client shows.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Quirk {
    /// `pre-1-0-location`: the Location object (6) as in the April 2016 candidate: latitude,
    /// longitude and altitude as strings and resource 3 "Uncertainty" (a string), where
    /// LwM2M 1.0 (February 2017) has floats and resource 3 "Radius" (Core TS 1.0 Appendix E.7).
    /// The profile declares object 6 with `variant: pre-1.0`.
    Pre10Location,
    /// `legacy-content-formats`: pre-1.0 Content-Format numbers (1542 TLV, 1543 JSON)
    /// instead of 11542 and 11543 (Core TS 1.0 §6.4); the profile lists them as formats.
    LegacyContentFormats,
    /// `no-lwm2m-version`: Register without the `lwm2m=` parameter (Core TS 1.1 §6.2.1);
    /// the server assumes 1.0.
    NoLwm2mVersion,
    /// `legacy-queue-binding`: a 1.1+ client sends the 1.0 queue binding `b=UQ` instead of
    /// `b=U` and the `Q` parameter (Core TS 1.1 §6.2.1).
    LegacyQueueBinding,
    /// `non-minimal-tlv-integers`: TLV integers always in 8 bytes, not the shortest of
    /// 1, 2, 4, 8 bytes that holds the value (Core TS 1.0 §6.4.3).
    NonMinimalTlvIntegers,
    /// `ignore-accept`: answers a Read in the client's preferred format whatever the
    /// Accept option asks (Core TS 1.1 §5.4.1 wants the requested format or 4.06).
    IgnoreAccept,
    /// `wrong-success-codes`: answers Write and Execute with 2.05 Content instead of
    /// 2.04 Changed, and Create with 2.04 instead of 2.01 Created (Core TS 1.1 §5.4, the
    /// CoAP mapping of the Device Management interface).
    WrongSuccessCodes,
    /// `late-responses`: answers requests only after `delay` as a separate response, so the
    /// server's confirmable request may be retransmitted (RFC 7252 §4.2, §5.2.2).
    LateResponses {
        /// The delay before the response (default 3 s, beyond ACK_TIMEOUT 2 s).
        delay: Duration,
    },
    /// `duplicate-responses`: sends each response `copies` more times (RFC 7252 §4.5
    /// wants the server to deduplicate).
    DuplicateResponses {
        /// Extra copies of each response (default 1).
        copies: u32,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LateParams {
    #[serde(with = "crate::duration")]
    delay: Duration,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DuplicateParams {
    copies: u32,
}

impl Quirk {
    /// Every quirk name.
    pub const NAMES: [&'static str; 9] = [
        "pre-1-0-location",
        "legacy-content-formats",
        "no-lwm2m-version",
        "legacy-queue-binding",
        "non-minimal-tlv-integers",
        "ignore-accept",
        "wrong-success-codes",
        "late-responses",
        "duplicate-responses",
    ];

    /// The kebab-case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pre10Location => "pre-1-0-location",
            Self::LegacyContentFormats => "legacy-content-formats",
            Self::NoLwm2mVersion => "no-lwm2m-version",
            Self::LegacyQueueBinding => "legacy-queue-binding",
            Self::NonMinimalTlvIntegers => "non-minimal-tlv-integers",
            Self::IgnoreAccept => "ignore-accept",
            Self::WrongSuccessCodes => "wrong-success-codes",
            Self::LateResponses { .. } => "late-responses",
            Self::DuplicateResponses { .. } => "duplicate-responses",
        }
    }

    /// The quirk with this name, with default parameters.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pre-1-0-location" => Self::Pre10Location,
            "legacy-content-formats" => Self::LegacyContentFormats,
            "no-lwm2m-version" => Self::NoLwm2mVersion,
            "legacy-queue-binding" => Self::LegacyQueueBinding,
            "non-minimal-tlv-integers" => Self::NonMinimalTlvIntegers,
            "ignore-accept" => Self::IgnoreAccept,
            "wrong-success-codes" => Self::WrongSuccessCodes,
            "late-responses" => Self::LateResponses {
                delay: Duration::from_secs(3),
            },
            "duplicate-responses" => Self::DuplicateResponses { copies: 1 },
            _ => return None,
        })
    }
}

impl fmt::Display for Quirk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads `{name: {params}}`, the parameter form of a quirk.
fn quirk_from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Quirk, A::Error> {
    let name: String = map
        .next_key()?
        .ok_or_else(|| de::Error::custom("empty mapping; expected `quirk-name: {parameters}`"))?;
    let quirk = match name.as_str() {
        "late-responses" => {
            let p: LateParams = map.next_value()?;
            Quirk::LateResponses { delay: p.delay }
        }
        "duplicate-responses" => {
            let p: DuplicateParams = map.next_value()?;
            if p.copies == 0 {
                return Err(de::Error::custom(
                    "duplicate-responses: copies must be at least 1",
                ));
            }
            Quirk::DuplicateResponses { copies: p.copies }
        }
        other => {
            return Err(match Quirk::from_name(other) {
                Some(_) => de::Error::custom(format!("quirk `{other}` takes no parameters")),
                None => de::Error::unknown_variant(other, &Quirk::NAMES),
            });
        }
    };
    if let Some(extra) = map.next_key::<String>()? {
        return Err(de::Error::custom(format!(
            "one quirk per list entry; `{extra}` needs its own `- ` line"
        )));
    }
    Ok(quirk)
}

impl<'de> serde::Deserialize<'de> for Quirk {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Quirk;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quirk name, or `quirk-name: {parameters}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quirk, E> {
                Quirk::from_name(v).ok_or_else(|| E::unknown_variant(v, &Quirk::NAMES))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Quirk, A::Error> {
                quirk_from_map(map)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// An entry of a profile's `quirks:` list: a quirk, or the name of a quirk pack.
#[derive(Debug, Clone, PartialEq)]
pub enum QuirkRef {
    /// A single quirk.
    Quirk(Quirk),
    /// A pack from `scenarios/quirks/`, by file stem.
    Pack(String),
}

impl QuirkRef {
    /// A quirk by its name (with its default parameters), else the pack of that name.
    pub fn from_name(name: &str) -> Self {
        Quirk::from_name(name).map_or_else(|| Self::Pack(name.to_owned()), Self::Quirk)
    }
}

impl<'de> serde::Deserialize<'de> for QuirkRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QuirkRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quirk or quirk pack name, or `quirk-name: {parameters}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QuirkRef, E> {
                Ok(QuirkRef::from_name(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<QuirkRef, A::Error> {
                quirk_from_map(map).map(QuirkRef::Quirk)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A named group of quirks with a note on where they were seen (`scenarios/quirks/NAME.yaml`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuirkPack {
    /// What the pack reproduces.
    pub description: String,
    /// Where the deviations were seen (implementation, version, date, source), or that
    /// the pack is synthetic.
    pub seen_in: String,
    /// The quirks.
    pub quirks: Vec<Quirk>,
}

/// Quirk packs by name (file stem).
pub type QuirkPacks = BTreeMap<String, QuirkPack>;

impl QuirkPack {
    /// Parses and checks a pack; errors name `source`, the line and the key.
    pub fn from_yaml(source: &str, text: &str) -> Result<Self, ConfigError> {
        Self::from_origin(&Origin::new(source, text))
    }

    fn from_origin(origin: &Origin) -> Result<Self, ConfigError> {
        let pack: Self = origin.parse()?;
        if pack.seen_in.trim().is_empty() {
            return Err(origin.error("seen_in", "say where the deviation was seen"));
        }
        if pack.quirks.is_empty() {
            return Err(origin.error("quirks", "a pack lists at least one quirk"));
        }
        Ok(pack)
    }
}

/// Loads a pack file; the pack's name is the file stem, which must not be a quirk's name
/// (a profile's `quirks:` entry would be ambiguous).
pub fn load_quirk_pack(path: &Path) -> Result<(String, QuirkPack), ConfigError> {
    let origin = config::read(path)?;
    let pack = QuirkPack::from_origin(&origin)?;
    let name = config::file_stem(path);
    if Quirk::from_name(&name).is_some() {
        return Err(ConfigError::Invalid {
            file: origin.file().to_owned(),
            line: 1,
            column: 1,
            message: format!("the pack name `{name}` is a quirk's name; rename the file"),
        });
    }
    Ok((name, pack))
}

/// The Location object (6) as the April 2016 LwM2M 1.0 candidate defined it: latitude,
/// longitude, altitude and uncertainty as strings (see [`Quirk::Pre10Location`]).
pub fn pre_1_0_location() -> ObjectDef {
    let resource = |id: u16, name: &str, data_type, units: &str| {
        (
            ResourceId(id),
            ResourceDef {
                id: ResourceId(id),
                name: name.to_owned(),
                operations: Operations::R,
                multiple: false,
                mandatory: id <= 1 || id == 5,
                data_type,
                range: String::new(),
                units: units.to_owned(),
                description: String::new(),
            },
        )
    };
    use lwm2m_proto::DataType::{Opaque, String as Str, Time};
    ObjectDef {
        id: ObjectId(6),
        name: "Location".to_owned(),
        description: "Location as in the LwM2M 1.0 candidate of April 2016 (strings)".to_owned(),
        urn: "urn:oma:lwm2m:oma:6".to_owned(),
        version: "1.0".to_owned(),
        lwm2m_version: "1.0".to_owned(),
        multiple: false,
        mandatory: false,
        resources: [
            resource(0, "Latitude", Str, "Deg"),
            resource(1, "Longitude", Str, "Deg"),
            resource(2, "Altitude", Str, "m"),
            resource(3, "Uncertainty", Str, "m"),
            resource(4, "Velocity", Opaque, ""),
            resource(5, "Timestamp", Time, ""),
        ]
        .into_iter()
        .collect(),
    }
}

/// The client machine's switches for a list of quirks. `pre-1-0-location` needs none: it
/// is the profile's definition of object 6.
pub fn client_quirks<'a>(list: impl IntoIterator<Item = &'a Quirk>) -> lwm2m_proto::client::Quirks {
    let mut q = lwm2m_proto::client::Quirks::default();
    for quirk in list {
        match quirk {
            Quirk::LegacyContentFormats => q.legacy_content_formats = true,
            Quirk::NoLwm2mVersion => q.no_lwm2m_version = true,
            Quirk::LegacyQueueBinding => q.legacy_queue_binding = true,
            Quirk::NonMinimalTlvIntegers => q.non_minimal_tlv_integers = true,
            Quirk::IgnoreAccept => q.ignore_accept = true,
            Quirk::WrongSuccessCodes => q.wrong_success_codes = true,
            Quirk::LateResponses { delay } => q.late_responses = Some(*delay),
            Quirk::DuplicateResponses { copies } => q.duplicate_responses = *copies,
            Quirk::Pre10Location => {}
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Quirk::NAMES {
            assert_eq!(Quirk::from_name(name).unwrap().name(), name);
        }
    }

    #[test]
    fn plain_and_parameter_forms() {
        let qs: Vec<Quirk> = serde_yaml::from_str(
            "[ignore-accept, late-responses, {late-responses: {delay: 5s}}, {duplicate-responses: {copies: 2}}]",
        )
        .unwrap();
        assert_eq!(
            qs,
            vec![
                Quirk::IgnoreAccept,
                Quirk::LateResponses {
                    delay: Duration::from_secs(3)
                },
                Quirk::LateResponses {
                    delay: Duration::from_secs(5)
                },
                Quirk::DuplicateResponses { copies: 2 },
            ]
        );
        let refs: Vec<QuirkRef> = serde_yaml::from_str("[ignore-accept, wakaama-2017]").unwrap();
        assert_eq!(refs[1], QuirkRef::Pack("wakaama-2017".into()));
    }

    #[test]
    fn errors_name_the_quirk() {
        for (yaml, want) in [
            ("[ignore-acept]", "unknown variant `ignore-acept`"),
            (
                "[{ignore-accept: {}}]",
                "quirk `ignore-accept` takes no parameters",
            ),
            ("[{late-responses: {delay: 5}}]", "duration 5 has no unit"),
            ("[{late-responses: {dealy: 5s}}]", "unknown field `dealy`"),
            ("[{duplicate-responses: {copies: 0}}]", "at least 1"),
            (
                "[{late-responses: {delay: 1s}, ignore-accept: ~}]",
                "one quirk per list entry",
            ),
        ] {
            let err = serde_yaml::from_str::<Vec<Quirk>>(yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn pack_needs_seen_in() {
        let err = QuirkPack::from_yaml(
            "p.yaml",
            "description: x\nseen_in: ''\nquirks: [ignore-accept]\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "p.yaml:2:1: seen_in: say where the deviation was seen");
    }
}
