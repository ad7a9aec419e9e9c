//! Network usage per operation, from recorded datagrams: requests matched to responses by
//! peer and token, named by LwM2M operation, with CoAP bytes and wire bytes (which add the
//! DTLS record overhead when the channel is secure), laid out like the whole-device read
//! table of the study this project grew out of.

use lwm2m_proto::interface::RequestKind;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use lwm2m_dtls::record::RecordBytes;
use lwm2m_proto::coap::{CoapOption, MessageClass, MessageType, Packet, message};

use crate::record::capture::Captured;

/// One datagram as recorded.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// When it was recorded (since the Unix epoch in a run's capture, since the start of
    /// the scenario in a feature's exchange log).
    pub at: Duration,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The CoAP message (decrypted, for DTLS).
    pub coap: Vec<u8>,
    /// Bytes of UDP payload on the wire (CoAP length plus DTLS record overhead).
    pub wire_len: usize,
}

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExchangeUsage {
    /// The LwM2M operation (`read`, `register`, ...).
    pub operation: String,
    /// The Uri-Path, e.g. `/3/0`.
    pub path: String,
    /// CoAP bytes of the request (all its datagrams: blocks and retransmissions included).
    pub request_coap: usize,
    /// CoAP bytes of the response(s).
    pub response_coap: usize,
    /// Wire bytes of the request datagrams.
    pub request_wire: usize,
    /// Wire bytes of the response datagrams.
    pub response_wire: usize,
    /// Datagrams exchanged (request, response, empty ACKs, blocks, retransmissions).
    pub datagrams: usize,
    /// Bytes of DTLS handshake records: only in a `dtls-handshake` row (whose wire bytes
    /// are the handshake's, client to server and back), 0 in CoAP exchanges.
    #[serde(default)]
    pub handshake: usize,
}

/// The LwM2M operation a request performs, from its method, path and options
/// ([`RequestKind`]); `response` for anything else.
pub fn operation_name(p: &Packet) -> &'static str {
    RequestKind::of(p).map_or("response", RequestKind::name)
}

/// One request and its response, with when and between whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// When the request's first datagram was recorded.
    pub at: Duration,
    /// Who sent the request.
    pub requester: SocketAddr,
    /// Who answered.
    pub responder: SocketAddr,
    /// The code of the first answer: `2.05`, `4.04`, ..., `RST` for a Reset, empty when
    /// only an empty ACK (or nothing) came back.
    pub code: String,
    /// From the request's first datagram to its first answer (response or Reset).
    pub latency: Option<Duration>,
    /// The endpoint a Register or Bootstrap-Request names (`ep=`).
    pub endpoint: Option<String>,
    /// The registration a Register's response created (`/rd/ID`, its Location-Path).
    pub location: Option<String>,
    /// Bytes and datagrams.
    pub usage: ExchangeUsage,
}

/// The `ep=` query of a request.
fn endpoint_query(p: &Packet) -> Option<String> {
    p.get_option(CoapOption::UriQuery)?.iter().find_map(|q| {
        std::str::from_utf8(q)
            .ok()?
            .strip_prefix("ep=")
            .map(str::to_owned)
    })
}

/// The Location-Path of a response as `/a/b`, `None` without one.
fn location_path(p: &Packet) -> Option<String> {
    let parts = p.get_option(CoapOption::LocationPath)?;
    let path: String = parts
        .iter()
        .map(|s| format!("/{}", String::from_utf8_lossy(s)))
        .collect();
    (!path.is_empty()).then_some(path)
}

/// Pairs requests and responses: by (client, server, token); empty ACKs and RSTs count
/// toward the exchange whose message id they answer.
pub fn exchanges(datagrams: &[Datagram]) -> Vec<ExchangeUsage> {
    timed_exchanges(datagrams)
        .into_iter()
        .map(|e| e.usage)
        .collect()
}

