//! Object and resource definitions (Core TS 1.1 §7.1 and the OMA DDF schema LWM2M.xsd),
//! and the [`Schema`] view that content codecs use to type values.

use std::collections::BTreeMap;

use crate::ids::{ObjectId, ResourceId};
use crate::value::DataType;

/// The operations a resource allows (DDF `<Operations>`: R, W, RW, E or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Operations {
    /// No operation (a resource only the bootstrap interface touches, e.g. Security).
    None,
    /// Read.
    R,
    /// Write.
    W,
    /// Read and write.
    RW,
    /// Execute.
    E,
}

impl Operations {
    /// True if Read is allowed.
    pub fn readable(self) -> bool {
        matches!(self, Self::R | Self::RW)
    }
    /// True if Write is allowed.
    pub fn writable(self) -> bool {
        matches!(self, Self::W | Self::RW)
    }
    /// True if Execute is allowed.
    pub fn executable(self) -> bool {
        matches!(self, Self::E)
    }
    /// Parses the DDF text (`R`, `W`, `RW`, `E`, empty).
    pub fn from_ddf(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "" | "NONE" => Self::None,
            "R" => Self::R,
            "W" => Self::W,
            "RW" | "WR" => Self::RW,
            "E" => Self::E,
            _ => return None,
        })
    }
}

/// One resource of an object definition.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResourceDef {
    /// Resource id.
    pub id: ResourceId,
    /// Name, e.g. "Manufacturer".
    pub name: String,
    /// Allowed operations.
    pub operations: Operations,
    /// True for a multiple-instance resource.
    pub multiple: bool,
    /// True if mandatory.
    pub mandatory: bool,
    /// Data type.
    pub data_type: DataType,
    /// Range or enumeration text from the DDF, e.g. "0..100" (empty if none).
    pub range: String,
    /// Units, e.g. "Cel" (empty if none).
    pub units: String,
    /// Description.
    pub description: String,
}

impl ResourceDef {
    /// A resource definition with empty range, units and description, optional; see
    /// [`ResourceDef::mandatory`] and [`ResourceDef::with_units`].
    pub fn new(
        id: u16,
        name: impl Into<String>,
        operations: Operations,
        data_type: DataType,
        multiple: bool,
    ) -> Self {
        Self {
            id: ResourceId(id),
            name: name.into(),
            operations,
            multiple,
            mandatory: false,
            data_type,
            range: String::new(),
            units: String::new(),
            description: String::new(),
        }
    }

    /// The same, mandatory.
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    /// The same, with units.
    pub fn with_units(mut self, units: impl Into<String>) -> Self {
        self.units = units.into();
        self
    }
}

/// One object definition, at one object version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ObjectDef {
    /// Object id.
    pub id: ObjectId,
    /// Name, e.g. "Device".
    pub name: String,
    /// Description.
    pub description: String,
    /// URN, e.g. `urn:oma:lwm2m:oma:3:1.1`.
    pub urn: String,
    /// Object version, e.g. "1.0" or "1.1".
    pub version: String,
    /// The LwM2M enabler version the object is written for, e.g. "1.0".
    pub lwm2m_version: String,
    /// True if the object can have several instances.
    pub multiple: bool,
    /// True if mandatory.
    pub mandatory: bool,
    /// The resources by id.
    pub resources: BTreeMap<ResourceId, ResourceDef>,
}

impl ObjectDef {
    /// An optional object definition for LwM2M 1.0 with a URN derived from its id; see
    /// the public fields for the rest.
    pub fn new(
        id: u16,
        name: impl Into<String>,
        version: impl Into<String>,
        multiple: bool,
        resources: impl IntoIterator<Item = ResourceDef>,
    ) -> Self {
        let version = version.into();
        Self {
            id: ObjectId(id),
            name: name.into(),
            description: String::new(),
            urn: format!("urn:oma:lwm2m:x:{id}:{version}"),
            version,
            lwm2m_version: "1.0".into(),
            multiple,
            mandatory: false,
            resources: resources.into_iter().map(|r| (r.id, r)).collect(),
        }
    }

    /// The resource definition, if the object has it.
    pub fn resource(&self, id: ResourceId) -> Option<&ResourceDef> {
        self.resources.get(&id)
    }
}

/// What a content codec needs to know about the objects: the definition of a resource.
///
/// The registry implements it (choosing object versions); [`NoSchema`] knows nothing, so
/// codecs fall back to what the format itself says (and report unknown resources).
pub trait Schema {
    /// The definition of resource `resource` of object `object`, if known.
    fn resource(&self, object: ObjectId, resource: ResourceId) -> Option<&ResourceDef>;
}

/// A schema that knows no object.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSchema;

impl Schema for NoSchema {
    fn resource(&self, _: ObjectId, _: ResourceId) -> Option<&ResourceDef> {
        None
    }
}

/// A list of definitions (one version per object) is a schema: the first that knows the
/// resource answers.
impl Schema for [ObjectDef] {
    fn resource(&self, object: ObjectId, resource: ResourceId) -> Option<&ResourceDef> {
        self.iter()
            .find_map(|o| Schema::resource(o, object, resource))
    }
}

impl Schema for Vec<ObjectDef> {
    fn resource(&self, object: ObjectId, resource: ResourceId) -> Option<&ResourceDef> {
        self.as_slice().resource(object, resource)
    }
}

impl Schema for ObjectDef {
    fn resource(&self, object: ObjectId, resource: ResourceId) -> Option<&ResourceDef> {
        if object == self.id {
            self.resources.get(&resource)
        } else {
            None
        }
    }
}
