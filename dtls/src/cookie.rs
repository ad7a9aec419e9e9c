//! Stateless cookies for the HelloVerifyRequest exchange (RFC 6347 §4.2.1).
//!
//! The router answers a ClientHello without a valid cookie with a HelloVerifyRequest whose
//! cookie is an HMAC-SHA256, keyed with a secret of this process, over the client's address
//! and the ClientHello's fields. No state is kept for it: a client that returns the cookie
//! from the same address proves it receives there, and only then does a session exist.
//! The secret is drawn from the crypto provider's random source (the OS RNG) and replaced
//! every [`SECRET_LIFETIME`]; cookies made with the current or the previous secret verify.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc_dtls::crypto_provider::{HmacAlgorithm, RTCCryptoProvider};

use crate::DtlsError;
use crate::record::ClientHello;

/// Cookie length: the 20 bytes the DTLS layer's own cookies have (the router hands it our
/// cookie in their place, see `config::ServerRandom`).
pub(crate) const COOKIE_LEN: usize = 20;

/// How long a secret makes new cookies; a cookie stays valid for one to two lifetimes.
pub(crate) const SECRET_LIFETIME: Duration = Duration::from_secs(60);

/// The HMAC output: SHA-256.
const MAC_LEN: usize = 32;

pub(crate) struct CookieSecrets {
    provider: Arc<dyn RTCCryptoProvider>,
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    /// When `current` is replaced; set on first use (the router has no clock before).
    rotate_at: Option<Instant>,
}

impl CookieSecrets {
    pub(crate) fn new(provider: Arc<dyn RTCCryptoProvider>) -> Result<CookieSecrets, DtlsError> {
        let current = fresh(provider.as_ref())?;
        Ok(CookieSecrets {
            provider,
            current,
            previous: None,
            rotate_at: None,
        })
    }

    /// Replaces the secret when its lifetime is over; a secret older than two lifetimes is
    /// not kept as the previous one.
    pub(crate) fn rotate(&mut self, now: Instant) {
        let Some(due) = self.rotate_at else {
            self.rotate_at = now.checked_add(SECRET_LIFETIME);
            return;
        };
        if now < due {
            return;
        }
        // A failing OS RNG keeps the old secret (and retries on the next hello).
        let Ok(next) = fresh(self.provider.as_ref()) else {
            return;
        };
        let stale = due
            .checked_add(SECRET_LIFETIME)
            .is_none_or(|limit| now >= limit);
        self.previous = (!stale).then_some(self.current);
        self.current = next;
        self.rotate_at = now.checked_add(SECRET_LIFETIME);
    }

    /// The cookie for `hello` from `peer`, under the current secret.
    pub(crate) fn cookie(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; COOKIE_LEN] {
        let mac = self.mac(&self.current, peer, hello);
        let mut cookie = [0; COOKIE_LEN];
        cookie.copy_from_slice(&mac[..COOKIE_LEN]);
        cookie
    }