/// [`exchanges`] with the time, the peers, the answer's code and the latency of each.
pub fn timed_exchanges(datagrams: &[Datagram]) -> Vec<Exchange> {
    let mut out: Vec<Exchange> = Vec::new();
    // (requester, responder, token) -> index in out
    let mut by_token: HashMap<(SocketAddr, SocketAddr, Vec<u8>), usize> = HashMap::new();
    // (sender of the CON, receiver, message id) -> index, for empty ACKs
    let mut by_mid: HashMap<(SocketAddr, SocketAddr, u16), usize> = HashMap::new();
    for d in datagrams {
        let Ok(p) = message::decode(&d.coap) else {
            continue;
        };
        let mid = p.header.message_id;
        match p.header.code {
            MessageClass::Request(_) => {
                let key = (d.src, d.dst, p.get_token().to_vec());
                let idx = match by_token.get(&key) {
                    // A retransmission or a further block of the same exchange.
                    Some(&i)
                        if p.get_option(CoapOption::Block1).is_some()
                            || out[i].usage.response_coap == 0 =>
                    {
                        i
                    }
                    _ => {
                        out.push(Exchange {
                            at: d.at,
                            requester: d.src,
                            responder: d.dst,
                            code: String::new(),
                            latency: None,
                            endpoint: endpoint_query(&p),
                            location: None,
                            usage: ExchangeUsage {
                                operation: operation_name(&p).to_owned(),
                                path: message::uri_path(&p),
                                request_coap: 0,
                                response_coap: 0,
                                request_wire: 0,
                                response_wire: 0,
                                datagrams: 0,
                                handshake: 0,
                            },
                        });
                        out.len() - 1
                    }
                };
                by_token.insert(key, idx);
                by_mid.insert((d.src, d.dst, mid), idx);
                let e = &mut out[idx].usage;
                e.request_coap += d.coap.len();
                e.request_wire += d.wire_len;
                e.datagrams += 1;
            }
            MessageClass::Response(_) => {
                if let Some(&i) = by_token.get(&(d.dst, d.src, p.get_token().to_vec())) {
                    let x = &mut out[i];
                    if x.latency.is_none() {
                        x.latency = Some(d.at.saturating_sub(x.at));
                        x.code = code(&p);
                        x.location = location_path(&p);
                    }
                    let e = &mut x.usage;
                    e.response_coap += d.coap.len();
                    e.response_wire += d.wire_len;
                    e.datagrams += 1;
                }
            }
            _ => {
                // Empty ACK or RST: attribute to the exchange of the message it answers.
                if let Some(&i) = by_mid.get(&(d.dst, d.src, mid)) {
                    let x = &mut out[i];
                    if x.latency.is_none() && p.header.get_type() == MessageType::Reset {
                        x.latency = Some(d.at.saturating_sub(x.at));
                        x.code = "RST".to_owned();
                    }
                    let e = &mut x.usage;
                    e.response_coap += d.coap.len();
                    e.response_wire += d.wire_len;
                    e.datagrams += 1;
                }
            }
        }
    }
    out
}

/// A response code as `c.dd`.
fn code(p: &Packet) -> String {
    let raw = u8::from(p.header.code);
    format!("{}.{:02}", raw >> 5, raw & 0x1f)
}

/// The endpoint of each exchange, in order: a client is known by the address its Register
/// (or Bootstrap-Request) came from, and again by the address of each Update or
/// De-register of its registration (`/rd/ID`, after a NAT rebinding from a new address);
/// an exchange belongs to the endpoint known at its requester's or responder's address.
pub fn endpoints(exchanges: &[Exchange]) -> Vec<Option<String>> {
    let mut by_address: HashMap<SocketAddr, String> = HashMap::new();
    let mut by_location: HashMap<String, String> = HashMap::new();
    exchanges
        .iter()
        .map(|x| {
            if let Some(ep) = &x.endpoint {
                by_address.insert(x.requester, ep.clone());
                if let Some(l) = &x.location {
                    by_location.insert(l.clone(), ep.clone());
                }
            } else if let Some(ep) = by_location.get(&x.usage.path) {
                by_address.insert(x.requester, ep.clone());
            }
            by_address
                .get(&x.requester)
                .or_else(|| by_address.get(&x.responder))
                .cloned()
        })
        .collect()
}

