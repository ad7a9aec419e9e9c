//! Every datagram the in-process servers send and receive, as their drivers' packet tap
//! sees it, kept in memory during the run and written afterwards as `run.pcap` (IPv4/UDP
//! headers synthesized) and as `exchanges.log` (one decoded line per datagram, in the same
//! order as the pcap).
//!
//! With both servers in process every datagram passes a server socket, so the servers' taps
//! see all of them (a datagram the network model drops before it reaches a server is not
//! recorded; one dropped on its way to a client is). With an external server the fleet's tap
//! records instead: what the simulated clients put on and take off the wire.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use lwm2m_proto::coap::{CoapOption, MessageType, message};
use lwm2m_server::events::{Direction, PacketTap};

use crate::record::PcapRecorder;
use crate::report::usage::Datagram;

/// One recorded datagram.
#[derive(Debug, Clone)]
pub struct Captured {
    /// When the server's driver saw it, since the Unix epoch.
    pub at: Duration,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub bytes: Box<[u8]>,
}

/// The packet tap of a run.
#[derive(Debug, Default)]
pub struct Capture {
    packets: Mutex<Vec<Captured>>,
}

impl PacketTap for Capture {
    fn datagram(&self, direction: Direction, local: SocketAddr, peer: SocketAddr, bytes: &[u8]) {
        let (src, dst) = match direction {
            Direction::In => (peer, local),
            Direction::Out => (local, peer),
        };
        lwm2m_simulator::fleet::DatagramTap::datagram(self, src, dst, bytes);
    }
}

impl lwm2m_simulator::fleet::DatagramTap for Capture {
    fn datagram(&self, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.packets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Captured {
                at,
                src,
                dst,
                bytes: bytes.into(),
            });
    }
}

impl Capture {
    /// Datagrams recorded so far.
    pub fn len(&self) -> usize {
        self.packets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True before the first datagram.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything recorded, in order; the capture is empty afterwards.
    pub fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.packets.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Writes `run.pcap`.
pub fn write_pcap(path: &Path, packets: &[Captured]) -> anyhow::Result<()> {
    let mut pcap = PcapRecorder::create(path)?;
    for p in packets {
        pcap.record(p.at, p.src, p.dst, &p.bytes)?;
    }
    pcap.finish()?;
    Ok(())
}

/// The datagrams as the network-usage table wants them (plain CoAP: wire bytes are CoAP
/// bytes).
pub fn usage_datagrams(packets: &[Captured]) -> Vec<Datagram> {
    packets
        .iter()
        .map(|p| Datagram {
            src: p.src,
            dst: p.dst,
            coap: p.bytes.to_vec(),
            wire_len: p.bytes.len(),
        })
        .collect()
}

/// One line of the exchange log: time since `t0`, addresses, then the CoAP message
/// (`CON GET mid=12 token=0a1b /3/0 accept=11542 len=17`), or `not CoAP (N bytes)`.
pub fn log_line(t0: Duration, p: &Captured) -> String {
    let t = p.at.saturating_sub(t0).as_secs_f64();
    let mut s = format!("{t:10.6} {} -> {} ", p.src, p.dst);
    match message::decode(&p.bytes) {
        Ok(m) => {
            let ty = match m.header.get_type() {
                MessageType::Confirmable => "CON",
                MessageType::NonConfirmable => "NON",
                MessageType::Acknowledgement => "ACK",
                MessageType::Reset => "RST",
            };
            let code = code_name(p.bytes.get(1).copied().unwrap_or(0));
            let token: String = m.get_token().iter().map(|b| format!("{b:02x}")).collect();
            let _ = write!(
                s,
                "{ty} {code} mid={} token={}",
                m.header.message_id,
                if token.is_empty() { "-" } else { &token }
            );
            let path = message::uri_path(&m);
            if !path.is_empty() && path != "/" {
                let _ = write!(s, " {path}");
            }
            if let Some(q) = m.get_option(CoapOption::UriQuery) {
                let q: Vec<String> = q
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                let _ = write!(s, "?{}", q.join("&"));
            }
            if let Some(o) = message::observe_value(&m) {
                let _ = write!(s, " observe={o}");
            }
            let _ = write!(s, " len={}", p.bytes.len());
        }
        Err(_) => {
            let _ = write!(s, "not CoAP ({} bytes)", p.bytes.len());
        }
    }
    s
}

/// A CoAP code byte as people read it: the method of a request (`GET`), else `c.dd`
/// (RFC 7252 §3, §12.1).
pub fn code_name(code: u8) -> String {
    const METHODS: [&str; 8] = [
        "0.00", "GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "IPATCH",
    ];
    match METHODS.get(usize::from(code)) {
        Some(m) => (*m).to_owned(),
        None => format!("{}.{:02}", code >> 5, code & 0x1f),
    }
}

/// Writes `exchanges.log`: a header naming the servers' ports (for Wireshark's Decode As),
/// then [`log_line`] per datagram.
pub fn write_log(path: &Path, packets: &[Captured], header: &str) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let t0 = packets.first().map_or(Duration::ZERO, |p| p.at);
    for line in header.lines() {
        writeln!(out, "# {line}")?;
    }
    for p in packets {
        writeln!(out, "{}", log_line(t0, p))?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_proto::coap::RequestType;

    #[test]
    fn logs_coap_lines() {
        let mut req = message::request(RequestType::Get, "/3/0");
        req.header.message_id = 12;
        req.set_token(vec![0x0a, 0x1b]);
        let p = Captured {
            at: Duration::from_millis(1500),
            src: "127.0.0.1:5683".parse().unwrap(),
            dst: "127.1.0.1:4000".parse().unwrap(),
            bytes: req.to_bytes().unwrap().into(),
        };
        let line = log_line(Duration::from_secs(1), &p);
        assert!(
            line.contains("127.0.0.1:5683 -> 127.1.0.1:4000 CON GET mid=12 token=0a1b /3/0 len="),
            "{line}"
        );
        let junk = Captured {
            bytes: vec![0xff].into(),
            ..p
        };
        assert!(log_line(Duration::ZERO, &junk).ends_with("not CoAP (1 bytes)"));
        let cap = Capture::default();
        cap.datagram(Direction::In, junk.dst, junk.src, b"x");
        let got = cap.take();
        assert_eq!((got[0].src, got[0].dst), (junk.src, junk.dst));
        assert!(cap.is_empty());
    }
}
