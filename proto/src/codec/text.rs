//! `text/plain` (Core TS 1.1 §7.4.1) and `application/octet-stream` (Core TS 1.1 §7.4.2):
//! one value of a single-instance resource or of a resource instance.
//!
//! Text is UTF-8 and typed by the [`Schema`] with [`codec::parse_text`]: decimal
//! numbers, booleans `0`/`1`, object links `O:I`, opaque values in base64 (LwM2M 1.1).
//! Text that does not parse as the registry's type is kept as a string and reported as
//! [`Finding::TypeMismatch`]; bytes that are not UTF-8 are an error. Opaque carries the
//! raw bytes of an Opaque resource only. Objects, instances and multiple resources cannot
//! be carried by either format ([`CodecError::Unsupported`]).

use crate::codec::{self, CodecError, ContentFormat, Finding};
use crate::ids::Lwm2mPath;
use crate::model::Schema;
use crate::node::{Node, ResourceValue};
use crate::value::{DataType, Value};

/// Checks that `target` is a single-instance resource or a resource instance, the only
/// levels `format` can carry; a resource the registry declares multiple is refused at
/// `/O/I/R` (its instances need a multi-node format).
fn check_target(
    format: ContentFormat,
    target: &Lwm2mPath,
    schema: &dyn Schema,
) -> Result<(), CodecError> {
    let what = match target {
        Lwm2mPath::Resource(..)
            if codec::resource_def(schema, target).is_some_and(|d| d.multiple) =>
        {
            format!("the multiple resource {target}")
        }
        Lwm2mPath::Resource(..) | Lwm2mPath::ResourceInstance(..) => return Ok(()),
        Lwm2mPath::Root => "the root level (/)".to_owned(),
        Lwm2mPath::Object(_) => format!("the object level ({target})"),
        Lwm2mPath::Instance(..) => format!("the object instance level ({target})"),
    };
    Err(CodecError::Unsupported { format, what })
}

/// The node for one value at `target` (a resource or resource instance path).
fn value_node(target: &Lwm2mPath, value: Value) -> Node {
    match target {
        Lwm2mPath::ResourceInstance(..) => Node::ResourceInstance(value),
        _ => Node::Resource(ResourceValue::Single(value)),
    }
}

/// The single value a node at `target` holds, or why `format` cannot carry it.
fn single_value<'a>(
    format: ContentFormat,
    target: &Lwm2mPath,
    node: &'a Node,
) -> Result<&'a Value, CodecError> {
    node.check_level(target)?;
    match node {
        Node::Resource(ResourceValue::Single(v)) | Node::ResourceInstance(v) => Ok(v),
        Node::Resource(ResourceValue::Multiple(_)) => Err(CodecError::Unsupported {
            format,
            what: format!("the multiple resource {target}"),
        }),
        Node::Object(_) | Node::Instance(_) => Err(CodecError::Unsupported {
            format,
            what: format!("the {} level ({target})", node.kind()),
        }),
    }
}

/// Decodes a `text/plain` payload at a resource or resource instance path (Core TS 1.1
/// §7.4.1). An unknown resource gives a string (and [`Finding::UnknownResource`]); text
/// that does not parse as the registry's type gives a string and
/// [`Finding::TypeMismatch`]; a number, boolean, object link or base64 value with white
/// space around it is read without it, with [`Finding::PaddedText`]. Invalid UTF-8 is
/// [`CodecError::Malformed`].
pub fn decode_text(
    bytes: &[u8],
    target: &Lwm2mPath,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    check_target(ContentFormat::Text, target, schema)?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        CodecError::malformed("text", e.valid_up_to(), format!("invalid UTF-8: {e}"))
    })?;
    let value = match codec::expected_type(schema, target, findings) {
        None => Value::String(text.to_owned()),
        Some(ty) => match codec::parse_text(ty, text) {
            // parse_text reads numbers around white space; the format has none.
            Ok(v) if !matches!(ty, DataType::String | DataType::Corelnk) && text.trim() != text => {
                findings.push(Finding::PaddedText { path: *target });
                v
            }
            Ok(v) => v,
            Err(_) => {
                findings.push(Finding::TypeMismatch {
                    path: *target,
                    expected: ty,
                    found: format!("the text {text:?}"),
                });
                Value::String(text.to_owned())
            }
        },
    };
    Ok(value_node(target, value))
}

