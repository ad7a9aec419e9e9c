//! Firmware Update (object 5, Core TS 1.1 Appendix E.6): the State and Update Result
//! resources and the pull download of Package URI.

use super::*;

impl Lwm2mClient {
    pub(super) fn firmware_state(&self) -> Option<u8> {
        match self.tree.get(&fw_path(3)) {
            Some(Value::Integer(s)) => u8::try_from(*s).ok(),
            _ => None,
        }
    }

    pub(super) fn set_firmware(&mut self, state: u8, result: u8) {
        for (r, v) in [(3, state), (5, result)] {
            let path = fw_path(r);
            if self.tree.get(&path) != Some(&Value::Integer(v.into())) {
                let _ = self
                    .tree
                    .set(&path, ResourceValue::Single(Value::Integer(v.into())));
                self.changed(&path);
            }
        }
        self.events
            .push_back(ClientEvent::Firmware { state, result });
    }

    /// Package URI written (Appendix E.6): start the pull, or reset on an empty URI.
    pub(super) fn firmware_uri(&mut self, now: Instant, uri: &Value) {
        for i in (0..self.outgoing.len()).rev() {
            if matches!(self.outgoing[i].1, Outgoing::Download) {
                let (id, _) = self.outgoing.swap_remove(i);
                self.endpoint.cancel_request(now, id);
            }
        }
        let Value::String(uri) = uri else {
            return self.set_firmware(fw::IDLE, fw::INVALID_URI);
        };
        if uri.is_empty() {
            return self.set_firmware(fw::IDLE, fw::INITIAL);
        }
        match parse_coap_uri(uri) {
            None => self.set_firmware(fw::IDLE, fw::INVALID_URI),
            Some(u) if u.secure => self.set_firmware(fw::IDLE, fw::UNSUPPORTED_PROTOCOL),
            Some(u) => {
                self.set_firmware(fw::DOWNLOADING, fw::INITIAL);
                let mut req = message::request(RequestType::Get, "");
                for s in &u.path {
                    req.add_option(CoapOption::UriPath, s.clone().into_bytes());
                }
                for q in &u.query {
                    message::add_query(&mut req, q);
                }
                self.send_request(now, u.addr, req, Outgoing::Download);
            }
        }
    }
}
