//! The codec tool from the outside: the binary as a user runs it.

use std::process::{Command, Output};

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lwm2m-harness"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("decode prints JSON")
}

#[test]
fn decode_names_nodes_from_the_registry() {
    // Core TS 1.0 §6.4.3.1: Manufacturer "Open Mobile Alliance" as a resource TLV.
    let out = harness(&[
        "decode",
        "--format",
        "tlv",
        "--path",
        "/3/0",
        "c8 00 14 4f 70 65 6e 20 4d 6f 62 69 6c 65 20 41 6c 6c 69 61 6e 63 65",
    ]);
    let j = json_of(&out);
    assert_eq!(j["nodes"][0]["path"], "/3/0/0");
    assert_eq!(j["nodes"][0]["resource"], "Manufacturer");
    assert_eq!(j["nodes"][0]["value"], "Open Mobile Alliance");
    assert_eq!(j["findings"].as_array().map(Vec::len), Some(0));
}

#[test]
fn pre_1_0_location_strings_are_flagged_not_garbled() {
    // Latitude "45.5" sent as a string, where LwM2M 1.0 wants a float.
    let j = json_of(&harness(&[
        "decode", "-f", "tlv", "-p", "/6/0", "c80004", "34352e35",
    ]));
    assert_eq!(j["nodes"][0]["value"], "45.5");
    assert_eq!(j["findings"][0]["kind"], "type_mismatch");
    assert!(
        j["nodes"][0]["flagged"][0]
            .as_str()
            .unwrap()
            .contains("Float")
    );
    // With the pre-1.0 definition the same bytes are a plain string.
    let j = json_of(&harness(&[
        "decode",
        "-f",
        "tlv",
        "-p",
        "/6/0",
        "--object-version",
        "6=pre-1.0",
        "c8000434352e35",
    ]));
    assert_eq!(j["findings"].as_array().map(Vec::len), Some(0));
}

#[test]
fn encode_then_decode_round_trips_for_every_multi_node_format() {
    let input = r#"{"/3/0/0": "ACME", "/3/0/9": 80, "/3/0/13": 1700000000, "/3/0/11/0": 0}"#;
    for format in ["tlv", "json", "senml-json", "senml-cbor", "lwm2m-cbor"] {
        let enc = harness(&["encode", "-f", format, "-p", "/3/0", input]);
        assert!(
            enc.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&enc.stderr)
        );
        let hex = String::from_utf8(enc.stdout).unwrap();
        let j = json_of(&harness(&[
            "decode",
            "-f",
            format,
            "-p",
            "/3/0",
            hex.trim(),
        ]));
        let again = harness(&["encode", "-f", format, "-p", "/3/0", &j.to_string()]);
        assert_eq!(String::from_utf8(again.stdout).unwrap(), hex, "{format}");
        assert_eq!(
            j["nodes"].as_array().map(Vec::len),
            Some(4),
            "{format}: {j}"
        );
    }
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failure_status() {
    for (args, needle) in [
        (vec!["decode", "-f", "tlv", "-p", "/3/0", "zz"], "not hex"),
        (
            vec!["decode", "-f", "bogus", "-p", "/3/0", "00"],
            "unknown format",
        ),
        (
            vec!["decode", "-f", "tlv", "-p", "/3/0", "c8 00 14 4f"],
            "malformed",
        ),
        (
            vec!["encode", "-f", "tlv", "-p", "/3/0", r#"{"/3/0/9": "high"}"#],
            "Battery Level",
        ),
    ] {
        let out = harness(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let out = harness(&["decode", "-f", "tlv", "-p", "/3/x", "00"]);
    assert!(!out.status.success());
}

#[test]
fn a_broken_user_ddf_folder_is_named_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("lwm2m-ddf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.xml"),
        "<LWM2M>\n<Object>\n<Name>x</Name>\n",
    )
    .unwrap();
    let out = harness(&["--ddf", dir.to_str().unwrap(), "objects"]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.xml:"), "{err}");
}

#[test]
fn coaps_addresses_of_a_server_under_test_are_checked_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "--server",
                "coap://127.0.0.1:1",
                "--server-coaps",
                "coap://127.0.0.1:2",
            ],
            "expected coaps://HOST:PORT",
        ),
        (
            vec![
                "--server",
                "coaps://127.0.0.1:1",
                "--server-coaps",
                "coaps://127.0.0.1:2",
            ],
            "is coaps:// already",
        ),
        (
            vec![
                "--server",
                "coap://127.0.0.1:1",
                "--bootstrap-server",
                "http://127.0.0.1:3",
            ],
            "expected coap://HOST:PORT or coaps://HOST:PORT",
        ),
        (
            vec![
                "--server",
                "coap://127.0.0.1:1",
                "--bootstrap-server",
                "coaps://127.0.0.1:3",
                "--bootstrap-server-coaps",
                "coaps://127.0.0.1:4",
            ],
            "is coaps:// already",
        ),
    ] {
        let mut all = vec!["test", "--quiet", "--report-dir", report];
        all.extend(&args);
        let out = harness(&all);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