/// The table as plain text: one row per exchange (and per DTLS handshake), then totals
/// (round trips = CoAP exchanges).
pub fn render_table(rows: &[ExchangeUsage]) -> String {
    let mut s = String::new();
    let secure = rows
        .iter()
        .any(|r| r.request_wire != r.request_coap || r.response_wire != r.response_coap);
    let handshakes = rows.iter().filter(|r| r.handshake > 0).count();
    let handshake: usize = rows.iter().map(|r| r.handshake).sum();
    let _ = writeln!(
        s,
        "{:<18} {:<14} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "operation", "path", "req CoAP", "resp CoAP", "req wire", "resp wire", "dgrams"
    );
    let (mut rq, mut rs, mut wq, mut ws, mut dg) = (0, 0, 0, 0, 0);
    for r in rows {
        let _ = writeln!(
            s,
            "{:<18} {:<14} {:>9} {:>9} {:>9} {:>9} {:>5}",
            r.operation,
            r.path,
            r.request_coap,
            r.response_coap,
            r.request_wire,
            r.response_wire,
            r.datagrams
        );
        rq += r.request_coap;
        rs += r.response_coap;
        wq += r.request_wire;
        ws += r.response_wire;
        dg += r.datagrams;
    }
    let _ = writeln!(
        s,
        "{:<18} {:<14} {:>9} {:>9} {:>9} {:>9} {:>5}",
        format!("total ({} RTT)", rows.len() - handshakes),
        "",
        rq,
        rs,
        wq,
        ws,
        dg
    );
    let _ = writeln!(
        s,
        "all bytes: {} CoAP, {} on the wire{}",
        rq + rs,
        wq + ws,
        if secure {
            let records = (wq + ws).saturating_sub(rq + rs + handshake);
            if handshakes > 0 {
                format!(
                    " ({records} of DTLS record overhead, {handshake} in {handshakes} handshake(s))"
                )
            } else {
                format!(" ({records} of DTLS record overhead)")
            }
        } else {
            String::new()
        }
    );
    s
}

