//! A simulated client's CoAP over DTLS (RFC 7252 §9, Core TS 1.1 §7.1), for the fleet and
//! for the harness's simulated devices alike: each server a client talks to over `coaps://`
//! gets a [`DtlsLink`] of its own, with the credentials of that server's account in the
//! client's *current* object tree ([`account_toward`]): the bootstrap-server Security
//! instance (/0/x/1 true) toward the Bootstrap Server, the LwM2M Server account (the first
//! other instance with a URI) toward the LwM2M Server, read as [`crate::security`] says
//! (PSK or certificate). The two accounts carry different credentials, as the specification
//! requires, and the Bootstrap Server replaces the LwM2M Server's during bootstrap: whenever
//! the Security object has changed ([`ObjectTree::revision`]), the next datagram toward a
//! server checks its link against the account, and the link is rebuilt when the account's
//! credentials changed (bootstrap, factory reset) or dropped when the account is no longer
//! `coaps://`. Between changes a datagram costs one look-up ([`Links::route`]).
//!
//! Sessions start when the client first sends to the server and again whenever the old
//! one is gone: handshake failure, close, reboot (the device forgets its session), or a
//! NAT rebinding. Without Connection ID (RFC 9146) a record from a new address is not
//! recognised by the server, so after a rebinding the datagram in flight is lost and the
//! next one (the CoAP retransmission) opens a new handshake from the new address
//! ([`DtlsLink::bind`] notices it where the caller does not).
//!
//! A `coaps://` account that cannot be used (raw public keys, EST, NoSec) gets no link and
//! sends nothing ([`Route::Unusable`], with the reason): a device never falls back to
//! clear text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use lwm2m_dtls::{ClientConfig, Credentials, DtlsClient, DtlsError, KeyLog};
use lwm2m_proto::client::tree::account_uri;
use lwm2m_proto::client::{ClientConfig as MachineConfig, ClientEvent, ObjectTree, parse_coap_uri};
use lwm2m_proto::{Instance, ObjectId};

use crate::security::{AccountError, account_credentials};

/// The Security object (Core TS 1.1 Appendix E.1).
const SECURITY: ObjectId = ObjectId(0);
/// CoAP datagrams held while a handshake runs (the oldest go first beyond it).
const PENDING: usize = 16;

/// What every link of a fleet (or a harness run) shares.
#[derive(Default)]
pub struct LinkOptions {
    /// Gets the secrets of every session.
    pub key_log: Option<Arc<dyn KeyLog>>,
    /// Keep what each session encrypts for a recorder ([`DtlsLink::take_encrypted`]).
    pub record_plaintext: bool,
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("key_log", &self.key_log.is_some())
            .field("record_plaintext", &self.record_plaintext)
            .finish()
    }
}

/// One client's DTLS association with one server.
pub struct DtlsLink {
    /// The server, as the client machine addresses it.
    pub server: SocketAddr,
    /// What the link was built from, to notice when the account changes.
    credentials: Credentials,
    /// Compared with the account at the [`Links`]' revision.
    checked: bool,
    config: ClientConfig,
    /// The current session, if any (handshaking or established).
    pub session: Option<DtlsClient>,
    /// CoAP datagrams waiting for the handshake to complete.
    pending: Vec<Vec<u8>>,
    /// The session's deadline as the caller last scheduled it.
    pub timer: Option<Instant>,
    /// CoAP datagrams encrypted since the last [`DtlsLink::take_encrypted`], when the
    /// links record plaintext (`None` otherwise).
    encrypted: Option<Vec<Vec<u8>>>,
    /// The session's identity as recorders show it (`psk:ID`, `cn:NAME`), when the links
    /// record plaintext.
    identity: Option<Box<str>>,
    /// The address the session's records leave from (its first datagram's), when the
    /// caller tells ([`DtlsLink::bind`]).
    bound: Option<SocketAddr>,
}

impl std::fmt::Debug for DtlsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsLink")
            .field("server", &self.server)
            .field("credentials", &self.credentials)
            .field("session", &self.session)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// A client's DTLS links, and which servers its Security object says plain CoAP for, as
