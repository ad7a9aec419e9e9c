//! The content of LwM2M payloads: a tree of nodes below a target path, and the flat
//! record list that SenML-style formats carry (Core TS 1.1 §7.4).
//!
//! A [`Node`] is always paired with the [`Lwm2mPath`] it sits at; its level matches the
//! path's depth (an [`Node::Object`] at `/O`, an [`Node::Instance`] at `/O/I`, ...).

use std::collections::BTreeMap;

use crate::ids::{InstanceId, Lwm2mPath, ResourceId, ResourceInstanceId};
use crate::value::Value;

/// The resources of one object instance.
pub type Instance = BTreeMap<ResourceId, ResourceValue>;

/// The value of a resource: single, or a multiple resource with its instances.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceValue {
    /// A single-instance resource.
    Single(Value),
    /// A multiple-instance resource (possibly with no instances).
    Multiple(BTreeMap<ResourceInstanceId, Value>),
}

/// A subtree of the object tree, at the level of its path.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// All instances of an object.
    Object(BTreeMap<InstanceId, Instance>),
    /// The resources of one instance.
    Instance(Instance),
    /// One resource.
    Resource(ResourceValue),
    /// One resource instance.
    ResourceInstance(Value),
}

/// One flat entry: a value (or just a path, for Read-Composite requests) at a resource or
/// resource-instance path, with an optional timestamp (SenML `bt`+`t`, OMA JSON `t`).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The resolved path (base name + name).
    pub path: Lwm2mPath,
    /// The value, `None` when the record names a path only.
    pub value: Option<Value>,
    /// Resolved time in seconds (absolute when above 2^28, else relative to now, RFC 8428 §4.5.3).
    pub time: Option<f64>,
}

/// Why a set of records or nodes does not form a tree at a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// The node level does not match the path depth.
    #[error("a {node} node cannot sit at {path}")]
    LevelMismatch {
        /// The path.
        path: Lwm2mPath,
        /// The node kind.
        node: &'static str,
    },
    /// A record lies outside the target path.
    #[error("record {record} is not below the target {target}")]
    OutsideTarget {
        /// The target.
        target: Lwm2mPath,
        /// The record's path.
        record: Lwm2mPath,
    },
    /// A record is at object or instance level, or the root, where a value must sit at a
    /// resource or resource instance.
    #[error("record {record} is not a resource or resource instance path")]
    NotAValuePath {
        /// The record's path.
        record: Lwm2mPath,
    },
    /// The same resource appears as single and as multiple, or twice.
    #[error("conflicting values for {path}")]
    Conflict {
        /// The path.
        path: Lwm2mPath,
    },
    /// A record has no value where one is needed.
    #[error("record {path} has no value")]
    MissingValue {
        /// The path.
        path: Lwm2mPath,
    },
}

