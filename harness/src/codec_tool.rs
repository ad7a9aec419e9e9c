//! The codec tool: `decode` prints what a device sent, named from the registry, with every
//! value that does not fit its registry type flagged; `encode` does the reverse from JSON.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use lwm2m_proto::codec::link;
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::{DataType, Lwm2mPath, ObjectId, Record, Schema, Value};
use serde_json::{Map, Value as Json, json};

/// Arguments of `decode`.
#[derive(Args)]
pub struct DecodeArgs {
    /// Content format: text, opaque, cbor, link, tlv, json, senml-json, senml-cbor,
    /// lwm2m-cbor, or a Content-Format number (11542, 1542, ...).
    #[arg(long, short)]
    format: String,
    /// The path the payload answers (e.g. /3/0). Without it, SenML, OMA JSON and LwM2M CBOR
    /// payloads are decoded as a flat list (composite operations, Send).
    #[arg(long, short)]
    path: Option<Lwm2mPath>,
    /// Decode object O with its definition version V (repeatable), e.g. `3=1.0` or
    /// `6=pre-1.0` for the April 2016 Location object; default: the newest loaded.
    #[arg(long = "object-version", value_name = "O=V")]
    object_versions: Vec<String>,
    /// The payload: hex (several words, spaces and colons allowed), @FILE for raw bytes,
    /// or - for raw stdin.
    #[arg(required = true)]
    input: Vec<String>,
}

/// Arguments of `encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// Content format (as for decode).
    #[arg(long, short)]
    format: String,
    /// The target path (e.g. /3/0). Without it, a flat list is encoded (composite, Send).
    #[arg(long, short)]
    path: Option<Lwm2mPath>,
    /// Write the raw bytes to this file instead of hex to stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// The nodes as JSON: `{"/3/0/0": "ACME", "/3/0/9": 80}` or decode's own output
    /// (`{"nodes": [{"path": ..., "value": ...}]}`); @FILE, or - for stdin.
    input: String,
}

/// The shipped registry plus the user's DDF folders.
pub fn registry(dirs: &[PathBuf]) -> anyhow::Result<Registry> {
    let mut registry = Registry::embedded();
    for dir in dirs {
        lwm2m_harness::load_ddf_dir(&mut registry, dir).context("--ddf")?;
    }
    Ok(registry)
}

fn parse_format(s: &str) -> anyhow::Result<ContentFormat> {
    ContentFormat::from_name(s).with_context(|| {
        let names: Vec<_> = ContentFormat::ALL.iter().map(|f| f.name()).collect();
        format!("unknown format {s:?}; known: {}", names.join(", "))
    })
}

fn read_input(input: &str) -> anyhow::Result<Vec<u8>> {
    if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else if let Some(file) = input.strip_prefix('@') {
        std::fs::read(file).with_context(|| format!("reading {file}"))
    } else {
        Ok(input.as_bytes().to_vec())
    }
}

fn parse_hex_input(input: &str) -> anyhow::Result<Vec<u8>> {
    if input == "-" || input.starts_with('@') {
        return read_input(input);
    }
    let digits: String = input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    lwm2m_proto::value::parse_hex(digits)
        .with_context(|| format!("{input:?} is not hex (or @FILE, or - for stdin)"))
}

