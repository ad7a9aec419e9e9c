//! Tests of the Leshan API's JSON shapes and parameters.

use super::*;

#[test]
fn nodes_round_trip_through_leshan_json() {
    let reg = Registry::embedded();
    let path = Lwm2mPath::instance(3, 0);
    let mut inst = Instance::new();
    inst.insert(
        ResourceId(0),
        ResourceValue::Single(Value::String("ACME".into())),
    );
    inst.insert(ResourceId(9), ResourceValue::Single(Value::Integer(90)));
    inst.insert(
        ResourceId(13),
        ResourceValue::Single(Value::Time(1_700_000_000)),
    );
    let mut errors = BTreeMap::new();
    errors.insert(ResourceInstanceId(0), Value::Integer(0));
    inst.insert(ResourceId(11), ResourceValue::Multiple(errors));
    let node = Node::Instance(inst);
    let j = node_json(&reg, &path, &node);
    assert_eq!(j["kind"], "instance");
    assert_eq!(j["id"], 0);
    let r = &j["resources"];
    assert_eq!(
        r[0],
        json!({"id": 0, "kind": "singleResource", "type": "STRING", "value": "ACME"})
    );
    assert_eq!(r[1]["value"], "90");
    assert_eq!(
        r[2],
        json!({"id": 11, "kind": "multiResource", "type": "INTEGER", "values": {"0": "0"}})
    );
    assert_eq!(r[3]["value"], 1_700_000_000_000_i64);
    assert_eq!(r[3]["type"], "TIME");
    assert_eq!(parse_node(&reg, &path, &j).unwrap(), node);

    let f = Lwm2mPath::resource(3303, 0, 5700);
    let j = node_json(
        &reg,
        &f,
        &Node::Resource(ResourceValue::Single(Value::Float(20.0))),
    );
    assert_eq!(j["value"], "20.0");
    // Without "type": the registry's.
    let written = parse_node(
        &reg,
        &f,
        &json!({"id": 5700, "kind": "singleResource", "value": 21.5}),
    );
    assert_eq!(
        written.unwrap(),
        Node::Resource(ResourceValue::Single(Value::Float(21.5)))
    );
    assert_eq!(
        parse_node(&reg, &f, &json!({"id": 5701, "value": "x"})),
        Err(NodeError::IdMismatch { id: 5701, path: f })
    );
    let warm = parse_node(&reg, &f, &json!({"id": 5700, "value": "warm"})).unwrap_err();
    assert!(matches!(
        warm,
        NodeError::ValueAt {
            path,
            instance: None,
            source: NodeValueError::Invalid { ty: DataType::Float, .. },
        } if path == f
    ));
    assert_eq!(
        warm.to_string(),
        "/3303/0/5700: \"warm\" is not a valid FLOAT value"
    );
    let object = parse_node(&reg, &Lwm2mPath::Object(ObjectId(3)), &json!({})).unwrap_err();
    assert_eq!(
        object.to_string(),
        "cannot write /3: write an instance or a resource"
    );
}

#[test]
fn secrets_are_never_shown() {
    let reg = Registry::embedded();
    let p = Lwm2mPath::resource(0, 1, 5);
    let j = node_json(
        &reg,
        &p,
        &Node::Resource(ResourceValue::Single(Value::Opaque(vec![1, 2, 3]))),
    );
    assert_eq!(j["value"], REDACTED);
    let info = SecurityInfo {
        endpoint: "a".into(),
        credentials: Credentials::Psk {
            identity: "id".into(),
            key: "c0ffee".into(),
        },
    };
    let shown = security_json(&info);
    assert!(!shown.to_string().contains("c0ffee"));
    assert_eq!(security_from_json(&json!({"endpoint": "a", "tls": {"mode": "psk", "details": {"identity": "id", "key": "c0ffee"}}})).unwrap(), info);
    assert_eq!(
        security_from_json(&shown),
        Err(CredentialsError::Placeholder),
        "a redacted key is refused"
    );
    let no_identity =
        json!({"endpoint": "a", "tls": {"mode": "psk", "details": {"key": "c0ffee"}}});
    assert_eq!(
        security_from_json(&no_identity).unwrap_err().to_string(),
        "Missing tls details identity"
    );
}

#[test]
fn bootstrap_configs_round_trip_without_their_keys() {
    let leshan = json!({
        "autoIdForSecurityObject": false,
        "toDelete": ["/0", "/1"],
        "servers": {"0": {"shortId": 123, "lifetime": 300, "defaultMinPeriod": 1,
                          "notifIfDisabled": true, "binding": "U", "disableTimeout": null}},
        "security": {
            "0": {"uri": "coaps://127.0.0.1:5684", "bootstrapServer": false,
                  "securityMode": "PSK", "publicKeyOrId": [105, 100],
                  "serverPublicKey": [], "secretKey": [1, 2, 255], "serverId": 123,
                  "smsSecurityMode": "NO_SEC", "smsBindingKeyParam": [], "serverSmsNumber": ""},
            "1": {"uri": "coap://127.0.0.1:5783", "bootstrapServer": true,
                  "securityMode": "NO_SEC"}},
        "acls": {},
        "oscore": {}
    });
    let c = bootstrap_from_json(&leshan).unwrap();
    assert_eq!(c.security[&0].identity, "id");
    assert_eq!(c.security[&0].secret_key, "0102ff");
    assert_eq!(c.servers[&0].short_server_id, 123);
    assert_eq!(c.delete.len(), 2);
    let shown = bootstrap_json(&c);
    assert_eq!(shown["security"]["0"]["secretKey"], REDACTED);
    assert_eq!(shown["security"]["0"]["publicKeyOrId"], json!([105, 100]));
    assert_eq!(shown["servers"]["0"]["shortId"], 123);
    assert_eq!(
        bootstrap_from_json(&shown).unwrap_err().to_string(),
        "security 0: secretKey \"<redacted>\" is a placeholder; give the key",
        "the placeholder is refused"
    );
    let mut sms = leshan.clone();
    sms["security"]["0"]["smsBindingKeySecret"] = json!([1]);
    assert_eq!(
        bootstrap_from_json(&sms),
        Err(ConfigError::Unsupported {
            what: "security 0".into(),
            field: "smsBindingKeySecret".into()
        })
    );
}

#[test]
fn status_names_and_formats_are_leshans() {
    assert_eq!(status_name((2, 5)), "CONTENT");
    assert_eq!(status_name((4, 4)), "NOT_FOUND");
    assert_eq!(status_name((5, 3)), "UNKNOWN(503)");
    assert_eq!(
        format_from_name("SENML_CBOR").unwrap(),
        ContentFormat::SenmlCbor
    );
    assert_eq!(
        format_from_name("LWM2M_CBOR").unwrap(),
        ContentFormat::Lwm2mCbor
    );
    assert_eq!(format_from_name("JSON").unwrap(), ContentFormat::OmaJson);
    assert_eq!(format_from_name("TLV").unwrap(), ContentFormat::Tlv);
    assert_eq!(
        format_from_name("XML"),
        Err(RequestError::Format { name: "XML".into() })
    );
    let p = Params::parse(Some("timeout=2&format=TEXT&active&pmin=3")).unwrap();
    assert_eq!(p.timeout, Duration::from_secs(2));
    assert!(p.active);
    assert_eq!(p.rest, vec!["pmin=3"]);
    assert_eq!(
        Params::parse(Some("timeout=x")).unwrap().timeout,
        LESHAN_TIMEOUT
    );
}