/// The datagrams as the network-usage table wants them: plain CoAP as it is (wire bytes
/// are CoAP bytes); on DTLS, one per application record with its plaintext and its record
/// bytes on the wire (header, explicit nonce and tag included). With several application
/// records in one datagram (not seen from our DTLS layer, which sends one per datagram)
/// the records' expansion is shared out evenly. Handshake and alert records are not
/// CoAP: the DTLS accounting counts them ([`crate::report::dtls`]).
pub fn of_captured(packets: &[Captured]) -> Vec<Datagram> {
    let mut out = Vec::with_capacity(packets.len());
    for p in packets {
        if p.plaintext.is_empty() {
            out.push(Datagram {
                at: p.at,
                src: p.src,
                dst: p.dst,
                coap: p.bytes.to_vec(),
                wire_len: p.bytes.len(),
            });
            continue;
        }
        let records = RecordBytes::of_datagram(&p.bytes);
        let plain: usize = p.plaintext.iter().map(|b| b.len()).sum();
        let k = p.plaintext.len();
        let expansion = usize::try_from(records.application)
            .unwrap_or(usize::MAX)
            .saturating_sub(plain);
        for (i, text) in p.plaintext.iter().enumerate() {
            let share = expansion / k + if i == 0 { expansion % k } else { 0 };
            out.push(Datagram {
                at: p.at,
                src: p.src,
                dst: p.dst,
                coap: text.to_vec(),
                wire_len: text.len() + share,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwm2m_proto::coap::{RequestType, ResponseType};

    fn dg(src: &str, dst: &str, p: &Packet, overhead: usize) -> Datagram {
        let coap = p.to_bytes().unwrap();
        Datagram {
            at: Duration::ZERO,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            wire_len: coap.len() + overhead,
            coap,
        }
    }

    #[test]
    fn pairs_reads_and_counts_dtls_overhead() {
        let (srv, cli) = ("127.0.0.1:5684", "127.0.0.2:40000");
        let mut rows = Vec::new();
        for (n, obj) in [1u16, 3].iter().enumerate() {
            let mut req = message::request(RequestType::Get, &format!("/{obj}"));
            req.header.message_id = n as u16;
            req.set_token(vec![n as u8]);
            let mut resp = message::response(ResponseType::Content, vec![0; 40]);
            resp.header
                .set_type(lwm2m_proto::coap::MessageType::Acknowledgement);
            resp.header.message_id = n as u16;
            resp.set_token(vec![n as u8]);
            rows.push(dg(srv, cli, &req, 29));
            rows.push(dg(cli, srv, &resp, 29));
        }
        let ex = exchanges(&rows);
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].operation, "read");
        assert_eq!(ex[0].path, "/1");
        assert_eq!(ex[1].request_wire - ex[1].request_coap, 29);
        let table = render_table(&ex);
        assert!(table.contains("total (2 RTT)"), "{table}");
        assert!(table.contains("116 of DTLS record overhead"), "{table}");
    }

    #[test]
    fn timed_exchanges_know_their_code_latency_and_endpoint_across_a_rebinding() {
        let (srv, a, b) = ("127.0.0.1:5683", "127.0.0.2:40000", "127.0.0.2:40001");
        let at = |ms: u64, mut d: Datagram| {
            d.at = Duration::from_millis(ms);
            d
        };
        let ack = |code: ResponseType, mid: u16, token: u8| {
            let mut p = message::response(code, vec![]);
            p.header.set_type(MessageType::Acknowledgement);
            p.header.message_id = mid;
            p.set_token(vec![token]);
            p
        };
        let mut register = message::request(RequestType::Post, "/rd");
        message::add_query(&mut register, "ep=meter-1");
        register.set_token(vec![1]);
        let mut created = ack(ResponseType::Created, 0, 1);
        created.add_option(CoapOption::LocationPath, b"rd".to_vec());
        created.add_option(CoapOption::LocationPath, b"k7".to_vec());
        let mut read = message::request(RequestType::Get, "/3/0");
        read.header.message_id = 5;
        read.set_token(vec![2]);
        let mut update = message::request(RequestType::Post, "/rd/k7");
        update.header.message_id = 9;
        update.set_token(vec![3]);
        let mut reset = message::response(ResponseType::Content, vec![]);
        reset.header.code = MessageClass::Empty;
        reset.header.set_type(MessageType::Reset);
        reset.header.message_id = 6;
        let mut read2 = read.clone();
        read2.header.message_id = 6;
        read2.set_token(vec![4]);
        let log = [
            at(1000, dg(a, srv, &register, 0)),
            at(1003, dg(srv, a, &created, 0)),
            at(2000, dg(srv, a, &read, 0)),
            at(2010, dg(a, srv, &ack(ResponseType::Content, 5, 2), 0)),
            // A NAT rebinding: the next Update comes from b.
            at(3000, dg(b, srv, &update, 0)),
            at(3001, dg(srv, b, &ack(ResponseType::Changed, 9, 3), 0)),
            at(4000, dg(srv, b, &read2, 0)),
            at(4020, dg(b, srv, &reset, 0)),
        ];
        let x = timed_exchanges(&log);
        let summary: Vec<(&str, &str, Option<u64>)> = x
            .iter()
            .map(|e| {
                let ms = e.latency.map(|l| l.as_millis() as u64);
                (e.usage.operation.as_str(), e.code.as_str(), ms)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("register", "2.01", Some(3)),
                ("read", "2.05", Some(10)),
                ("update", "2.04", Some(1)),
                ("read", "RST", Some(20)),
            ]
        );
        assert_eq!(x[0].location.as_deref(), Some("/rd/k7"));
        assert_eq!(x[1].at, Duration::from_secs(2));
        let eps = endpoints(&x);
        assert_eq!(eps, vec![Some("meter-1".to_owned()); 4]);
        assert_eq!(exchanges(&log).len(), 4);
    }

    #[test]
    fn names_operations() {
        let mut p = message::request(RequestType::Post, "/rd");
        assert_eq!(operation_name(&p), "register");
        p = message::request(RequestType::Put, "/3/0");
        message::add_query(&mut p, "pmin=10");
        assert_eq!(operation_name(&p), "write-attributes");
        p = message::request(RequestType::Post, "/3/0/4");
        assert_eq!(operation_name(&p), "execute");
    }
}
