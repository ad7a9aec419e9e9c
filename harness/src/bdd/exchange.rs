//! The exchange log: one decoded line per CoAP message on the wire (RFC 7252 §3), so a
//! failing step can show the exchange that failed.
//!
//! A line reads `  +12.345s dev-1 -> server  CON POST mid=0x1a2b tok=5f01c2aa /rd?ep=dev-1&lt=300 ct=40 [96 B] "</1/0>,</3/0>"`:
//! the virtual time, who sent it to whom, the message type and code, the message id and
//! token, the Uri-Path and Uri-Query (or Location-Path), the options worth knowing
//! (Content-Format, Accept, Observe, Block1/Block2) and a payload summary. Datagrams the
//! link lost or dropped get a line of their own that says why.
//!
//! DTLS datagrams (RFC 6347) name their records and, for application data whose plaintext
//! the backend knows, show the CoAP message inside:
//! `dev-1 -> server  DTLS ClientHello [87 B]`,
//! `dev-1 -> server  DTLS application data [125 B] = CON POST mid=... /rd?ep=dev-1 [96 B] ...`.
//! The key log of the scenario's sessions ([`ExchangeLog::key_log`]) lets Wireshark
//! decrypt the pcap.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use lwm2m_proto::ContentFormat;
use lwm2m_proto::coap::message::{self, uint_option};
use lwm2m_proto::coap::{CoapOption, MessageType, Packet};

/// Longest payload summary, in characters.
const PAYLOAD_SUMMARY: usize = 72;

/// One end of a datagram: who (a name for the log) and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer<'a> {
    /// `server`, `bootstrap` or a client's endpoint name.
    pub name: &'a str,
    /// Its address on the link.
    pub addr: SocketAddr,
}

/// A datagram as sent, for pcaps and network usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Its line in the log.
    pub line: usize,
    /// When, since the start of the scenario.
    pub at: Duration,
    /// From.
    pub src: SocketAddr,
    /// To.
    pub dst: SocketAddr,
    /// The datagram as the link carried it (CoAP, or DTLS records).
    pub bytes: Vec<u8>,
    /// The CoAP message: `bytes` on plain CoAP, the plaintext of a DTLS application record
    /// when known, `None` for handshakes and alerts.
    pub coap: Option<Vec<u8>>,
}

/// Every datagram of a scenario, decoded, in the order it was sent.
#[derive(Debug, Clone, Default)]
pub struct ExchangeLog {
    lines: Vec<String>,
    /// The whole payload of the CoAP message of a line, by line (see [`full_payload`]).
    payloads: std::collections::BTreeMap<usize, String>,
    sent: Vec<Sent>,
    bytes: u64,
    key_log: Vec<String>,
}

impl ExchangeLog {
    /// Logs a datagram sent at `at` from `from` to `to`.
    pub fn datagram(&mut self, at: Duration, from: Peer<'_>, to: Peer<'_>, bytes: &[u8]) {
        self.push(at, from, to, bytes, Some(bytes), describe(bytes));
    }

    /// Logs a DTLS datagram; `inner` is the CoAP message its application record carries,
    /// when the sender handed it over.
    pub fn secure_datagram(
        &mut self,
        at: Duration,
        from: Peer<'_>,
        to: Peer<'_>,
        bytes: &[u8],
        inner: Option<&[u8]>,
    ) {
        let mut text = format!(
            "DTLS {} [{} B]",
            lwm2m_dtls::record::describe(bytes),
            bytes.len()
        );
        if let Some(coap) = inner {
            let _ = write!(text, " = {}", describe(coap));
        }
        self.push(at, from, to, bytes, inner, text);
    }

    fn push(
        &mut self,
        at: Duration,
        from: Peer<'_>,
        to: Peer<'_>,
        bytes: &[u8],
        coap: Option<&[u8]>,
        text: String,
    ) {
        self.bytes += bytes.len() as u64;
        if let Some(full) = coap.and_then(full_payload) {
            self.payloads.insert(self.lines.len(), full);
        }
        self.sent.push(Sent {
            line: self.lines.len(),
            at,
            src: from.addr,
            dst: to.addr,
            bytes: bytes.to_vec(),
            coap: coap.map(<[u8]>::to_vec),
        });
        self.lines.push(format!(
            "{} {} -> {}  {text}",
            stamp(at),
            from.name,
            to.name
        ));
    }

    /// Adds an NSS key log line (`CLIENT_RANDOM ...`) of a DTLS session of the scenario.
    pub fn add_key(&mut self, line: String) {
        self.key_log.push(line);
    }

    /// The NSS key log of the scenario's DTLS sessions, one line each (empty without DTLS).
    pub fn key_log(&self) -> &[String] {
        &self.key_log
    }

    /// Every datagram sent, in order.
    pub fn sent(&self) -> &[Sent] {
        &self.sent
    }

