//! The Device Management and Service Enablement Interface (Core TS 1.1 §6.3): the
//! request dispatch, format negotiation, Read/Write/Create/Delete/Execute/Discover and
//! their composite forms, Write-Attributes, and the Execute-driven restarts (Reboot,
//! Factory Reset, Disable).

use super::*;

impl Lwm2mClient {
    pub(super) fn wire_format(&self, f: ContentFormat) -> ContentFormat {
        match f {
            ContentFormat::Tlv if self.config.quirks.legacy_content_formats => {
                ContentFormat::LegacyTlv
            }
            ContentFormat::OmaJson if self.config.quirks.legacy_content_formats => {
                ContentFormat::LegacyJson
            }
            f => f,
        }
    }

    pub(super) fn speaks(&self, f: ContentFormat) -> bool {
        f != ContentFormat::LinkFormat
            && self
                .config
                .supported_formats
                .iter()
                .any(|s| s.canonical() == f.canonical())
    }

    pub(super) fn request_path(packet: &Packet) -> Result<Lwm2mPath, String> {
        let segments = queries(packet, CoapOption::UriPath);
        Lwm2mPath::from_segments(&segments).map_err(|e| e.to_string())
    }

    pub(super) fn content_format(packet: &Packet) -> Option<u16> {
        uint_option(packet, CoapOption::ContentFormat).and_then(|c| u16::try_from(c).ok())
    }

    pub(super) fn accept(packet: &Packet) -> Option<u16> {
        uint_option(packet, CoapOption::Accept).and_then(|c| u16::try_from(c).ok())
    }

    pub(super) fn dm_op(&mut self, now: Instant, packet: &Packet) -> Answer {
        let path = match Self::request_path(packet) {
            Ok(p) => p,
            Err(reason) => return Answer::error("request", Lwm2mPath::Root, (4, 4), reason),
        };
        if path.object_id() == Some(ObjectId(0)) {
            return Answer::error(
                "request",
                path,
                (4, 1),
                "the Security object is only accessible to the Bootstrap Server (Core TS 1.1 Appendix E.1)",
            );
        }
        let MessageClass::Request(method) = packet.header.code else {
            return Answer::error("request", path, NOT_ALLOWED, "not a request");
        };
        let accept = Self::accept(packet);
        let observe = message::observe_value(packet) == Some(0);
        match method {
            RequestType::Get if accept == Some(ContentFormat::LinkFormat.code()) => {
                match self.discover(&path) {
                    Ok(entries) => Answer::new("discover", path, (2, 5)).body(
                        ContentFormat::LinkFormat,
                        discover_links(&entries).into_bytes(),
                    ),
                    Err(e) => Answer::dm("discover", path, e),
                }
            }
            RequestType::Get => {
                let mut a = self.read_op("read", &path, accept);
                if observe && a.code.0 == 2 {
                    a.operation = "observe";
                    a.observe = Some(Target::Path(path));
                }
                a
            }
            RequestType::Fetch => self.composite_read_op(packet, &path, accept, observe),
            RequestType::Put
                if packet.payload.is_empty()
                    && packet.get_option(CoapOption::UriQuery).is_some() =>
            {
                self.write_attributes_op(packet, &path)
            }
            RequestType::Put => self.write_op(now, packet, &path, WriteMode::Replace),
            RequestType::Post => match path {
                Lwm2mPath::Object(o) => self.create_op(packet, o),
                Lwm2mPath::Instance(..) => {
                    self.write_op(now, packet, &path, WriteMode::PartialUpdate)
                }
                Lwm2mPath::Resource(..) => self.execute_op(now, packet, &path),
                _ => Answer::error(
                    "request",
                    path,
                    NOT_ALLOWED,
                    "POST needs /O, /O/I or /O/I/R",
                ),
            },
            RequestType::Delete => self.delete_op(&path),
            RequestType::IPatch => self.composite_write_op(packet, &path),
            _ => Answer::error("request", path, NOT_ALLOWED, "method not used by LwM2M"),
        }
    }

    pub(super) fn encode(
        &self,
        f: ContentFormat,
        path: &Lwm2mPath,
        node: &Node,
    ) -> Result<Vec<u8>, CodecError> {
        let bytes = content::encode(f, path, node)?;
        if f.canonical() == ContentFormat::Tlv && self.config.quirks.non_minimal_tlv_integers {
            return Ok(wire::widen_tlv_integers(&bytes, path, node));
        }
        Ok(bytes)
    }

