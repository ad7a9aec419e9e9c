//! Registration with the LwM2M Server (Core TS 1.1 §6.2): which account the tree names,
//! the Register and Update requests and their link lists, and when an Update is due.

use super::*;

impl Lwm2mClient {
    /// The LwM2M Server account in the Security object ([`ObjectTree::server_account`]):
    /// its address and Short Server ID (/0/x/10).
    pub(super) fn tree_account(&self) -> Option<Result<ServerAccount, String>> {
        let (_, account) = self.tree.server_account()?;
        let uri = crate::client::tree::account_uri(account)?;
        Some(match parse_coap_uri(uri) {
            Some(parsed) => Ok(ServerAccount {
                addr: parsed.addr,
                ssid: int(account, 10).and_then(|v| u16::try_from(v).ok()),
            }),
            None => Err(format!("server URI {uri:?} is not coap(s)://IP[:port]")),
        })
    }

    /// The Server object instance of the current server (matching Short Server ID, or the
    /// first one).
    pub(super) fn server_instance(&self) -> Option<&Instance> {
        let ssid = self.server.as_ref().and_then(|s| s.ssid);
        let mut ids = self.tree.instance_ids(ObjectId(1)).into_iter();
        let id = ids.find(|i| {
            ssid.is_none_or(|s| {
                self.tree
                    .instance(ObjectId(1), *i)
                    .and_then(|inst| int(inst, 0))
                    == Some(i64::from(s))
            })
        })?;
        self.tree.instance(ObjectId(1), id)
    }

    pub(super) fn object_version(&self, o: ObjectId) -> Option<String> {
        if self.config.version == Lwm2mVersion::V1_0 {
            return None;
        }
        self.tree
            .definition(o)
            .map(|d| d.version.clone())
            .filter(|v| v != "1.0")
    }

    pub(super) fn registration_links(&self) -> String {
        let mut reg = RegistrationLinks::default();
        if self.config.version != Lwm2mVersion::V1_0 || self.config.quirks.legacy_content_formats {
            let f = self.wire_format(self.config.preferred_format);
            reg.content_formats = vec![f.code()];
        }
        for o in self.tree.object_ids() {
            if o == ObjectId(0) || o == ObjectId(21) {
                continue; // Security and OSCORE are not registered (Core TS 1.1 §6.2.1)
            }
            reg.objects.insert(
                o,
                ObjectLinkInfo {
                    version: self.object_version(o),
                    instances: self.tree.instance_ids(o).into_iter().collect(),
                },
            );
        }
        reg.to_string()
    }

    pub(super) fn reg_params(&self) -> RegParams {
        let inst = self.server_instance();
        let lifetime = inst
            .and_then(|i| int(i, 1))
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(self.config.lifetime);
        let raw = inst
            .and_then(|i| text(i, 7))
            .unwrap_or(&self.config.binding);
        let queue = self.config.queue_mode || raw.contains('Q');
        let mut binding: String = raw.chars().filter(|c| *c != 'Q').collect();
        if binding.is_empty() {
            binding.push('U');
        }
        RegParams {
            lifetime,
            binding,
            queue,
            links: self.registration_links(),
        }
    }

    /// `b=` and `Q` (Core TS 1.1 §6.2.1; 1.0 writes queue mode as `b=UQ`).
    pub(super) fn add_binding(&self, req: &mut Packet, p: &RegParams) {
        let legacy =
            self.config.version == Lwm2mVersion::V1_0 || self.config.quirks.legacy_queue_binding;
        if p.queue && legacy {
            message::add_query(req, &format!("b={}Q", p.binding));
        } else {
            message::add_query(req, &format!("b={}", p.binding));
            if p.queue {
                message::add_query(req, "Q");
            }
        }
    }

    /// Drops the registration, its timers and observations; returns the registration.
    pub(super) fn forget_registration(&mut self) -> Option<Session> {
        self.observations.clear();
        self.forget_session()
    }

    pub(super) fn register(&mut self, now: Instant) {
        let Some(addr) = self.server.as_ref().map(|s| s.addr) else {
            return self.fail_state("register", "no LwM2M Server".into());
        };
        for i in (0..self.outgoing.len()).rev() {
            if matches!(
                self.outgoing[i].1,
                Outgoing::Register(_) | Outgoing::Update(_)
            ) {
                let (id, _) = self.outgoing.swap_remove(i);
                self.endpoint.cancel_request(now, id);
            }
        }
        self.forget_registration();
        self.phase = Phase::Registering;
        let p = self.reg_params();
        let mut req = message::request(RequestType::Post, "/rd");
        message::add_query(&mut req, &format!("ep={}", self.config.endpoint));
        message::add_query(&mut req, &format!("lt={}", p.lifetime));
        if !self.config.quirks.no_lwm2m_version {
            message::add_query(&mut req, &format!("lwm2m={}", self.config.version));
        }
        self.add_binding(&mut req, &p);
        req.add_option(
            CoapOption::ContentFormat,
            uint_bytes(ContentFormat::LinkFormat.code().into()),
        );
        req.payload = p.links.clone().into_bytes();
        self.send_request(now, addr, req, Outgoing::Register(p));
    }

    pub(super) fn send_update(&mut self, now: Instant) {
        let (Some(server), Some(session)) = (&self.server, self.session()) else {
            return;
        };
        let reg = &session.registration;
        if self
            .outgoing
            .iter()
            .any(|(_, o)| matches!(o, Outgoing::Register(_) | Outgoing::Update(_)))
        {
            return;
        }
        let addr = server.addr;
        let p = self.reg_params();
        let mut req = message::request(RequestType::Post, &reg.location);
        if p.lifetime != reg.params.lifetime {
            message::add_query(&mut req, &format!("lt={}", p.lifetime));
        }
        if p.binding != reg.params.binding || p.queue != reg.params.queue {
            self.add_binding(&mut req, &p);
        }
        if p.links != reg.params.links {
            req.add_option(
                CoapOption::ContentFormat,
                uint_bytes(ContentFormat::LinkFormat.code().into()),
            );
            req.payload = p.links.clone().into_bytes();
        }
        if let Some(session) = self.session_mut() {
            session.next_update = None;
        }
        self.touch_awake(now);
        self.send_request(now, addr, req, Outgoing::Update(p));
    }

    pub(super) fn schedule_update(&mut self, now: Instant, lifetime: u32) {
        let lt = secs(lifetime);
        let margin = self.config.update_margin.max(Duration::from_secs(1));
        let wait = if lt > margin { lt - margin } else { lt / 2 };
        if let Some(session) = self.session_mut() {
            session.next_update = Some(now + wait);
        }
    }

    /// What follows a successful Write or Write-Composite; `server` says whether it wrote
    /// to the Server object. The notification periods may follow new defaults (1/x/2,
    /// 1/x/3), and a new lifetime (1/x/1) or binding (1/x/7) goes to the server in an
    /// Update (Core TS 1.1 §6.2.2).
    pub(super) fn after_write(&mut self, server: bool) -> After {
        if !server {
            return After::Nothing;
        }
        self.refresh_policies();
        if self.registration_outdated() {
            After::Update
        } else {
            After::Nothing
        }
    }

    /// Whether the lifetime or binding now in the Server object differs from the one the
    /// server last accepted (Core TS 1.1 §6.2.2: the Update carries the changed ones).
    pub(super) fn registration_outdated(&self) -> bool {
        self.session().is_some_and(|session| {
            let reg = &session.registration;
            let p = self.reg_params();
            p.lifetime != reg.params.lifetime
                || p.binding != reg.params.binding
                || p.queue != reg.params.queue
        })
    }
}
