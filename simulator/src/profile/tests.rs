use super::*;
use crate::quirks::QuirkPack;
use lwm2m_proto::Value;

const BASE: &str = "\
name: t
lwm2m_version: 1.1
binding: U
lifetime: 5m
preferred_format: tlv
supported_formats: [tlv, senml-json]
objects:
  3:
    instances:
      0:
        0: Acme
        9: { generator: counter, start: 100, step: -1, period: 1m }
        11: [0, 2]
        13: { generator: counter, start: 1700000000, period: 1s }
";

fn profile(text: &str) -> Result<Profile, ConfigError> {
    Profile::from_yaml("t.yaml", text, &QuirkPacks::new())
}

fn err(text: &str) -> String {
    profile(text).unwrap_err().to_string()
}

fn resource(id: u16, name: &str, data_type: DataType, multiple: bool) -> (ResourceId, ResourceDef) {
    let def = ResourceDef {
        id: ResourceId(id),
        name: name.into(),
        operations: Operations::R,
        multiple,
        mandatory: false,
        data_type,
        range: String::new(),
        units: String::new(),
        description: String::new(),
    };
    (ResourceId(id), def)
}

/// A few Device (3) resources, as the registry will define them (Core TS 1.1 Appendix E.4).
fn device() -> ObjectDef {
    ObjectDef {
        id: ObjectId(3),
        name: "Device".into(),
        description: String::new(),
        urn: "urn:oma:lwm2m:oma:3".into(),
        version: "1.0".into(),
        lwm2m_version: "1.0".into(),
        multiple: false,
        mandatory: true,
        resources: [
            resource(0, "Manufacturer", DataType::String, false),
            resource(9, "Battery Level", DataType::Integer, false),
            resource(11, "Error Code", DataType::Integer, true),
            resource(13, "Current Time", DataType::Time, false),
        ]
        .into_iter()
        .collect(),
    }
}

#[test]
fn parses_and_types_a_profile() {
    let p = profile(BASE).unwrap();
    assert_eq!(p.lwm2m_version, Lwm2mVersion::V1_1);
    assert_eq!(p.lifetime, Duration::from_secs(300));
    assert_eq!(p.endpoint_prefix, "sim-");
    assert_eq!(
        p.supported_formats,
        vec![ContentFormat::Tlv, ContentFormat::SenmlJson]
    );
    assert!(!p.is_queue_mode());

    let t = instances_for(&p, &device()).unwrap();
    let inst = &t.objects[&ObjectId(3)].instances[&InstanceId(0)];
    assert_eq!(
        inst[&ResourceId(0)],
        ResourceValue::Single(Value::String("Acme".into()))
    );
    assert_eq!(
        inst[&ResourceId(9)],
        ResourceValue::Single(Value::Integer(100))
    );
    assert_eq!(
        inst[&ResourceId(11)],
        ResourceValue::Multiple(
            [(0.into(), Value::Integer(0)), (1.into(), Value::Integer(2))].into()
        )
    );
    assert_eq!(t.generators.len(), 2);

    let client = t.instantiate(7, 3);
    let (path, mut g) = client.generators[1].clone();
    assert_eq!(path, Lwm2mPath::resource(3, 0, 13));
    assert_eq!(g.next(Duration::from_secs(60)), Value::Time(1_700_000_060));
    assert_eq!(
        client.instances[&ObjectId(3)][&InstanceId(0)][&ResourceId(13)],
        ResourceValue::Single(Value::Time(1_700_000_000))
    );
}

#[test]
fn custom_objects_and_pre_1_0_location_are_typed_locally() {
    let text = "\
name: t
lwm2m_version: \"1.0\"
lifetime: 300s
preferred_format: tlv
supported_formats: [tlv]
quirks: [pre-1-0-location]
custom_objects:
  1024:
    name: Test
    resources:
      1: { name: Int, type: integer, operations: RW }
      3: { name: Float, type: float, operations: RW }
objects:
  6:
    variant: pre-1.0
    instances:
      0:
        0: { generator: random_walk, start: 59.33, step: 0.001, min: 59, max: 60, period: 10s }
        3: \"0.01\"
  1024:
    instances:
      10: { 1: 10, 3: 1.5 }
      11: { 1: 11, 3: 2 }
";
    let p = profile(text).unwrap();
    assert!(p.has_quirk("pre-1-0-location"));
    let t = instances_for(&p, &lwm2m_proto::NoSchema).unwrap();
    let loc = &t.objects[&ObjectId(6)];
    assert_eq!(
        loc.definition.as_ref().unwrap().resources[&ResourceId(3)].name,
        "Uncertainty"
    );
    assert_eq!(
        loc.instances[&InstanceId(0)][&ResourceId(0)],
        ResourceValue::Single(Value::String("59.33".into()))
    );
    let test = &t.objects[&ObjectId(1024)];
    assert_eq!(
        test.instances[&InstanceId(11)][&ResourceId(3)],
        ResourceValue::Single(Value::Float(2.0))
    );
    assert_eq!(test.definition.as_ref().unwrap().name, "Test");
}

