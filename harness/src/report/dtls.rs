//! DTLS wire accounting from recorded datagrams: how many bytes the DTLS records add to
//! each CoAP message (RFC 6347 §4.1: 13-byte record header; with AES-128-CCM-8 an 8-byte
//! explicit nonce and an 8-byte tag, RFC 6655 §3), what each handshake costs
//! (RFC 6347 §4.2), and which handshakes a NAT rebinding forced (without Connection ID,
//! RFC 9146, a client that comes back from a new address must handshake again).
//!
//! Everything is counted from the record headers of the captured datagrams and the
//! plaintext lengths the server's DTLS layer reported; nothing is assumed. A handshake
//! starts with a ClientHello without a cookie (RFC 6347 §4.2.1) and takes every handshake
//! and change_cipher_spec record to and from that client address until the next one; its
//! identity is the one the application records of that session carry.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use lwm2m_dtls::record::{RecordBytes, client_hello_random, is_initial_client_hello};

use super::ExchangeUsage;

/// Bytes on the wire per frame besides the UDP payload, as Wireshark's frame length counts
/// them on Ethernet: 14 (Ethernet II) + 20 (IPv4 without options) + 8 (UDP).
pub const FRAME_HEADERS: usize = 14 + 20 + 8;

/// Which server a DTLS listener belongs to: a run can have two (the LwM2M Server's and the
/// Bootstrap Server's), each accounted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The LwM2M Server's (`coaps://`, Core TS 1.1 §7.1).
    Server,
    /// The LwM2M Bootstrap Server's (Core TS 1.1 §6.1, §7.1).
    Bootstrap,
}

impl Listener {
    /// `LwM2M Server`, `Bootstrap Server`.
    pub fn server_name(self) -> &'static str {
        match self {
            Self::Server => "LwM2M Server",
            Self::Bootstrap => "Bootstrap Server",
        }
    }

    /// The prefix of its counters in `report.json`: `dtls.`, `dtls.bootstrap.`.
    pub fn counter_prefix(self) -> &'static str {
        match self {
            Self::Server => "dtls.",
            Self::Bootstrap => "dtls.bootstrap.",
        }
    }
}

/// One datagram of the DTLS socket, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The UDP payload (DTLS records).
    pub bytes: &'a [u8],
    /// Application records whose plaintext the DTLS layer reported.
    pub plaintext_records: usize,
    /// Their plaintext bytes.
    pub plaintext_bytes: usize,
    /// The session's identity, when `plaintext_records` > 0.
    pub identity: Option<&'a str>,
}

/// Why a client handshook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The identity's first session.
    First,
    /// The identity had a session from another address: a NAT rebinding (or a new port)
    /// without Connection ID.
    NewAddress,
    /// Again from the same address (reboot, lost session).
    SameAddress,
    /// No application data followed: the handshake failed, or the session was never used.
    Unfinished,
}

impl Cause {
    /// `first`, `new-address`, `same-address`, `unfinished`.
    pub fn name(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::NewAddress => "new-address",
            Self::SameAddress => "same-address",
            Self::Unfinished => "unfinished",
        }
    }
}

/// One handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The client's address.
    pub client: SocketAddr,
    /// Who it authenticated as (`psk:ID`), if application data followed.
    pub identity: Option<String>,
    /// Why it happened.
    pub cause: Cause,
    /// Handshake and change_cipher_spec record bytes the client sent.
    pub client_bytes: usize,
    /// ... and the server sent.
    pub server_bytes: usize,
    /// Datagrams with handshake records from the client.
    pub client_datagrams: usize,
    /// ... and from the server.
    pub server_datagrams: usize,
    /// Application records the client sent from this address before the handshake, which
    /// the server could not decrypt (no session there: the session of a rebound client
    /// stayed at its old address), and their bytes.
    pub lost_before: (usize, usize),
    /// Index of its first datagram in the input.
    pub first: usize,
}

impl Handshake {
    /// Both directions' bytes.
    pub fn bytes(&self) -> usize {
        self.client_bytes + self.server_bytes
    }

    /// Both directions' datagrams.
    pub fn datagrams(&self) -> usize {
        self.client_datagrams + self.server_datagrams
    }
}

