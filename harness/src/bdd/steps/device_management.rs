//! Device Management and Service Enablement (Core TS 1.1 §6.3): what our LwM2M Server asks
//! of the client. Every step waits for the answer (at most
//! [`OPERATION_WAIT`](crate::bdd::world::OPERATION_WAIT)), except for a sleeping
//! queue-mode client, whose request the server holds until it wakes up.
//!
//! ```gherkin
//! When the server reads /3/0 in TLV
//! When the server discovers /3
//! When the server writes "101" to /1/0/2 in plain text
//! When the server updates /1/0 in TLV with:
//!   | /1/0/2 | 101 |
//!   | /1/0/3 | 1010 |
//! When the server replaces /1/0 in TLV with: ...
//! When the server writes attributes "pmin=10&pmax=200" to /3/0
//! When the server executes /3/0/4
//! When the server creates an instance of /16 in TLV with:
//!   | /16/1/0/0 | Host Device ID #2 |
//! When the server deletes /16/1
//! When the server reads the composite /1/0/1, /3/0/11/0 in SenML CBOR
//! When the server writes the composite in SenML JSON:
//!   | /1/0/1 | 61 |
//! ```

use std::collections::BTreeMap;

use anyhow::anyhow;
use cucumber::gherkin::Step;
use cucumber::when;
use lwm2m_proto::codec::link::AttributeUpdate;
use lwm2m_proto::server::Operation;
use lwm2m_proto::{
    ContentFormat, Instance, Lwm2mPath, Node, Record, ResourceInstanceId, ResourceValue,
};

use crate::bdd::params::{FormatParam, PathParam, Paths, format_label};
use crate::bdd::world::Lwm2mWorld;

fn in_format(format: Option<ContentFormat>) -> String {
    format.map_or_else(String::new, |f| format!(" in {}", format_label(f)))
}

/// The `| path | value |` rows of a step's table (a `path | value` header is skipped).
pub(crate) fn table_rows(step: &Step) -> anyhow::Result<Vec<(Lwm2mPath, String)>> {
    let table = step
        .table
        .as_ref()
        .ok_or_else(|| anyhow!("this step needs a table of | path | value | rows"))?;
    table
        .rows
        .iter()
        .filter(|row| row.first().is_none_or(|c| c != "path"))
        .map(|row| match row.as_slice() {
            [path, value] => Ok((
                path.parse::<Lwm2mPath>()
                    .map_err(|e| anyhow!("{path:?} is not a path: {e}"))?,
                value.clone(),
            )),
            other => Err(anyhow!("a row needs | path | value |, not {other:?}")),
        })
        .collect()
}

/// The resources of the instance the rows lie in (all rows must share it).
fn instance_from_rows(
    w: &Lwm2mWorld,
    rows: &[(Lwm2mPath, String)],
) -> anyhow::Result<(Lwm2mPath, Instance)> {
    let mut instance = Instance::new();
    let mut at: Option<Lwm2mPath> = None;
    for (path, text) in rows {
        let value = w.typed(path, text)?;
        let owner = match *path {
            Lwm2mPath::Resource(o, i, r) => {
                instance.insert(r, ResourceValue::Single(value));
                Lwm2mPath::Instance(o, i)
            }
            Lwm2mPath::ResourceInstance(o, i, r, ri) => {
                let entry = instance
                    .entry(r)
                    .or_insert_with(|| ResourceValue::Multiple(BTreeMap::new()));
                match entry {
                    ResourceValue::Multiple(m) => {
                        m.insert(ResourceInstanceId(ri.0), value);
                    }
                    ResourceValue::Single(_) => {
                        return Err(anyhow!("{path} mixes single and multiple values"));
                    }
                }
                Lwm2mPath::Instance(o, i)
            }
            _ => {
                return Err(anyhow!(
                    "{path} is not a resource or resource instance path"
                ));
            }
        };
        match at {
            None => at = Some(owner),
            Some(a) if a == owner => {}
            Some(a) => return Err(anyhow!("rows mix the instances {a} and {owner}")),
        }
    }
    at.map(|a| (a, instance))
        .ok_or_else(|| anyhow!("the table has no rows"))
}

