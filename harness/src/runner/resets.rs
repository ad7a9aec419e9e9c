//! The Resets (RST) the in-process servers sent, explained from the capture: what each one
//! rejected and why. A notification from an address the server has no registration at
//! (a client whose NAT binding expired and was rebound to a new port before its next
//! Update moved its registration there) matches no observation of that peer, and the
//! server rejects it with a Reset (RFC 7252 §4.2, RFC 7641 §3.6: the client then forgets
//! the observation); the client's Update from the new address moves its registration.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use lwm2m_proto::coap::{MessageType, message};

use crate::record::capture::Captured;

/// What the servers' Resets rejected.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resets {
    /// Every Reset the servers sent.
    pub total: u64,
    /// Notifications from an address no Register or Update had come from.
    pub notifications_from_new_addresses: u64,
    /// Of those, the addresses that then sent an Update (the rebound client moving its
    /// registration).
    pub updated_afterwards: u64,
    /// Notifications from an address a client had registered or updated from (an
    /// observation the server had forgotten: a de-registration, a cancelled observation).
    pub notifications_from_known_addresses: u64,
    /// Resets answering anything else (a CoAP ping, a request the server could not match).
    pub other: u64,
}

/// One CoAP message in a captured datagram: its plaintext records on DTLS, else the bytes.
fn messages(p: &Captured) -> Vec<&[u8]> {
    if p.plaintext.is_empty() {
        vec![&p.bytes[..]]
    } else {
        p.plaintext.iter().map(|b| &b[..]).collect()
    }
}

/// Reads the servers' Resets in `packets` (in capture order); `servers` are the servers'
/// socket addresses.
pub fn analyse(packets: &[Captured], servers: &[SocketAddr]) -> Resets {
    let mut r = Resets::default();
    // Every address a Register or Update came from, so far.
    let mut registered_from: HashSet<SocketAddr> = HashSet::new();
    // What each peer's message id carried: a notification, and whether its address was new.
    let mut sent: HashMap<(SocketAddr, u16), Option<bool>> = HashMap::new();
    // Addresses whose notifications were reset as new, waiting for their Update.
    let mut waiting: HashSet<SocketAddr> = HashSet::new();
    for p in packets {
        let inbound = servers.contains(&p.dst);
        let outbound = servers.contains(&p.src);
        for bytes in messages(p) {
            let Ok(m) = message::decode(bytes) else {
                continue;
            };
            let mid = m.header.message_id;
            let code = bytes.get(1).copied().unwrap_or(0);
            if inbound {
                let is_request = (1..32).contains(&code);
                if is_request && message::uri_path(&m).starts_with("/rd") && code == 2 {
                    // POST /rd (Register) or /rd/{id} (Update).
                    registered_from.insert(p.src);
                    if waiting.remove(&p.src) {
                        r.updated_afterwards += 1;
                    }
                }
                let notification = code >> 5 == 2
                    && message::observe_value(&m).is_some()
                    && m.header.get_type() != MessageType::Acknowledgement;
                sent.insert(
                    (p.src, mid),
                    notification.then(|| !registered_from.contains(&p.src)),
                );
            } else if outbound && m.header.get_type() == MessageType::Reset {
                r.total += 1;
                match sent.get(&(p.dst, mid)) {
                    Some(Some(true)) => {
                        r.notifications_from_new_addresses += 1;
                        waiting.insert(p.dst);
                    }
                    Some(Some(false)) => r.notifications_from_known_addresses += 1,
                    _ => r.other += 1,
                }
            }
        }
    }
    r
}

/// The report's explanation, or `None` when the servers sent no Reset.
pub fn render(r: &Resets) -> Option<String> {
    if r.total == 0 {
        return None;
    }
    let mut s = format!("The servers sent {} Resets (RST).\n", r.total);
    if r.notifications_from_new_addresses > 0 {
        let _ = writeln!(
            s,
            "{} answered notifications from addresses no Register or Update had come from: \
             clients whose NAT binding expired and were rebound to a new port. The server \
             has their registration and observations at the old address, so a notification \
             from the new one matches nothing and is rejected with a Reset (RFC 7252 §4.2, \
             RFC 7641 §3.6); the client forgets that observation. {} of these addresses then \
             sent an Update, which moved the registration to the new address (Core TS 1.1 \
             §6.2.2); the server observes again only when asked to.",
            r.notifications_from_new_addresses, r.updated_afterwards
        );
    }
    if r.notifications_from_known_addresses > 0 {
        let _ = writeln!(
            s,
            "{} answered notifications from registered addresses whose observation the \
             server no longer had (cancelled, or the client de-registered).",
            r.notifications_from_known_addresses
        );
    }
    if r.other > 0 {
        let _ = writeln!(
            s,
            "{} answered other messages (CoAP pings, messages the server could not match).",
            r.other
        );
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn packet(src: &str, dst: &str, bytes: Vec<u8>) -> Captured {
        Captured {
            at: Duration::ZERO,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            bytes: bytes.into(),
            plaintext: Vec::new(),
            identity: None,
        }
    }

    /// A CoAP message: type, code, message id, token 0x01, options as (delta, value).
    fn coap(ty: u8, code: u8, mid: u16, options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0x41 | (ty << 4), code, (mid >> 8) as u8, mid as u8, 0x01];
        for (delta, v) in options {
            b.push((delta << 4) | v.len() as u8);
            b.extend_from_slice(v);
        }
        b
    }

    /// An Empty Reset.
    fn rst(mid: u16) -> Vec<u8> {
        vec![0x70, 0, (mid >> 8) as u8, mid as u8]
    }

    #[test]
    fn notifications_from_rebound_addresses_are_told_apart() {
        let server = "127.0.0.1:5683";
        let (old, new) = ("127.1.0.1:40000", "127.1.0.1:40001");
        // Uri-Path is option 11, Observe option 6.
        let register = coap(0, 2, 1, &[(11, b"rd")]);
        let notify = coap(1, 69, 2, &[(6, &[5])]);
        let update = coap(0, 2, 3, &[(11, b"rd"), (0, b"x1")]);
        let packets = vec![
            packet(old, server, register),
            packet(new, server, notify.clone()),
            packet(server, new, rst(2)),
            packet(old, server, coap(1, 69, 4, &[(6, &[6])])),
            packet(server, old, rst(4)),
            packet(new, server, update),
            packet(server, "127.1.0.2:1", rst(9)),
        ];
        let r = analyse(&packets, &[server.parse().unwrap()]);
        assert_eq!(
            r,
            Resets {
                total: 3,
                notifications_from_new_addresses: 1,
                updated_afterwards: 1,
                notifications_from_known_addresses: 1,
                other: 1,
            }
        );
        let text = render(&r).unwrap();
        assert!(
            text.contains("1 answered notifications from addresses no Register"),
            "{text}"
        );
        assert_eq!(render(&Resets::default()), None);
    }
}
