//! The vocabulary of the LwM2M Server state machine: registrations, the operations a user
//! asks for, their outcomes, and the events the machine reports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::codec::link::{AttributeUpdate, DiscoverEntry, LinkNote, RegistrationLinks};
use crate::content::{CodecError, ContentFormat, Finding};
use crate::ids::{InstanceId, Lwm2mPath, ObjectId};
use crate::node::{Instance, Node, Record};
use crate::registration::{Lwm2mVersion, RegistrationFinding};

/// One registered client (Core TS 1.1 §6.2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// The registration id the server assigned (`/rd/{id}` Location-Path).
    pub id: String,
    /// Endpoint Client Name.
    pub endpoint: String,
    /// Enabler version.
    pub version: Lwm2mVersion,
    /// Lifetime, seconds.
    pub lifetime: u32,
    /// Binding transports (`U`, ...).
    pub binding: String,
    /// Queue mode.
    pub queue_mode: bool,
    /// MSISDN.
    pub sms: Option<String>,
    /// The address datagrams come from (updated on NAT rebinding at the next Update).
    pub address: SocketAddr,
    /// Objects, instances, versions, alternate path and content formats from the payload.
    pub links: RegistrationLinks,
    /// When the client registered.
    pub registered_at: Instant,
    /// When it last registered or updated.
    pub last_update: Instant,
    /// Tolerated deviations seen on Register and Updates (each recorded once).
    pub findings: Vec<RegistrationFinding>,
    /// Oddities of the link payload (links outside the alternate path, duplicates, bad
    /// `ct` values): the link was skipped, the rest read (Core TS 1.1 §6.2.1). From the
    /// last Register or Update that carried a payload.
    pub link_notes: Vec<LinkNote>,
}

impl Registration {
    /// When the registration expires unless updated.
    pub fn expires_at(&self) -> Instant {
        self.last_update + Duration::from_secs(u64::from(self.lifetime))
    }
}

/// An operation of the Device Management and Information Reporting interfaces.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Operation {
    /// Read (GET with Accept) of an object, instance, resource or resource instance.
    Read {
        /// Target.
        path: Lwm2mPath,
        /// Requested format; `None`: the best the client announced for its version.
        format: Option<ContentFormat>,
    },
    /// Discover (GET with Accept link-format).
    Discover {
        /// Target.
        path: Lwm2mPath,
    },
    /// Write: PUT (replace) or POST (partial update).
    Write {
        /// Target (instance, resource or resource instance).
        path: Lwm2mPath,
        /// The content at `path`.
        node: Node,
        /// True for replace (PUT), false for partial update (POST).
        replace: bool,
        /// Format; `None`: the best the client announced.
        format: Option<ContentFormat>,
    },
    /// Write-Attributes (PUT with Uri-Query, no payload).
    WriteAttributes {
        /// Target.
        path: Lwm2mPath,
        /// Attributes to set and unset.
        attributes: AttributeUpdate,
    },
    /// Execute (POST on a resource).
    Execute {
        /// Target resource.
        path: Lwm2mPath,
        /// Arguments text (`0='v',1`), if any.
        args: Option<String>,
    },
    /// Create (POST on an object).
    Create {
        /// The object.
        object: ObjectId,
        /// The instance id to ask for, or `None` to let the client choose.
        instance: Option<InstanceId>,
        /// The resources of the new instance.
        resources: Instance,
        /// Format; `None`: the best the client announced.
        format: Option<ContentFormat>,
    },
    /// Delete (DELETE of an instance).
    Delete {
        /// Target.
        path: Lwm2mPath,
    },
    /// Read-Composite (FETCH `/` with a SenML path list, LwM2M 1.1+).
    ReadComposite {
        /// The paths.
        paths: Vec<Lwm2mPath>,
        /// SenML JSON, SenML CBOR or LwM2M CBOR; `None`: the best announced.
        format: Option<ContentFormat>,
    },
    /// Write-Composite (iPATCH `/`, LwM2M 1.1+).
    WriteComposite {
        /// The values.
        records: Vec<Record>,
        /// Format; `None`: the best announced.
        format: Option<ContentFormat>,
    },
    /// Observe (GET + Observe=0).
    Observe {
        /// Target.
        path: Lwm2mPath,
        /// Format; `None`: the best announced.
        format: Option<ContentFormat>,
    },
    /// Observe-Composite (FETCH `/` + Observe=0, LwM2M 1.1+).
    ObserveComposite {
        /// The paths.
        paths: Vec<Lwm2mPath>,
        /// Format; `None`: the best announced.
        format: Option<ContentFormat>,
    },
    /// Cancel an observation: actively (GET + Observe=1) or passively (forget it and
    /// answer the next notification with RST). The observation ends at once
    /// ([`ServerEvent::ObservationEnded`]); a passive cancellation completes at once with
    /// [`Response::empty`], an active one with the client's answer to the GET.
    CancelObservation {
        /// The observation.
        observation: ObservationId,
        /// True: send GET with Observe=1; false: RST the next notification.
        active: bool,
    },
}