    /// Whether `hello`'s cookie is one we made for `peer` and this hello (current or
    /// previous secret). Compared in constant time.
    pub(crate) fn verify(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> bool {
        if hello.cookie.len() != COOKIE_LEN {
            return false;
        }
        let matches = |secret: &[u8; 32]| {
            let mac = self.mac(secret, peer, hello);
            constant_time_eq(&mac[..COOKIE_LEN], hello.cookie)
        };
        matches(&self.current) | self.previous.as_ref().is_some_and(matches)
    }

    /// HMAC-SHA256 over the address and the ClientHello fields the client must repeat
    /// unchanged (RFC 6347 §4.2.1): version, random, session_id, cipher_suites,
    /// compression_methods, extensions. An all-zero MAC (which no cookie matches) if the
    /// provider fails.
    fn mac(&self, secret: &[u8; 32], peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; MAC_LEN] {
        let (family, ip) = match peer {
            SocketAddr::V4(v4) => (4u8, v4.ip().to_ipv6_mapped().octets()),
            SocketAddr::V6(v6) => (6u8, v6.ip().octets()),
        };
        let port = peer.port().to_be_bytes();
        let session_id_len = [u8::try_from(hello.session_id.len()).unwrap_or(u8::MAX)];
        let input: [&[u8]; 8] = [
            &[family],
            &ip,
            &port,
            &hello.client_version,
            &hello.random,
            &session_id_len,
            hello.session_id,
            hello.tail,
        ];
        let mut out = [0; MAC_LEN];
        let signed = self
            .provider
            .crypto()
            .new_hmac(HmacAlgorithm::Sha256, secret)
            .and_then(|mut mac| mac.sign(&input, &mut out));
        if signed.is_err() {
            out = [0; MAC_LEN];
        }
        out
    }
}

fn fresh(provider: &dyn RTCCryptoProvider) -> Result<[u8; 32], DtlsError> {
    let mut secret = [0; 32];
    provider
        .random()
        .fill(&mut secret)
        .map_err(|e| DtlsError::Config(format!("cookie secret: {e}")))?;
    Ok(secret)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hello(random: u8) -> ClientHello<'static> {
        ClientHello {
            record_version: [0xfe, 0xfd],
            record_sequence: 0,
            message_seq: 0,
            client_version: [0xfe, 0xfd],
            random: [random; 32],
            session_id: b"",
            cookie: b"",
            tail: &[0, 2, 0xc0, 0xa8, 1, 0],
        }
    }

    fn secrets() -> CookieSecrets {
        CookieSecrets::new(rtc_dtls::crypto_provider::default_provider().unwrap()).unwrap()
    }

    fn returned<'a>(hello: &ClientHello<'a>, cookie: &'a [u8]) -> ClientHello<'a> {
        ClientHello {
            cookie,
            message_seq: 1,
            ..hello.clone()
        }
    }

    #[test]
    fn a_cookie_verifies_for_its_address_and_hello_only() {
        let jar = secrets();
        let peer: SocketAddr = "10.0.0.2:5683".parse().unwrap();
        let first = hello(7);
        let cookie = jar.cookie(peer, &first);
        assert!(jar.verify(peer, &returned(&first, &cookie)));
        let other_port: SocketAddr = "10.0.0.2:5684".parse().unwrap();
        assert!(!jar.verify(other_port, &returned(&first, &cookie)));
        assert!(!jar.verify(peer, &returned(&hello(8), &cookie)));
        let mut forged = cookie;
        forged[0] ^= 1;
        assert!(!jar.verify(peer, &returned(&first, &forged)));
        assert!(!jar.verify(peer, &returned(&first, &cookie[..19])));
        // Another process (another secret) does not accept it.
        assert!(!secrets().verify(peer, &returned(&first, &cookie)));
    }

    #[test]
    fn cookies_outlive_one_rotation_but_not_two() {
        let mut jar = secrets();
        let peer: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let start = Instant::now();
        jar.rotate(start);
        let first = hello(1);
        let cookie = jar.cookie(peer, &first);
        jar.rotate(start + SECRET_LIFETIME - Duration::from_secs(1));
        assert_eq!(jar.cookie(peer, &first), cookie, "not rotated yet");
        jar.rotate(start + SECRET_LIFETIME);
        assert_ne!(jar.cookie(peer, &first), cookie);
        assert!(
            jar.verify(peer, &returned(&first, &cookie)),
            "previous secret"
        );
        jar.rotate(start + SECRET_LIFETIME * 2);
        assert!(!jar.verify(peer, &returned(&first, &cookie)));
    }

    #[test]
    fn a_long_pause_drops_both_secrets() {
        let mut jar = secrets();
        let peer: SocketAddr = "10.0.0.2:5683".parse().unwrap();
        let start = Instant::now();
        jar.rotate(start);
        let cookie = jar.cookie(peer, &hello(1));
        jar.rotate(start + SECRET_LIFETIME * 3);
        assert!(!jar.verify(peer, &returned(&hello(1), &cookie)));
    }
}