/// of one revision of that object.
#[derive(Debug, Default)]
pub struct Links {
    /// The Security object's revision `plain` and the links' `checked` refer to.
    revision: Option<u64>,
    /// Servers sent to whose account is not `coaps://` (or who have none).
    plain: Vec<SocketAddr>,
    links: Vec<DtlsLink>,
}

/// How a CoAP datagram toward a server leaves.
pub enum Route<'a> {
    /// As it is.
    Plain,
    /// Through this link (built, or rebuilt, from the account's current credentials).
    Secure(&'a mut DtlsLink),
    /// The account is `coaps://` but its credentials do not compile (garbage for a
    /// certificate) or its Security Mode is not supported (raw public key): nothing goes
    /// out, in clear least of all.
    Unusable(LinkError),
}

/// Why a `coaps://` account gets no link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The account's Security Mode cannot be used.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// Its credentials do not compile (a certificate or key that does not parse).
    #[error(transparent)]
    Credentials(#[from] DtlsError),
}

/// What a client's links did after an event of its machine ([`Links::after_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// The device restarted: its sessions are gone with its RAM.
    Rebooted,
    /// A Bootstrap-Request, Register or Update failed over an established session: the
    /// established sessions are dropped.
    RequestFailed,
}

impl Links {
    /// The way to `peer` for a client whose machine has `tree` and `config`; a new link
    /// is made with `options`.
    pub fn route(
        &mut self,
        tree: &ObjectTree,
        config: &Servers<'_>,
        peer: SocketAddr,
        options: &LinkOptions,
    ) -> Route<'_> {
        let revision = tree.revision(SECURITY);
        if revision != self.revision {
            self.revision = revision;
            self.plain.clear();
            for link in &mut self.links {
                link.checked = false;
            }
        }
        if self.plain.contains(&peer) {
            return Route::Plain;
        }
        let current = self.links.iter().position(|l| l.server == peer);
        if let Some(k) = current
            && self.links[k].checked
        {
            return Route::Secure(&mut self.links[k]);
        }
        let wanted = match credentials_for(tree, config, peer) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => {
                if let Some(k) = current {
                    self.links.swap_remove(k);
                }
                self.plain.push(peer);
                return Route::Plain;
            }
            Err(reason) => return Route::Unusable(reason.into()),
        };
        let k = match current {
            Some(k) if self.links[k].credentials == wanted => k,
            _ => {
                let link = match DtlsLink::new(peer, wanted, options) {
                    Ok(link) => link,
                    Err(e) => return Route::Unusable(e.into()),
                };
                match current {
                    Some(k) => {
                        self.links[k] = link;
                        k
                    }
                    None => {
                        self.links.push(link);
                        self.links.len() - 1
                    }
                }
            }
        };
        self.links[k].checked = true;
        Route::Secure(&mut self.links[k])
    }

    /// The link toward `server`, if there is one.
    pub fn get(&self, server: SocketAddr) -> Option<&DtlsLink> {
        self.links.iter().find(|l| l.server == server)
    }

    /// The link toward `server`, if there is one.
    pub fn get_mut(&mut self, server: SocketAddr) -> Option<&mut DtlsLink> {
        self.links.iter_mut().find(|l| l.server == server)
    }

    /// Every link.
    pub fn iter(&self) -> impl Iterator<Item = &DtlsLink> {
        self.links.iter()
    }

    /// Every link.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut DtlsLink> {
        self.links.iter_mut()
    }

    /// The link whose session's deadline is `at`.
    pub fn due(&mut self, at: Instant) -> Option<&mut DtlsLink> {
        self.links.iter_mut().find(|l| l.timer == Some(at))
    }

    /// Ends every established session (the peer will not know our records any more: a
    /// NAT rebinding, a server that lost them); the next datagram handshakes again.
    pub fn reset_established(&mut self) {
        for link in &mut self.links {
            if link
                .session
                .as_ref()
                .is_some_and(DtlsClient::is_established)
            {
                link.reset();
            }
        }
    }

    /// The device restarted: its sessions are gone with its RAM.
    pub fn clear(&mut self) {
        self.links.clear();
    }

    /// What the client's sessions become after `event` of its machine: a rebooted device
    /// has forgotten them (it handshakes again); a Bootstrap-Request, Register or Update
    /// that failed over an established session drops the established ones (the server may
    /// have lost the session, a restart or its idle timeout, and silently drops our
    /// records, as devices find out only this way; the next datagram, the request's
    /// retransmission, handshakes again, as devices do). `None` when nothing changed.
    pub fn after_event(&mut self, event: &ClientEvent) -> Option<Forgotten> {
        match event {
            ClientEvent::Rebooting | ClientEvent::FactoryReset => {
                let had_sessions = self.links.iter().any(|l| l.session.is_some());
                self.clear();
                had_sessions.then_some(Forgotten::Rebooted)
            }
            ClientEvent::Failed {
                step: "bootstrap" | "register" | "update",
                ..
            } if self
                .links
                .iter()
                .any(|l| l.session.as_ref().is_some_and(DtlsClient::is_established)) =>
            {
                self.reset_established();
                Some(Forgotten::RequestFailed)
            }
            _ => None,
        }
    }

    /// The servers with a link.
    pub fn servers(&self) -> Vec<SocketAddr> {
        self.links.iter().map(|l| l.server).collect()
    }
}

