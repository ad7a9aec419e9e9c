//! The Leshan API: nodes: Leshan's JacksonLwM2mNodeSerializer / Deserializer shapes.

use super::*;

/// Resources whose values are secrets: shown as `"<redacted>"`.
pub(super) const SECRET_RESOURCES: [(u16, u16); 4] = [(0, 5), (0, 7), (0, 8), (21, 0)];

pub(super) fn is_secret(path: &Lwm2mPath) -> bool {
    match (path.object_id(), path.resource_id()) {
        (Some(o), Some(r)) => SECRET_RESOURCES.contains(&(o.0, r.0)),
        _ => false,
    }
}

/// Leshan's `ResourceModel.Type` names.
pub fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::String => "STRING",
        DataType::Integer => "INTEGER",
        DataType::UnsignedInteger => "UNSIGNED_INTEGER",
        DataType::Float => "FLOAT",
        DataType::Boolean => "BOOLEAN",
        DataType::Opaque => "OPAQUE",
        DataType::Time => "TIME",
        DataType::Objlnk => "OBJLNK",
        DataType::Corelnk => "CORELINK",
        DataType::None => "NONE",
    }
}

/// A data type from its Leshan name (any case, as Leshan's deserializer takes it).
pub fn type_from_name(s: &str) -> Option<DataType> {
    Some(match s.to_ascii_uppercase().as_str() {
        "STRING" => DataType::String,
        "INTEGER" => DataType::Integer,
        "UNSIGNED_INTEGER" => DataType::UnsignedInteger,
        "FLOAT" => DataType::Float,
        "BOOLEAN" => DataType::Boolean,
        "OPAQUE" => DataType::Opaque,
        "TIME" => DataType::Time,
        "OBJLNK" => DataType::Objlnk,
        "CORELINK" => DataType::Corelnk,
        "NONE" => DataType::None,
        _ => return None,
    })
}

/// A float as Java's `Double.toString` writes the common cases (`20.0`, `0.5`).
pub(super) fn java_double(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e7 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// A value as Leshan writes it: numbers as strings (JavaScript precision), opaque as hex,
/// time as Unix milliseconds, object links as `{objectId, objectInstanceId}`.
/// (`JacksonLwM2mNodeSerializer`'s shapes; the harness's `leshan+http` adapter writes them
/// with this too.)
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::String(s) | Value::Corelnk(s) => json!(s),
        Value::Integer(i) => json!(i.to_string()),
        Value::UnsignedInteger(u) => json!(u.to_string()),
        Value::Float(f) => json!(java_double(*f)),
        Value::Boolean(b) => json!(b),
        Value::Opaque(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        Value::Time(t) => json!(t.saturating_mul(1000)),
        Value::Objlnk(l) => json!({"objectId": l.object, "objectInstanceId": l.instance}),
        Value::None => Json::Null,
    }
}

pub(super) fn shown_value(path: &Lwm2mPath, v: &Value) -> Json {
    if is_secret(path) {
        json!(REDACTED)
    } else {
        value_json(v)
    }
}

pub(super) fn last_id(path: &Lwm2mPath) -> Option<u16> {
    path.ids().last().copied()
}

pub(super) fn resource_json(schema: &dyn Schema, path: &Lwm2mPath, rv: &ResourceValue) -> Json {
    let declared = content::resource_def(schema, path).map(|d| d.data_type);
    match rv {
        ResourceValue::Single(v) => json!({
            "id": last_id(path),
            "kind": "singleResource",
            "type": type_name(v.data_type()),
            "value": shown_value(path, v),
        }),
        ResourceValue::Multiple(m) => {
            let t = m
                .values()
                .next()
                .map(Value::data_type)
                .or(declared)
                .unwrap_or(DataType::String);
            let values: Map<String, Json> = m
                .iter()
                .map(|(ri, v)| (ri.0.to_string(), shown_value(path, v)))
                .collect();
            json!({"id": last_id(path), "kind": "multiResource", "type": type_name(t), "values": values})
        }
    }
}

pub(super) fn instance_json(schema: &dyn Schema, path: &Lwm2mPath, inst: &Instance) -> Json {
    let resources: Vec<Json> = inst
        .iter()
        .filter_map(|(r, rv)| Some(resource_json(schema, &path.child(r.0)?, rv)))
        .collect();
    json!({"id": last_id(path), "kind": "instance", "resources": resources})
}