/// Encodes a single resource or a resource instance as `text/plain` (Core TS 1.1 §7.4.1)
/// with [`codec::format_text`].
pub fn encode_text(target: &Lwm2mPath, node: &Node, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let value = single_value(ContentFormat::Text, target, node)?;
    out.extend_from_slice(codec::format_text(value).as_bytes());
    Ok(())
}

/// Decodes an `application/octet-stream` payload (Core TS 1.1 §7.4.2) at a resource or
/// resource instance path: the bytes are the value of an Opaque resource (or of a resource
/// the registry does not know, with [`Finding::UnknownResource`]). Any other type is
/// [`CodecError::Unsupported`].
pub fn decode_opaque(
    bytes: &[u8],
    target: &Lwm2mPath,
    schema: &dyn Schema,
    findings: &mut Vec<Finding>,
) -> Result<Node, CodecError> {
    check_target(ContentFormat::Opaque, target, schema)?;
    match codec::expected_type(schema, target, findings) {
        None | Some(DataType::Opaque) => Ok(value_node(target, Value::Opaque(bytes.to_vec()))),
        Some(ty) => Err(CodecError::Unsupported {
            format: ContentFormat::Opaque,
            what: format!("the {ty} resource {target}"),
        }),
    }
}

/// Encodes an Opaque value of a single resource or a resource instance as
/// `application/octet-stream` (Core TS 1.1 §7.4.2); other types are
/// [`CodecError::Unsupported`].
pub fn encode_opaque(target: &Lwm2mPath, node: &Node, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match single_value(ContentFormat::Opaque, target, node)? {
        Value::Opaque(bytes) => {
            out.extend_from_slice(bytes);
            Ok(())
        }
        v => Err(CodecError::Unsupported {
            format: ContentFormat::Opaque,
            what: format!("the {} value at {target}", v.data_type()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectDef, Operations, ResourceDef};
    use crate::value::ObjectLink;
    use proptest::prelude::*;

    const TYPES: [DataType; 10] = [
        DataType::String,
        DataType::Integer,
        DataType::UnsignedInteger,
        DataType::Float,
        DataType::Boolean,
        DataType::Opaque,
        DataType::Time,
        DataType::Objlnk,
        DataType::Corelnk,
        DataType::None,
    ];

    fn object(id: u16, resources: &[(u16, DataType, bool)]) -> ObjectDef {
        let defs = resources.iter().map(|&(r, data_type, multiple)| {
            ResourceDef::new(
                r,
                format!("Resource {r}"),
                Operations::RW,
                data_type,
                multiple,
            )
        });
        ObjectDef::new(id, format!("Object {id}"), "1.1", true, defs)
    }

    /// Object 9000 with resource `k` of type `TYPES[k]`, and resource 20, a multiple
    /// Integer; the Device object's Manufacturer (0), Battery Level (9), Available Power
    /// Sources (6, multiple) and Current Time (13); Firmware Update's Package (0, Opaque).
    fn schema() -> Vec<ObjectDef> {
        let mut test: Vec<_> = (0u16..).zip(TYPES).map(|(r, ty)| (r, ty, false)).collect();
        test.push((20, DataType::Integer, true));
        vec![
            object(9000, &test),
            object(
                3,
                &[
                    (0, DataType::String, false),
                    (6, DataType::Integer, true),
                    (9, DataType::Integer, false),
                    (13, DataType::Time, false),
                ],
            ),
            object(5, &[(0, DataType::Opaque, false)]),
        ]
    }

    fn path(s: &str) -> Lwm2mPath {
        s.parse().unwrap()
    }

    fn text(payload: &[u8], target: &str) -> Result<(Node, Vec<Finding>), CodecError> {
        let mut findings = Vec::new();
        let node = decode_text(payload, &path(target), &schema(), &mut findings)?;
        Ok((node, findings))
    }

    fn opaque(payload: &[u8], target: &str) -> Result<(Node, Vec<Finding>), CodecError> {
        let mut findings = Vec::new();
        let node = decode_opaque(payload, &path(target), &schema(), &mut findings)?;
        Ok((node, findings))
    }

    fn resource(v: Value) -> Node {
        Node::Resource(ResourceValue::Single(v))
    }

    #[test]
    fn manufacturer_read_as_text() {
        // Core TS 1.0 §6.4.1 / 1.1 §7.4.1: GET /3/0/0 answers "Open Mobile Alliance".
        let (node, findings) = text(b"Open Mobile Alliance", "/3/0/0").unwrap();
        assert_eq!(node, resource(Value::String("Open Mobile Alliance".into())));
        assert_eq!(findings, []);
        let mut out = Vec::new();
        encode_text(&path("/3/0/0"), &node, &mut out).unwrap();
        assert_eq!(out, b"Open Mobile Alliance");
    }

    #[test]
    fn text_values_are_typed_by_the_schema() {
        let cases: [(&str, &[u8], Value); 6] = [
            ("/3/0/9", b"100", Value::Integer(100)),
            ("/3/0/13", b"1367491215", Value::Time(1_367_491_215)),
            ("/9000/0/3", b"-45.5", Value::Float(-45.5)),
            ("/9000/0/4", b"1", Value::Boolean(true)),
            (
                "/9000/0/7",
                b"66:0",
                Value::Objlnk(ObjectLink {
                    object: 66,
                    instance: 0,
                }),
            ),
            // Core TS 1.1 §7.4.1: opaque resources in base64.
            ("/5/0/0", b"AQIDBAU=", Value::Opaque(vec![1, 2, 3, 4, 5])),
        ];
        for (target, payload, value) in cases {
            let (node, findings) = text(payload, target).unwrap();
            assert_eq!(node, resource(value), "{target}");
            assert_eq!(findings, [], "{target}");
        }
        let (node, _) = text(b"5", "/3/0/6/1").unwrap();
        assert_eq!(node, Node::ResourceInstance(Value::Integer(5)));
    }

    #[test]
    fn white_space_around_a_number_is_read_and_flagged() {
        let (node, findings) = text(b" 12 \n", "/3/0/9").unwrap();
        assert_eq!(node, resource(Value::Integer(12)));
        assert_eq!(
            findings,
            [Finding::PaddedText {
                path: path("/3/0/9")
            }]
        );
        // A string keeps its white space: it is the value.
        let (node, findings) = text(b" Acme ", "/3/0/0").unwrap();
        assert_eq!(node, resource(Value::String(" Acme ".into())));
        assert_eq!(findings, []);
    }

    #[test]
    fn text_that_does_not_parse_is_kept_and_flagged() {
        for (target, payload) in [
            ("/3/0/9", "12.5"),
            ("/9000/0/4", "true"),
            ("/9000/0/7", "66"),
            ("/5/0/0", "!not base64!"),
            ("/9000/0/3", "NaN"),
        ] {
            let (node, findings) = text(payload.as_bytes(), target).unwrap();
            assert_eq!(node, resource(Value::String(payload.into())), "{target}");
            assert!(
                matches!(&findings[..], [Finding::TypeMismatch { path, .. }] if *path == self::path(target)),
                "{target}: {findings:?}"
            );
        }
        let (node, findings) = text(b"hello", "/9000/0/99").unwrap();
        assert_eq!(node, resource(Value::String("hello".into())));
        assert_eq!(
            findings,
            [Finding::UnknownResource {
                path: path("/9000/0/99")
            }]
        );
    }

    #[test]
    fn text_errors() {
        assert!(matches!(
            text(b"ab\xFFcd", "/3/0/0"),
            Err(CodecError::Malformed { offset: 2, .. })
        ));
        for target in ["/", "/3", "/3/0", "/3/0/6"] {
            assert!(
                matches!(
                    text(b"1", target),
                    Err(CodecError::Unsupported {
                        format: ContentFormat::Text,
                        ..
                    })
                ),
                "{target}"
            );
        }
        let mut out = Vec::new();
        let multiple = Node::Resource(ResourceValue::Multiple(Default::default()));
        assert!(matches!(
            encode_text(&path("/3/0/6"), &multiple, &mut out),
            Err(CodecError::Unsupported { .. })
        ));
        assert!(matches!(
            encode_text(&path("/3/0"), &Node::Instance(Default::default()), &mut out),
            Err(CodecError::Unsupported { .. })
        ));
        assert!(matches!(
            encode_text(&path("/3/0"), &resource(Value::Integer(1)), &mut out),
            Err(CodecError::Shape(_))
        ));
    }

    #[test]
    fn firmware_package_chunk_as_opaque() {
        // Core TS 1.1 §7.4.2: a Write of Firmware Update Package (/5/0/0) carries raw bytes.
        let chunk: Vec<u8> = (0..=255).collect();
        let (node, findings) = opaque(&chunk, "/5/0/0").unwrap();
        assert_eq!(node, resource(Value::Opaque(chunk.clone())));
        assert_eq!(findings, []);
        let mut out = Vec::new();
        encode_opaque(&path("/5/0/0"), &node, &mut out).unwrap();
        assert_eq!(out, chunk);

        let (node, findings) = opaque(b"\x01\x02", "/7/0/1").unwrap();
        assert_eq!(node, resource(Value::Opaque(vec![1, 2])));
        assert_eq!(
            findings,
            [Finding::UnknownResource {
                path: path("/7/0/1")
            }]
        );
    }

    #[test]
    fn opaque_refuses_other_types_and_levels() {
        for target in ["/3/0/0", "/3/0/9", "/3/0/6", "/3/0", "/5", "/"] {
            assert!(
                matches!(
                    opaque(b"x", target),
                    Err(CodecError::Unsupported {
                        format: ContentFormat::Opaque,
                        ..
                    })
                ),
                "{target}"
            );
        }
        let mut out = Vec::new();
        assert!(matches!(
            encode_opaque(
                &path("/3/0/0"),
                &resource(Value::String("x".into())),
                &mut out
            ),
            Err(CodecError::Unsupported { .. })
        ));
    }

    fn value_strategy(ty: DataType) -> BoxedStrategy<Value> {
        match ty {
            DataType::String => any::<String>().prop_map(Value::String).boxed(),
            DataType::Corelnk => any::<String>().prop_map(Value::Corelnk).boxed(),
            DataType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
            DataType::Time => any::<i64>().prop_map(Value::Time).boxed(),
            DataType::UnsignedInteger => any::<u64>().prop_map(Value::UnsignedInteger).boxed(),
            DataType::Float => any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float)
                .boxed(),
            DataType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
            DataType::Opaque => prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(Value::Opaque)
                .boxed(),
            DataType::Objlnk => (any::<u16>(), any::<u16>())
                .prop_map(|(object, instance)| Value::Objlnk(ObjectLink { object, instance }))
                .boxed(),
            DataType::None => Just(Value::None).boxed(),
        }
    }

    proptest! {
        #[test]
        fn text_decode_inverts_encode(
            (k, value) in (0..TYPES.len()).prop_flat_map(|k| (Just(k), value_strategy(TYPES[k]))),
            ri in proptest::option::of(0u16..100),
        ) {
            let (target, node) = match ri {
                Some(ri) => (Lwm2mPath::resource_instance(9000, 0, k as u16, ri), Node::ResourceInstance(value)),
                None => (Lwm2mPath::resource(9000, 0, k as u16), resource(value)),
            };
            let mut out = Vec::new();
            encode_text(&target, &node, &mut out).unwrap();
            let mut findings = Vec::new();
            let back = decode_text(&out, &target, &schema(), &mut findings).unwrap();
            prop_assert_eq!(back, node);
            prop_assert_eq!(findings, vec![]);
        }

        #[test]
        fn opaque_decode_inverts_encode(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let target = Lwm2mPath::resource(9000, 0, 5);
            let node = resource(Value::Opaque(bytes));
            let mut out = Vec::new();
            encode_opaque(&target, &node, &mut out).unwrap();
            let back = decode_opaque(&out, &target, &schema(), &mut Vec::new()).unwrap();
            prop_assert_eq!(back, node);
        }

        #[test]
        fn random_bytes_never_panic(
            payload in prop::collection::vec(any::<u8>(), 0..32),
            k in 0u16..12,
        ) {
            let target = Lwm2mPath::resource(9000, 0, k);
            let _ = decode_text(&payload, &target, &schema(), &mut Vec::new());
            let _ = decode_opaque(&payload, &target, &schema(), &mut Vec::new());
        }
    }
}