/// Where a client machine sends, from its [`MachineConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Servers<'a> {
    /// The endpoint name (the PSK identity of accounts with an empty one).
    pub endpoint: &'a str,
    /// [`MachineConfig::server`].
    pub server: Option<SocketAddr>,
    /// [`MachineConfig::bootstrap_server`].
    pub bootstrap_server: Option<SocketAddr>,
}

impl<'a> From<&'a MachineConfig> for Servers<'a> {
    fn from(c: &'a MachineConfig) -> Self {
        Self {
            endpoint: &c.endpoint,
            server: c.server,
            bootstrap_server: c.bootstrap_server,
        }
    }
}

/// The account the client machine uses toward `peer`: the bootstrap-server account when
/// `peer` is the configured Bootstrap Server or its URI's address, else the LwM2M Server
/// account when `peer` is the configured server or its URI's address (the machine's own URI
/// parser: where the machine sends for it). `None`: no account goes there (a firmware
/// server, say).
pub fn account_toward<'t>(
    tree: &'t ObjectTree,
    config: &Servers<'_>,
    peer: SocketAddr,
) -> Option<&'t Instance> {
    let at = |account: &Instance, configured: Option<SocketAddr>| {
        configured == Some(peer)
            || account_uri(account)
                .and_then(parse_coap_uri)
                .is_some_and(|u| u.secure && u.addr == peer)
    };
    let bootstrap = tree
        .bootstrap_account()
        .filter(|(_, a)| at(a, config.bootstrap_server));
    let server = || tree.server_account().filter(|(_, a)| at(a, config.server));
    bootstrap.or_else(server).map(|(_, account)| account)
}

/// The credentials of the account the client machine uses toward `peer`
/// ([`account_toward`], read by [`account_credentials`]). `Ok(None)`: plain CoAP (no such
/// account, or not `coaps://`). `Err`: a `coaps://` account that cannot be used (raw
/// public keys), for which nothing may go out in clear.
pub fn credentials_for(
    tree: &ObjectTree,
    config: &Servers<'_>,
    peer: SocketAddr,
) -> Result<Option<Credentials>, AccountError> {
    match account_toward(tree, config, peer) {
        Some(account) => account_credentials(account, config.endpoint),
        None => Ok(None),
    }
}

