//! Our pcaps open in Wireshark: `tshark` (Debian package `tshark`) decodes the CoAP
//! messages and LwM2M paths we recorded.

use std::process::Command;
use std::time::Duration;

use lwm2m_harness::record::PcapRecorder;
use lwm2m_proto::coap::{Packet, RequestType, ResponseType, message};

fn tshark() -> &'static str {
    let found = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "tshark is not installed: run scripts/test (it installs it) or `apt-get install tshark`"
    );
    "tshark"
}

#[test]
fn tshark_decodes_recorded_coap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.pcap");
    let client = "127.0.0.2:40001".parse().unwrap();
    let server = "127.0.0.1:5683".parse().unwrap();

    let mut register: Packet = message::request(RequestType::Post, "/rd");
    register.header.message_id = 0x1234;
    register.set_token(vec![1, 2, 3, 4]);
    message::add_query(&mut register, "ep=dev-1");
    message::add_query(&mut register, "lt=300");
    register.payload = b"</1/0>,</3/0>".to_vec();
    let mut created = message::response(ResponseType::Created, Vec::new());
    created.header.message_id = 0x1234;
    created.set_token(vec![1, 2, 3, 4]);
    let mut read: Packet = message::request(RequestType::Get, "/3/0/0");
    read.header.message_id = 7;
    read.set_token(vec![9]);

    let mut rec = PcapRecorder::create(&path).unwrap();
    let t0 = Duration::from_secs(1_700_000_000);
    let bytes = |p: &Packet| p.to_bytes().unwrap();
    rec.record(t0, client, server, &bytes(&register)).unwrap();
    rec.record(
        t0 + Duration::from_millis(3),
        server,
        client,
        &bytes(&created),
    )
    .unwrap();
    rec.record(t0 + Duration::from_millis(5), server, client, &bytes(&read))
        .unwrap();
    rec.finish().unwrap();

    let out = Command::new(tshark())
        .args(["-r", path.to_str().unwrap(), "-d", "udp.port==40001,coap"])
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.src",
            "-e",
            "udp.dstport",
        ])
        .args([
            "-e",
            "coap.code",
            "-e",
            "coap.opt.uri_path",
            "-e",
            "coap.opt.uri_query",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "127.0.0.2|5683|2|rd|ep=dev-1,lt=300", "{text}");
    assert_eq!(lines[1], "127.0.0.1|40001|65||", "{text}");
    assert_eq!(lines[2], "127.0.0.1|40001|1|3,0,0|", "{text}");
}