    /// The response format and body: Accept if given (and spoken, else 4.06), else the
    /// preferred format, else the first supported format that can carry the node.
    pub(super) fn encode_response(
        &self,
        path: &Lwm2mPath,
        node: &Node,
        accept: Option<u16>,
    ) -> Result<(ContentFormat, Vec<u8>), (Code, String)> {
        let accept = accept.filter(|_| !self.config.quirks.ignore_accept);
        if let Some(code) = accept {
            let f = ContentFormat::from_code(code)
                .filter(|f| self.speaks(*f))
                .ok_or_else(|| {
                    (
                        NOT_ACCEPTABLE,
                        format!("Accept {code}: format not supported"),
                    )
                })?;
            let f = if self.config.quirks.legacy_content_formats {
                self.wire_format(f.canonical())
            } else {
                f
            };
            return self
                .encode(f, path, node)
                .map(|b| (f, b))
                .map_err(|e| (NOT_ACCEPTABLE, e.to_string()));
        }
        std::iter::once(self.config.preferred_format)
            .chain(self.config.supported_formats.iter().copied())
            .filter(|f| *f != ContentFormat::LinkFormat)
            .map(|f| self.wire_format(f))
            .find_map(|f| self.encode(f, path, node).ok().map(|b| (f, b)))
            .ok_or_else(|| {
                (
                    NOT_ACCEPTABLE,
                    format!("no supported format can carry {}", node.kind()),
                )
            })
    }

    /// Decodes a request payload at `path` (4.15 for a format not spoken, 4.00 for bytes
    /// that do not decode). Without Content-Format a single value is read as text/plain.
    pub(super) fn decode_request(
        &self,
        packet: &Packet,
        path: &Lwm2mPath,
    ) -> Result<Node, (Code, String)> {
        let f = match Self::content_format(packet) {
            Some(code) => ContentFormat::from_code(code)
                .filter(|f| self.speaks(*f))
                .ok_or_else(|| {
                    (
                        UNSUPPORTED_FORMAT,
                        format!("Content-Format {code} not supported"),
                    )
                })?,
            None if path.depth() >= 3 => ContentFormat::Text,
            None => return Err((UNSUPPORTED_FORMAT, "no Content-Format".into())),
        };
        content::decode(f, &packet.payload, path, &self.tree)
            .map(|d| d.content)
            .map_err(|e| (BAD_REQUEST, e.to_string()))
    }

    /// A SenML format for composite operations: `wanted` if spoken, else the preferred or
    /// first supported SenML format.
    pub(super) fn senml_format(&self, wanted: Option<ContentFormat>) -> Option<ContentFormat> {
        let senml = |f: &ContentFormat| {
            matches!(f, ContentFormat::SenmlJson | ContentFormat::SenmlCbor) && self.speaks(*f)
        };
        match wanted {
            Some(f) => Some(f).filter(senml),
            None => std::iter::once(self.config.preferred_format)
                .chain(self.config.supported_formats.iter().copied())
                .find(senml),
        }
    }

    /// The format of a composite answer asked in `wanted`: a spoken SenML format, or LwM2M
    /// CBOR for a 1.2 client that speaks it (Core TS 1.2 §7.4.6: its nested maps hold
    /// the values of any set of paths).
    fn composite_output(&self, wanted: ContentFormat) -> Option<ContentFormat> {
        let lwm2m_cbor = wanted == ContentFormat::Lwm2mCbor
            && self.config.version >= Lwm2mVersion::V1_2
            && self.speaks(wanted);
        if lwm2m_cbor {
            Some(wanted)
        } else {
            self.senml_format(Some(wanted))
        }
    }

    /// The readable values at `paths` (paths that cannot be read are left out).
    pub(super) fn composite_records(&self, paths: &[Lwm2mPath]) -> Vec<Record> {
        let mut out = Vec::new();
        for p in paths {
            let objects: Vec<Lwm2mPath> = match p {
                Lwm2mPath::Root => self
                    .tree
                    .object_ids()
                    .filter(|o| *o != ObjectId(0))
                    .map(Lwm2mPath::Object)
                    .collect(),
                p => vec![*p],
            };
            for q in objects {
                if let Ok(node) = self.tree.read(&q) {
                    out.extend(node.to_records(&q));
                }
            }
        }
        out
    }

