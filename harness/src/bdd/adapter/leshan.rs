//! `leshan+http://HOST:PORT`: the Eclipse Leshan 2.x demo server's REST API and events.

use std::sync::Arc;

use lwm2m_proto::registry::Registry;

/// The Leshan demo server as a server adapter.
#[derive(Debug)]
pub struct Leshan;

impl Leshan {
    /// Connects to the demo server at `rest`.
    pub fn connect(
        rest: &str,
        registry: Arc<Registry>,
    ) -> Result<super::harness_http::HarnessHttp, String> {
        let _ = (rest, registry);
        Err("leshan+http: not written yet".into())
    }
}
