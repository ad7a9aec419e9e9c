//! The DTLS evidence of the feature suite opens in Wireshark: a scenario's pcap carries
//! the encrypted datagrams as the in-process link did, and `tshark` (Debian package
//! `tshark`) with the scenario's key log beside it decrypts them and finds the LwM2M
//! Register and the Read of ETS int-401 inside.

use std::path::Path;
use std::process::Command;

use lwm2m_harness::bdd::Subject;
use lwm2m_harness::bdd::run::{self, SuiteOptions};

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
    // The PSK scenario that registers (the negative ones establish no session).
    assert_eq!(keys.len(), 1, "{keys:?}");
    let keys = &keys[0];
    let stem = keys
        .to_string_lossy()
        .trim_end_matches(".keys.log")
        .to_owned();
    let pcap = format!("{stem}.pcap");
    let log = std::fs::read_to_string(format!("{stem}.txt")).unwrap();
    assert!(log.contains("DTLS ClientHello"), "{log}");
    assert!(log.contains("DTLS application data"), "{log}");

    let fields = |keylog: &str| {
        let out = Command::new(tshark())
            .args(["-r", &pcap, "-o", &format!("tls.keylog_file:{keylog}")])
            .args([
                "-d",
                "udp.port==5684,dtls",
                "-T",
                "fields",
                "-E",
                "separator=|",
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
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let decrypted = fields(&keys.to_string_lossy());
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
    let opaque = fields(&empty.to_string_lossy());
    assert!(
        opaque.lines().all(|l| l.trim_matches('|').is_empty()),
        "CoAP readable without keys:\n{opaque}"
    );
}