/// A node at `path` in Leshan's node JSON.
pub fn node_json(schema: &dyn Schema, path: &Lwm2mPath, node: &Node) -> Json {
    match node {
        Node::Object(instances) => {
            let instances: Vec<Json> = instances
                .iter()
                .filter_map(|(i, inst)| Some(instance_json(schema, &path.child(i.0)?, inst)))
                .collect();
            json!({"id": last_id(path), "kind": "obj", "instances": instances})
        }
        Node::Instance(inst) => instance_json(schema, path, inst),
        Node::Resource(rv) => resource_json(schema, path, rv),
        Node::ResourceInstance(v) => json!({
            "id": last_id(path),
            "kind": "resourceInstance",
            "type": type_name(v.data_type()),
            "value": shown_value(path, v),
        }),
    }
}

pub(super) fn is_under(prefix: &Lwm2mPath, path: &Lwm2mPath) -> bool {
    path.ids().starts_with(&prefix.ids())
}

/// Composite content: `{path: node}` for each of `paths` the records cover (`/` as
/// Leshan's root node, `{"kind": "root", "objects": [..]}`). A record an answer repeats
/// (overlapping paths: `/1/0` and `/1/0/1`) counts once.
pub(super) fn composite_json(schema: &dyn Schema, paths: &[Lwm2mPath], records: &[Record]) -> Json {
    let mut out = Map::new();
    for p in paths {
        let mut seen = BTreeSet::new();
        let mine: Vec<Record> = records
            .iter()
            .filter(|r| is_under(p, &r.path) && seen.insert(r.path))
            .cloned()
            .collect();
        if mine.is_empty() {
            continue;
        }
        if *p == Lwm2mPath::Root {
            let objects: BTreeSet<u16> = mine
                .iter()
                .filter_map(|r| r.path.object_id())
                .map(|o| o.0)
                .collect();
            let objects: Vec<Json> = objects
                .into_iter()
                .filter_map(|o| {
                    let op = Lwm2mPath::object(o);
                    let recs: Vec<Record> = mine
                        .iter()
                        .filter(|r| is_under(&op, &r.path))
                        .cloned()
                        .collect();
                    let node = content::records_to_node(&op, &recs, schema).ok()?;
                    Some(node_json(schema, &op, &node))
                })
                .collect();
            out.insert(p.to_string(), json!({"kind": "root", "objects": objects}));
        } else if let Ok(node) = content::records_to_node(p, &mine, schema) {
            out.insert(p.to_string(), node_json(schema, p, &node));
        }
    }
    Json::Object(out)
}

/// Records without their requested paths: one node per record path.
pub(super) fn records_json(schema: &dyn Schema, records: &[Record]) -> Json {
    let paths: Vec<Lwm2mPath> = records.iter().map(|r| r.path).collect();
    composite_json(schema, &paths, records)
}

/// Why a JSON value is not a value of the wanted type, as Leshan writes values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeValueError {
    /// The JSON does not fit the type.
    #[error("{json} is not a valid {} value", type_name(*ty))]
    Invalid {
        /// The JSON, as written.
        json: String,
        /// The wanted type.
        ty: DataType,
    },
    /// An object link that is not `{"objectId": n, "objectInstanceId": n}`.
    #[error("{json}: an OBJLNK value is {{\"objectId\": n, \"objectInstanceId\": n}}")]
    Objlnk {
        /// The JSON, as written.
        json: String,
    },
}

