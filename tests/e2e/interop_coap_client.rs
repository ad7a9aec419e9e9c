//! Interoperability with an independently written CoAP stack: libcoap's `coap-client`
//! (Debian `libcoap3-bin`) registers with our LwM2M Server, updates, de-registers, and gets
//! clean errors; each exchange is checked in libcoap's own decoding of the response (its
//! debug log), in its error output, and in our server's events and socket.

use std::net::SocketAddr;

use lwm2m_proto::coap::MessageType;
use lwm2m_proto::registration::RegistrationFinding;
use lwm2m_proto::server::ServerEvent;
use lwm2m_server::Direction;
use tokio::net::UdpSocket;

use crate::server_support::{PATIENCE, ServerEvents, Servers, code};

/// The first libcoap client binary installed; fails (never skips) otherwise.
fn coap_client() -> &'static str {
    [
        "coap-client-openssl",
        "coap-client-gnutls",
        "coap-client-notls",
        "coap-client",
    ]
    .into_iter()
    .find(|bin| std::process::Command::new(bin).arg("-h").output().is_ok())
    .expect(
        "libcoap's coap-client is missing: install it with `apt-get install libcoap3-bin` \
         (scripts/test does it)",
    )
}

/// What one `coap-client` run showed.
struct Run {
    /// libcoap's rendering of the response, e.g. `v:1 t:ACK c:2.01 i:23fe {01} [ ... ]`.
    response: String,
    /// Its error output (`4.00 reason` for an error response).
    stderr: String,
    /// The payload it printed.
    payload: String,
}