/// What the DTLS socket's records add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DtlsUsage {
    /// Every handshake, in order.
    pub handshakes: Vec<Handshake>,
    /// Application records with a known plaintext.
    pub records: usize,
    /// Their bytes on the wire (headers, nonces and tags included).
    pub record_bytes: usize,
    /// Their plaintext (CoAP) bytes.
    pub plaintext_bytes: usize,
    /// Application records without a reported plaintext: the server could not decrypt
    /// them (sent from an address it has no session with, e.g. right after a NAT
    /// rebinding, or forged).
    pub unpaired_records: usize,
    /// Alert record bytes (close_notify, failures).
    pub alert_bytes: usize,
}

impl DtlsUsage {
    /// DTLS bytes per application record, counted: record bytes minus plaintext, divided by
    /// the records.
    pub fn overhead_per_record(&self) -> Option<f64> {
        (self.records > 0).then(|| self.overhead_bytes() as f64 / self.records as f64)
    }

    /// Record bytes beyond the plaintext: headers, explicit nonces, tags.
    pub fn overhead_bytes(&self) -> usize {
        self.record_bytes.saturating_sub(self.plaintext_bytes)
    }

    /// The handshakes of one cause.
    pub fn of(&self, cause: Cause) -> impl Iterator<Item = &Handshake> {
        self.handshakes.iter().filter(move |h| h.cause == cause)
    }

    /// The completed handshakes, of sessions authenticated as `kind` says (an identity
    /// prefix of [`KINDS`]) or with `None` all of them.
    fn done(&self, kind: Option<&str>) -> Vec<&Handshake> {
        self.handshakes
            .iter()
            .filter(|h| h.cause != Cause::Unfinished)
            .filter(|h| {
                kind.is_none_or(|k| h.identity.as_deref().is_some_and(|i| i.starts_with(k)))
            })
            .collect()
    }

    /// The median completed handshake (by bytes) of `kind` (an identity prefix of
    /// [`KINDS`], or `None` for all): "one handshake".
    pub fn typical(&self, kind: Option<&str>) -> Option<&Handshake> {
        let mut done = self.done(kind);
        done.sort_by_key(|h| h.bytes());
        done.get(done.len() / 2).copied()
    }
}

/// Handshakes by how their session authenticated: the identity prefix and the name.
pub const KINDS: [(&str, &str); 2] = [("psk:", "PSK"), ("cn:", "certificate")];