/// `decode`: prints the decoded nodes as JSON.
pub fn decode(registry: &Registry, args: &DecodeArgs) -> anyhow::Result<()> {
    let format = parse_format(&args.format)?;
    let bytes = parse_hex_input(&args.input.join(" "))?;
    let mut versions = BTreeMap::new();
    for spec in &args.object_versions {
        let (o, v) = spec
            .split_once('=')
            .and_then(|(o, v)| Some((ObjectId(o.parse().ok()?), v.to_owned())))
            .with_context(|| format!("--object-version {spec:?} is not OBJECT=VERSION"))?;
        if registry.object_version(o, &v).is_none() {
            bail!(
                "object {o} has no version {v:?} in the registry (loaded: {})",
                registry.versions(o).join(", ")
            );
        }
        versions.insert(o, v);
    }
    let schema = registry.with_versions(&versions);
    let out = decode_to_json(registry, &schema, format, args.path.as_ref(), &bytes)?;
    writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

/// Decodes `bytes` into the JSON document `decode` prints.
pub fn decode_to_json(
    registry: &Registry,
    schema: &dyn Schema,
    format: ContentFormat,
    path: Option<&Lwm2mPath>,
    bytes: &[u8],
) -> anyhow::Result<Json> {
    if format == ContentFormat::LinkFormat {
        return link_to_json(registry, bytes);
    }
    let (records, findings) = match path {
        Some(path) => {
            let d = content::decode(format, bytes, path, schema)
                .with_context(|| format!("decoding {} bytes as {format} at {path}", bytes.len()))?;
            (d.content.to_records(path), d.findings)
        }
        None => {
            let d = content::decode_records(format, bytes, schema).with_context(|| {
                format!(
                    "decoding {} bytes as a {format} list (give --path for a single target)",
                    bytes.len()
                )
            })?;
            (d.content, d.findings)
        }
    };
    let flag_of = |p: &Lwm2mPath| {
        findings
            .iter()
            .filter(|f| finding_path(f).is_some_and(|fp| fp == p || fp.is_prefix_of(p)))
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let mut nodes = lwm2m_server::json::records(registry, schema, &records);
    for (node, r) in nodes.iter_mut().zip(&records) {
        let flags = flag_of(&r.path);
        if let (Json::Object(m), false) = (node, flags.is_empty()) {
            m.insert("flagged".into(), json!(flags));
        }
    }
    let findings: Vec<Json> = findings
        .iter()
        .map(|f| {
            let mut j = serde_json::to_value(f).unwrap_or(Json::Null);
            if let Json::Object(m) = &mut j {
                m.insert("message".into(), json!(f.to_string()));
            }
            j
        })
        .collect();
    Ok(json!({
        "format": format.name(),
        "content_format": format.code(),
        "path": path.map(ToString::to_string),
        "bytes": bytes.len(),
        "nodes": nodes,
        "findings": findings,
    }))
}

/// A link-format payload (registration, Discover) as JSON, with object names.
fn link_to_json(registry: &Registry, bytes: &[u8]) -> anyhow::Result<Json> {
    let links = link::parse_link_payload(bytes).context("decoding a link-format payload")?;
    let links: Vec<Json> = links
        .iter()
        .map(|l| {
            let mut m = Map::new();
            m.insert("target".into(), json!(l.target));
            let name = l
                .target
                .trim_start_matches('<')
                .trim_end_matches('>')
                .parse::<Lwm2mPath>()
                .ok()
                .and_then(|p| {
                    let o = registry.object(p.object_id()?)?;
                    Some(match content::resource_def(registry, &p) {
                        Some(r) => format!("{} / {}", o.name, r.name),
                        None => o.name.clone(),
                    })
                });
            if let Some(name) = name {
                m.insert("name".into(), json!(name));
            }
            let params: Map<String, Json> = l
                .params
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.value.clone().map_or(Json::Bool(true), Json::String),
                    )
                })
                .collect();
            m.insert("params".into(), Json::Object(params));
            Json::Object(m)
        })
        .collect();
    Ok(json!({
        "format": ContentFormat::LinkFormat.name(),
        "content_format": ContentFormat::LinkFormat.code(),
        "bytes": bytes.len(),
        "links": links,
    }))
}

fn finding_path(f: &lwm2m_proto::Finding) -> Option<&Lwm2mPath> {
    match f {
        lwm2m_proto::Finding::UnknownResource { path }
        | lwm2m_proto::Finding::TypeMismatch { path, .. }
        | lwm2m_proto::Finding::NonMinimalInteger { path, .. } => Some(path),
        _ => None,
    }
}

/// `encode`: writes the payload as hex on stdout or raw to `--out`.
pub fn encode(registry: &Registry, args: &EncodeArgs) -> anyhow::Result<()> {
    let format = parse_format(&args.format)?;
    let text =
        String::from_utf8(read_input(&args.input)?).context("the JSON input is not UTF-8")?;
    let json: Json = serde_json::from_str(&text).context("the input is not JSON")?;
    let bytes = encode_from_json(registry, format, args.path.as_ref(), &json)?;
    match &args.out {
        Some(file) => {
            std::fs::write(file, &bytes).with_context(|| format!("writing {}", file.display()))?
        }
        None => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(std::io::stdout(), "{hex}")?;
        }
    }
    Ok(())
}

