//! Client-initiated bootstrap and the Bootstrap Interface (Core TS 1.1 §5.2): the
//! Bootstrap-Request, the Bootstrap Server's Delete, Write, Discover, Read and Finish.

use super::*;

impl Lwm2mClient {
    pub(super) fn bootstrap(&mut self, now: Instant, bs: SocketAddr) {
        let previous = self.forget_session();
        self.phase = Phase::Bootstrapping { previous };
        let mut req = message::request(RequestType::Post, "/bs");
        message::add_query(&mut req, &format!("ep={}", self.config.endpoint));
        if self.config.version != Lwm2mVersion::V1_0 {
            let f = self.wire_format(self.config.preferred_format);
            message::add_query(&mut req, &format!("pct={}", f.code()));
        }
        self.send_request(now, bs, req, Outgoing::Bootstrap);
    }

    pub(super) fn bootstrap_op(&mut self, now: Instant, packet: &Packet) -> Answer {
        let MessageClass::Request(method) = packet.header.code else {
            return Answer::error("bootstrap", Lwm2mPath::Root, NOT_ALLOWED, "not a request");
        };
        if method == RequestType::Post && queries(packet, CoapOption::UriPath) == ["bs"] {
            let op = "bootstrap-finish";
            return match self.tree_account() {
                Some(Ok(_)) => Answer::new(op, Lwm2mPath::Root, (2, 4)).then(After::Bootstrapped),
                Some(Err(reason)) => Answer::error(op, Lwm2mPath::Root, NOT_ACCEPTABLE, reason),
                None => Answer::error(
                    op,
                    Lwm2mPath::Root,
                    NOT_ACCEPTABLE,
                    "no LwM2M Server account was written (Core TS 1.1 §5.2.7.6)",
                ),
            };
        }
        let path = match Self::request_path(packet) {
            Ok(p) => p,
            Err(reason) => return Answer::error("bootstrap", Lwm2mPath::Root, BAD_REQUEST, reason),
        };
        let v10 = self.config.version == Lwm2mVersion::V1_0;
        match method {
            RequestType::Delete => match self.tree.bootstrap_delete(&path) {
                Ok(()) => {
                    self.changed(&path);
                    Answer::new("bootstrap-delete", path, (2, 2))
                }
                Err(e) => Answer::dm("bootstrap-delete", path, e),
            },
            RequestType::Put => {
                let op = "bootstrap-write";
                if path == Lwm2mPath::Root {
                    return Answer::error(
                        op,
                        path,
                        BAD_REQUEST,
                        "Bootstrap-Write needs an object path",
                    );
                }
                let node = match self.decode_request(packet, &path) {
                    Ok(n) => n,
                    Err((code, reason)) => return Answer::error(op, path, code, reason),
                };
                match self.tree.write(&path, &node, WriteMode::Replace, true) {
                    Ok(()) => {
                        self.changed(&path);
                        let _ = now;
                        Answer::new(op, path, (2, 4))
                    }
                    Err(e) => Answer::dm(op, path, e),
                }
            }
            RequestType::Get if Self::accept(packet) == Some(ContentFormat::LinkFormat.code()) => {
                let op = "bootstrap-discover";
                match self.bootstrap_discover(&path) {
                    Ok(entries) => Answer::new(op, path, (2, 5)).body(
                        ContentFormat::LinkFormat,
                        discover_links(&entries).into_bytes(),
                    ),
                    Err(e) => Answer::dm(op, path, e),
                }
            }
            RequestType::Get
                if !v10 && matches!(path.object_id(), Some(ObjectId(1) | ObjectId(2))) =>
            {
                self.read_op("bootstrap-read", &path, Self::accept(packet))
            }
            _ => Answer::error(
                "bootstrap",
                path,
                NOT_ALLOWED,
                "not a Bootstrap operation (Core TS 1.1 §5.2.7)",
            ),
        }
    }

    /// Bootstrap-Discover (Core TS 1.1 §5.2.7.3).
    pub(super) fn bootstrap_discover(
        &self,
        path: &Lwm2mPath,
    ) -> Result<Vec<DiscoverEntry>, DmError> {
        let objects: Vec<ObjectId> = match *path {
            Lwm2mPath::Root => self.tree.object_ids().collect(),
            Lwm2mPath::Object(o) if self.tree.object_ids().any(|x| x == o) => vec![o],
            Lwm2mPath::Object(_) => return Err(DmError::NotFound { path: *path }),
            _ => {
                return Err(DmError::BadRequest {
                    path: *path,
                    reason: "Bootstrap-Discover targets / or /O".into(),
                });
            }
        };
        let mut out = Vec::new();
        if *path == Lwm2mPath::Root {
            let mut root = DiscoverEntry::new(Lwm2mPath::Root);
            root.other
                .push(LinkParam::new("lwm2m", self.config.version.as_str()));
            out.push(root);
        }
        for o in objects {
            let ver = self.object_version(o);
            let ids = self.tree.instance_ids(o);
            if ids.is_empty() || ver.is_some() {
                let mut e = DiscoverEntry::new(Lwm2mPath::Object(o));
                e.ver = ver;
                out.push(e);
            }
            for i in ids {
                let mut e = DiscoverEntry::new(Lwm2mPath::Instance(o, i));
                if let Some(inst) = self.tree.instance(o, i) {
                    let ssid = |r| int(inst, r).and_then(|v| u16::try_from(v).ok());
                    match o.0 {
                        0 => {
                            e.ssid = ssid(10);
                            e.uri = text(inst, 0).map(str::to_owned);
                        }
                        1 => e.ssid = ssid(0),
                        _ => {}
                    }
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    pub(super) fn bootstrap_finished(&mut self, now: Instant) {
        self.events.push_back(ClientEvent::Bootstrapped);
        match self.tree_account() {
            Some(Ok(account)) => {
                self.server = Some(account);
                self.register(now);
            }
            Some(Err(reason)) => self.fail_state("bootstrap", reason),
            None => self.fail_state("bootstrap", "no server account".into()),
        }
    }
}
