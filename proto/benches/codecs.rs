//! Encodes and decodes a full Device object instance (/3/0) in TLV, SenML JSON and SenML
//! CBOR, typed through the shipped registry. Run: `cargo bench -p lwm2m-proto --bench codecs`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lwm2m_proto::content::{self, ContentFormat};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::{Instance, Lwm2mPath, Node, ResourceValue, Value};

/// A Device instance with every readable resource of object 3 set, as a demo client has it.
fn device_instance() -> Node {
    let s = |v: &str| ResourceValue::Single(Value::String(v.into()));
    let i = |v: i64| ResourceValue::Single(Value::Integer(v));
    let m = |vs: &[i64]| {
        ResourceValue::Multiple(
            vs.iter()
                .enumerate()
                .map(|(n, v)| ((n as u16).into(), Value::Integer(*v)))
                .collect(),
        )
    };
    let mut inst = Instance::new();
    inst.insert(0.into(), s("Open Mobile Alliance"));
    inst.insert(1.into(), s("Lightweight M2M Client"));
    inst.insert(2.into(), s("345000123"));
    inst.insert(3.into(), s("1.0"));
    inst.insert(6.into(), m(&[1, 5]));
    inst.insert(7.into(), m(&[3800, 5000]));
    inst.insert(8.into(), m(&[125, 900]));
    inst.insert(9.into(), i(100));
    inst.insert(10.into(), i(15));
    inst.insert(11.into(), m(&[0]));
    inst.insert(13.into(), ResourceValue::Single(Value::Time(1_367_491_215)));
    inst.insert(14.into(), s("+02:00"));
    inst.insert(15.into(), s("Europe/Berlin"));
    inst.insert(16.into(), s("U"));
    inst.insert(17.into(), s("Demo"));
    inst.insert(18.into(), s("1.0"));
    inst.insert(19.into(), s("1.0.2"));
    inst.insert(20.into(), i(0));
    inst.insert(21.into(), i(128_000));
    Node::Instance(inst)
}

fn codecs(c: &mut Criterion) {
    let registry = Registry::embedded();
    let path = Lwm2mPath::instance(3, 0);
    let node = device_instance();
    for format in [
        ContentFormat::Tlv,
        ContentFormat::SenmlJson,
        ContentFormat::SenmlCbor,
    ] {
        let bytes = content::encode(format, &path, &node).expect("encodes");
        let back = content::decode(format, &bytes, &path, &registry).expect("decodes");
        assert_eq!(back.content, node, "{format} round trip");
        let mut g = c.benchmark_group(format!("device-3-0/{}", format.name()));
        g.throughput(criterion::Throughput::Bytes(bytes.len() as u64));
        g.bench_function("encode", |b| {
            b.iter(|| content::encode(format, black_box(&path), black_box(&node)))
        });
        g.bench_function("decode", |b| {
            b.iter(|| content::decode(format, black_box(&bytes), black_box(&path), &registry))
        });
        g.finish();
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