/// Accounts the datagrams to and from the DTLS listener at `server` (others are skipped).
pub fn account(server: SocketAddr, datagrams: &[Wire<'_>]) -> DtlsUsage {
    let mut usage = DtlsUsage::default();
    let mut open: HashMap<SocketAddr, usize> = HashMap::new();
    let mut lost: HashMap<SocketAddr, (usize, usize)> = HashMap::new();
    // The random of the ClientHello that opened each client's current handshake: its
    // retransmission (flights repeat every second) is not a new handshake.
    let mut opened_by: HashMap<SocketAddr, Option<[u8; 32]>> = HashMap::new();
    for (i, d) in datagrams.iter().enumerate() {
        let (client, from_client) = if d.dst == server {
            (d.src, true)
        } else if d.src == server {
            (d.dst, false)
        } else {
            continue;
        };
        let records = RecordBytes::of_datagram(d.bytes);
        let fresh = from_client && is_initial_client_hello(d.bytes) && {
            let random = client_hello_random(d.bytes);
            opened_by.insert(client, random) != Some(random)
        };
        if records.handshake > 0 {
            let at = match open.get(&client) {
                Some(&at) if !fresh => at,
                _ => {
                    usage.handshakes.push(Handshake {
                        client,
                        identity: None,
                        cause: Cause::Unfinished,
                        client_bytes: 0,
                        server_bytes: 0,
                        client_datagrams: 0,
                        server_datagrams: 0,
                        lost_before: lost.remove(&client).unwrap_or_default(),
                        first: i,
                    });
                    open.insert(client, usage.handshakes.len() - 1);
                    usage.handshakes.len() - 1
                }
            };
            if let Some(h) = usage.handshakes.get_mut(at) {
                let bytes = usize::try_from(records.handshake).unwrap_or(usize::MAX);
                if from_client {
                    h.client_bytes += bytes;
                    h.client_datagrams += 1;
                } else {
                    h.server_bytes += bytes;
                    h.server_datagrams += 1;
                }
            }
        }
        let app = usize::try_from(records.application_records).unwrap_or(usize::MAX);
        let paired = d.plaintext_records.min(app);
        usage.unpaired_records += app - paired;
        if from_client && paired < app && !open.contains_key(&client) {
            let l = lost.entry(client).or_default();
            l.0 += app - paired;
            l.1 += usize::try_from(records.application).unwrap_or(usize::MAX);
        }
        if paired > 0 {
            usage.records += paired;
            usage.record_bytes += usize::try_from(records.application).unwrap_or(usize::MAX);
            usage.plaintext_bytes += d.plaintext_bytes;
            if let (Some(&at), Some(identity)) = (open.get(&client), d.identity)
                && let Some(h) = usage.handshakes.get_mut(at)
                && h.identity.is_none()
            {
                h.identity = Some(identity.to_owned());
            }
        }
        usage.alert_bytes += usize::try_from(records.alert).unwrap_or(usize::MAX);
    }
    let mut last: HashMap<String, SocketAddr> = HashMap::new();
    for h in &mut usage.handshakes {
        let Some(identity) = &h.identity else {
            continue;
        };
        h.cause = match last.insert(identity.clone(), h.client) {
            None => Cause::First,
            Some(a) if a == h.client => Cause::SameAddress,
            Some(_) => Cause::NewAddress,
        };
    }
    usage
}

/// The DTLS section of `network-usage.txt` for the listener at `server`.
pub fn render(listener: Listener, server: SocketAddr, u: &DtlsUsage) -> String {
    let mut s = format!(
        "DTLS on the {}'s listener coaps://{server}:\n",
        listener.server_name()
    );
    match u.overhead_per_record() {
        Some(per) => {
            let _ = writeln!(
                s,
                "  application records: {} ({} bytes on the wire = {} CoAP + {} DTLS: {per:.1} bytes per record)",
                u.records,
                u.record_bytes,
                u.plaintext_bytes,
                u.overhead_bytes()
            );
        }
        None => s.push_str("  application records: none\n"),
    }
    if u.unpaired_records > 0 {
        let _ = writeln!(
            s,
            "  application records the server could not decrypt (no session at the sender's address, or forged): {}",
            u.unpaired_records
        );
    }
    let _ = writeln!(
        s,
        "  handshakes: {} ({} first, {} from a new address, {} again from the same address, {} unfinished); {} bytes in all",
        u.handshakes.len(),
        u.of(Cause::First).count(),
        u.of(Cause::NewAddress).count(),
        u.of(Cause::SameAddress).count(),
        u.of(Cause::Unfinished).count(),
        u.handshakes.iter().map(Handshake::bytes).sum::<usize>()
    );
    // One line per kind of authentication; all together when no session said which.
    let mut kinds: Vec<(Option<&str>, &str)> = KINDS
        .iter()
        .filter(|(k, _)| !u.done(Some(k)).is_empty())
        .map(|(k, name)| (Some(*k), *name))
        .collect();
    if kinds.is_empty() {
        kinds.push((None, "DTLS"));
    }
    for (kind, name) in kinds {
        let Some(h) = u.typical(kind) else { continue };
        let done = u.done(kind);
        let min = done.iter().map(|h| h.bytes()).min().unwrap_or(0);
        let max = done.iter().map(|h| h.bytes()).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "  one {name} handshake (median of {}): {} bytes of UDP payload in {} datagrams (client {} B in {}, server {} B in {}); {} bytes as Ethernet frames; range {min}-{max}",
            done.len(),
            h.bytes(),
            h.datagrams(),
            h.client_bytes,
            h.client_datagrams,
            h.server_bytes,
            h.server_datagrams,
            h.bytes() + FRAME_HEADERS * h.datagrams(),
        );
    }
    let rebound: Vec<&Handshake> = u.of(Cause::NewAddress).collect();
    let _ = writeln!(
        s,
        "  NAT rebinding without Connection ID (RFC 9146 is not in rtc-dtls): {} extra handshakes, {} bytes in {} datagrams; \
         before them {} records ({} bytes) the server could not decrypt (its session was at the old address; CoAP retransmitted them)",
        rebound.len(),
        rebound.iter().map(|h| h.bytes()).sum::<usize>(),
        rebound.iter().map(|h| h.datagrams()).sum::<usize>(),
        rebound.iter().map(|h| h.lost_before.0).sum::<usize>(),
        rebound.iter().map(|h| h.lost_before.1).sum::<usize>(),
    );
    if u.alert_bytes > 0 {
        let _ = writeln!(s, "  alert records: {} bytes", u.alert_bytes);
    }
    s
}