/// Encodes the JSON `encode` reads.
pub fn encode_from_json(
    registry: &Registry,
    format: ContentFormat,
    path: Option<&Lwm2mPath>,
    json: &Json,
) -> anyhow::Result<Vec<u8>> {
    let records = records_from_json(registry, json)?;
    Ok(match path {
        Some(path) => {
            let node = content::records_to_node(path, &records, registry)
                .with_context(|| format!("the nodes do not form a tree at {path}"))?;
            content::encode(format, path, &node)?
        }
        None => content::encode_records(format, &records)?,
    })
}

fn records_from_json(registry: &Registry, json: &Json) -> anyhow::Result<Vec<Record>> {
    let entries: Vec<(String, Json, Option<f64>)> = match json {
        Json::Object(m) if m.contains_key("nodes") => {
            let Some(Json::Array(nodes)) = m.get("nodes") else {
                bail!("\"nodes\" must be an array");
            };
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let path = n
                        .get("path")
                        .and_then(Json::as_str)
                        .with_context(|| format!("nodes[{i}] has no \"path\" string"))?;
                    let value = n.get("value").cloned().unwrap_or(Json::Null);
                    Ok((path.to_owned(), value, n.get("time").and_then(Json::as_f64)))
                })
                .collect::<anyhow::Result<_>>()?
        }
        Json::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect(),
        _ => bail!("expected a JSON object: {{\"/3/0/0\": value, ...}} or {{\"nodes\": [...]}}"),
    };
    entries
        .into_iter()
        .map(|(path, value, time)| {
            let path: Lwm2mPath = path.parse()?;
            let value = match content::resource_def(registry, &path) {
                Some(def) => Some(Value::from_json(def.data_type, &value).map_err(|e| {
                    anyhow::anyhow!("{path} ({}, {}): {e}", def.name, def.data_type)
                })?),
                None => infer_value(&value),
            };
            Ok(Record { path, value, time })
        })
        .collect()
}

/// A value for a resource the registry does not know, from the JSON type alone.
fn infer_value(j: &Json) -> Option<Value> {
    match j {
        Json::Null => None,
        Json::Bool(b) => Some(Value::Boolean(*b)),
        Json::Number(n) => Some(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(u)) => Value::UnsignedInteger(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        other => Some(Value::String(match other {
            Json::String(s) => s.clone(),
            j => j.to_string(),
        })),
    }
}

/// `objects`: the registry as a table, or one object's resources.
pub fn objects(registry: &Registry, id: Option<u16>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match id {
        None => {
            writeln!(
                out,
                "{:>6}  {:<8} {:<6} {:<9} name",
                "id", "version", "lwm2m", "instances"
            )?;
            let all = registry.objects().flat_map(|o| {
                registry
                    .versions(o.id)
                    .into_iter()
                    .filter_map(move |v| registry.object_version(o.id, v))
            });
            for o in all {
                writeln!(
                    out,
                    "{:>6}  {:<8} {:<6} {:<9} {}",
                    o.id.0,
                    o.version,
                    o.lwm2m_version,
                    if o.multiple { "multiple" } else { "single" },
                    o.name
                )?;
            }
        }
        Some(id) => {
            let Some(o) = registry.object(ObjectId(id)) else {
                bail!("object {id} is not in the registry (see `lwm2m-harness objects`)");
            };
            writeln!(
                out,
                "{} {} (object {}, version {}, {})",
                o.name, o.urn, o.id, o.version, o.lwm2m_version
            )?;
            for r in o.resources.values() {
                let ty = if r.data_type == DataType::None {
                    ""
                } else {
                    r.data_type.ddf_name()
                };
                writeln!(
                    out,
                    "{:>6}  {:<3} {:<8} {:<9} {:<16} {} {}",
                    r.id.0,
                    format!("{:?}", r.operations),
                    if r.multiple { "multiple" } else { "single" },
                    if r.mandatory { "mandatory" } else { "optional" },
                    ty,
                    r.name,
                    if r.units.is_empty() {
                        String::new()
                    } else {
                        format!("[{}]", r.units)
                    }
                )?;
            }
        }
    }
    Ok(())
}
