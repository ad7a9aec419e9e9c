//! Which LwM2M operation a CoAP request on the wire performs, read from its method, path
//! and options alone (Core TS 1.1 §6 for the Bootstrap, Registration and Information
//! Reporting interfaces; §8.2, table 8.2.6-1, for Device Management): the one reading the
//! server's metrics, the reports' network-usage tables and the fleet's latency clocks
//! share. The machines read requests in full ([`crate::admission::classify`], their own
//! dispatch); this is for observers that only name what went by.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType};

use crate::coap::message;

/// An LwM2M operation as a request on the wire shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// `POST /rd` (Core TS 1.1 §6.2.1).
    Register,
    /// `POST /rd/{id}` (§6.2.2).
    Update,
    /// `DELETE /rd/{id}` (§6.2.3).
    Deregister,
    /// `POST /bs?ep=…` (§6.1.3).
    BootstrapRequest,
    /// `POST /bs` without a query, from the Bootstrap Server (§6.1.7.6).
    BootstrapFinish,
    /// `GET /bspack` (Core TS 1.2 §6.1.3.1).
    BootstrapPack,
    /// `POST /dp` (§6.4.6).
    Send,
    /// `GET` with Accept: application/link-format (§6.3.3).
    Discover,
    /// `GET` with Observe 0 (§6.4.1).
    Observe,
    /// `GET` with Observe 1 (§6.4.2, RFC 7641 §3.6).
    CancelObservation,
    /// `GET` (§6.3.1).
    Read,
    /// `FETCH` with Observe 0 (§6.4.3).
    ObserveComposite,
    /// `FETCH` with Observe 1 (§6.4.4).
    CancelObserveComposite,
    /// `FETCH` (§6.3.2).
    ReadComposite,
    /// `iPATCH` (§6.3.8).
    WriteComposite,
    /// `PUT` with a query and no payload (§6.3.5).
    WriteAttributes,
    /// `PUT`, or `POST` to an instance (§6.3.3, §6.3.4).
    Write,
    /// `POST` to an object (§6.3.7).
    Create,
    /// `POST` to a resource (§6.3.6).
    Execute,
    /// `DELETE` of an object instance or, from the Bootstrap Server, a wider path (§6.3.9).
    Delete,
    /// Any other request.
    Other,
}

impl RequestKind {
    /// The operation of `request`; `None` for a response or an empty message.
    pub fn of(request: &Packet) -> Option<Self> {
        let MessageClass::Request(method) = request.header.code else {
            return None;
        };
        let path = message::uri_path(request);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let observe = message::observe_value(request);
        let has_query = request.get_option(CoapOption::UriQuery).is_some();
        use RequestKind::*;
        Some(match (method, segments.as_slice()) {
            (RequestType::Post, ["rd"]) => Register,
            (RequestType::Post, ["rd", _]) => Update,
            (RequestType::Delete, ["rd", _]) => Deregister,
            (RequestType::Post, ["bs"]) if has_query => BootstrapRequest,
            (RequestType::Post, ["bs"]) => BootstrapFinish,
            (RequestType::Get, ["bspack"]) => BootstrapPack,
            (RequestType::Post, ["dp"]) => Send,
            (RequestType::Get, _) => match observe {
                Some(0) => Observe,
                Some(1) => CancelObservation,
                _ if message::uint_option(request, CoapOption::Accept) == Some(40) => Discover,
                _ => Read,
            },
            (RequestType::Fetch, _) => match observe {
                Some(0) => ObserveComposite,
                Some(1) => CancelObserveComposite,
                _ => ReadComposite,
            },
            (RequestType::IPatch, _) => WriteComposite,
            (RequestType::Put, _) if request.payload.is_empty() && has_query => WriteAttributes,
            (RequestType::Put, _) => Write,
            (RequestType::Post, [_]) => Create,
            (RequestType::Post, [_, _]) => Write,
            (RequestType::Post, [_, _, _]) => Execute,
            (RequestType::Delete, _) => Delete,
            _ => Other,
        })
    }

    /// Its name in reports: `register`, `read-composite`, ….
    pub fn name(self) -> &'static str {
        use RequestKind::*;
        match self {
            Register => "register",
            Update => "update",
            Deregister => "deregister",
            BootstrapRequest => "bootstrap-request",
            BootstrapFinish => "bootstrap-finish",
            BootstrapPack => "bootstrap-pack",
            Send => "send",
            Discover => "discover",
            Observe => "observe",
            CancelObservation => "cancel-observation",
            Read => "read",
            ObserveComposite => "observe-composite",
            CancelObserveComposite => "cancel-observe-composite",
            ReadComposite => "read-composite",
            WriteComposite => "write-composite",
            WriteAttributes => "write-attributes",
            Write => "write",
            Create => "create",
            Execute => "execute",
            Delete => "delete",
            Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::ResponseType;

    fn request(method: RequestType, path: &str, query: &[&str]) -> Packet {
        let mut p = message::request(method, path);
        for q in query {
            message::add_query(&mut p, q);
        }
        p
    }

    #[test]
    fn each_operation_is_named_from_the_wire() {
        use RequestKind::*;
        let post = |path, q: &[&str]| RequestKind::of(&request(RequestType::Post, path, q));
        assert_eq!(post("/rd", &["ep=a"]), Some(Register));
        assert_eq!(post("/rd/x1", &[]), Some(Update));
        assert_eq!(post("/bs", &["ep=a"]), Some(BootstrapRequest));
        assert_eq!(post("/bs", &[]), Some(BootstrapFinish));
        assert_eq!(post("/dp", &[]), Some(Send));
        assert_eq!(post("/3303", &[]), Some(Create));
        assert_eq!(post("/3/0", &[]), Some(Write));
        assert_eq!(post("/3/0/4", &[]), Some(Execute));
        let delete = RequestKind::of(&request(RequestType::Delete, "/rd/x1", &[]));
        assert_eq!(delete, Some(Deregister));
        let mut observe = request(RequestType::Get, "/3/0/9", &[]);
        observe.set_observe_value(0);
        assert_eq!(RequestKind::of(&observe), Some(Observe));
        observe.set_observe_value(1);
        assert_eq!(RequestKind::of(&observe), Some(CancelObservation));
        let mut discover = request(RequestType::Get, "/3/0", &[]);
        discover.add_option(CoapOption::Accept, vec![40]);
        assert_eq!(RequestKind::of(&discover), Some(Discover));
        let mut fetch = request(RequestType::Fetch, "/", &[]);
        assert_eq!(RequestKind::of(&fetch), Some(ReadComposite));
        fetch.set_observe_value(1);
        assert_eq!(RequestKind::of(&fetch), Some(CancelObserveComposite));
        let attributes = request(RequestType::Put, "/3/0/9", &["pmin=10"]);
        assert_eq!(RequestKind::of(&attributes), Some(WriteAttributes));
        assert_eq!(WriteAttributes.name(), "write-attributes");
        let mut write = request(RequestType::Put, "/3/0/14", &[]);
        write.payload = b"+02".to_vec();
        assert_eq!(RequestKind::of(&write), Some(Write));
        let answer = message::response(ResponseType::Content, Vec::new());
        assert_eq!(RequestKind::of(&answer), None);
    }
}