/// The node a write of `rows` to `target` sends.
fn node_for(
    w: &Lwm2mWorld,
    target: Lwm2mPath,
    rows: &[(Lwm2mPath, String)],
) -> anyhow::Result<Node> {
    let (owner, instance) = instance_from_rows(w, rows)?;
    match target {
        Lwm2mPath::Instance(..) if owner == target => Ok(Node::Instance(instance)),
        Lwm2mPath::Resource(_, _, r) if owner.is_prefix_of(&target) => instance
            .get(&r)
            .cloned()
            .map(Node::Resource)
            .ok_or_else(|| anyhow!("no row under {target}")),
        _ => Err(anyhow!("the rows do not lie under {target}")),
    }
}

fn read(w: &mut Lwm2mWorld, path: Lwm2mPath, format: Option<ContentFormat>) -> anyhow::Result<()> {
    w.operate(
        Operation::Read { path, format },
        format!("Read {path}{}", in_format(format)),
    )
}

/// Read (GET) in the format the server picks from what the client announced.
#[when(expr = "the server reads {path}")]
fn reads(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    read(w, path.0, None)
}

/// Read (GET with Accept).
#[when(expr = "the server reads {path} in {format}")]
fn reads_in(w: &mut Lwm2mWorld, path: PathParam, format: FormatParam) -> anyhow::Result<()> {
    read(w, path.0, Some(format.0))
}

/// Discover (GET with Accept link-format).
#[when(expr = "the server discovers {path}")]
fn discovers(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    w.operate(
        Operation::Discover { path: path.0 },
        format!("Discover {}", path.0),
    )
}

fn write_value(
    w: &mut Lwm2mWorld,
    path: Lwm2mPath,
    text: &str,
    format: Option<ContentFormat>,
) -> anyhow::Result<()> {
    let value = w.typed(&path, text)?;
    let node = match path {
        Lwm2mPath::Resource(..) => Node::Resource(ResourceValue::Single(value)),
        Lwm2mPath::ResourceInstance(..) => Node::ResourceInstance(value),
        _ => {
            return Err(anyhow!(
                "write a value to a resource or resource instance, not {path}"
            ));
        }
    };
    w.operate(
        Operation::Write {
            path,
            node,
            replace: true,
            format,
        },
        format!("Write {text:?} to {path}{}", in_format(format)),
    )
}

/// Write (PUT, replace) of one value, in the format the server picks.
#[when(expr = "the server writes {string} to {path}")]
fn writes(w: &mut Lwm2mWorld, value: String, path: PathParam) -> anyhow::Result<()> {
    write_value(w, path.0, &value, None)
}

/// Write (PUT, replace) of one value in a format.
#[when(expr = "the server writes {string} to {path} in {format}")]
fn writes_in(
    w: &mut Lwm2mWorld,
    value: String,
    path: PathParam,
    format: FormatParam,
) -> anyhow::Result<()> {
    write_value(w, path.0, &value, Some(format.0))
}

fn write_rows(
    w: &mut Lwm2mWorld,
    step: &Step,
    target: Lwm2mPath,
    format: ContentFormat,
    replace: bool,
) -> anyhow::Result<()> {
    let rows = table_rows(step)?;
    let node = node_for(w, target, &rows)?;
    let verb = if replace {
        "Write (replace)"
    } else {
        "Write (partial update)"
    };
    w.operate(
        Operation::Write {
            path: target,
            node,
            replace,
            format: Some(format),
        },
        format!("{verb} {target} in {}", format_label(format)),
    )
}

/// Write, partial update (POST) of an instance with the table's values.
#[when(expr = "the server updates {path} in {format} with:")]
fn updates(
    w: &mut Lwm2mWorld,
    step: &Step,
    path: PathParam,
    format: FormatParam,
) -> anyhow::Result<()> {
    write_rows(w, step, path.0, format.0, false)
}