impl Operation {
    /// The one path the operation targets (a Create's is its object's); `None` for the
    /// composite operations and for cancelling an observation.
    pub fn path(&self) -> Option<Lwm2mPath> {
        match self {
            Self::Read { path, .. }
            | Self::Discover { path }
            | Self::Write { path, .. }
            | Self::WriteAttributes { path, .. }
            | Self::Execute { path, .. }
            | Self::Delete { path }
            | Self::Observe { path, .. } => Some(*path),
            Self::Create { object, .. } => Some(Lwm2mPath::Object(*object)),
            Self::ReadComposite { .. }
            | Self::WriteComposite { .. }
            | Self::ObserveComposite { .. }
            | Self::CancelObservation { .. } => None,
        }
    }

    /// A short name for logs, events and histograms (`read`, `write`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Discover { .. } => "discover",
            Self::Write { .. } => "write",
            Self::WriteAttributes { .. } => "write-attributes",
            Self::Execute { .. } => "execute",
            Self::Create { .. } => "create",
            Self::Delete { .. } => "delete",
            Self::ReadComposite { .. } => "read-composite",
            Self::WriteComposite { .. } => "write-composite",
            Self::Observe { .. } => "observe",
            Self::ObserveComposite { .. } => "observe-composite",
            Self::CancelObservation { .. } => "cancel-observation",
        }
    }
}

/// Identifies an operation in its outcome event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// Identifies an observation the server holds on a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservationId(pub u64);

/// What a response carried, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A node at the operation's path.
    Node(Node),
    /// A flat list (composite operations).
    Records(Vec<Record>),
    /// A Discover answer.
    Links(Vec<DiscoverEntry>),
}

/// A client's answer to an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The CoAP code (class, detail), e.g. (2, 5).
    pub code: (u8, u8),
    /// The Content-Format of the payload, if any.
    pub format: Option<ContentFormat>,
    /// The decoded payload, if any.
    pub content: Option<Content>,
    /// What the decoder noticed (type mismatches, unknown resources, legacy formats).
    pub findings: Vec<Finding>,
    /// Location-Path of a Create (`/O/I`).
    pub location: Option<Lwm2mPath>,
    /// For Observe: the observation it established (on a 2.05 with Observe option).
    pub observation: Option<ObservationId>,
    /// Size of the response payload in bytes.
    pub payload_len: usize,
    /// The diagnostic payload of an error response (RFC 7252 §5.5.2), as text; for a
    /// notification whose payload cannot be decoded, the decoder's error.
    pub diagnostic: Option<String>,
}

impl Response {
    /// True for a 2.xx code.
    pub fn is_success(&self) -> bool {
        self.code.0 == 2
    }

    /// The answer to a passive [`Operation::CancelObservation`], where no message is
    /// exchanged: code 0.00 (Empty, RFC 7252 §12.1), nothing else.
    pub fn empty() -> Self {
        Self {
            code: (0, 0),
            format: None,
            content: None,
            findings: Vec::new(),
            location: None,
            observation: None,
            payload_len: 0,
            diagnostic: None,
        }
    }
}

