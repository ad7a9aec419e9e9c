//! The device description a vendor gives with `test --device-profile FILE`: what the
//! device under test is configured with, so that the cases that read configuration values
//! (the ETS configuration C.6: manufacturer "Open Mobile Alliance", binding "U", ...) check
//! the vendor's values instead of the ETS's.
//!
//! Without a description such a case checks what the specification fixes (the value is
//! present and of its resource's type); the ETS's own values are not conformance. With one,
//! a declared value that differs fails the case. The in-process suite runs with
//! `features/devices/ets-simulated.yaml`, the description of our simulated ETS device, so its
//! checks stay exact.
//!
//! ```yaml
//! # my-device.yaml
//! name: ACME sensor 2.1        # for the report
//! short_server_id: 101         # the SSID of its account on our server (default: the
//!                              # only /1 instance it announces)
//! values:                      # endpoint-independent values it is configured with
//!   /3/0/0: ACME
//!   /3/0/16: UQ
//! features:                    # optional features it has: a refusal of one is a failure,
//!   - senml-json               # not "not supported" (content formats by name or number,
//!   - /1/0/4                   # resources by path: Disable)
//! instances:                   # object instances it has: its Register must announce them,
//!   - /3303/0                  # and a case that needs one runs (a missing one fails
//!   - /16/0                    # the case rather than making it not applicable)
//! ```
//!
//! Unknown keys are refused; errors name the file and line.

use std::collections::BTreeMap;
use std::path::Path;

use lwm2m_proto::Lwm2mPath;

/// A device description (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDescription {
    /// What the device is, for the report.
    #[serde(default)]
    pub name: Option<String>,
    /// The Short Server ID of the device's account on our LwM2M Server (Core TS 1.1
    /// E.2, resource 1/x/0); the cases find the account's Server instance by it.
    #[serde(default)]
    pub short_server_id: Option<u16>,
    /// Configured values, by resource (or resource instance) path, as text.
    #[serde(default)]
    pub values: BTreeMap<String, serde_yaml::Value>,
    /// Optional features the vendor declares: content formats (`senml-json`, `11543`)
    /// and resources (`/1/0/4`). The device refusing one of them fails the case.
    #[serde(default)]
    pub features: Vec<String>,
    /// Object instances the vendor declares (`/3303/0`): the device's Register must
    /// announce each, and a case that needs one is tested, not "not applicable".
    #[serde(default)]
    pub instances: Vec<String>,
}

/// A device description that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptionError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not fit the schema.
    #[error("{file}:{line}: {message}")]
    Schema {
        /// The file.
        file: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong, with the key.
        message: String,
    },
}

impl DeviceDescription {
    /// Reads a description file.
    pub fn load(path: &Path) -> Result<Self, DescriptionError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DescriptionError::Io {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// Parses a description; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, DescriptionError> {
        let schema = |line: usize, message: String| DescriptionError::Schema {
            file: file.to_owned(),
            line,
            message,
        };
        let d: Self = serde_yaml::from_str(text)
            .map_err(|e| schema(e.location().map_or(1, |l| l.line()), e.to_string()))?;
        for (path, value) in &d.values {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with(path.as_str()))
                .map_or(1, |n| n + 1);
            let parsed: Lwm2mPath = path
                .parse()
                .map_err(|e| schema(line, format!("values: {path:?} is not a path: {e}")))?;
            if parsed.resource_id().is_none() {
                return Err(schema(
                    line,
                    format!("values: {path} is not a resource or resource instance"),
                ));
            }
            if value_text(value).is_none() {
                return Err(schema(
                    line,
                    format!("values: {path}: expected a string, number or boolean"),
                ));
            }
        }
        for feature in &d.features {
            let line = text
                .lines()
                .position(|l| l.trim_start().trim_start_matches("- ").trim() == feature)
                .map_or(1, |n| n + 1);
            let format = lwm2m_proto::ContentFormat::from_name(feature).is_some();
            let resource = feature
                .parse::<Lwm2mPath>()
                .is_ok_and(|p| p.resource_id().is_some());
            if !format && !resource {
                return Err(schema(
                    line,
                    format!(
                        "features: {feature:?} is neither a content format (senml-json, \
                         11543, ...) nor a resource path (/1/0/4)"
                    ),
                ));
            }
        }
        for instance in &d.instances {
            let line = text
                .lines()
                .position(|l| l.trim_start().trim_start_matches("- ").trim() == instance)
                .map_or(1, |n| n + 1);
            if !matches!(instance.parse::<Lwm2mPath>(), Ok(Lwm2mPath::Instance(..))) {
                return Err(schema(
                    line,
                    format!("instances: {instance:?} is not an object instance path (/3303/0)"),
                ));
            }
        }
        Ok(d)
    }

    /// The object instances the vendor declares.
    pub fn declared_instances(&self) -> Vec<Lwm2mPath> {
        self.instances
            .iter()
            .filter_map(|i| i.parse().ok())
            .collect()
    }

    /// Whether the vendor declares the instance (or the object, for an object path) of
    /// `path`.
    pub fn declares_instance(&self, path: &Lwm2mPath) -> bool {
        self.declared_instances().iter().any(|d| {
            d.object_id() == path.object_id()
                && (path.instance_id().is_none() || d.instance_id() == path.instance_id())
        })
    }

    /// Whether the vendor declares the content format `format`.
    pub fn declares_format(&self, format: lwm2m_proto::ContentFormat) -> bool {
        self.features
            .iter()
            .any(|f| lwm2m_proto::ContentFormat::from_name(f) == Some(format))
    }

    /// Whether the vendor declares the resource at `path` (its object and resource ids:
    /// `/1/0/4` declares Disable of every Server instance).
    pub fn declares_resource(&self, path: &Lwm2mPath) -> bool {
        self.features.iter().any(|f| {
            f.parse::<Lwm2mPath>().is_ok_and(|d| {
                d.object_id() == path.object_id() && d.resource_id() == path.resource_id()
            })
        })
    }

    /// The configured value of `path`, as text, if the description declares one.
    pub fn value(&self, path: &Lwm2mPath) -> Option<String> {
        self.values
            .iter()
            .find(|(p, _)| p.parse::<Lwm2mPath>().is_ok_and(|p| p == *path))
            .and_then(|(_, v)| value_text(v))
    }
}

