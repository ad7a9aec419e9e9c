//! Every datagram the in-process servers send and receive, as their drivers' packet tap
//! sees it, kept in memory during the run and written afterwards as `run.pcap` (IPv4/UDP
//! headers synthesized) and as `exchanges.log` (one decoded line per datagram, in the same
//! order as the pcap). The `--device` feature backend records its servers with it too.
//!
//! With both servers in process every datagram passes a server socket, so the servers' taps
//! see all of them (a datagram the network model drops before it reaches a server is not
//! recorded; one dropped on its way to a client is). With an external server the fleet's tap
//! records instead: what the simulated clients put on and take off the wire.
//!
//! On the DTLS sockets (the LwM2M Server's and the Bootstrap Server's) the pcap gets the
//! datagrams as they were on the wire (encrypted). The server's DTLS layer also hands over
//! the plaintext of each application record ([`PacketTap::plaintext`]; toward an external
//! `coaps://` server the fleet's sessions do, through the same tap); it is attached to its
//! datagram here so that the exchange log and the network-usage tables can show the CoAP inside. A received record's
//! plaintext comes right after its datagram (the driver decrypts it on the same task), a
//! sent record's right before it (the driver encrypts, then sends), so the pairing is by
//! order per peer: the latest datagram from the peer, the next datagram to it.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use lwm2m_dtls::record::RecordBytes;
use lwm2m_proto::coap::{CoapOption, MessageType, message};
use lwm2m_proto::tap::{Direction, PacketTap};

use crate::record::PcapRecorder;

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
    /// On a DTLS socket: the plaintext of the datagram's application records, in record
    /// order, as the server's DTLS layer decrypted or encrypted them; empty otherwise.
    pub plaintext: Vec<Box<[u8]>>,
    /// The DTLS session's identity (`psk:ID`), when `plaintext` is not empty.
    pub identity: Option<Arc<str>>,
}

impl Captured {
    /// Application records of a DTLS datagram that have no plaintext yet.
    fn open_records(&self) -> usize {
        usize::try_from(RecordBytes::of_datagram(&self.bytes).application_records)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.plaintext.len())
    }
}

/// How far back a received record's plaintext looks for its datagram (other sockets'
/// datagrams may come in between).
const PAIRING_WINDOW: usize = 4096;

/// The packet tap of a run.
#[derive(Debug, Default)]
pub struct Capture {
    inner: Mutex<Inner>,
}

/// A record's plaintext and its session's identity.
type Plaintext = (Box<[u8]>, Arc<str>);

/// The plaintext a DTLS socket encrypted, by (our socket, peer), oldest first, until the
/// datagram that carries it leaves: the DTLS layer reports a record's plaintext
/// ([`PacketTap::plaintext`], `Out`) before the tap sees its datagram, so each datagram
/// takes one plaintext per application record it holds.
#[derive(Debug, Default)]
pub struct Sealing(HashMap<(SocketAddr, SocketAddr), VecDeque<Plaintext>>);

impl Sealing {
    /// The DTLS layer is about to encrypt `bytes` for the record to `peer`.
    pub fn push(&mut self, local: SocketAddr, peer: SocketAddr, bytes: &[u8], identity: &str) {
        let queue = self.0.entry((local, peer)).or_default();
        queue.push_back((bytes.into(), identity.into()));
    }

    /// The plaintext of the first `records` application records that leave from `local`
    /// to `peer`, oldest first (fewer when fewer were reported).
    pub fn take(&mut self, local: SocketAddr, peer: SocketAddr, records: usize) -> Vec<Plaintext> {
        let Some(queue) = self.0.get_mut(&(local, peer)) else {
            return Vec::new();
        };
        let n = records.min(queue.len());
        queue.drain(..n).collect()
    }

    /// Plaintext no datagram took yet.
    pub fn waiting(&self) -> usize {
        self.0.values().map(VecDeque::len).sum()
    }
}

#[derive(Debug, Default)]
struct Inner {
    packets: Vec<Captured>,
    /// Plaintext about to be encrypted.
    outgoing: Sealing,
    /// Plaintext whose datagram was not found (should stay 0).
    unpaired: u64,
}

impl PacketTap for Capture {
    fn datagram(&self, direction: Direction, local: SocketAddr, peer: SocketAddr, bytes: &[u8]) {
        let (src, dst) = direction.ends(local, peer);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut p = Captured {
            at,
            src,
            dst,
            bytes: bytes.into(),
            plaintext: Vec::new(),
            identity: None,
        };
        let mut inner = self.lock();
        for (plain, identity) in inner.outgoing.take(src, dst, p.open_records()) {
            p.plaintext.push(plain);
            p.identity = Some(identity);
        }
        inner.packets.push(p);
    }

    fn plaintext(
        &self,
        direction: Direction,
        local: SocketAddr,
        peer: SocketAddr,
        identity: &str,
        bytes: &[u8],
    ) {
        let mut inner = self.lock();
        match direction {
            Direction::In => {
                let found = inner
                    .packets
                    .iter_mut()
                    .rev()
                    .take(PAIRING_WINDOW)
                    .find(|p| p.src == peer && p.dst == local);
                match found {
                    Some(p) if p.open_records() > 0 => {
                        p.plaintext.push(bytes.into());
                        p.identity = Some(identity.into());
                    }
                    _ => inner.unpaired += 1,
                }
            }
            Direction::Out => inner.outgoing.push(local, peer, bytes, identity),
        }
    }
}