/// Write, replace (PUT) of an instance or resource with the table's values.
#[when(expr = "the server replaces {path} in {format} with:")]
fn replaces(
    w: &mut Lwm2mWorld,
    step: &Step,
    path: PathParam,
    format: FormatParam,
) -> anyhow::Result<()> {
    write_rows(w, step, path.0, format.0, true)
}

/// Write-Attributes (PUT with the attributes as Uri-Query, no payload).
#[when(expr = "the server writes attributes {string} to {path}")]
fn writes_attributes(w: &mut Lwm2mWorld, query: String, path: PathParam) -> anyhow::Result<()> {
    let parts: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let attributes =
        AttributeUpdate::from_query(&parts).map_err(|e| anyhow!("attributes {query:?}: {e}"))?;
    w.operate(
        Operation::WriteAttributes {
            path: path.0,
            attributes,
        },
        format!("Write-Attributes {}?{query}", path.0),
    )
}

/// Execute (POST on a resource) without arguments.
#[when(expr = "the server executes {path}")]
fn executes(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    w.operate(
        Operation::Execute {
            path: path.0,
            args: None,
        },
        format!("Execute {}", path.0),
    )
}

/// Execute with arguments (`0='v',1`, Core TS 1.1 §5.4.5).
#[when(expr = "the server executes {path} with arguments {string}")]
fn executes_with(w: &mut Lwm2mWorld, path: PathParam, args: String) -> anyhow::Result<()> {
    w.operate(
        Operation::Execute {
            path: path.0,
            args: Some(args.clone()),
        },
        format!("Execute {} with {args:?}", path.0),
    )
}

/// Create (POST on an object) of the instance the table's rows lie in.
#[when(expr = "the server creates an instance of {path} in {format} with:")]
fn creates(
    w: &mut Lwm2mWorld,
    step: &Step,
    object: PathParam,
    format: FormatParam,
) -> anyhow::Result<()> {
    let Lwm2mPath::Object(object) = object.0 else {
        return Err(anyhow!(
            "create an instance of an object, not of {}",
            object.0
        ));
    };
    let rows = table_rows(step)?;
    let (owner, resources) = instance_from_rows(w, &rows)?;
    if owner.object_id() != Some(object) {
        return Err(anyhow!("the rows lie in {owner}, not under /{object}"));
    }
    w.operate(
        Operation::Create {
            object,
            instance: owner.instance_id(),
            resources,
            format: Some(format.0),
        },
        format!("Create {owner} in {}", format_label(format.0)),
    )
}

/// Delete (DELETE) of an instance.
#[when(expr = "the server deletes {path}")]
fn deletes(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    w.operate(
        Operation::Delete { path: path.0 },
        format!("Delete {}", path.0),
    )
}

fn show_paths(paths: &[Lwm2mPath]) -> String {
    paths
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read-Composite (FETCH `/` with the path list, LwM2M 1.1+).
#[when(expr = "the server reads the composite {paths} in {format}")]
fn reads_composite(w: &mut Lwm2mWorld, paths: Paths, format: FormatParam) -> anyhow::Result<()> {
    let description = format!(
        "Read-Composite {} in {}",
        show_paths(&paths.0),
        format_label(format.0)
    );
    w.operate(
        Operation::ReadComposite {
            paths: paths.0,
            format: Some(format.0),
        },
        description,
    )
}

/// Write-Composite (iPATCH `/`, LwM2M 1.1+) of the table's values.
#[when(expr = "the server writes the composite in {format}:")]
fn writes_composite(w: &mut Lwm2mWorld, step: &Step, format: FormatParam) -> anyhow::Result<()> {
    let records = table_rows(step)?
        .into_iter()
        .map(|(path, text)| {
            Ok(Record {
                path,
                value: Some(w.typed(&path, &text)?),
                time: None,
            })
        })
        .collect::<anyhow::Result<Vec<Record>>>()?;
    let description = format!(
        "Write-Composite {} in {}",
        show_paths(&records.iter().map(|r| r.path).collect::<Vec<_>>()),
        format_label(format.0)
    );
    w.operate(
        Operation::WriteComposite {
            records,
            format: Some(format.0),
        },
        description,
    )
}