fn value_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_account() {
        let d = DeviceDescription::parse(
            "d.yaml",
            "short_server_id: 101\nvalues:\n  /3/0/0: ACME\n  /1/0/1: 300\n  /1/0/6: false\n",
        )
        .unwrap();
        assert_eq!(d.short_server_id, Some(101));
        assert_eq!(d.value(&"/3/0/0".parse().unwrap()).as_deref(), Some("ACME"));
        assert_eq!(d.value(&"/1/0/1".parse().unwrap()).as_deref(), Some("300"));
        assert_eq!(
            d.value(&"/1/0/6".parse().unwrap()).as_deref(),
            Some("false")
        );
        assert_eq!(d.value(&"/3/0/1".parse().unwrap()), None);
    }

    #[test]
    fn declared_features() {
        let d =
            DeviceDescription::parse("d.yaml", "features:\n  - senml-json\n  - /1/0/4\n").unwrap();
        assert!(d.declares_format(lwm2m_proto::ContentFormat::SenmlJson));
        assert!(!d.declares_format(lwm2m_proto::ContentFormat::SenmlCbor));
        assert!(d.declares_resource(&"/1/1/4".parse().unwrap()));
        assert!(!d.declares_resource(&"/1/1/9".parse().unwrap()));
        let e = DeviceDescription::parse("d.yaml", "name: x\nfeatures:\n  - turbo\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.yaml:3:") && e.contains("turbo"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_paths_name_the_file_and_line() {
        let e = DeviceDescription::parse("d.yaml", "name: x\nvalue:\n  /3/0/0: ACME\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.yaml:2:") && e.contains("value"), "{e}");
        let e = DeviceDescription::parse("d.yaml", "values:\n  /3/0/0: ACME\n  /3/x: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.yaml:3:") && e.contains("/3/x"), "{e}");
        let e = DeviceDescription::parse("d.yaml", "values:\n  /3/0: ACME\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a resource"), "{e}");
    }

    #[test]
    fn declared_instances() {
        let d = DeviceDescription::parse("d.yaml", "instances:\n  - /3303/0\n  - /16/0\n").unwrap();
        assert!(d.declares_instance(&"/3303/0/5700".parse().unwrap()));
        assert!(d.declares_instance(&"/16".parse().unwrap()));
        assert!(!d.declares_instance(&"/3303/1".parse().unwrap()));
        let e = DeviceDescription::parse("d.yaml", "name: x\ninstances:\n  - /3303\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.yaml:3:") && e.contains("/3303"), "{e}");
    }

    #[test]
    fn the_simulated_ets_device_description_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let d = DeviceDescription::load(&root.join("features/devices/ets-simulated.yaml")).unwrap();
        assert_eq!(
            d.value(&"/3/0/0".parse().unwrap()).as_deref(),
            Some("Open Mobile Alliance")
        );
    }
}
