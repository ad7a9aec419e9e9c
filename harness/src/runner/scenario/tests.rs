//! Tests of the scenario file.

use super::*;

const TEXT: &str = "\
name: t
fleet:
  - name: a
    profile: p
  - name: b
    profile: q
    count: 3
timeline:
  - at: 1s
    action: read
  -
    at: 2s
    path: /3/0
";

#[test]
fn locates_keys_in_sequences() {
    assert_eq!(locate(TEXT, "name"), (1, 1));
    assert_eq!(locate(TEXT, "fleet"), (2, 1));
    assert_eq!(locate(TEXT, "fleet.0"), (3, 5));
    assert_eq!(locate(TEXT, "fleet.0.profile"), (4, 5));
    assert_eq!(locate(TEXT, "fleet.1.name"), (5, 5));
    assert_eq!(locate(TEXT, "fleet.1.count"), (7, 5));
    assert_eq!(locate(TEXT, "timeline.0.action"), (10, 5));
    assert_eq!(locate(TEXT, "timeline.1.path"), (13, 5));
    // Missing: the deepest part found.
    assert_eq!(locate(TEXT, "fleet.0.count"), (3, 5));
    assert_eq!(locate(TEXT, "nothing"), (1, 1));
}

#[test]
fn codes_and_uris() {
    assert_eq!(
        parse_code(&serde_yaml::Value::String("2.05".into())),
        Some((2, 5))
    );
    assert_eq!(
        parse_code(&serde_yaml::from_str("2.05").unwrap()),
        Some((2, 5))
    );
    assert_eq!(
        parse_code(&serde_yaml::from_str("4.04").unwrap()),
        Some((4, 4))
    );
    assert_eq!(parse_code(&serde_yaml::Value::String("205".into())), None);
    assert_eq!(code_text((2, 5)), "2.05");
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        parse_coap_uri("coap://127.0.0.1:5783"),
        Ok((addr("127.0.0.1:5783"), false))
    );
    assert_eq!(
        parse_coap_uri("coap://127.0.0.1"),
        Ok((addr("127.0.0.1:5683"), false))
    );
    assert_eq!(
        parse_coap_uri("coaps://127.0.0.1"),
        Ok((addr("127.0.0.1:5684"), true))
    );
    assert_eq!(
        parse_coap_uri("coaps://[::1]/x"),
        Ok((addr("[::1]:5684"), true))
    );
    assert_eq!(
        parse_coap_uri("http://127.0.0.1"),
        Err(UriError::Shape(CoapUriError::Scheme {
            uri: "http://127.0.0.1".into()
        }))
    );
}

#[test]
fn default_bootstrap_points_at_the_server() {
    let s: Scenario =
        serde_yaml::from_str("name: t\nduration: 1s\nfleet: [{name: a, profile: p, count: 1}]\n")
            .unwrap();
    let doc = bootstrap_doc(&s, "127.0.0.1:4000".parse().unwrap());
    let c = doc.patterns.get("*").unwrap();
    assert_eq!(c.security.get(&0).unwrap().uri, "coap://127.0.0.1:4000");
    assert_eq!(c.servers.get(&0).unwrap().lifetime, 300);
}
