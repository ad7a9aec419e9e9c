//! Servers and the subject: our LwM2M Server and Bootstrap Server, and what the subject
//! under test can do.
//!
//! ```gherkin
//! Given the LwM2M server is running
//! And the bootstrap server is running
//! Given the subject supports "DTLS"
//! ```

use cucumber::given;

use crate::bdd::backend::Capability;
use crate::bdd::world::Lwm2mWorld;

/// Our LwM2M Server runs (in-process it always does; a subject no backend can run makes
/// the case not applicable here).
#[given("the LwM2M server is running")]
fn server_running(w: &mut Lwm2mWorld) {
    w.backend();
}

/// Our Bootstrap Server runs.
#[given("the bootstrap server is running")]
fn bootstrap_running(w: &mut Lwm2mWorld) {
    w.backend();
}

/// The case needs a capability (`DTLS`, `raw public keys`, `TCP`, `smartcard bootstrap`, `Disable`,
/// `Bootstrap-Request Trigger`, `Mute Send`, `Read without Accept`, `virtual time`);
/// without it the case is not applicable.
#[given(expr = "the subject supports {string}")]
fn subject_supports(w: &mut Lwm2mWorld, capability: String) -> anyhow::Result<()> {
    let capability: Capability = capability.parse().map_err(anyhow::Error::msg)?;
    w.require(capability);
    Ok(())
}