#[test]
fn typing_errors_name_file_line_and_key() {
    let wrong = BASE.replace("0: Acme", "0: [Acme]");
    let e = instances_for(&profile(&wrong).unwrap(), &device())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.yaml:11:9: objects.3.instances.0.0: resource Manufacturer is single-instance: give one value"
    );
    let wrong = BASE.replace("11: [0, 2]", "11: [0, x]");
    let e = instances_for(&profile(&wrong).unwrap(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("t.yaml:13:9: objects.3.instances.0.11: \"x\" is not a valid Integer value"),
        "{e}"
    );
    let wrong = BASE.replace("0: Acme", "7: 3800");
    let e = instances_for(&profile(&wrong).unwrap(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("t.yaml:11:9: objects.3.instances.0.7: the registry does not define"),
        "{e}"
    );
    let wrong = BASE.replace(
        "11: [0, 2]",
        "11: { generator: sine, min: 0, max: 1, period: 1s }",
    );
    let e = instances_for(&profile(&wrong).unwrap(), &device())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.yaml:13:9: objects.3.instances.0.11: generators drive single-instance resources only"
    );
}

#[test]
fn parse_errors_name_file_line_and_key() {
    for (from, to, want) in [
        // Unknown key.
        (
            "binding: U",
            "bindng: U",
            "t.yaml:3:1: unknown field `bindng`",
        ),
        // Unknown nested key.
        (
            "    instances:",
            "    instnces:",
            "t.yaml:9:5: objects.3: unknown field `instnces`",
        ),
        // Bad type.
        (
            "lifetime: 5m",
            "lifetime: [5m]",
            "t.yaml:4:11: lifetime: invalid type: sequence",
        ),
        // Bad duration.
        (
            "lifetime: 5m",
            "lifetime: 5 min",
            "t.yaml:4:11: lifetime: invalid duration \"5 min\"",
        ),
        (
            "period: 1m }",
            "period: 60 }",
            "t.yaml:12:12: objects.3.instances.0.9: duration 60 has no unit",
        ),
        // Unknown generator parameter and kind.
        (
            "step: -1,",
            "stpe: -1,",
            "t.yaml:12:12: objects.3.instances.0.9: unknown field `stpe`",
        ),
        (
            "generator: counter, start: 100",
            "generator: countr, start: 100",
            "t.yaml:12:12: objects.3.instances.0.9: unknown variant `countr`",
        ),
        // Unknown content format, version.
        (
            "[tlv, senml-json]",
            "[tlv, senml]",
            "t.yaml:6:26: supported_formats[1]: unknown content format \"senml\"",
        ),
        (
            "lwm2m_version: 1.1",
            "lwm2m_version: 2.0",
            "t.yaml:2:16: lwm2m_version: unsupported LwM2M version 2.0",
        ),
        // Quirk parameters.
        (
            "lifetime: 5m",
            "lifetime: 5m\nquirks: [{late-responses: {delay: soon}}]",
            "t.yaml:5:35: quirks[0].late-responses.delay: invalid duration \"soon\"",
        ),
    ] {
        let text = BASE.replace(from, to);
        assert_ne!(text, BASE, "{from}");
        let e = err(&text);
        assert!(
            e.starts_with(want),
            "{from} -> {to}:\n got  {e}\n want {want}"
        );
    }
}

#[test]
fn check_errors_name_file_line_and_key() {
    for (from, to, want) in [
        (
            "lifetime: 5m",
            "lifetime: 5m\nquirks: [wakama-2017]",
            "t.yaml:5:1: quirks: unknown quirk or quirk pack `wakama-2017`",
        ),
        (
            "binding: U",
            "binding: UQ",
            "t.yaml:3:1: binding: LwM2M 1.1 expresses queue mode with queue_mode: true; binding UQ needs the quirk legacy-queue-binding",
        ),
        (
            "binding: U",
            "binding: UX",
            "t.yaml:3:1: binding: \"UX\" is not a LwM2M 1.1 binding",
        ),
        (
            "binding: U",
            "binding: S",
            "t.yaml:3:1: binding: the simulator speaks CoAP over UDP",
        ),
        (
            "lwm2m_version: 1.1",
            "lwm2m_version: 1.0\nqueue_mode: true",
            "t.yaml:3:1: queue_mode: LwM2M 1.0 expresses queue mode as binding UQ",
        ),
        (
            "lifetime: 5m",
            "lifetime: 0s",
            "t.yaml:4:1: lifetime: must be a whole number of seconds",
        ),
        (
            "lifetime: 5m",
            "lifetime: 1500ms",
            "t.yaml:4:1: lifetime: must be a whole number of seconds",
        ),
        (
            "[tlv, senml-json]",
            "[tlv, json]",
            "t.yaml:6:1: supported_formats: json (11543) is not a LwM2M 1.1 content format",
        ),
        (
            "[tlv, senml-json]",
            "[tlv, tlv-1542]",
            "t.yaml:6:1: supported_formats: tlv-1542 (1542) is a pre-1.0 number; it needs the quirk legacy-content-formats",
        ),
        (
            "preferred_format: tlv",
            "preferred_format: text",
            "t.yaml:5:1: preferred_format: text (0) is not in supported_formats",
        ),
        (
            "  3:\n    instances:",
            "  3:\n    variant: pre-1.0\n    instances:",
            "t.yaml:9:5: objects.3.variant: variant pre-1.0 exists for the Location object (6) only",
        ),
        (
            "  3:\n    instances:",
            "  3:\n    max_instances: 0\n    instances:",
            "t.yaml:9:5: objects.3.max_instances: 0 is below",
        ),
        (
            "start: 100, step: -1, period: 1m",
            "start: 100, step: -1, period: 0s",
            "t.yaml:12:9: objects.3.instances.0.9: period must be positive",
        ),
        (
            "11: [0, 2]",
            "11: { zero: 0 }",
            "t.yaml:13:9: objects.3.instances.0.11: key String(\"zero\"): a mapping is a generator",
        ),
        (
            "lifetime: 5m",
            "lifetime: 5m\nquirks: [pre-1-0-location]",
            "t.yaml:5:1: quirks: pre-1-0-location needs object 6 with variant: pre-1.0",
        ),
        (
            "lifetime: 5m",
            "lifetime: 5m\nquirks: [legacy-queue-binding]",
            "t.yaml:5:1: quirks: legacy-queue-binding needs LwM2M 1.1 or 1.2",
        ),
    ] {
        let text = BASE.replace(from, to);
        assert_ne!(text, BASE, "{from}");
        let e = err(&text);
        assert!(
            e.starts_with(want),
            "{from} -> {to}:\n got  {e}\n want {want}"
        );
    }
}