/// The whole-device read of the 2017 thesis this project grew out of (Leshan server,
/// Wakaama client, DTLS PSK, one Read per object /1-/7 and /1024), in Ethernet frame bytes
/// as Wireshark shows them: a request is 85 bytes = 42 of Ethernet, IPv4 and UDP headers +
/// 29 of DTLS + 14 of CoAP (88 for /1024, whose Uri-Path option is 3 bytes longer).
pub mod thesis {
    /// Request frame bytes, `/1` to `/7`.
    pub const REQUEST: usize = 85;
    /// Request frame bytes of `/1024`.
    pub const REQUEST_1024: usize = 88;
    /// Response frame bytes, smallest and largest.
    pub const RESPONSES: (usize, usize) = (99, 232);
    /// Requests, responses and both, for the 8 round trips.
    pub const TOTALS: (usize, usize, usize) = (683, 1092, 1775);
    /// DTLS bytes per record (13 header + 8 explicit nonce + 8 CCM_8 tag).
    pub const OVERHEAD: usize = 29;
    /// One PSK handshake, about.
    pub const HANDSHAKE: usize = 857;
}

/// The sample client's object-level reads beside the thesis figures: CoAP bytes, bytes
/// with DTLS (UDP payload) and as Ethernet frames (UDP payload + [`FRAME_HEADERS`] per
/// datagram: exact when the exchange took one datagram each way, marked `*` otherwise).
pub fn beside_thesis(rows: &[ExchangeUsage], usage: Option<&DtlsUsage>) -> String {
    let reads: Vec<&ExchangeUsage> = rows.iter().filter(|r| r.operation == "read").collect();
    let mut s = format!(
        "Whole-device read beside the 2017 thesis (Leshan server, Wakaama client, DTLS PSK).\n\
         The thesis counted Ethernet frames: UDP payload + {FRAME_HEADERS} bytes of Ethernet, IPv4 and UDP headers.\n\n\
         {:<8} {:>9} {:>9} {:>9} {:>8}   {:>9} {:>9} {:>9} {:>8}\n",
        "path",
        "req CoAP",
        "req DTLS",
        "req frame",
        "thesis",
        "resp CoAP",
        "resp DTLS",
        "resp frame",
        "thesis"
    );
    let (mut fq, mut fs) = (0, 0);
    for r in &reads {
        let one_each = r.datagrams == 2;
        let mark = if one_each { " " } else { "*" };
        let (q, p) = (
            r.request_wire + FRAME_HEADERS,
            r.response_wire + FRAME_HEADERS,
        );
        fq += q;
        fs += p;
        let thesis_req = if r.path == "/1024" {
            thesis::REQUEST_1024
        } else {
            thesis::REQUEST
        };
        let _ = writeln!(
            s,
            "{:<8} {:>9} {:>9} {:>8}{mark} {:>8}   {:>9} {:>9} {:>8}{mark} {:>8}",
            r.path,
            r.request_coap,
            r.request_wire,
            q,
            thesis_req,
            r.response_coap,
            r.response_wire,
            p,
            format!("{}-{}", thesis::RESPONSES.0, thesis::RESPONSES.1),
        );
    }
    let (tq, ts, tall) = thesis::TOTALS;
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>9} {:>9} {:>8}   {:>9} {:>9} {:>9} {:>8}",
        format!("{} RTT", reads.len()),
        reads.iter().map(|r| r.request_coap).sum::<usize>(),
        reads.iter().map(|r| r.request_wire).sum::<usize>(),
        fq,
        tq,
        reads.iter().map(|r| r.response_coap).sum::<usize>(),
        reads.iter().map(|r| r.response_wire).sum::<usize>(),
        fs,
        ts
    );
    let _ = writeln!(s, "all frames: {} here, {tall} in the thesis", fq + fs);
    if let Some(u) = usage {
        if let Some(per) = u.overhead_per_record() {
            let _ = writeln!(
                s,
                "DTLS per record: {per:.1} bytes here (counted over {} records), {} in the thesis",
                u.records,
                thesis::OVERHEAD
            );
        }
        if let Some(h) = u.typical(Some("psk:")) {
            let _ = writeln!(
                s,
                "one PSK handshake: {} bytes of UDP payload in {} datagrams = {} as frames here, about {} in the thesis",
                h.bytes(),
                h.datagrams(),
                h.bytes() + FRAME_HEADERS * h.datagrams(),
                thesis::HANDSHAKE
            );
        }
    }
    s
}