    pub(super) fn read_op(
        &self,
        operation: &'static str,
        path: &Lwm2mPath,
        accept: Option<u16>,
    ) -> Answer {
        match self.tree.read(path) {
            Err(e) => Answer::dm(operation, *path, e),
            Ok(node) => match self.encode_response(path, &node, accept) {
                Ok((f, bytes)) => Answer::new(operation, *path, (2, 5)).body(f, bytes),
                Err((code, reason)) => Answer::error(operation, *path, code, reason),
            },
        }
    }

    /// The format and the records of a composite request (FETCH or iPATCH `method`) on `/`
    /// (Core TS 1.1 §6.3), or the refusal: 4.05 on another path, 4.15 unless SenML JSON or
    /// CBOR, 4.00 when the payload does not decode.
    fn composite_request(
        &self,
        op: &'static str,
        method: &str,
        packet: &Packet,
        path: &Lwm2mPath,
    ) -> Result<(ContentFormat, Vec<Record>), Answer> {
        if *path != Lwm2mPath::Root {
            let reason = format!("{method} targets / (Core TS 1.1 §6.3)");
            return Err(Answer::error(op, *path, NOT_ALLOWED, reason));
        }
        let input = Self::content_format(packet)
            .and_then(ContentFormat::from_code)
            .and_then(|f| self.senml_format(Some(f)));
        let Some(input) = input else {
            let reason = format!("{method} needs SenML JSON or CBOR");
            return Err(Answer::error(op, *path, UNSUPPORTED_FORMAT, reason));
        };
        match content::decode_records(input, &packet.payload, &self.tree) {
            Ok(d) => Ok((input, d.content)),
            Err(e) => Err(Answer::error(op, *path, BAD_REQUEST, e)),
        }
    }

    pub(super) fn composite_read_op(
        &self,
        packet: &Packet,
        path: &Lwm2mPath,
        accept: Option<u16>,
        observe: bool,
    ) -> Answer {
        let op = if observe {
            "observe-composite"
        } else {
            "read-composite"
        };
        let (input, records) = match self.composite_request(op, "FETCH", packet, path) {
            Ok(request) => request,
            Err(refused) => return refused,
        };
        let output = match accept.filter(|_| !self.config.quirks.ignore_accept) {
            None => Some(input),
            Some(code) => ContentFormat::from_code(code).and_then(|f| self.composite_output(f)),
        };
        let Some(output) = output else {
            return Answer::error(
                op,
                *path,
                NOT_ACCEPTABLE,
                "Accept must be SenML JSON or CBOR (or LwM2M CBOR from 1.2)",
            );
        };
        let paths: Vec<Lwm2mPath> = records.iter().map(|r| r.path).collect();
        let values = self.composite_records(&paths);
        if values.is_empty() && !paths.is_empty() {
            return Answer::error(op, *path, (4, 4), "none of the paths exists");
        }
        match content::encode_records(output, &values) {
            Ok(bytes) => {
                let mut a = Answer::new(op, *path, (2, 5)).body(output, bytes);
                if observe {
                    a.observe = Some(Target::Composite(paths));
                }
                a
            }
            Err(e) => Answer::error(op, *path, (5, 0), e),
        }
    }

    pub(super) fn composite_write_op(&mut self, packet: &Packet, path: &Lwm2mPath) -> Answer {
        let op = "write-composite";
        let records = match self.composite_request(op, "iPATCH", packet, path) {
            Ok((_, records)) => records,
            Err(refused) => return refused,
        };
        for r in &records {
            let node = match (r.path, &r.value) {
                (Lwm2mPath::Resource(..), Some(v)) => {
                    Node::Resource(ResourceValue::Single(v.clone()))
                }
                (Lwm2mPath::ResourceInstance(..), Some(v)) => Node::ResourceInstance(v.clone()),
                _ => {
                    return Answer::error(
                        op,
                        r.path,
                        BAD_REQUEST,
                        "a value for a resource is needed",
                    );
                }
            };
            if r.path.object_id() == Some(ObjectId(0)) {
                return Answer::error(op, r.path, (4, 1), "the Security object is not writable");
            }
            if let Err(e) = self.tree.write(&r.path, &node, WriteMode::Replace, false) {
                return Answer::dm(op, r.path, e);
            }
            self.changed(&r.path);
        }
        let server = records
            .iter()
            .any(|r| r.path.object_id() == Some(ObjectId(1)));
        let after = self.after_write(server);
        Answer::new(op, *path, (2, 4)).then(after)
    }

