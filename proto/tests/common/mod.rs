//! Shared test support: a test object with a resource of every data type, single and
//! multiple, and proptest strategies for values and nodes of every level.
#![allow(dead_code)]

use lwm2m_proto::{
    DataType, Instance, InstanceId, Lwm2mPath, Node, ObjectDef, ObjectLink, Operations,
    ResourceDef, ResourceId, ResourceInstanceId, ResourceValue, Value,
};
use proptest::prelude::*;

/// The id of the test object.
pub const TEST_OBJECT: u16 = 32769;

/// The data types in order: resource `n` is single of `TYPES[n]`, resource `100 + n` is
/// multiple of the same type.
pub const TYPES: [DataType; 9] = [
    DataType::String,
    DataType::Integer,
    DataType::UnsignedInteger,
    DataType::Float,
    DataType::Boolean,
    DataType::Opaque,
    DataType::Time,
    DataType::Objlnk,
    DataType::Corelnk,
];

/// An object definition with one single and one multiple resource of every data type.
pub fn test_object() -> ObjectDef {
    let resources = TYPES.iter().enumerate().flat_map(|(n, ty)| {
        [false, true].map(|multiple| {
            let id = n as u16 + if multiple { 100 } else { 0 };
            let name = format!("{ty} {}", if multiple { "list" } else { "value" });
            ResourceDef::new(id, name, Operations::RW, *ty, multiple)
        })
    });
    let mut def = ObjectDef::new(TEST_OBJECT, "Every Type", "1.0", true, resources);
    def.lwm2m_version = "1.1".into();
    def
}

/// A value of the given type.
pub fn value_of(ty: DataType) -> BoxedStrategy<Value> {
    match ty {
        DataType::String => ".{0,24}".prop_map(Value::String).boxed(),
        DataType::Corelnk => "</[0-9]{1,4}/[0-9]{1,3}>(;[a-z]{1,4}=[0-9]{1,3})?"
            .prop_map(Value::Corelnk)
            .boxed(),
        DataType::Integer => any::<i64>().prop_map(Value::Integer).boxed(),
        DataType::UnsignedInteger => any::<u64>().prop_map(Value::UnsignedInteger).boxed(),
        DataType::Time => any::<i64>().prop_map(Value::Time).boxed(),
        DataType::Float => prop_oneof![
            any::<f32>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| Value::Float(f as f64)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
            (-1000i32..1000).prop_map(|i| Value::Float(i as f64)),
        ]
        .boxed(),
        DataType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        DataType::Opaque => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(Value::Opaque)
            .boxed(),
        DataType::Objlnk => (0u16..=65535, 0u16..=65535)
            .prop_map(|(object, instance)| Value::Objlnk(ObjectLink { object, instance }))
            .boxed(),
        DataType::None => Just(Value::None).boxed(),
    }
}

/// A resource: single for ids below 100, multiple (possibly empty) above.
pub fn resource(type_index: usize, multiple: bool) -> BoxedStrategy<ResourceValue> {
    let ty = TYPES[type_index];
    if multiple {
        proptest::collection::btree_map((0u16..5).prop_map(ResourceInstanceId), value_of(ty), 0..4)
            .prop_map(ResourceValue::Multiple)
            .boxed()
    } else {
        value_of(ty).prop_map(ResourceValue::Single).boxed()
    }
}

/// An object instance with a random subset of the resources.
pub fn instance() -> BoxedStrategy<Instance> {
    let entries: Vec<BoxedStrategy<Option<(ResourceId, ResourceValue)>>> = (0..TYPES.len())
        .flat_map(|n| [(n, false), (n, true)])
        .map(|(n, multiple)| {
            let id = ResourceId(n as u16 + if multiple { 100 } else { 0 });
            proptest::option::of(resource(n, multiple).prop_map(move |r| (id, r))).boxed()
        })
        .collect();
    entries
        .prop_map(|v| v.into_iter().flatten().collect::<Instance>())
        .boxed()
}

/// A node at a random level with its path.
pub fn node_at_any_level() -> BoxedStrategy<(Lwm2mPath, Node)> {
    let o = TEST_OBJECT;
    prop_oneof![
        proptest::collection::btree_map((0u16..4).prop_map(InstanceId), instance(), 0..3)
            .prop_map(move |m| (Lwm2mPath::object(o), Node::Object(m))),
        (0u16..100, instance())
            .prop_map(move |(i, inst)| (Lwm2mPath::instance(o, i), Node::Instance(inst))),
        (0usize..TYPES.len(), any::<bool>(), 0u16..10).prop_flat_map(move |(n, multiple, i)| {
            let r = n as u16 + if multiple { 100 } else { 0 };
            resource(n, multiple)
                .prop_map(move |v| (Lwm2mPath::resource(o, i, r), Node::Resource(v)))
        }),
        (0usize..TYPES.len(), 0u16..10, 0u16..10).prop_flat_map(move |(n, i, ri)| {
            value_of(TYPES[n]).prop_map(move |v| {
                (
                    Lwm2mPath::resource_instance(o, i, 100 + n as u16, ri),
                    Node::ResourceInstance(v),
                )
            })
        }),
    ]
    .boxed()
}

/// A single value at resource or resource-instance level (for text, cbor, opaque).
pub fn single_value_node(types: &'static [DataType]) -> BoxedStrategy<(Lwm2mPath, Node)> {
    let o = TEST_OBJECT;
    (0usize..types.len(), any::<bool>(), 0u16..10, 0u16..10)
        .prop_flat_map(move |(n, ri_level, i, ri)| {
            let ty = types[n];
            let idx = TYPES.iter().position(|t| *t == ty).unwrap_or(0) as u16;
            value_of(ty).prop_map(move |v| {
                if ri_level {
                    (
                        Lwm2mPath::resource_instance(o, i, 100 + idx, ri),
                        Node::ResourceInstance(v),
                    )
                } else {
                    (
                        Lwm2mPath::resource(o, i, idx),
                        Node::Resource(ResourceValue::Single(v)),
                    )
                }
            })
        })
        .boxed()
}