/// A `dtls-handshake` row for the per-client table: the handshake's bytes each way; its
/// path is the cause (`first`), prefixed with `bootstrap-` on the Bootstrap Server's
/// listener.
pub fn handshake_row(listener: Listener, h: &Handshake) -> ExchangeUsage {
    let path = match listener {
        Listener::Server => h.cause.name().to_owned(),
        Listener::Bootstrap => format!("bootstrap-{}", h.cause.name()),
    };
    ExchangeUsage {
        operation: "dtls-handshake".into(),
        path,
        request_coap: 0,
        response_coap: 0,
        request_wire: h.client_bytes,
        response_wire: h.server_bytes,
        datagrams: h.datagrams(),
        handshake: h.bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DTLS record: type, version 1.2, epoch, sequence 0, body.
    fn record(kind: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 0xfe, 0xfd];
        r.extend(epoch.to_be_bytes());
        r.extend([0; 6]);
        r.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        r.extend(body);
        r
    }

    /// A ClientHello handshake record with `cookie`.
    fn hello(cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // handshake header
        body.extend([0xfe, 0xfd]);
        body.extend([7; 32]); // random
        body.push(0); // session id
        body.push(u8::try_from(cookie.len()).unwrap());
        body.extend(cookie);
        record(22, 0, &body)
    }

    fn wire<'a>(src: &str, dst: &str, bytes: &'a [u8], plain: usize, id: &'a str) -> Wire<'a> {
        Wire {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            bytes,
            plaintext_records: usize::from(plain > 0),
            plaintext_bytes: plain,
            identity: (plain > 0).then_some(id),
        }
    }

    #[test]
    fn counts_handshakes_overhead_and_rebinding() {
        let srv = "127.0.0.1:5684";
        let (a, b) = ("127.1.0.1:4000", "127.1.0.9:4001");
        let first = hello(&[]);
        let again = hello(&[1, 2, 3]);
        let verify = record(22, 0, &[3; 20]);
        let finished = [record(20, 0, &[1]), record(22, 1, &[0; 40])].concat();
        let app = record(23, 1, &[0; 16 + 30]);
        let d = [
            wire(a, srv, &first, 0, ""),
            // Retransmitted a second later: the same handshake.
            wire(a, srv, &first, 0, ""),
            wire(srv, a, &verify, 0, ""),
            wire(a, srv, &again, 0, ""),
            wire(srv, a, &finished, 0, ""),
            wire(a, srv, &app, 30, "psk:x"),
            wire(srv, a, &app, 30, "psk:x"),
            // The NAT forgets a; x comes back from b, where the server has no session.
            wire(b, srv, &app, 0, ""),
            wire(b, srv, &first, 0, ""),
            wire(srv, b, &finished, 0, ""),
            wire(b, srv, &app, 30, "psk:x"),
            // A stranger that never gets further.
            wire("127.1.0.5:9", srv, &first, 0, ""),
        ];
        let u = account(srv.parse().unwrap(), &d);
        assert_eq!(u.handshakes.len(), 3);
        let causes: Vec<Cause> = u.handshakes.iter().map(|h| h.cause).collect();
        assert_eq!(causes, [Cause::First, Cause::NewAddress, Cause::Unfinished]);
        let h = &u.handshakes[0];
        assert_eq!(h.client_bytes, 2 * first.len() + again.len());
        assert_eq!(h.server_bytes, verify.len() + finished.len());
        assert_eq!((h.client_datagrams, h.server_datagrams), (3, 2));
        assert_eq!(h.identity.as_deref(), Some("psk:x"));
        assert_eq!(u.records, 3);
        assert_eq!(u.unpaired_records, 1);
        assert_eq!(u.handshakes[1].lost_before, (1, app.len()));
        assert_eq!(u.overhead_per_record(), Some(29.0));
        let text = render(Listener::Server, srv.parse().unwrap(), &u);
        assert!(text.contains("29.0 bytes per record"), "{text}");
        assert!(text.contains("1 extra handshakes"), "{text}");
        assert!(
            text.starts_with("DTLS on the LwM2M Server's listener"),
            "{text}"
        );
        let row = handshake_row(Listener::Bootstrap, h);
        assert_eq!(
            (row.path.as_str(), row.handshake),
            ("bootstrap-first", h.bytes())
        );
    }
}