/// Why a Leshan node body (`{"kind": "instance", "resources": [..]}`, `singleResource`,
/// `multiResource`, `resourceInstance`) is not the node to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A node's `id` that is not an id.
    #[error("id {value} is not 0..65534")]
    Id {
        /// The `id` as written.
        value: String,
    },
    /// A resource node without an `id`.
    #[error("a resource node needs an \"id\"")]
    NoId,
    /// A resource id the path cannot hold.
    #[error("bad resource id")]
    ResourceId {
        /// The id.
        id: u16,
    },
    /// A node of `kind` without its `value`.
    #[error("a {kind} needs a \"value\"")]
    NoValue {
        /// `singleResource` or `resourceInstance`.
        kind: &'static str,
    },
    /// A `multiResource` without its `values` object.
    #[error("a multiResource needs \"values\": {{\"0\": value, ...}}")]
    NoValues,
    /// A key of `values` that is not a resource instance id.
    #[error("{key:?} is not a resource instance id")]
    InstanceKey {
        /// The key as written.
        key: String,
    },
    /// A value of a resource (or of one of its instances) that does not fit its type.
    #[error("{path}{}: {source}", instance.map(|i| format!("/{i}")).unwrap_or_default())]
    ValueAt {
        /// The resource.
        path: Lwm2mPath,
        /// The resource instance, for a multiple resource.
        instance: Option<u16>,
        /// Why the value does not fit.
        source: NodeValueError,
    },
    /// A resource instance's value that does not fit its type.
    #[error(transparent)]
    Value(#[from] NodeValueError),
    /// A node that is not a resource where a resource is expected.
    #[error("expected a singleResource or multiResource node, got {kind:?}")]
    NotResource {
        /// The node's kind, if it has one.
        kind: Option<String>,
    },
    /// A node that is not an instance where an instance is expected.
    #[error("expected an instance node {{\"kind\": \"instance\", \"resources\": [..]}}")]
    NotInstance,
    /// An instance node without its `resources` array.
    #[error("an instance needs \"resources\": [..]")]
    NoResources,
    /// A node whose `id` is not the last id of the path written.
    #[error("the node's id {id} is not the one of {path}")]
    IdMismatch {
        /// The node's id.
        id: u16,
        /// The path written.
        path: Lwm2mPath,
    },
    /// A node that is not a resource instance where one is expected.
    #[error("expected a resourceInstance node")]
    NotResourceInstance,
    /// A path above the instance level (or the root).
    #[error("cannot write {path}: write an instance or a resource")]
    NotWritable {
        /// The path written.
        path: Lwm2mPath,
    },
}

/// A value of type `ty` from Leshan's JSON (numbers as strings or numbers, time in
/// milliseconds, opaque hex, object links as objects), as `JacksonLwM2mNodeDeserializer`
/// takes them (it tolerates numbers for INTEGER, UNSIGNED_INTEGER and FLOAT).
pub fn parse_value(ty: DataType, j: &Json) -> Result<Value, NodeValueError> {
    let bad = || NodeValueError::Invalid {
        json: j.to_string(),
        ty,
    };
    let num_text = |j: &Json| match j {
        Json::String(s) => Some(s.trim().to_owned()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(match ty {
        DataType::String => Value::String(j.as_str().ok_or_else(bad)?.to_owned()),
        DataType::Corelnk => Value::Corelnk(j.as_str().ok_or_else(bad)?.to_owned()),
        DataType::Boolean => match j {
            Json::Bool(b) => Value::Boolean(*b),
            Json::String(s) if s == "true" || s == "false" => Value::Boolean(s == "true"),
            _ => return Err(bad()),
        },
        DataType::Integer => {
            Value::Integer(num_text(j).and_then(|s| s.parse().ok()).ok_or_else(bad)?)
        }
        DataType::UnsignedInteger => {
            Value::UnsignedInteger(num_text(j).and_then(|s| s.parse().ok()).ok_or_else(bad)?)
        }
        DataType::Float => Value::Float(
            num_text(j)
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|f| f.is_finite())
                .ok_or_else(bad)?,
        ),
        DataType::Time => {
            let ms: i64 = num_text(j).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            Value::Time(ms.div_euclid(1000))
        }
        DataType::Opaque => Value::Opaque(
            j.as_str()
                .and_then(lwm2m_proto::value::parse_hex)
                .ok_or_else(bad)?,
        ),
        DataType::Objlnk => {
            let id = |k: &str| {
                j.get(k)
                    .and_then(Json::as_u64)
                    .and_then(|v| u16::try_from(v).ok())
            };
            match (id("objectId"), id("objectInstanceId")) {
                (Some(object), Some(instance)) => {
                    Value::Objlnk(lwm2m_proto::value::ObjectLink { object, instance })
                }
                _ => {
                    return Err(NodeValueError::Objlnk {
                        json: j.to_string(),
                    });
                }
            }
        }
        DataType::None => Value::None,
    })
}

/// The type of a value to parse: the node's `type`, else the registry's, else the JSON's.
pub(super) fn value_type(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    node: &Json,
    value: &Json,
) -> DataType {
    if let Some(t) = node
        .get("type")
        .and_then(Json::as_str)
        .and_then(type_from_name)
    {
        return t;
    }
    if let Some(def) = content::resource_def(schema, path) {
        return def.data_type;
    }
    match value {
        Json::Bool(_) => DataType::Boolean,
        Json::Number(n) if n.is_f64() => DataType::Float,
        Json::Number(_) => DataType::Integer,
        Json::Object(_) => DataType::Objlnk,
        _ => DataType::String,
    }
}

pub(super) fn node_kind(j: &Json) -> Option<&str> {
    if let Some(k) = j.get("kind").and_then(Json::as_str) {
        return Some(k);
    }
    if j.get("instances").is_some() {
        Some("obj")
    } else if j.get("resources").is_some() {
        Some("instance")
    } else if j.get("values").is_some() {
        Some("multiResource")
    } else if j.get("value").is_some() {
        Some("singleResource")
    } else {
        None
    }
}

pub(super) fn node_id(j: &Json) -> Result<Option<u16>, NodeError> {
    match j.get("id") {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|v| u16::try_from(v).ok())
            .filter(|v| *v != u16::MAX)
            .map(Some)
            .ok_or_else(|| NodeError::Id {
                value: v.to_string(),
            }),
    }
}