    pub(super) fn write_op(
        &mut self,
        now: Instant,
        packet: &Packet,
        path: &Lwm2mPath,
        mode: WriteMode,
    ) -> Answer {
        let op = "write";
        if path.depth() < 2 {
            return Answer::error(
                op,
                *path,
                NOT_ALLOWED,
                "Write targets an instance or a resource",
            );
        }
        let node = match self.decode_request(packet, path) {
            Ok(n) => n,
            Err((code, reason)) => return Answer::error(op, *path, code, reason),
        };
        let (package, uri) = firmware_values(path, &node);
        let busy = matches!(self.firmware_state(), Some(fw::DOWNLOADING | fw::UPDATING));
        if busy && package.or(uri).is_some_and(|v| !is_empty_value(v)) {
            return Answer::error(op, *path, NOT_ALLOWED, "a firmware update is in progress");
        }
        if let Err(e) = self.tree.write(path, &node, mode, false) {
            return Answer::dm(op, *path, e);
        }
        self.changed(path);
        let (package, uri) = firmware_values(path, &node);
        let (package_empty, uri) = (package.map(is_empty_value), uri.cloned());
        if let Some(empty) = package_empty {
            let _ = self.tree.set(
                &fw_path(0),
                ResourceValue::Single(Value::Opaque(Vec::new())),
            );
            if empty {
                self.set_firmware(fw::IDLE, fw::INITIAL);
            } else {
                self.set_firmware(fw::DOWNLOADED, fw::INITIAL);
            }
        }
        if let Some(uri) = uri {
            self.firmware_uri(now, &uri);
        }
        let after = self.after_write(path.object_id() == Some(ObjectId(1)));
        Answer::new(op, *path, (2, 4)).then(after)
    }

    pub(super) fn write_attributes_op(&mut self, packet: &Packet, path: &Lwm2mPath) -> Answer {
        let op = "write-attributes";
        let query = queries(packet, CoapOption::UriQuery);
        let update = match AttributeUpdate::from_query(&query) {
            Ok(u) => u,
            Err(e) => return Answer::error(op, *path, BAD_REQUEST, e),
        };
        if *path == Lwm2mPath::Root {
            return Answer::error(op, *path, NOT_ALLOWED, "no attributes on the root");
        }
        if !self.path_exists(path) {
            return Answer::error(op, *path, (4, 4), format!("{path} not found"));
        }
        let next = update.apply(&self.attributes(path));
        if next.is_empty() {
            self.attributes.remove(path);
        } else {
            self.attributes.insert(*path, next);
        }
        self.refresh_policies();
        Answer::new(op, *path, (2, 4))
    }

    pub(super) fn create_op(&mut self, packet: &Packet, o: ObjectId) -> Answer {
        let op = "create";
        let path = Lwm2mPath::Object(o);
        if !self.tree.object_ids().any(|x| x == o) {
            return Answer::error(op, path, (4, 4), format!("{path} not found"));
        }
        let (id, inst) = if packet.payload.is_empty() {
            (None, Instance::new())
        } else {
            match self.decode_request(packet, &path) {
                Ok(Node::Object(m)) if m.len() <= 1 => match m.into_iter().next() {
                    Some((i, inst)) => (Some(i), inst),
                    None => (None, Instance::new()),
                },
                Ok(_) => {
                    return Answer::error(op, path, BAD_REQUEST, "Create carries one instance");
                }
                Err((BAD_REQUEST, reason)) => {
                    // Core TS 1.0 §5.4.5: the payload may hold the resources only.
                    match self.decode_request(packet, &Lwm2mPath::Instance(o, InstanceId(0))) {
                        Ok(Node::Instance(inst)) => (None, inst),
                        _ => return Answer::error(op, path, BAD_REQUEST, reason),
                    }
                }
                Err((code, reason)) => return Answer::error(op, path, code, reason),
            }
        };
        match self.tree.create(o, id, inst) {
            Ok(i) => {
                let created = Lwm2mPath::Instance(o, i);
                self.changed(&created);
                let mut a = Answer::new(op, path, (2, 1)).then(After::Update);
                a.location = Some(created);
                a
            }
            Err(e) => Answer::dm(op, path, e),
        }
    }

