//! The NSS key log lets tshark decrypt a capture: a sans-IO client and server exchange a
//! handshake and one CoAP request, the test writes the datagrams into a pcap (IPv4 + UDP
//! headers, LINKTYPE_IPV4) and asks tshark for the decrypted CoAP fields.
#![allow(clippy::unwrap_used)] // test fixtures: a failure is the test failing

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwm2m_dtls::{ClientConfig, DtlsClient, DtlsServer, KeyLogFile, ServerConfig, ServerEvent};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

const IDENTITY: &[u8] = b"keylog-device";
const KEY: &[u8] = b"keylog-secret";

/// An IPv4 + UDP packet around `payload` (RFC 791, RFC 768; UDP checksum 0 = none).
fn ipv4_udp(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only")
    };
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&from.ip().octets());
    ip.extend_from_slice(&to.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    ip.extend_from_slice(&from.port().to_be_bytes());
    ip.extend_from_slice(&to.port().to_be_bytes());
    ip.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    ip
}

/// Runs client and server to completion in memory; returns every datagram in order.
fn exchange(key_log: &Path, request: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let client_addr: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let server_addr: SocketAddr = "10.0.0.1:5684".parse().unwrap();
    let mut server = DtlsServer::new(ServerConfig {
        psk_store: Some(Arc::new(|id: &[u8]| (id == IDENTITY).then(|| KEY.to_vec()))),
        key_log: Some(Arc::new(KeyLogFile::append(key_log).unwrap())),
        ..ServerConfig::default()
    })
    .unwrap();
    let now = Instant::now();
    let config = ClientConfig::psk(IDENTITY, KEY).unwrap();
    let mut client = DtlsClient::connect(now, server_addr, &config).unwrap();
    let mut wire = Vec::new();
    let mut sent = false;
    for _ in 0..20 {
        while let Some(bytes) = client.poll_transmit() {
            server.handle_datagram(now, client_addr, &bytes);
            wire.push((client_addr, server_addr, bytes));
        }
        while let Some(transmit) = server.poll_transmit() {
            client.handle_datagram(now, &transmit.bytes);
            wire.push((server_addr, transmit.peer, transmit.bytes));
        }
        while let Some(event) = server.poll_event() {
            if let ServerEvent::Datagram { peer, .. } = event {
                server.send(now, peer, b"\x60\x45\x12\x34\xffOMA").unwrap();
            }
        }
        if client.is_established() && !sent {
            client.send(now, request).unwrap();
            sent = true;
        }
    }
    assert!(sent, "no handshake");
    assert_eq!(
        client.secrets().unwrap().key_log_line(),
        server.secrets(client_addr).unwrap().key_log_line(),
        "both ends derive the same master secret"
    );
    wire
}

#[test]
fn tshark_decrypts_a_capture_with_our_key_log() {
    let dir = tempfile::tempdir().unwrap();
    let key_log = dir.path().join("keys.log");
    let pcap = dir.path().join("dtls.pcap");
    // CoAP GET /3/0/0, confirmable, MID 0x1234, no token (RFC 7252 §3).
    let request = b"\x40\x01\x12\x34\xb1\x33\x01\x30\x01\x30";
    let wire = exchange(&key_log, request);

    let log = std::fs::read_to_string(&key_log).unwrap();
    assert!(
        log.starts_with("CLIENT_RANDOM ") && log.lines().count() == 1,
        "{log}"
    );
    assert_eq!(log.trim_end().len(), "CLIENT_RANDOM ".len() + 64 + 1 + 96);

    let header = PcapHeader {
        datalink: DataLink::IPV4,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(File::create(&pcap).unwrap(), header).unwrap();
    for (i, (from, to, bytes)) in wire.iter().enumerate() {
        let packet = ipv4_udp(*from, *to, bytes);
        let time = Duration::from_millis(1_700_000_000_000 + i as u64);
        writer
            .write_packet(&PcapPacket::new(time, packet.len() as u32, &packet))
            .unwrap();
    }
    drop(writer);

    let tshark = "tshark";
    let output = std::process::Command::new(tshark)
        .arg("-r")
        .arg(&pcap)
        .arg("-o")
        .arg(format!("tls.keylog_file:{}", key_log.display()))
        .args(["-d", "udp.port==5684,dtls", "-Y", "coap", "-T", "fields"])
        .args([
            "-e",
            "coap.code",
            "-e",
            "coap.mid",
            "-e",
            "coap.opt.uri_path_recon",
            "-e",
            "coap.payload",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("{tshark} cannot be run ({e}): install it with `apt-get install tshark`")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "tshark: {stdout:?} {:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(lines[0].starts_with("1\t4660\t/3/0/0"), "{:?}", lines[0]);
    assert!(lines[1].starts_with("69\t4660"), "{:?}", lines[1]);
}
