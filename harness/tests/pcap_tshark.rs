//! Our pcaps open in Wireshark: `tshark` (Debian package `tshark`) decodes the CoAP
//! messages and LwM2M paths we recorded, and decrypts the DTLS datagrams of a feature
//! scenario with the key log the suite writes beside its pcap.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lwm2m_harness::bdd::Subject;
use lwm2m_harness::bdd::run::{self, SuiteOptions};
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

/// tshark's `-T fields` output (`|`-separated) of `pcap` with `options`, one line per
/// packet.
fn fields(pcap: &Path, options: &[&str], fields: &[&str]) -> String {
    let mut command = Command::new(tshark());
    command.arg("-r").arg(pcap).args(options);
    command.args(["-T", "fields", "-E", "separator=|"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let out = command.output().expect("tshark runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

    let text = fields(
        &path,
        &["-d", "udp.port==40001,coap"],
        &[
            "ip.src",
            "udp.dstport",
            "coap.code",
            "coap.opt.uri_path",
            "coap.opt.uri_query",
        ],
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "127.0.0.2|5683|2|rd|ep=dev-1,lt=300", "{text}");
    assert_eq!(lines[1], "127.0.0.1|40001|65||", "{text}");
    assert_eq!(lines[2], "127.0.0.1|40001|1|3,0,0|", "{text}");
}

/// ETS int-401 in process: the pcap carries the encrypted datagrams as the link did; with
/// the key log tshark finds the Register and the Read inside.
#[test]
fn tshark_decrypts_the_int_401_pcap_with_its_key_log() {
    let root = run::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")));
    let dir = tempfile::tempdir().unwrap();
    let options = SuiteOptions {
        features: vec![root.join("features/security/dtls.feature")],
        root,
        ddf: Vec::new(),
        tags: Some("@int-401".to_owned()),
        subject: Subject::in_process(),
        seed: 7,
        report_dir: dir.path().to_path_buf(),
        run: "dtls-evidence".to_owned(),
        console: false,
        device_profile: None,
        device: None,
    };
    let outcome = run::run_suite(&options).unwrap();
    let summary = run::summary(&outcome.report);
    assert!(summary.contains(" 0 failed"), "{summary}");

    let exchanges = dir.path().join("exchanges");
    let keys: Vec<_> = std::fs::read_dir(&exchanges)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".keys.log"))
        .collect();
    // The scenario that reads /3/0 in TLV (the negative ones establish no session).
    let stem_of = |keys: &Path| {
        let keys = keys.to_string_lossy();
        keys.trim_end_matches(".keys.log").to_owned()
    };
    let log_of = |keys: &Path| std::fs::read_to_string(format!("{}.txt", stem_of(keys))).unwrap();
    let Some(keys) = keys
        .iter()
        .find(|k| log_of(k).contains("GET mid=") && log_of(k).contains("/3/0 accept=tlv"))
    else {
        panic!("no scenario with a session read /3/0 in TLV: {keys:?}");
    };
    let pcap = format!("{}.pcap", stem_of(keys));
    let log = log_of(keys);
    assert!(log.contains("DTLS ClientHello"), "{log}");
    assert!(log.contains("DTLS application data"), "{log}");

    let coap = ["coap.code", "coap.opt.uri_path", "coap.opt.uri_query"];
    let decrypt = |keylog: &Path| {
        let keylog = format!("tls.keylog_file:{}", keylog.display());
        fields(
            Path::new(&pcap),
            &["-o", &keylog, "-d", "udp.port==5684,dtls"],
            &coap,
        )
    };
    let decrypted = decrypt(keys);
    let lines: Vec<&str> = decrypted.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("2|rd|") && l.contains("ep=ets-psk")),
        "no Register inside the DTLS records:\n{decrypted}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("1|3,0")),
        "no GET /3/0 inside the DTLS records:\n{decrypted}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("69|")),
        "no 2.05 inside the DTLS records:\n{decrypted}"
    );
    // Without the key log the same capture shows no CoAP at all: it is really encrypted.
    let empty = dir.path().join("empty.keys.log");
    std::fs::write(&empty, "").unwrap();
    let opaque = decrypt(&empty);
    assert!(
        opaque.lines().all(|l| l.trim_matches('|').is_empty()),
        "CoAP readable without keys:\n{opaque}"
    );
}