impl DtlsLink {
    /// A link toward `server` with `credentials`, its sessions' secrets going to the
    /// options' key log; refused when they do not compile (a certificate or key that does
    /// not parse).
    pub fn new(
        server: SocketAddr,
        credentials: Credentials,
        options: &LinkOptions,
    ) -> Result<Self, DtlsError> {
        let mut config = ClientConfig::new(&credentials)?;
        if let Some(log) = &options.key_log {
            config = config.with_key_log(log.clone());
        }
        let identity = options
            .record_plaintext
            .then(|| config.identity().to_string().into());
        Ok(Self {
            server,
            config,
            credentials,
            checked: false,
            session: None,
            pending: Vec::new(),
            timer: None,
            encrypted: options.record_plaintext.then(Vec::new),
            identity,
            bound: None,
        })
    }

    /// Hands a CoAP datagram to the session: encrypted at once when established, held
    /// otherwise. `Ok(true)` when a new handshake had to start for it; `Err` when none
    /// could (the datagram is dropped).
    pub fn send(&mut self, now: Instant, bytes: Vec<u8>) -> Result<bool, DtlsError> {
        let mut started = false;
        if self.session.as_ref().is_none_or(DtlsClient::is_finished) {
            self.reset();
            self.session = Some(DtlsClient::connect(now, self.server, &self.config)?);
            started = true;
        }
        match self.session.as_mut() {
            Some(s) if s.is_established() => {
                if s.send(now, &bytes).is_ok()
                    && let Some(kept) = self.encrypted.as_mut()
                {
                    kept.push(bytes);
                }
            }
            _ => {
                if self.pending.len() >= PENDING {
                    self.pending.remove(0);
                }
                self.pending.push(bytes);
            }
        }
        Ok(started)
    }

    /// The handshake completed: what waited goes out.
    pub fn established(&mut self, now: Instant) {
        if let Some(s) = self.session.as_mut() {
            for bytes in self.pending.drain(..) {
                if s.send(now, &bytes).is_ok()
                    && let Some(kept) = self.encrypted.as_mut()
                {
                    kept.push(bytes);
                }
            }
        }
    }