/// A resource node (`singleResource` / `multiResource`) under `instance`.
pub(super) fn parse_resource(
    schema: &dyn Schema,
    instance: &Lwm2mPath,
    j: &Json,
) -> Result<(ResourceId, ResourceValue), NodeError> {
    let id = node_id(j)?.ok_or(NodeError::NoId)?;
    let path = instance.child(id).ok_or(NodeError::ResourceId { id })?;
    match node_kind(j) {
        Some("singleResource") => {
            let value = j.get("value").ok_or(NodeError::NoValue {
                kind: "singleResource",
            })?;
            let t = value_type(schema, &path, j, value);
            Ok((
                ResourceId(id),
                ResourceValue::Single(parse_value(t, value).map_err(|source| {
                    NodeError::ValueAt {
                        path,
                        instance: None,
                        source,
                    }
                })?),
            ))
        }
        Some("multiResource") => {
            let Some(Json::Object(values)) = j.get("values") else {
                return Err(NodeError::NoValues);
            };
            let mut out = BTreeMap::new();
            for (k, v) in values {
                let ri: u16 = k
                    .parse()
                    .map_err(|_| NodeError::InstanceKey { key: k.clone() })?;
                let t = value_type(schema, &path, j, v);
                out.insert(
                    ResourceInstanceId(ri),
                    parse_value(t, v).map_err(|source| NodeError::ValueAt {
                        path,
                        instance: Some(ri),
                        source,
                    })?,
                );
            }
            Ok((ResourceId(id), ResourceValue::Multiple(out)))
        }
        other => Err(NodeError::NotResource {
            kind: other.map(str::to_owned),
        }),
    }
}

/// An `instance` node: its id (if given) and resources.
pub(super) fn parse_instance(
    schema: &dyn Schema,
    object: ObjectId,
    j: &Json,
) -> Result<(Option<InstanceId>, Instance), NodeError> {
    if node_kind(j) != Some("instance") {
        return Err(NodeError::NotInstance);
    }
    let id = node_id(j)?;
    let Some(Json::Array(resources)) = j.get("resources") else {
        return Err(NodeError::NoResources);
    };
    let base = Lwm2mPath::Instance(object, InstanceId(id.unwrap_or(0)));
    let mut inst = Instance::new();
    for r in resources {
        let (rid, rv) = parse_resource(schema, &base, r)?;
        inst.insert(rid, rv);
    }
    Ok((id.map(InstanceId), inst))
}

/// The node of a Write at `path` from Leshan's node JSON.
pub(super) fn parse_node(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    j: &Json,
) -> Result<Node, NodeError> {
    let check_id = |want: u16| -> Result<(), NodeError> {
        match node_id(j)? {
            Some(id) if id != want => Err(NodeError::IdMismatch { id, path: *path }),
            _ => Ok(()),
        }
    };
    match *path {
        Lwm2mPath::Instance(o, i) => {
            check_id(i.0)?;
            Ok(Node::Instance(parse_instance(schema, o, j)?.1))
        }
        Lwm2mPath::Resource(o, i, r) => {
            check_id(r.0)?;
            let mut j = j.clone();
            if let Some(m) = j.as_object_mut() {
                m.insert("id".into(), json!(r.0));
            }
            let (_, rv) = parse_resource(schema, &Lwm2mPath::Instance(o, i), &j)?;
            Ok(Node::Resource(rv))
        }
        Lwm2mPath::ResourceInstance(.., ri) => {
            check_id(ri.0)?;
            if !matches!(node_kind(j), Some("resourceInstance" | "singleResource")) {
                return Err(NodeError::NotResourceInstance);
            }
            let value = j.get("value").ok_or(NodeError::NoValue {
                kind: "resourceInstance",
            })?;
            let t = value_type(schema, path, j, value);
            Ok(Node::ResourceInstance(parse_value(t, value)?))
        }
        _ => Err(NodeError::NotWritable { path: *path }),
    }
}
