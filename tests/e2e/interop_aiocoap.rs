//! Python's `aiocoap` (PyPI, an independently written CoAP stack) as a client of our LwM2M
//! Server over plain CoAP on loopback: it registers, updates its registration and gets a
//! clean 4.00 for a Register without an endpoint name.

use lwm2m_proto::server::ServerEvent;

use crate::server_support::Servers;

/// `aiocoap-client ARGS URI`: its exit status, standard output and error.
async fn aiocoap(args: &[&str], uri: &str) -> (bool, String, String) {
    let bin = "aiocoap-client";
    let out = tokio::process::Command::new(bin)
        .args(args)
        .arg(uri)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("{bin}: {e}; install it with `python3 -m pip install aiocoap==0.4.17`")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn aiocoap_client_registers_and_updates() {
    let s = Servers::start().await;
    let mut events = s.server_events();
    let base = format!("coap://127.0.0.1:{}", s.server.local_addr().port());
    let link = ["-m", "POST", "--content-format", "application/link-format"];

    let (ok, _, err) = aiocoap(
        &[&link[..], &["--payload", "</3/0>,</3303/0>"]].concat(),
        &format!("{base}/rd?ep=aio-1&lt=60"),
    )
    .await;
    assert!(ok, "{err}");
    let registration = events.registered().await;
    assert_eq!(
        (registration.endpoint.as_str(), registration.lifetime),
        ("aio-1", 60)
    );
    assert_eq!(registration.links.objects.len(), 2, "{registration:?}");

    let (ok, _, err) = aiocoap(
        &["-m", "POST"],
        &format!("{base}/rd/{}?lt=120", registration.id),
    )
    .await;
    assert!(ok, "{err}");
    let lifetime = events
        .next(|e| match e {
            ServerEvent::Updated {
                registration: r, ..
            } if r.id == registration.id => Some(r.lifetime),
            _ => None,
        })
        .await;
    assert_eq!(lifetime, 120, "the Update's lt=120");

    // No endpoint name: 4.00, which aiocoap-client reports.
    let (_, out, err) = aiocoap(
        &[&link[..], &["--payload", "</3/0>"]].concat(),
        &format!("{base}/rd?lt=60"),
    )
    .await;
    assert!(
        format!("{out}{err}").contains("4.00"),
        "stdout {out:?} stderr {err:?}"
    );
    assert!(s.server.registrations().get("aio-1").is_some());
}