/// Why an operation produced no response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// No registration for the endpoint.
    #[error("no registration for endpoint {endpoint:?}")]
    UnknownEndpoint {
        /// The endpoint.
        endpoint: String,
    },
    /// The operation is not valid (bad path level, unsupported for the client's version).
    #[error("invalid operation: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// The content could not be encoded in the chosen format.
    #[error("cannot encode: {0}")]
    Encode(CodecError),
    /// The response could not be decoded; the raw code is kept.
    #[error("response {code:?} cannot be decoded: {error}")]
    Decode {
        /// The response code.
        code: (u8, u8),
        /// The decoder's error.
        error: CodecError,
    },
    /// The queue of a sleeping client is full.
    #[error("queue of {endpoint:?} is full ({capacity} requests)")]
    QueueFull {
        /// The endpoint.
        endpoint: String,
        /// The queue capacity.
        capacity: usize,
    },
    /// The request waited in a sleeping client's queue longer than allowed.
    #[error("request waited {waited:?} for {endpoint:?} to wake up")]
    QueueTimeout {
        /// The endpoint.
        endpoint: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The CoAP exchange failed (timeout, reset, block-wise error); `address` is where the
    /// request went (an old NAT mapping shows here).
    #[error("exchange with {address} failed: {error}")]
    Exchange {
        /// The address the request was sent to.
        address: SocketAddr,
        /// The exchange layer's error.
        error: crate::coap::ExchangeError,
    },
    /// The client de-registered or expired before answering.
    #[error("registration of {endpoint:?} ended before the answer")]
    Deregistered {
        /// The endpoint.
        endpoint: String,
    },
}

/// What the server machine reports; drained with `poll_event()`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "events are moved once through a queue; boxing would burden every consumer"
)]
pub enum ServerEvent {
    /// A client registered (replacing an older registration of the same endpoint if any).
    Registered {
        /// The new registration.
        registration: Registration,
        /// The registration it replaced.
        replaced: Option<Registration>,
    },
    /// A client updated its registration.
    Updated {
        /// The registration after the update.
        registration: Registration,
        /// The address before, if the update came from a new one (NAT rebinding).
        previous_address: Option<SocketAddr>,
    },
    /// A client de-registered.
    Deregistered {
        /// The removed registration.
        registration: Registration,
    },
    /// A registration's lifetime ran out.
    Expired {
        /// The removed registration.
        registration: Registration,
    },
    /// A Register, Update or De-register was refused.
    RegistrationRefused {
        /// Where it came from.
        peer: SocketAddr,
        /// The code answered.
        code: (u8, u8),
        /// Why, in words.
        reason: String,
    },
    /// A Register or Update was refused because it went beyond one of the server's
    /// [`super::RegistrationLimits`] (a flood, an oversized payload or name, a lifetime out
    /// of bounds); answered with [`super::Limit::coap_code`] and the reason as diagnostic.
    LimitReached {
        /// Where it came from.
        peer: SocketAddr,
        /// The limit.
        limit: super::Limit,
        /// The code answered.
        code: (u8, u8),
        /// Why, in words (also the diagnostic payload).
        reason: String,
    },
    /// A request outside the Registration interface was refused: an unknown path (4.04),
    /// a wrong method (4.05), or a Send (POST `/dp`) that is not acceptable (4.00, 4.04,
    /// 4.15).
    RequestRefused {
        /// Where it came from.
        peer: SocketAddr,
        /// The code answered.
        code: (u8, u8),
        /// Why, in words (also sent as the diagnostic payload, RFC 7252 §5.5.2).
        reason: String,
    },
    /// A datagram that is not valid CoAP (RFC 7252 §3); ignored, or rejected with a Reset
    /// when it was a confirmable message with a readable header (RFC 7252 §4.2).
    Malformed {
        /// Where it came from.
        peer: SocketAddr,
        /// What was wrong with it.
        reason: String,
    },
    /// A queue-mode client's awake window closed.
    Sleeping {
        /// The endpoint.
        endpoint: String,
    },
    /// A queue-mode client sent a message and is awake.
    Awake {
        /// The endpoint.
        endpoint: String,
    },
    /// An operation finished.
    Completed {
        /// The operation's id.
        op: OpId,
        /// The endpoint.
        endpoint: String,
        /// The operation's name.
        operation: &'static str,
        /// The outcome.
        result: Result<Response, OpError>,
        /// From sending the request (or queueing it) to the outcome.
        latency: Duration,
    },
    /// A notification of an observation.
    Notification {
        /// The observation.
        observation: ObservationId,
        /// The endpoint.
        endpoint: String,
        /// The observed path (the first, for Observe-Composite).
        path: Lwm2mPath,
        /// The decoded notification (undecodable: no content, the error in `diagnostic`).
        response: Response,
        /// Observe sequence number.
        seq: u32,
    },
    /// An observation ended (cancelled, de-registered, or the client answered an error).
    ObservationEnded {
        /// The observation.
        observation: ObservationId,
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A client sent data with the Send operation (POST `/dp`, LwM2M 1.1+).
    Send {
        /// The endpoint.
        endpoint: String,
        /// The records.
        records: Vec<Record>,
        /// What the decoder noticed.
        findings: Vec<Finding>,
    },
}