    pub(super) fn delete_op(&mut self, path: &Lwm2mPath) -> Answer {
        let op = "delete";
        if let Some(def) = path.object_id().and_then(|o| self.tree.definition(o))
            && def.mandatory
            && !def.multiple
        {
            return Answer::error(
                op,
                *path,
                NOT_ALLOWED,
                "a mandatory single-instance object keeps its instance",
            );
        }
        match self.tree.delete(path) {
            Ok(()) => {
                self.changed(path);
                Answer::new(op, *path, (2, 2)).then(After::Update)
            }
            Err(e) => Answer::dm(op, *path, e),
        }
    }

    pub(super) fn execute_op(&mut self, now: Instant, packet: &Packet, path: &Lwm2mPath) -> Answer {
        let op = "execute";
        if let Err(e) = self.tree.check_execute(path) {
            return Answer::dm(op, *path, e);
        }
        let arguments = match std::str::from_utf8(&packet.payload)
            .map_err(|e| e.to_string())
            .and_then(|s| parse_execute_args(s).map_err(|e| e.to_string()))
        {
            Ok(a) => a,
            Err(reason) => return Answer::error(op, *path, BAD_REQUEST, reason),
        };
        let after = match path.ids().as_slice() {
            [3, 0, 4] => After::Restart(Restart::Reboot),
            [3, 0, 5] => After::Restart(Restart::FactoryReset),
            [1, i, 4] => After::Restart(Restart::Disable(self.disable_timeout(InstanceId(*i)))),
            [1, _, 9] => match self.config.bootstrap_server {
                Some(bs) => After::BootstrapRequest(bs),
                None => {
                    return Answer::error(
                        op,
                        *path,
                        NOT_ALLOWED,
                        "no Bootstrap-Server account to request a bootstrap from",
                    );
                }
            },
            [1, _, 8] => After::Update,
            [5, 0, 2] => {
                if self.firmware_state() != Some(fw::DOWNLOADED) {
                    return Answer::error(
                        op,
                        *path,
                        NOT_ALLOWED,
                        "Update is only executable in State 2 Downloaded (Appendix E.6)",
                    );
                }
                self.set_firmware(fw::UPDATING, fw::INITIAL);
                self.firmware_done = Some(now + FIRMWARE_UPDATE_DURATION);
                After::Nothing
            }
            _ => After::Nothing,
        };
        self.events.push_back(ClientEvent::Executed {
            path: *path,
            arguments,
        });
        Answer::new(op, *path, (2, 4)).then(after)
    }

    pub(super) fn path_exists(&self, path: &Lwm2mPath) -> bool {
        match *path {
            Lwm2mPath::Root => true,
            Lwm2mPath::Object(o) => self.tree.object_ids().any(|x| x == o),
            Lwm2mPath::Instance(o, i) => self.tree.instance(o, i).is_some(),
            Lwm2mPath::Resource(o, i, r) => self.resource_ids(o, i).contains(&r),
            Lwm2mPath::ResourceInstance(..) => self.tree.get(path).is_some(),
        }
    }

    /// The resources of an instance: those with a value and the executable ones.
    pub(super) fn resource_ids(&self, o: ObjectId, i: InstanceId) -> BTreeSet<ResourceId> {
        let Some(inst) = self.tree.instance(o, i) else {
            return BTreeSet::new();
        };
        let mut ids: BTreeSet<ResourceId> = inst.keys().copied().collect();
        if let Some(def) = self.tree.definition(o) {
            ids.extend(
                def.resources
                    .values()
                    .filter(|r| r.operations.executable())
                    .map(|r| r.id),
            );
        }
        ids
    }

    /// Attributes at `path` inherited from the levels above (Core TS 1.1 §5.1.2).
    pub(super) fn inherited(&self, path: &Lwm2mPath) -> Attributes {
        let mut a = Attributes::default();
        let mut at = Some(*path);
        while let Some(p) = at {
            if let Some(x) = self.attributes.get(&p) {
                a = a.inherit(x);
            }
            at = p.parent();
        }
        a
    }

