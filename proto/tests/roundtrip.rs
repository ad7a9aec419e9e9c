//! `decode(encode(x)) == x` through the public entry points, for every format, every
//! data type and every node level (the per-format modules test their own details).

mod common;

use common::{node_at_any_level, single_value_node, test_object};
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::{DataType, Lwm2mPath, Node, ResourceValue};
use proptest::prelude::*;

/// Record-based formats (SenML, OMA JSON, LwM2M CBOR) carry values, not empty containers:
/// an instance or multiple resource without values disappears below the target.
fn without_empty_containers(path: &Lwm2mPath, node: &Node) -> Node {
    let prune = |inst: &lwm2m_proto::Instance| {
        inst.iter()
            .filter(|(_, r)| !matches!(r, ResourceValue::Multiple(m) if m.is_empty()))
            .map(|(k, v)| (*k, v.clone()))
            .collect::<lwm2m_proto::Instance>()
    };
    match (path, node) {
        (_, Node::Object(m)) => Node::Object(
            m.iter()
                .map(|(k, v)| (*k, prune(v)))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        ),
        (_, Node::Instance(inst)) => Node::Instance(prune(inst)),
        (_, n) => n.clone(),
    }
}

fn check(format: ContentFormat, path: &Lwm2mPath, node: &Node, expected: &Node) {
    let schema = test_object();
    let bytes = content::encode(format, path, node)
        .unwrap_or_else(|e| panic!("{format} cannot encode {node:?} at {path}: {e}"));
    let decoded = content::decode(format, &bytes, path, &schema)
        .unwrap_or_else(|e| panic!("{format} cannot decode its own {bytes:02x?} at {path}: {e}"));
    assert_eq!(
        &decoded.content, expected,
        "{format} at {path}, bytes {bytes:02x?}"
    );
    assert!(
        decoded.findings.is_empty(),
        "{format}: {:?}",
        decoded.findings
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn multi_node_formats_round_trip((path, node) in node_at_any_level()) {
        check(ContentFormat::Tlv, &path, &node, &node);
        let pruned = without_empty_containers(&path, &node);
        for f in [ContentFormat::SenmlJson, ContentFormat::SenmlCbor, ContentFormat::OmaJson, ContentFormat::Lwm2mCbor] {
            check(f, &path, &pruned, &pruned);
        }
    }

    #[test]
    fn text_and_cbor_round_trip((path, node) in single_value_node(&common::TYPES)) {
        check(ContentFormat::Text, &path, &node, &node);
        check(ContentFormat::Cbor, &path, &node, &node);
    }

    #[test]
    fn opaque_round_trips((path, node) in single_value_node(&[DataType::Opaque])) {
        check(ContentFormat::Opaque, &path, &node, &node);
    }
}

#[test]
fn legacy_numbers_decode_like_current_ones_and_are_flagged() {
    let schema = test_object();
    let path = Lwm2mPath::resource(common::TEST_OBJECT, 0, 1);
    let node = Node::Resource(ResourceValue::Single(lwm2m_proto::Value::Integer(7)));
    for (legacy, current) in [
        (ContentFormat::LegacyTlv, ContentFormat::Tlv),
        (ContentFormat::LegacyJson, ContentFormat::OmaJson),
        (ContentFormat::LegacyText, ContentFormat::Text),
    ] {
        let bytes = content::encode(current, &path, &node).unwrap();
        let d = content::decode(legacy, &bytes, &path, &schema).unwrap();
        assert_eq!(d.content, node);
        assert_eq!(
            d.findings,
            vec![lwm2m_proto::Finding::LegacyContentFormat {
                code: legacy.code()
            }]
        );
    }
}