    /// Logs what happened to a datagram on the way (lost, dropped by a NAT, radio off).
    pub fn note(&mut self, at: Duration, text: &str) {
        self.lines.push(format!("{}   !! {text}", stamp(at)));
    }

    /// Logs something a party reported between datagrams (a DTLS session established or
    /// closed); problems are [`ExchangeLog::note`]s.
    pub fn event(&mut self, at: Duration, text: &str) {
        self.lines.push(format!("{}   -- {text}", stamp(at)));
    }

    /// The number of lines so far (a mark to show the lines logged after it).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing was logged.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Datagrams and bytes sent so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.sent.len() as u64, self.bytes)
    }

    /// Datagrams and bytes sent from line `mark` on.
    pub fn totals_since(&self, mark: usize) -> (u64, u64) {
        let first = self.sent.partition_point(|d| d.line < mark);
        let tail = self.sent.get(first..).unwrap_or_default();
        (
            tail.len() as u64,
            tail.iter().map(|d| d.bytes.len() as u64).sum(),
        )
    }

    /// The lines from `mark` on, at most `max` of them (the last ones), as one text.
    pub fn since(&self, mark: usize, max: usize) -> String {
        let lines = self.lines.get(mark..).unwrap_or_default();
        let skip = lines.len().saturating_sub(max);
        let mut out = String::new();
        if skip > 0 {
            let _ = writeln!(out, "  ... {skip} earlier lines");
        }
        for line in lines.iter().skip(skip) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The whole log, each datagram's line followed by its CoAP payload in full (hex,
    /// and as text when it is text): the evidence file. Failure messages
    /// ([`ExchangeLog::since`]) show the one-line summaries only.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            out.push_str(line);
            out.push('\n');
            if let Some(full) = self.payloads.get(&i) {
                out.push_str(full);
            }
        }
        out
    }
}

fn stamp(at: Duration) -> String {
    format!("{:>+10.3}s", at.as_secs_f64())
}

/// One CoAP message in a line; bytes that are not CoAP say so.
pub fn describe(bytes: &[u8]) -> String {
    match message::decode(bytes) {
        Ok(packet) => describe_packet(&packet, bytes.len()),
        Err(e) => format!("not CoAP ({e}) [{} B]", bytes.len()),
    }
}

fn describe_packet(p: &Packet, size: usize) -> String {
    let kind = match p.header.get_type() {
        MessageType::Confirmable => "CON",
        MessageType::NonConfirmable => "NON",
        MessageType::Acknowledgement => "ACK",
        MessageType::Reset => "RST",
    };
    let raw = u8::from(p.header.code);
    let (class, detail) = (raw >> 5, raw & 0x1f);
    let code = match (class, detail) {
        (0, 0) => "0.00".to_owned(),
        (0, 1) => "GET".to_owned(),
        (0, 2) => "POST".to_owned(),
        (0, 3) => "PUT".to_owned(),
        (0, 4) => "DELETE".to_owned(),
        (0, 5) => "FETCH".to_owned(),
        (0, 6) => "PATCH".to_owned(),
        (0, 7) => "iPATCH".to_owned(),
        (c, d) => format!("{c}.{d:02}"),
    };
    let mut s = format!(
        "{kind} {code} mid=0x{:04x} tok={}",
        p.header.message_id,
        hex(p.get_token())
    );
    let path = message::uri_path(p);
    let queries = strings(p, CoapOption::UriQuery);
    if class == 0 && detail != 0 {
        let _ = write!(s, " {path}");
        if !queries.is_empty() {
            let _ = write!(s, "?{}", queries.join("&"));
        }
    }
    let location = strings(p, CoapOption::LocationPath);
    if !location.is_empty() {
        let _ = write!(s, " loc=/{}", location.join("/"));
    }
    let format = uint_option(p, CoapOption::ContentFormat);
    if let Some(ct) = format {
        let _ = write!(s, " ct={}", format_name(ct));
    }
    if let Some(accept) = uint_option(p, CoapOption::Accept) {
        let _ = write!(s, " accept={}", format_name(accept));
    }
    if let Some(observe) = uint_option(p, CoapOption::Observe) {
        let _ = write!(s, " obs={observe}");
    }
    for (name, option) in [("b1", CoapOption::Block1), ("b2", CoapOption::Block2)] {
        if let Some(Ok(b)) = message::BlockOption::from_packet(p, option) {
            let more = if b.more { "+" } else { "" };
            let _ = write!(s, " {name}={}{more}/{}", b.num, b.size());
        }
    }
    let _ = write!(s, " [{size} B]");
    if lwm2m_proto::redact::carries_secrets(p) {
        // Exchange logs leave the process: keys written to the Security object are not shown.
        let _ = write!(s, " <{} bytes redacted: may hold keys>", p.payload.len());
    } else if !p.payload.is_empty() {
        let _ = write!(s, " {}", payload_summary(&p.payload, format));
    }
    s
}