    /// Discover (Core TS 1.1 §6.3, "Discover"): the path with its attributes and what lies
    /// below it; a resource (instance) shows the attributes inherited from all levels. On a
    /// multiple resource (1.1+) its instances follow with their own attributes (ETS
    /// int-261: `</3/0/11>;dim=1,</3/0/11/0>`).
    pub(super) fn discover(&self, path: &Lwm2mPath) -> Result<Vec<DiscoverEntry>, DmError> {
        if !self.path_exists(path) {
            return Err(DmError::NotFound { path: *path });
        }
        let entry = |p: Lwm2mPath, attributes: Attributes| {
            let mut e = DiscoverEntry::new(p);
            e.attributes = attributes;
            e.dim = self
                .tree
                .dim(&p)
                .map(|d| u16::try_from(d).unwrap_or(u16::MAX));
            e
        };
        let resources = |out: &mut Vec<DiscoverEntry>, o: ObjectId, i: InstanceId| {
            for r in self.resource_ids(o, i) {
                let p = Lwm2mPath::Resource(o, i, r);
                out.push(entry(p, self.attributes(&p)));
            }
        };
        let mut out = Vec::new();
        match *path {
            Lwm2mPath::Root => {
                return Err(DmError::BadRequest {
                    path: *path,
                    reason: "Discover needs an object path".into(),
                });
            }
            Lwm2mPath::Object(o) => {
                let mut e = entry(*path, self.attributes(path));
                e.ver = self.object_version(o);
                out.push(e);
                for i in self.tree.instance_ids(o) {
                    let p = Lwm2mPath::Instance(o, i);
                    out.push(entry(p, self.attributes(&p)));
                    resources(&mut out, o, i);
                }
            }
            Lwm2mPath::Instance(o, i) => {
                out.push(entry(*path, self.attributes(path)));
                resources(&mut out, o, i);
            }
            Lwm2mPath::Resource(o, i, r) => {
                out.push(entry(*path, self.inherited(path)));
                // 1.1+: the resource instances follow with their own attributes
                if self.config.version != Lwm2mVersion::V1_0
                    && let Some(ResourceValue::Multiple(m)) =
                        self.tree.instance(o, i).and_then(|inst| inst.get(&r))
                {
                    for ri in m.keys() {
                        let p = Lwm2mPath::ResourceInstance(o, i, r, *ri);
                        out.push(entry(p, self.attributes(&p)));
                    }
                }
            }
            Lwm2mPath::ResourceInstance(..) => out.push(entry(*path, self.inherited(path))),
        }
        Ok(out)
    }

    /// The Disable Timeout of Server instance `i` (1/i/5; 86,400 s when unset, Core TS 1.1
    /// Appendix E.2).
    pub(super) fn disable_timeout(&self, i: InstanceId) -> Duration {
        let secs = match self
            .tree
            .get(&Lwm2mPath::Resource(ObjectId(1), i, ResourceId(5)))
        {
            Some(Value::Integer(v)) => u64::try_from(*v).unwrap_or(0),
            Some(Value::UnsignedInteger(v)) => *v,
            _ => 86_400,
        };
        Duration::from_secs(secs)
    }

    /// Reboot, Factory Reset and Disable: a De-register (not awaited), then silence.
    pub(super) fn reboot(&mut self, now: Instant, kind: Restart) {
        let factory = kind == Restart::FactoryReset;
        match kind {
            Restart::FactoryReset => {
                self.tree = self.factory.clone();
                self.attributes.clear();
                self.events.push_back(ClientEvent::FactoryReset);
            }
            Restart::Reboot => self.events.push_back(ClientEvent::Rebooting),
            Restart::Disable(duration) => self.events.push_back(ClientEvent::Disabled { duration }),
        }
        if let (Some(server), Some(session)) = (&self.server, self.session()) {
            let req = message::request(RequestType::Delete, &session.registration.location);
            let _ = self.endpoint.send_request(now, server.addr, req);
        }
        self.collect_transmits();
        self.reboots += 1;
        let config = coap::Config {
            seed: self.config.coap.seed.wrapping_add(self.reboots),
            ..self.config.coap.clone()
        };
        let old = std::mem::replace(&mut self.endpoint, Endpoint::new(config));
        add_counters(&mut self.past_counters, old.counters());
        self.forget_registration();
        self.outgoing.clear();
        self.delayed.clear();
        if matches!(kind, Restart::Disable(_)) {
            // Disabling the server account is no reboot: the device keeps its state.
        } else if self.firmware_done.take().is_some() {
            // The reboot completes the firmware update in progress.
            self.set_firmware(fw::IDLE, fw::SUCCESS);
        } else if self.firmware_state() == Some(fw::DOWNLOADING) {
            self.set_firmware(fw::IDLE, fw::CONNECTION_LOST);
        }
        if factory {
            self.server = None;
        }
        let silence = match kind {
            Restart::Disable(d) => d,
            _ => self.config.reboot_silence,
        };
        self.phase = Phase::Rebooting {
            until: now + silence,
        };
    }
}
