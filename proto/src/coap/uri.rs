//! `coap://` and `coaps://` URIs (RFC 7252 §6.1, §6.2): the one place their syntax and
//! default ports are known. [`split_coap_uri`] takes a URI apart without resolving its
//! host; [`parse_coap_uri`] also requires the host to be an IP literal (the sans-IO core
//! resolves no names). A caller that may resolve names does so with the parts.

use std::net::{IpAddr, SocketAddr};

/// The default port of `coap://` (RFC 7252 §6.1).
pub const COAP_PORT: u16 = 5683;
/// The default port of `coaps://` (RFC 7252 §6.2).
pub const COAPS_PORT: u16 = 5684;

/// A `coap://` or `coaps://` URI taken apart, its host not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapUriParts<'a> {
    /// `coaps` scheme.
    pub secure: bool,
    /// The host as written, without the brackets of an IPv6 literal.
    pub host: &'a str,
    /// The port (5683, or 5684 for coaps, when absent).
    pub port: u16,
    /// The path segments.
    pub path: Vec<String>,
    /// The query parameters.
    pub query: Vec<String>,
}

/// Why a string is not a `coap://` or `coaps://` URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoapUriError {
    /// Another scheme, or none.
    #[error("{uri:?}: expected coap://HOST[:PORT] or coaps://HOST[:PORT]")]
    Scheme {
        /// The URI.
        uri: String,
    },
    /// The authority names no host.
    #[error("{uri:?}: no host")]
    NoHost {
        /// The URI.
        uri: String,
    },
    /// The port is not a number from 0 to 65535.
    #[error("{uri:?}: bad port")]
    Port {
        /// The URI.
        uri: String,
    },
}

/// Splits `coap[s]://host[:port][/path][?query]` into its parts. An IPv6 host is written
/// in brackets when a port follows (`[::1]:5683`); a bare IPv6 literal is taken whole.
pub fn split_coap_uri(uri: &str) -> Result<CoapUriParts<'_>, CoapUriError> {
    let (secure, rest) = match (uri.strip_prefix("coap://"), uri.strip_prefix("coaps://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            return Err(CoapUriError::Scheme {
                uri: uri.to_owned(),
            });
        }
    };
    let default_port = if secure { COAPS_PORT } else { COAP_PORT };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q.split('&').map(str::to_owned).collect()),
        None => (rest, Vec::new()),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let bad_port = || CoapUriError::Port {
        uri: uri.to_owned(),
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad_port)?;
        let port = match after {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(bad_port)?,
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) if !port.contains(':') => {
                (host, port.parse().map_err(|_| bad_port())?)
            }
            _ => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(CoapUriError::NoHost {
            uri: uri.to_owned(),
        });
    }
    Ok(CoapUriParts {
        secure,
        host,
        port,
        path: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        query,
    })
}

/// A `coap://` or `coaps://` URI split into address and path segments (RFC 7252 §6.1);
/// hosts must be IP literals (the simulator resolves no names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapUri {
    /// `coaps` scheme.
    pub secure: bool,
    /// Host and port (5683, or 5684 for coaps, when absent).
    pub addr: SocketAddr,
    /// The path segments.
    pub path: Vec<String>,
    /// The query parameters.
    pub query: Vec<String>,
}

/// Parses `coap://host[:port][/path][?query]` whose host is an IP literal; `None` for
/// anything else.
pub fn parse_coap_uri(uri: &str) -> Option<CoapUri> {
    let parts = split_coap_uri(uri).ok()?;
    let ip = parts.host.parse::<IpAddr>().ok()?;
    Some(CoapUri {
        secure: parts.secure,
        addr: SocketAddr::new(ip, parts.port),
        path: parts.path,
        query: parts.query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = parse_coap_uri("coap://127.0.0.1:5690/fw/image.bin?v=2").unwrap();
        assert_eq!(u.addr, "127.0.0.1:5690".parse().unwrap());
        assert_eq!(u.path, ["fw", "image.bin"]);
        assert_eq!(u.query, ["v=2"]);
        assert!(!u.secure);
        let v6 = parse_coap_uri("coaps://[::1]").unwrap();
        assert_eq!(v6.addr, "[::1]:5684".parse().unwrap());
        assert!(v6.secure);
        let bare_v6 = parse_coap_uri("coap://::1/x").unwrap();
        assert_eq!(bare_v6.addr, "[::1]:5683".parse().unwrap());
        let v6_port = parse_coap_uri("coap://[::1]:7000").unwrap();
        assert_eq!(v6_port.addr, "[::1]:7000".parse().unwrap());
        for bad in [
            "http://1.2.3.4/x",
            "coap://example.com/x",
            "coap://",
            "1.2.3.4",
            "coap://1.2.3.4:",
            "coap://1.2.3.4:99999",
            "coap://[::1",
            "coap://[::1]x",
        ] {
            assert!(parse_coap_uri(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn parts_keep_names_for_the_caller_to_resolve() {
        let p = split_coap_uri("coaps://leshan.example:5784/rd").unwrap();
        assert_eq!((p.secure, p.host, p.port), (true, "leshan.example", 5784));
        assert_eq!(p.path, ["rd"]);
        let p = split_coap_uri("coap://localhost").unwrap();
        assert_eq!((p.host, p.port), ("localhost", COAP_PORT));
        assert_eq!(
            split_coap_uri("http://x").unwrap_err().to_string(),
            "\"http://x\": expected coap://HOST[:PORT] or coaps://HOST[:PORT]"
        );
        assert!(matches!(
            split_coap_uri("coap://:5683"),
            Err(CoapUriError::NoHost { .. })
        ));
        assert!(matches!(
            split_coap_uri("coap://h:x"),
            Err(CoapUriError::Port { .. })
        ));
    }
}