fn strings(p: &Packet, option: CoapOption) -> Vec<String> {
    p.get_option(option)
        .into_iter()
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn format_name(code: u32) -> String {
    u16::try_from(code)
        .ok()
        .and_then(ContentFormat::from_code)
        .map_or_else(|| code.to_string(), |f| f.name().to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The payload of a CoAP message in full, as indented lines: the hex of every byte (32 a
/// line) and, when it is UTF-8 text, the text; `None` without a payload.
fn full_payload(coap: &[u8]) -> Option<String> {
    let packet = message::decode(coap).ok()?;
    if packet.payload.is_empty() {
        return None;
    }
    let mut out = String::new();
    for chunk in packet.payload.chunks(32) {
        let _ = writeln!(out, "              | {}", hex(chunk));
    }
    if let Ok(text) = std::str::from_utf8(&packet.payload)
        && !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        for line in text.lines() {
            let _ = writeln!(out, "              > {line}");
        }
    }
    Some(out)
}

/// Text formats as quoted text, binary formats as hex; both cut to a line's worth.
fn payload_summary(payload: &[u8], format: Option<u32>) -> String {
    let textual = format
        .and_then(|c| u16::try_from(c).ok())
        .and_then(ContentFormat::from_code)
        .is_none_or(|f| {
            matches!(
                f.canonical(),
                ContentFormat::Text
                    | ContentFormat::LinkFormat
                    | ContentFormat::SenmlJson
                    | ContentFormat::OmaJson
            )
        });
    match std::str::from_utf8(payload) {
        Ok(text) if textual => {
            let cut: String = text.chars().take(PAYLOAD_SUMMARY).collect();
            let more = if cut.len() < text.len() { "..." } else { "" };
            format!("{:?}{more}", cut)
        }
        _ => {
            let n = PAYLOAD_SUMMARY / 2;
            let more = if payload.len() > n { "..." } else { "" };
            format!("0x{}{more}", hex(payload.get(..n).unwrap_or(payload)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_proto::coap::RequestType;
    use lwm2m_proto::coap::message::{add_query, request, set_option, uint_bytes};

    #[test]
    fn a_register_request_reads_as_one_line() {
        let mut p = request(RequestType::Post, "/rd");
        add_query(&mut p, "ep=dev-1");
        add_query(&mut p, "lt=300");
        set_option(&mut p, CoapOption::ContentFormat, uint_bytes(40));
        p.payload = b"</1/0>,</3/0>".to_vec();
        p.header.message_id = 0x1a2b;
        p.set_token(vec![0x5f, 0x01]);
        let bytes = p.to_bytes().unwrap();
        let mut log = ExchangeLog::default();
        let dev = Peer {
            name: "dev-1",
            addr: "10.0.0.9:56830".parse().unwrap(),
        };
        let server = Peer {
            name: "server",
            addr: "10.0.0.1:5683".parse().unwrap(),
        };
        log.datagram(Duration::from_millis(1500), dev, server, &bytes);
        log.note(Duration::from_millis(1600), "lost on the uplink");
        let text = log.text();
        assert!(
            text.contains(
                "+1.500s dev-1 -> server  CON POST mid=0x1a2b tok=5f01 /rd?ep=dev-1&lt=300 ct=link"
            ),
            "{text}"
        );
        assert!(text.contains("\"</1/0>,</3/0>\""), "{text}");
        assert!(text.contains("!! lost on the uplink"), "{text}");
        // The evidence keeps the whole payload, in hex and as text.
        assert!(
            text.contains(&format!("| {}", hex(b"</1/0>,</3/0>"))),
            "{text}"
        );
        assert!(text.contains("> </1/0>,</3/0>"), "{text}");
        assert!(!log.since(0, 10).contains("> </1/0>"));
        assert_eq!(log.totals(), (1, bytes.len() as u64));
        assert_eq!(log.since(1, 10).lines().count(), 1);
        assert_eq!(log.totals_since(1), (0, 0));
        assert_eq!(log.totals_since(0), (1, bytes.len() as u64));
    }

    #[test]
    fn bootstrap_writes_of_keys_are_not_shown() {
        let mut p = request(RequestType::Put, "/0/1");
        set_option(&mut p, CoapOption::ContentFormat, uint_bytes(11542));
        p.payload = b"\xc8\x05\x10secret-key-bytes".to_vec();
        let line = describe(&p.to_bytes().unwrap());
        assert!(line.contains("PUT mid="), "{line}");
        assert!(line.contains("redacted"), "{line}");
        assert!(!line.contains(&hex(b"secret")), "{line}");
        assert!(!line.contains("secret"), "{line}");
    }

    #[test]
    fn garbage_says_so() {
        assert!(describe(&[0xff, 0x00]).starts_with("not CoAP"));
        assert!(describe(&[]).starts_with("not CoAP"));
    }
}
