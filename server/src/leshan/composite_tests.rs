//! Tests of the Leshan API's composite shapes.

use super::*;

fn rec(p: &str, v: Value) -> Record {
    Record {
        path: p.parse().unwrap(),
        value: Some(v),
        time: None,
    }
}

#[test]
fn a_composite_answer_has_a_node_for_each_path_asked() {
    let reg = Registry::embedded();
    let records = vec![
        rec("/1/0/0", Value::Integer(1)),
        rec("/1/0/1", Value::Integer(86400)),
        rec("/1/0/7", Value::String("U".into())),
        rec("/3/0/11/0", Value::Integer(0)),
    ];
    let paths: Vec<Lwm2mPath> = ["/1/0", "/1/0/1", "/3/0/11/0", "/3339/0/5522"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let j = composite_json(&reg, &paths, &records);
    assert_eq!(j["/1/0"]["kind"], "instance", "{j}");
    assert_eq!(j["/1/0/1"]["value"], "86400", "{j}");
    assert_eq!(j["/3/0/11/0"]["kind"], "resourceInstance", "{j}");
    assert!(j.get("/3339/0/5522").is_none(), "{j}");
    // The root: Leshan's root node, its objects.
    let j = composite_json(&reg, &[Lwm2mPath::Root], &records);
    assert_eq!(j["/"]["kind"], "root", "{j}");
    let objects = j["/"]["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2, "{j}");
    assert_eq!(objects[0]["kind"], "obj", "{j}");
    assert_eq!(objects[1]["id"], 3, "{j}");
}