#[test]
fn quirks_resolve_through_packs() {
    let mut packs = QuirkPacks::new();
    packs.insert(
        "upgraded".into(),
        QuirkPack::from_yaml(
            "upgraded.yaml",
            "description: d\nseen_in: s\nquirks: [legacy-queue-binding, ignore-accept]\n",
        )
        .unwrap(),
    );
    let text = BASE.replace(
        "binding: U",
        "binding: UQ\nquirks: [ignore-accept, upgraded]",
    );
    let p = Profile::from_yaml("t.yaml", &text, &packs).unwrap();
    assert_eq!(
        p.effective_quirks(),
        &[Quirk::IgnoreAccept, Quirk::LegacyQueueBinding]
    );
    assert!(p.is_queue_mode());
    // 1.0's own queue binding needs no quirk.
    let v10 = BASE
        .replace("lwm2m_version: 1.1", "lwm2m_version: \"1.0\"")
        .replace("binding: U", "binding: UQ")
        .replace("senml-json", "json");
    assert!(profile(&v10).unwrap().is_queue_mode());
}

#[test]
fn added_quirks_respell_what_the_profile_says() {
    let packs = QuirkPacks::new();
    let queue = BASE.replace("binding: U", "binding: U\nqueue_mode: true");
    let extra = [
        QuirkRef::from_name("legacy-queue-binding"),
        QuirkRef::from_name("legacy-content-formats"),
    ];
    let p = profile(&queue)
        .unwrap()
        .with_quirks(&extra, &packs)
        .unwrap();
    assert_eq!(p.binding, "UQ");
    assert!(!p.queue_mode && p.is_queue_mode());
    assert_eq!(p.preferred_format, ContentFormat::LegacyTlv);
    assert_eq!(
        p.supported_formats,
        [ContentFormat::LegacyTlv, ContentFormat::SenmlJson]
    );
    // A quirk for something the profile lacks is the profile's error; an unknown name too.
    let e = profile(BASE)
        .unwrap()
        .with_quirks(&[QuirkRef::from_name("pre-1-0-location")], &packs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pre-1-0-location needs object 6"), "{e}");
    let e = profile(BASE)
        .unwrap()
        .with_quirks(&[QuirkRef::from_name("no-such-pack")], &packs)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown quirk or quirk pack `no-such-pack`"),
        "{e}"
    );
    // Quirks that change behaviour only are simply added.
    let p = profile(BASE)
        .unwrap()
        .with_quirks(&[QuirkRef::from_name("ignore-accept")], &packs)
        .unwrap();
    assert_eq!(p.effective_quirks(), &[Quirk::IgnoreAccept]);
}

#[test]
fn load_profile_checks_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.yaml");
    std::fs::write(&path, BASE).unwrap();
    let e = load_profile(&path, &QuirkPacks::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("other.yaml:1:1: name: \"t\" differs from the file name \"other\""),
        "{e}"
    );
    let missing = load_profile(&dir.path().join("none.yaml"), &QuirkPacks::new()).unwrap_err();
    assert!(matches!(missing, ConfigError::Io { .. }));
}

proptest::proptest! {
    /// Damaged profiles give errors, never panics, in loading and in typing.
    #[test]
    fn damaged_profiles_never_panic(at in 0usize..BASE.len(), len in 0usize..8, junk in "[ :\\[\\]{}a-z0-9.\n-]{0,6}") {
        let mut text = BASE.to_owned();
        let end = (at + len).min(text.len());
        text.replace_range(at..end, &junk);
        if let Ok(p) = profile(&text) {
            let _ = instances_for(&p, &device());
        }
    }
}