impl Capture {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Datagrams recorded so far.
    pub fn len(&self) -> usize {
        self.lock().packets.len()
    }

    /// Plaintext records whose datagram was not found (0 unless the DTLS layer and the
    /// socket disagree).
    pub fn unpaired(&self) -> u64 {
        let inner = self.lock();
        inner.unpaired + inner.outgoing.waiting() as u64
    }

    /// True before the first datagram.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything recorded, in order; the capture is empty afterwards.
    pub fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut self.lock().packets)
    }

    /// What was recorded, in order, up to the first received DTLS datagram younger than
    /// `settle` whose application records still wait for their plaintext (the driver
    /// reports it right after the datagram): that one and the later ones stay for the next
    /// call, so that a reader polling while traffic flows still sees the CoAP inside.
    pub fn take_settled(&self, settle: Duration) -> Vec<Captured> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut inner = self.lock();
        let cut = inner
            .packets
            .iter()
            .position(|p| p.open_records() > 0 && now.saturating_sub(p.at) < settle)
            .unwrap_or(inner.packets.len());
        let rest = inner.packets.split_off(cut);
        std::mem::replace(&mut inner.packets, rest)
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

/// One line of the exchange log: time since `t0`, addresses, then the CoAP message
/// (`CON GET mid=12 token=0a1b /3/0 accept=11542 len=17`); for DTLS the records and the
/// CoAP inside (`DTLS application 72: CON POST ... len=43`); else `not CoAP (N bytes)`.
pub fn log_line(t0: Duration, p: &Captured) -> String {
    let t = p.at.saturating_sub(t0).as_secs_f64();
    let mut s = format!("{t:10.6} {} -> {} ", p.src, p.dst);
    if message::decode(&p.bytes).is_err() {
        let records = RecordBytes::of_datagram(&p.bytes);
        if records.other == 0 {
            s.push_str("DTLS");
            for (what, n) in [
                ("handshake", records.handshake),
                ("alert", records.alert),
                ("application", records.application),
            ] {
                if n > 0 {
                    let _ = write!(s, " {what} {n}");
                }
            }
            for text in &p.plaintext {
                s.push_str(": ");
                coap_summary(&mut s, text);
            }
            return s;
        }
    }
    coap_summary(&mut s, &p.bytes);
    s
}

/// `CON GET mid=12 token=0a1b /3/0 len=17`, or `not CoAP (N bytes)`.
fn coap_summary(s: &mut String, bytes: &[u8]) {
    match message::decode(bytes) {
        Ok(m) => {
            let ty = match m.header.get_type() {
                MessageType::Confirmable => "CON",
                MessageType::NonConfirmable => "NON",
                MessageType::Acknowledgement => "ACK",
                MessageType::Reset => "RST",
            };
            let code = code_name(bytes.get(1).copied().unwrap_or(0));
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
            let _ = write!(s, " len={}", bytes.len());
        }
        Err(_) => {
            let _ = write!(s, "not CoAP ({} bytes)", bytes.len());
        }
    }
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
            plaintext: Vec::new(),
            identity: None,
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

    /// An application_data record of epoch 1 with `body` (RFC 6347 §4.1).
    fn record(body: &[u8]) -> Vec<u8> {
        let mut r = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7];
        r.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        r.extend(body);
        r
    }

    #[test]
    fn pairs_dtls_records_with_their_plaintext() {
        let local: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.1.0.1:4000".parse().unwrap(),
            "127.1.0.2:4000".parse().unwrap(),
        );
        let mut get = message::request(RequestType::Get, "/3/0");
        get.set_token(vec![1]);
        let get = get.to_bytes().unwrap();
        let cap = Capture::default();
        // In: the record, another peer's, then the first one's plaintext.
        cap.datagram(Direction::In, local, a, &record(&[0; 40]));
        cap.datagram(Direction::In, local, b, &[22; 20]);
        cap.plaintext(Direction::In, local, a, "psk:a", &[0x40; 24]);
        // Out: the plaintext first, then its record.
        cap.plaintext(Direction::Out, local, b, "psk:b", &get);
        cap.datagram(Direction::Out, local, b, &record(&vec![0; get.len() + 16]));
        // A plaintext whose record never came.
        cap.plaintext(Direction::In, local, b, "psk:b", b"zz");
        assert_eq!(cap.unpaired(), 1);
        let got = cap.take();
        assert_eq!(got[0].plaintext, vec![Box::from(&[0x40u8; 24][..])]);
        assert_eq!(got[0].identity.as_deref(), Some("psk:a"));
        assert!(got[1].plaintext.is_empty());
        assert_eq!(got[2].identity.as_deref(), Some("psk:b"));
        let usage = crate::report::usage::of_captured(&got);
        assert_eq!(usage[2].coap, get);
        assert_eq!(usage[2].wire_len, get.len() + 29);
        let line = log_line(Duration::ZERO, &got[2]);
        assert!(
            line.ends_with(&format!(
                "DTLS application {}: CON GET mid=0 token=01 /3/0 len={}",
                get.len() + 29,
                get.len()
            )),
            "{line}"
        );
    }
}