    /// The CoAP datagrams encrypted since the last call, oldest first (always empty unless
    /// [`LinkOptions::record_plaintext`]): each is the plaintext of the next
    /// application_data record the session puts out.
    pub fn take_encrypted(&mut self) -> Vec<Vec<u8>> {
        self.encrypted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The session's identity as recorders show it (`psk:ID`, `cn:NAME`; empty unless
    /// [`LinkOptions::record_plaintext`]).
    pub fn identity(&self) -> &str {
        self.identity.as_deref().unwrap_or_default()
    }

    /// The credentials the link was built from.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The session is gone (failure, close, reboot, rebinding): the next datagram opens a
    /// new one. Datagrams waiting for a failed handshake are dropped.
    pub fn reset(&mut self) {
        self.session = None;
        self.pending.clear();
        self.timer = None;
        self.bound = None;
    }

    /// A record of the session leaves from `from`. When the session was made from another
    /// address (a NAT rebinding), the session is given up (the next datagram starts a new
    /// one) and the old address returned.
    pub fn bind(&mut self, from: SocketAddr) -> Option<SocketAddr> {
        match self.bound {
            None => {
                self.bound = Some(from);
                None
            }
            Some(old) if old != from => {
                self.reset();
                Some(old)
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::MODE_CERTIFICATE;
    use lwm2m_proto::InstanceId;
    use lwm2m_proto::{Instance, ResourceValue};
    use lwm2m_proto::{Lwm2mPath, Value};

    const BS: &str = "127.0.0.1:5784";
    const LWM2M: &str = "127.0.0.1:5684";

    fn account(t: &mut ObjectTree, iid: u16, uri: &str, bootstrap: bool, mode: i64, id: &[u8]) {
        let mut i = Instance::default();
        let mut put = |r: u16, v: Value| {
            i.insert(r.into(), ResourceValue::Single(v));
        };
        put(0, Value::String(uri.into()));
        put(1, Value::Boolean(bootstrap));
        put(2, Value::Integer(mode));
        put(3, Value::Opaque(id.to_vec()));
        put(5, Value::Opaque(vec![iid as u8 + 1; 3]));
        t.put_instance(SECURITY, iid.into(), i);
    }

    fn tree(uri: &str, mode: i64, identity: &[u8]) -> ObjectTree {
        let mut t = ObjectTree::new();
        t.add_unknown_object(SECURITY);
        account(&mut t, 0, uri, false, mode, identity);
        t
    }

    fn config(server: Option<&str>, bootstrap: Option<&str>) -> Servers<'static> {
        Servers {
            endpoint: "ep",
            server: server.map(|s| s.parse().unwrap()),
            bootstrap_server: bootstrap.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn routes_are_worked_out_again_only_when_the_security_object_changes() {
        let peer: SocketAddr = LWM2M.parse().unwrap();
        let none = config(None, None);
        let mut t = tree("coaps://127.0.0.1:5684", 0, b"id");
        let mut links = Links::default();
        let credentials = |links: &mut Links, t: &ObjectTree| match links.route(
            t,
            &none,
            peer,
            &LinkOptions::default(),
        ) {
            Route::Secure(link) => Some(link.credentials.clone()),
            Route::Plain => None,
            Route::Unusable(why) => panic!("unusable: {why}"),
        };
        assert_eq!(credentials(&mut links, &t), psk(b"id", 1));
        // A session in progress survives datagrams while the account stays.
        let Route::Secure(link) = links.route(&t, &none, peer, &LinkOptions::default()) else {
            panic!()
        };
        assert!(
            link.send(Instant::now(), b"coap".to_vec()).unwrap(),
            "a handshake starts"
        );
        let Route::Secure(link) = links.route(&t, &none, peer, &LinkOptions::default()) else {
            panic!()
        };
        assert!(link.session.is_some());
        // The Bootstrap Server writes another key: the next datagram uses it.
        let key = Lwm2mPath::Resource(SECURITY, InstanceId(0), 5.into());
        t.set(&key, ResourceValue::Single(Value::Opaque(vec![9; 3])))
            .unwrap();
        assert_eq!(credentials(&mut links, &t), psk(b"id", 9));
        let Route::Secure(link) = links.route(&t, &none, peer, &LinkOptions::default()) else {
            panic!()
        };
        assert!(link.session.is_none(), "a new link");
        assert_eq!(links.servers(), [peer]);
        // The account turns plain: the link goes, and plain it stays.
        let uri = Lwm2mPath::Resource(SECURITY, InstanceId(0), 0.into());
        t.set(
            &uri,
            ResourceValue::Single(Value::String("coap://127.0.0.1:5684".into())),
        )
        .unwrap();
        assert_eq!(credentials(&mut links, &t), None);
        assert_eq!(credentials(&mut links, &t), None);
        assert!(links.servers().is_empty());
        // A certificate account with garbage for a certificate: unusable, nothing goes out.
        t.set(
            &uri,
            ResourceValue::Single(Value::String("coaps://127.0.0.1:5684".into())),
        )
        .unwrap();
        let mode = Lwm2mPath::Resource(SECURITY, InstanceId(0), 2.into());
        t.set(
            &mode,
            ResourceValue::Single(Value::Integer(MODE_CERTIFICATE)),
        )
        .unwrap();
        assert!(matches!(
            links.route(&t, &none, peer, &LinkOptions::default()),
            Route::Unusable(_)
        ));
    }

    fn creds(t: &ObjectTree, c: &Servers<'_>, peer: SocketAddr) -> Option<Credentials> {
        credentials_for(t, c, peer).expect("a supported mode")
    }

    fn psk(identity: &[u8], key: u8) -> Option<Credentials> {
        Some(Credentials::Psk {
            identity: identity.to_vec(),
            key: vec![key; 3],
        })
    }

    #[test]
    fn psk_accounts_on_coaps_are_secure() {
        let peer: SocketAddr = LWM2M.parse().unwrap();
        let none = config(None, None);
        let t = tree("coaps://127.0.0.1:5684", 0, b"id");
        assert_eq!(creds(&t, &none, peer), psk(b"id", 1));
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(creds(&t, &none, other), None, "a firmware server");
        assert_eq!(
            creds(&tree("coap://127.0.0.1:5684", 0, b"id"), &none, peer),
            None
        );
        // NoSec on a coaps:// URI: refused, nothing goes out in clear.
        let nosec = tree("coaps://127.0.0.1:5684", 3, b"id");
        assert!(credentials_for(&nosec, &none, peer).is_err());
        // Raw public keys: no link, and nothing in clear either.
        let rpk = tree("coaps://127.0.0.1:5684", 1, b"id");
        assert!(credentials_for(&rpk, &none, peer).is_err());
        assert!(matches!(
            Links::default().route(&rpk, &none, peer, &LinkOptions::default()),
            Route::Unusable(_)
        ));
        // An unparsable host: the configured server.
        let named = tree("coaps://localhost:5684", 0, b"");
        assert_eq!(creds(&named, &none, peer), None);
        let configured = config(Some(LWM2M), None);
        assert_eq!(creds(&named, &configured, peer), psk(b"ep", 1));
        // No port: 5684, where the client machine sends (RFC 7252 §6.2).
        let portless = tree("coaps://127.0.0.1/", 0, b"id");
        assert_eq!(creds(&portless, &none, peer), psk(b"id", 1));
    }

    #[test]
    fn the_bootstrap_server_and_the_lwm2m_server_get_their_own_credentials() {
        let (bs, lwm2m): (SocketAddr, SocketAddr) = (BS.parse().unwrap(), LWM2M.parse().unwrap());
        let c = config(None, Some(BS));
        let mut t = ObjectTree::new();
        t.add_unknown_object(SECURITY);
        account(&mut t, 0, "coaps://127.0.0.1:5784", true, 0, b"bs-ep");
        assert_eq!(creds(&t, &c, bs), psk(b"bs-ep", 1));
        assert_eq!(creds(&t, &c, lwm2m), None, "no account yet");
        // What a Bootstrap Server writes.
        account(&mut t, 1, "coaps://127.0.0.1:5684", false, 0, b"ep");
        assert_eq!(creds(&t, &c, lwm2m), psk(b"ep", 2));
        assert_eq!(creds(&t, &c, bs), psk(b"bs-ep", 1));
    }

    #[test]
    fn certificate_accounts_that_do_not_compile_get_no_link() {
        let peer: SocketAddr = LWM2M.parse().unwrap();
        let t = tree("coaps://127.0.0.1:5684", 2, b"\x30\x01");
        let Some(creds @ Credentials::Certificate { .. }) = creds(&t, &config(None, None), peer)
        else {
            panic!("a certificate account")
        };
        // Garbage does not compile: the link is refused rather than sent in clear.
        assert!(DtlsLink::new(peer, creds, &LinkOptions::default()).is_err());
    }

    #[test]
    fn datagrams_wait_for_the_handshake() {
        let mut link = DtlsLink::new(
            LWM2M.parse().unwrap(),
            psk(b"id", 1).unwrap(),
            &LinkOptions::default(),
        )
        .unwrap();
        let now = Instant::now();
        assert!(link.send(now, vec![1]).unwrap());
        assert!(!link.send(now, vec![2]).unwrap());
        assert_eq!(link.pending.len(), 2);
        assert!(link.session.as_mut().unwrap().poll_transmit().is_some());
        link.reset();
        assert!(link.pending.is_empty() && link.session.is_none());
    }

    #[test]
    fn a_session_is_bound_to_the_address_of_its_first_record() {
        let mut link = DtlsLink::new(
            LWM2M.parse().unwrap(),
            psk(b"id", 1).unwrap(),
            &LinkOptions::default(),
        )
        .unwrap();
        let (a, b): (SocketAddr, SocketAddr) = (
            "100.0.0.1:4000".parse().unwrap(),
            "100.0.0.1:4001".parse().unwrap(),
        );
        assert!(link.send(Instant::now(), vec![1]).unwrap());
        assert_eq!(link.bind(a), None);
        assert_eq!(link.bind(a), None);
        // A NAT rebinding: the session is given up, what waited with it too.
        assert_eq!(link.bind(b), Some(a));
        assert!(link.session.is_none() && link.pending.is_empty());
        assert_eq!(link.bind(b), None);
    }
}