impl Node {
    /// The node's kind in words.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Object(_) => "object",
            Self::Instance(_) => "object instance",
            Self::Resource(_) => "resource",
            Self::ResourceInstance(_) => "resource instance",
        }
    }

    /// Checks that the node's level fits `path`.
    pub fn check_level(&self, path: &Lwm2mPath) -> Result<(), ShapeError> {
        let ok = matches!(
            (self, path),
            (Self::Object(_), Lwm2mPath::Object(..))
                | (Self::Instance(_), Lwm2mPath::Instance(..))
                | (Self::Resource(_), Lwm2mPath::Resource(..))
                | (Self::ResourceInstance(_), Lwm2mPath::ResourceInstance(..))
        );
        if ok {
            Ok(())
        } else {
            Err(ShapeError::LevelMismatch {
                path: *path,
                node: self.kind(),
            })
        }
    }

    /// Flattens the node at `path` into records without timestamps, in path order.
    /// A single resource gives a record at `/O/I/R`, a multiple resource one record per
    /// instance at `/O/I/R/RI`.
    pub fn to_records(&self, path: &Lwm2mPath) -> Vec<Record> {
        let mut out = Vec::new();
        let rec = |out: &mut Vec<Record>, path: Lwm2mPath, v: &Value| {
            out.push(Record {
                path,
                value: Some(v.clone()),
                time: None,
            })
        };
        let resource = |out: &mut Vec<Record>, path: Lwm2mPath, r: &ResourceValue| match r {
            ResourceValue::Single(v) => rec(out, path, v),
            ResourceValue::Multiple(m) => {
                for (ri, v) in m {
                    if let Some(p) = path.child(ri.0) {
                        rec(out, p, v);
                    }
                }
            }
        };
        let instance = |out: &mut Vec<Record>, path: Lwm2mPath, inst: &Instance| {
            for (r, v) in inst {
                if let Some(p) = path.child(r.0) {
                    resource(out, p, v);
                }
            }
        };
        match self {
            Self::Object(insts) => {
                for (i, inst) in insts {
                    if let Some(p) = path.child(i.0) {
                        instance(&mut out, p, inst);
                    }
                }
            }
            Self::Instance(inst) => instance(&mut out, *path, inst),
            Self::Resource(r) => resource(&mut out, *path, r),
            Self::ResourceInstance(v) => rec(&mut out, *path, v),
        }
        out
    }

    /// Builds the node at `target` from records (their times are ignored).
    ///
    /// `is_multiple(path)` tells whether the resource at `/O/I/R` is a multiple resource;
    /// a record at `/O/I/R/RI` always makes its resource multiple. Records must lie below
    /// or at the target and at resource or resource-instance level.
    pub fn from_records(
        target: &Lwm2mPath,
        records: &[Record],
        is_multiple: &dyn Fn(&Lwm2mPath) -> bool,
    ) -> Result<Self, ShapeError> {
        let mut insts: BTreeMap<InstanceId, Instance> = BTreeMap::new();
        for r in records {
            if !target.is_prefix_of(&r.path) {
                return Err(ShapeError::OutsideTarget {
                    target: *target,
                    record: r.path,
                });
            }
            let value = r
                .value
                .clone()
                .ok_or(ShapeError::MissingValue { path: r.path })?;
            let (i, res, ri) = match r.path {
                Lwm2mPath::Resource(_, i, res) => (i, res, None),
                Lwm2mPath::ResourceInstance(_, i, res, ri) => (i, res, Some(ri)),
                _ => return Err(ShapeError::NotAValuePath { record: r.path }),
            };
            let inst = insts.entry(i).or_default();
            let conflict = ShapeError::Conflict { path: r.path };
            match ri {
                None if is_multiple(&r.path) => {
                    // A multiple resource given a bare value: not representable.
                    return Err(conflict);
                }
                None => {
                    if inst.insert(res, ResourceValue::Single(value)).is_some() {
                        return Err(conflict);
                    }
                }
                Some(ri) => {
                    let entry = inst
                        .entry(res)
                        .or_insert_with(|| ResourceValue::Multiple(BTreeMap::new()));
                    match entry {
                        ResourceValue::Multiple(m) => {
                            if m.insert(ri, value).is_some() {
                                return Err(conflict);
                            }
                        }
                        ResourceValue::Single(_) => return Err(conflict),
                    }
                }
            }
        }
        match *target {
            Lwm2mPath::Root => Err(ShapeError::LevelMismatch {
                path: Lwm2mPath::Root,
                node: "object",
            }),
            Lwm2mPath::Object(_) => Ok(Self::Object(insts)),
            Lwm2mPath::Instance(_, i) => Ok(Self::Instance(insts.remove(&i).unwrap_or_default())),
            Lwm2mPath::Resource(_, i, r) => {
                let res = insts.remove(&i).and_then(|mut m| m.remove(&r));
                match res {
                    Some(v) => Ok(Self::Resource(v)),
                    None if is_multiple(target) => {
                        Ok(Self::Resource(ResourceValue::Multiple(BTreeMap::new())))
                    }
                    None => Err(ShapeError::MissingValue { path: *target }),
                }
            }
            Lwm2mPath::ResourceInstance(_, i, r, ri) => {
                let v = insts
                    .remove(&i)
                    .and_then(|mut m| m.remove(&r))
                    .and_then(|v| match v {
                        ResourceValue::Multiple(mut m) => m.remove(&ri),
                        ResourceValue::Single(_) => None,
                    });
                v.map(Self::ResourceInstance)
                    .ok_or(ShapeError::MissingValue { path: *target })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_object_node() {
        let mut inst = Instance::new();
        inst.insert(
            ResourceId(0),
            ResourceValue::Single(Value::String("ACME".into())),
        );
        let mut m = BTreeMap::new();
        m.insert(ResourceInstanceId(0), Value::Integer(1));
        m.insert(ResourceInstanceId(1), Value::Integer(5));
        inst.insert(ResourceId(6), ResourceValue::Multiple(m));
        let mut obj = BTreeMap::new();
        obj.insert(InstanceId(0), inst);
        let node = Node::Object(obj);
        let path = Lwm2mPath::object(3);
        let recs = node.to_records(&path);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].path, Lwm2mPath::resource_instance(3, 0, 6, 0));
        let back = Node::from_records(&path, &recs, &|_| false).unwrap();
        assert_eq!(back, node);
    }

    #[test]
    fn shape_errors() {
        let rec = |p: Lwm2mPath| Record {
            path: p,
            value: Some(Value::Integer(1)),
            time: None,
        };
        let t = Lwm2mPath::instance(3, 0);
        assert!(matches!(
            Node::from_records(&t, &[rec(Lwm2mPath::resource(4, 0, 1))], &|_| false),
            Err(ShapeError::OutsideTarget { .. })
        ));
        assert!(matches!(
            Node::from_records(
                &t,
                &[
                    rec(Lwm2mPath::resource(3, 0, 1)),
                    rec(Lwm2mPath::resource(3, 0, 1))
                ],
                &|_| false
            ),
            Err(ShapeError::Conflict { .. })
        ));
        assert!(
            Node::Instance(Instance::new())
                .check_level(&Lwm2mPath::object(3))
                .is_err()
        );
    }
}
