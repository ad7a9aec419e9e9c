//! Information Reporting (Core TS 1.1 §6.4): effective notification attributes, the
//! policies of the observations, and the notifications they produce.

use super::*;

impl Lwm2mClient {
    pub(super) fn numeric_value(&self, target: &Target) -> Option<f64> {
        match target {
            Target::Path(p) if p.depth() >= 3 => self.tree.get(p).and_then(numeric),
            _ => None,
        }
    }

    /// The effective attributes of `path`: inherited, then the Server object's default
    /// periods (1/x/2, 1/x/3) for pmin / pmax.
    pub(super) fn effective(&self, path: &Lwm2mPath) -> Attributes {
        let mut a = self.inherited(path);
        let server = self.server_instance();
        let default = |r| {
            server
                .and_then(|i| int(i, r))
                .and_then(|v| u32::try_from(v).ok())
        };
        a.pmin = a.pmin.or_else(|| default(2));
        a.pmax = a.pmax.or_else(|| default(3));
        a
    }

    /// The notification policy of an observation. An Observe-Composite takes the smallest
    /// effective pmin and pmax of its paths (Core TS 1.1 §6.4.1); a pmax that is 0 or
    /// unset means no maximum (§5.1.2) and does not count.
    pub(super) fn policy_for(&self, target: &Target) -> Policy {
        match target {
            Target::Path(p) => Policy::new(&self.effective(p)),
            Target::Composite(paths) => {
                let all: Vec<Attributes> = paths.iter().map(|p| self.effective(p)).collect();
                let a = Attributes {
                    pmin: all.iter().filter_map(|a| a.pmin).min(),
                    pmax: all
                        .iter()
                        .filter_map(|a| a.effective_pmax())
                        .filter(|m| *m > 0)
                        .min(),
                    ..Attributes::default()
                };
                Policy::new(&a)
            }
        }
    }

    pub(super) fn refresh_policies(&mut self) {
        let policies: Vec<Policy> = self
            .observations
            .iter()
            .map(|o| self.policy_for(&o.target))
            .collect();
        for (o, p) in self.observations.iter_mut().zip(policies) {
            o.policy = p;
        }
    }

    /// Something at `path` changed: observations above or below it take note.
    pub(super) fn changed(&mut self, path: &Lwm2mPath) {
        for o in &mut self.observations {
            if o.target.overlaps(path) {
                o.on_change();
            }
        }
    }

    pub(super) fn run_observations(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Rebooting { .. }) {
            return;
        }
        let mut due = Vec::new();
        for i in 0..self.observations.len() {
            let value = self.numeric_value(&self.observations[i].target);
            if self.observations[i].poll(now, value) {
                due.push(self.observations[i].id);
            }
        }
        for id in due {
            self.notify(now, id);
        }
    }

    pub(super) fn notify(&mut self, now: Instant, id: coap::ObservationId) {
        let Some(obs) = self.observations.iter().find(|o| o.id == id) else {
            return;
        };
        let (target, format) = (obs.target.clone(), obs.format);
        if self.state() == ClientState::Sleeping {
            // Queue mode (Core TS 1.1 §6.5): waking up starts with an Update.
            self.send_update(now);
        }
        self.touch_awake(now);
        let body = match &target {
            Target::Path(p) => self
                .tree
                .read(p)
                .map_err(|e| (e.coap_code(), e.to_string()))
                .and_then(|node| {
                    self.encode(format, p, &node)
                        .map_err(|e| ((5, 0), e.to_string()))
                }),
            Target::Composite(paths) => {
                content::encode_records(format, &self.composite_records(paths))
                    .map_err(|e| ((5, 0), e.to_string()))
            }
        };
        let (packet, success) = match body {
            Ok(payload) => {
                let mut p = message::response(ResponseType::Content, payload);
                p.add_option(CoapOption::ContentFormat, uint_bytes(format.code().into()));
                (p, true)
            }
            Err((code, reason)) => {
                let mut p = message::response(ResponseType::Content, reason.into_bytes());
                p.header.code = wire::class_of(code);
                (p, false)
            }
        };
        let value = self.numeric_value(&target);
        let sent = self.endpoint.notify(now, id, packet, false).is_ok();
        if sent && success {
            if let Some(o) = self.observations.iter_mut().find(|o| o.id == id) {
                o.notified(now, value);
            }
            self.events.push_back(ClientEvent::Notified {
                path: target.path(),
            });
        } else {
            self.observations.retain(|o| o.id != id);
            self.events.push_back(ClientEvent::ObservationCancelled {
                path: target.path(),
            });
        }
    }
}