/// Runs `coap-client ARGS URI` with the debug log that shows the decoded response.
async fn run(args: &[&str], uri: &str) -> Run {
    let out = tokio::process::Command::new(coap_client())
        .args(["-B", "5", "-v", "7"])
        .args(args)
        .arg(uri)
        .output()
        .await
        .expect("coap-client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(out.status.success(), "{uri}: {stdout}\n{stderr}");
    // The response's line: its code is `c:C.DD` (the request's is a method name).
    let response = stdout
        .lines()
        .find(|l| {
            l.starts_with("v:1 ")
                && l.split(' ')
                    .any(|w| w.strip_prefix("c:").is_some_and(|c| c.contains('.')))
        })
        .unwrap_or_else(|| panic!("{uri}: no response in {stdout}"));
    // The payload line is the last one that is not part of the log.
    let payload = stdout
        .lines()
        .filter(|l| !l.starts_with("v:1 ") && !l.contains(" DEBG ") && !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Run {
        response: response.to_owned(),
        stderr,
        payload,
    }
}

/// `v:1 t:ACK c:2.01 i:23fe {01} [ Location-Path:rd ]` without the message id and token.
fn shape(response: &str) -> String {
    response
        .split(' ')
        .filter(|w| !w.starts_with("i:") && !w.starts_with('{'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A diagnostic as coap-client prints it: bytes outside printable ASCII become `.`.
fn as_libcoap_prints(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

/// The refusal event that follows a refused request.
async fn refusal(events: &mut ServerEvents) -> (SocketAddr, (u8, u8), String) {
    events
        .next(|e| match e {
            ServerEvent::RegistrationRefused { peer, code, reason }
            | ServerEvent::RequestRefused { peer, code, reason } => {
                Some((*peer, *code, reason.clone()))
            }
            _ => None,
        })
        .await
}

#[tokio::test]
async fn libcoap_coap_client_gets_answers_and_clean_errors() {
    let s = Servers::start().await;
    let mut events = s.server_events();
    let base = format!("coap://127.0.0.1:{}", s.server.local_addr().port());

    // Register: 2.01 with Location-Path rd/{id}.
    let reg = run(
        &["-m", "post", "-t", "40", "-e", "</3/0>,</3303/0>"],
        &format!("{base}/rd?ep=x&lt=60"),
    )
    .await;
    let registration = events.registered().await;
    assert_eq!(
        shape(&reg.response),
        format!(
            "v:1 t:ACK c:2.01 [ Location-Path:rd, Location-Path:{} ]",
            registration.id
        )
    );
    assert_eq!((reg.stderr.as_str(), reg.payload.as_str()), ("", ""));
    assert_eq!(
        (
            registration.endpoint.as_str(),
            registration.lifetime,
            registration.links.objects.len()
        ),
        ("x", 60, 2)
    );
    assert_eq!(registration.findings, [RegistrationFinding::MissingVersion]);
    // Our side of it: libcoap's Uri-Port option was ignored; the 2.01 went back piggybacked.
    let wire = s.wire.with(registration.address);
    assert_eq!(wire.len(), 2);
    assert_eq!(
        (wire[0].0, code(wire[0].1.header.code)),
        (Direction::In, (0, 2))
    );
    assert_eq!(
        (
            wire[1].0,
            wire[1].1.header.get_type(),
            wire[1].1.header.message_id
        ),
        (
            Direction::Out,
            MessageType::Acknowledgement,
            wire[0].1.header.message_id
        )
    );

    // Update (from another port: coap-client binds a new one) and De-register.
    let location = format!("{base}/rd/{}", registration.id);
    let update = run(&["-m", "post"], &format!("{location}?lt=120")).await;
    assert_eq!(shape(&update.response), "v:1 t:ACK c:2.04 [ ]");
    let updated = events
        .next(|e| match e {
            ServerEvent::Updated { registration, .. } => Some(registration.clone()),
            _ => None,
        })
        .await;
    assert_eq!(updated.lifetime, 120);
    let delete = run(&["-m", "delete"], &location).await;
    assert_eq!(shape(&delete.response), "v:1 t:ACK c:2.02 [ ]");
    events
        .next(|e| matches!(e, ServerEvent::Deregistered { .. }).then_some(()))
        .await;
    assert!(s.server.registrations().is_empty());

    // Clean errors: the code, the reason as diagnostic payload (shown by coap-client on
    // its error output), and the refusal event from coap-client's address.
    let gone = format!("4.04 no registration {:?}", registration.id);
    let cases: [(&[&str], String, &str); 6] = [
        (
            &["-m", "post"],
            format!("{base}/rd"),
            "4.00 Register without an endpoint name (ep=)",
        ),
        (
            &["-m", "post"],
            format!("{base}/rd?ep=y&lwm2m=2.0"),
            "4.12 unsupported LwM2M version \"2.0\"",
        ),
        (
            &[],
            format!("{base}/3/0/0"),
            "4.04 no resource /3/0/0 on this LwM2M Server (it serves /rd and /dp)",
        ),
        (&["-m", "delete"], location.clone(), &gone),
        (
            &["-m", "fetch"],
            format!("{base}/rd"),
            "4.05 FETCH is not allowed on /rd",
        ),
        (
            &["-m", "post", "-t", "110", "-e", "[]"],
            format!("{base}/dp"),
            "4.04 Send from",
        ),
    ];
    for (args, uri, expected) in cases {
        let out = run(args, &uri).await;
        let expected_code = &expected[..4];
        assert_eq!(
            shape(&out.response).split(" [").next(),
            Some(format!("v:1 t:ACK c:{expected_code}").as_str()),
            "{uri}"
        );
        let (peer, refused, reason) = refusal(&mut events).await;
        assert_eq!(
            format!("{}.{:02}", refused.0, refused.1),
            expected_code,
            "{uri}"
        );
        // coap-client shows the code and our diagnostic, which is the event's reason.
        assert_eq!(
            out.stderr,
            format!("{expected_code} {}", as_libcoap_prints(&reason)),
            "{uri}"
        );
        assert!(out.stderr.starts_with(expected), "{uri}: {}", out.stderr);
        // The refusal went to the port coap-client used.
        assert!(
            s.wire
                .with(peer)
                .iter()
                .any(|(d, p)| *d == Direction::Out && code(p.header.code) == refused),
            "{uri}"
        );
    }

    // A non-confirmable request is answered non-confirmable (RFC 7252 §5.2.3).
    let non = run(&["-N"], &format!("{base}/nothing")).await;
    assert_eq!(
        shape(&non.response),
        "v:1 t:NON c:4.04 [ ] :: 'no resource /nothing on this LwM2M Server (it serves /rd and /dp)'"
    );
    refusal(&mut events).await;

    // A method code no one defines (0.31, which coap-client cannot send): the exchange layer
    // answers 4.05 itself (RFC 7252 §5.8), with its reason; the LwM2M layer never sees it.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // CON, no token, code 0.31, message id 0x1234, Uri-Path "rd".
    let request = [0x40, 0x1f, 0x12, 0x34, 0xb2, b'r', b'd'];
    raw.send_to(&request, s.server.local_addr()).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(PATIENCE, raw.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = lwm2m_proto::coap::message::decode(&buf[..n]).unwrap();
    assert_eq!(
        (
            answer.header.get_type(),
            code(answer.header.code),
            answer.header.message_id
        ),
        (MessageType::Acknowledgement, (4, 5), 0x1234)
    );
    assert_eq!(
        String::from_utf8_lossy(&answer.payload),
        "method 0.31 is not known (RFC 7252 §5.8)"
    );
}
