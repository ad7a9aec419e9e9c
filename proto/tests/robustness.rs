//! Every decoder meets at least 100,000 random and mutated inputs without a panic
//! (issue acceptance). Inputs come from a seeded generator, so a failure reproduces.

mod common;

use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::{Lwm2mPath, NoSchema, Node, ObjectLink, ResourceValue, Schema, Value};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const INPUTS_PER_DECODER: usize = 100_000;

/// Valid payloads of a format, to be mutated.
fn seeds(format: ContentFormat) -> Vec<(Lwm2mPath, Vec<u8>)> {
    let o = common::TEST_OBJECT;
    let mut inst = lwm2m_proto::Instance::new();
    inst.insert(
        0.into(),
        ResourceValue::Single(Value::String("Open Mobile Alliance".into())),
    );
    inst.insert(1.into(), ResourceValue::Single(Value::Integer(-300_000)));
    inst.insert(3.into(), ResourceValue::Single(Value::Float(45.25)));
    inst.insert(4.into(), ResourceValue::Single(Value::Boolean(true)));
    inst.insert(
        5.into(),
        ResourceValue::Single(Value::Opaque(vec![1, 2, 3, 255])),
    );
    inst.insert(
        7.into(),
        ResourceValue::Single(Value::Objlnk(ObjectLink {
            object: 3,
            instance: 0,
        })),
    );
    inst.insert(
        101.into(),
        ResourceValue::Multiple(
            [
                (0.into(), Value::Integer(1)),
                (7.into(), Value::Integer(70_000)),
            ]
            .into(),
        ),
    );
    let nodes = [
        (
            Lwm2mPath::object(o),
            Node::Object([(0.into(), inst.clone()), (1.into(), inst.clone())].into()),
        ),
        (Lwm2mPath::instance(o, 0), Node::Instance(inst)),
        (
            Lwm2mPath::resource(o, 0, 0),
            Node::Resource(ResourceValue::Single(Value::String("abc".into()))),
        ),
        (
            Lwm2mPath::resource(o, 0, 5),
            Node::Resource(ResourceValue::Single(Value::Opaque(vec![9; 30]))),
        ),
        (
            Lwm2mPath::resource(o, 0, 3),
            Node::Resource(ResourceValue::Single(Value::Float(1.5))),
        ),
        (
            Lwm2mPath::resource_instance(o, 0, 101, 2),
            Node::ResourceInstance(Value::Integer(-1)),
        ),
    ];
    nodes
        .iter()
        .filter_map(|(p, n)| content::encode(format, p, n).ok().map(|b| (*p, b)))
        .collect()
}

fn mutate(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..rng.random_range(1..4) {
        let len = input.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = [0, 0xff, 0x7f, 0x80, 0x20, b'"', b'/'][rng.random_range(0..7)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                input.insert(i, rng.random());
            }
            3 if len > 0 => {
                input.remove(rng.random_range(0..len));
            }
            4 => input.truncate(rng.random_range(0..=len)),
            5 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 16));
                let chunk = input[a..b].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, chunk);
            }
            _ if !other.is_empty() => {
                let at = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                input.splice(at..at, other[from..].iter().copied().take(24));
            }
            _ => {}
        }
    }
}

fn random_bytes(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let len = rng.random_range(0..64);
    (0..len).map(|_| rng.random()).collect()
}

fn targets() -> Vec<Lwm2mPath> {
    let o = common::TEST_OBJECT;
    vec![
        Lwm2mPath::Root,
        Lwm2mPath::object(o),
        Lwm2mPath::instance(o, 0),
        Lwm2mPath::resource(o, 0, 1),
        Lwm2mPath::resource(o, 0, 101),
        Lwm2mPath::resource_instance(o, 0, 101, 0),
        Lwm2mPath::resource(3, 0, 0),
    ]
}

fn hammer(format: ContentFormat) {
    let schema = common::test_object();
    let seeds = seeds(format);
    let targets = targets();
    let mut rng = ChaCha8Rng::seed_from_u64(0x1A2B_0000 + u64::from(format.code()));
    for n in 0..INPUTS_PER_DECODER {
        let (target, bytes) = if seeds.is_empty() || n % 4 == 0 {
            (
                targets[rng.random_range(0..targets.len())],
                random_bytes(&mut rng),
            )
        } else {
            let (p, b) = &seeds[rng.random_range(0..seeds.len())];
            let other = &seeds[rng.random_range(0..seeds.len())].1;
            let mut b = b.clone();
            mutate(&mut rng, &mut b, other);
            let t = if rng.random_bool(0.7) {
                *p
            } else {
                targets[rng.random_range(0..targets.len())]
            };
            (t, b)
        };
        let schema: &dyn Schema = if n % 3 == 0 { &NoSchema } else { &schema };
        let _ = content::decode(format, &bytes, &target, schema);
        if format.is_multi_node() && format.canonical() != ContentFormat::Tlv {
            let _ = content::decode_records(format, &bytes, schema);
        }
    }
}

#[test]
fn tlv_survives_garbage() {
    hammer(ContentFormat::Tlv);
}
#[test]
fn text_survives_garbage() {
    hammer(ContentFormat::Text);
}
#[test]
fn opaque_survives_garbage() {
    hammer(ContentFormat::Opaque);
}
#[test]
fn cbor_survives_garbage() {
    hammer(ContentFormat::Cbor);
}
#[test]
fn senml_json_survives_garbage() {
    hammer(ContentFormat::SenmlJson);
}
#[test]
fn senml_cbor_survives_garbage() {
    hammer(ContentFormat::SenmlCbor);
}
#[test]
fn oma_json_survives_garbage() {
    hammer(ContentFormat::OmaJson);
}
#[test]
fn lwm2m_cbor_survives_garbage() {
    hammer(ContentFormat::Lwm2mCbor);
}

#[test]
fn link_format_survives_garbage() {
    use lwm2m_proto::codec::link;
    let seeds: [&[u8]; 4] = [
        b"</>;rt=\"oma.lwm2m\";ct=11543,</1/0>,</3/0>;ver=1.1,</5>",
        b"</3>;pmin=10;pmax=60,</3/0>,</3/0/1>,</3/0/7>;dim=8;gt=50;lt=42.2;st=0.5",
        b"</0/1>;ssid=101;uri=\"coap://127.0.0.1:5683\",</1/0>;ssid=101",
        b"<coap://x/a>;title=\"a, b; \\\"c\\\"\";anchor=\"/\"",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(0x11AC);
    for n in 0..INPUTS_PER_DECODER {
        let bytes = if n % 4 == 0 {
            random_bytes(&mut rng)
        } else {
            let mut b = seeds[rng.random_range(0..seeds.len())].to_vec();
            let other = seeds[rng.random_range(0..seeds.len())];
            mutate(&mut rng, &mut b, other);
            b
        };
        if let Ok(links) = link::parse_link_payload(&bytes) {
            let _ = link::RegistrationLinks::from_links(&links);
            let _ = link::format_links(&links);
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = link::parse_discover(text);
            let query: Vec<&str> = text.split('&').collect();
            let _ = link::AttributeUpdate::from_query(&query);
        }
    }
}
