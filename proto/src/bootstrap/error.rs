//! Why the Bootstrap Server refused a request or a call, and the CoAP code each refusal
//! is answered with. Its own file: the admission gate ([`crate::admission`]) reads
//! Bootstrap-Requests with it, and the Bootstrap Server machine uses the gate.

use crate::coap::message::code_pair;
use crate::coap::{MessageClass, ResponseType};
use crate::content::CodecError;
use crate::ids::Lwm2mPath;

/// Why a request to the Bootstrap Server, or a call to [`BootstrapServer::start`](super::server::BootstrapServer::start), was
/// refused; [`BootstrapError::coap_code`] is the code a refused request is answered with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// A Bootstrap-Request without `ep` (4.00 Bad Request, Core TS 1.1 §5.2.7.1).
    #[error("Bootstrap-Request without endpoint name (ep)")]
    MissingEndpoint,
    /// The Uri-Query cannot be read: an option that is not UTF-8, or a parameter given
    /// more than once (4.00 Bad Request).
    #[error("bad query: {reason}")]
    BadQuery {
        /// Why.
        reason: String,
    },
    /// No configuration applies to the endpoint, neither its own nor a pattern: the
    /// Bootstrap-Request response code table of Core TS 1.1 §5.2.7.1 gives 4.00 Bad Request
    /// with reason "Unknown Endpoint Client Name".
    #[error("unknown endpoint client name {endpoint:?}")]
    UnknownEndpoint {
        /// The endpoint name.
        endpoint: String,
    },
    /// A query parameter has an unusable value (4.00 Bad Request).
    #[error("invalid {name}={value:?}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The preferred content format (`pct`) is not a multi-node format this server encodes
    /// (4.15 Unsupported Content-Format, Core TS 1.1 §5.2.7.1).
    #[error("preferred content format {code} is not supported for Bootstrap-Write")]
    UnsupportedFormat {
        /// The Content-Format number asked for.
        code: u16,
    },
    /// The configuration cannot be sent as it is (5.00 Internal Server Error: the fault is
    /// the server's, not the client's).
    #[error("configuration {config:?} is invalid: {reason}")]
    InvalidConfig {
        /// The label of the configuration (see [`ConfigSource::lookup`](super::server::ConfigSource::lookup)).
        config: String,
        /// Why.
        reason: String,
    },
    /// An instance of the configuration cannot be encoded (5.00 Internal Server Error).
    #[error("cannot encode {path}: {error}")]
    Encode {
        /// The instance.
        path: Lwm2mPath,
        /// The encoder's error.
        error: CodecError,
    },
    /// The client may not be bootstrapped this way, e.g. over plain CoAP when its
    /// configuration's Bootstrap Server account says PSK (4.03 Forbidden).
    #[error("{endpoint:?} may not bootstrap here: {reason}")]
    Forbidden {
        /// The endpoint name.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// [`ConfigSource::session_starting`](super::server::ConfigSource::session_starting) refused the session, e.g. the LwM2M Server
    /// credentials of the configuration cannot be stored (5.00 Internal Server Error: the
    /// client would be handed credentials its LwM2M Server refuses).
    #[error("cannot provision {endpoint:?}: {reason}")]
    Provisioning {
        /// The endpoint name.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A request for a path the Bootstrap Server does not serve: only `/bs` exists
    /// (4.04 Not Found).
    #[error("{path} not found on the Bootstrap Server")]
    NotFound {
        /// The Uri-Path of the request.
        path: String,
    },
    /// A method other than POST on `/bs` (4.05 Method Not Allowed).
    #[error("{method} not allowed on /bs")]
    MethodNotAllowed {
        /// The request code, as `0.dd`.
        method: String,
    },
    /// [`BootstrapServer::start`](super::server::BootstrapServer::start) for an endpoint whose session is running; never sent to
    /// a peer (its code would be 5.03 Service Unavailable).
    #[error("a bootstrap session with {endpoint:?} is running")]
    SessionRunning {
        /// The endpoint name.
        endpoint: String,
    },
}

impl BootstrapError {
    pub(crate) fn response_type(&self) -> ResponseType {
        match self {
            Self::MissingEndpoint
            | Self::BadQuery { .. }
            | Self::UnknownEndpoint { .. }
            | Self::InvalidParameter { .. } => ResponseType::BadRequest,
            Self::UnsupportedFormat { .. } => ResponseType::UnsupportedContentFormat,
            Self::InvalidConfig { .. } | Self::Encode { .. } | Self::Provisioning { .. } => {
                ResponseType::InternalServerError
            }
            Self::NotFound { .. } => ResponseType::NotFound,
            Self::Forbidden { .. } => ResponseType::Forbidden,
            Self::MethodNotAllowed { .. } => ResponseType::MethodNotAllowed,
            Self::SessionRunning { .. } => ResponseType::ServiceUnavailable,
        }
    }

    /// The CoAP response code (class, detail) a refused request is answered with.
    pub fn coap_code(&self) -> (u8, u8) {
        code_pair(MessageClass::Response(self.response_type()))
    }
}
