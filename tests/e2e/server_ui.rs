//! `serve`'s web UI: the session cookie (login, CSRF header, logout, expiry on the server),
//! the static assets, `/metrics` parsed as the Prometheus text format, and CORS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lwm2m_proto::coap::ResponseType;
use lwm2m_proto::coap::message;
use lwm2m_server::ui::WebOptions;

use crate::server_support::{CoapPeer, Servers, Setup, TOKEN, agent};

/// One raw HTTP exchange: status, headers (lowercase names, all values), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn raw(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let (method, url, body) = (method.to_owned(), url.to_owned(), body.to_owned());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let mut resp = agent()
            .run(req.body(body).unwrap())
            .expect("the API answers");
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        Answer {
            status: resp.status().as_u16(),
            headers,
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    })
    .await
    .unwrap()
}

fn base(s: &Servers) -> String {
    s.api.trim_end_matches("/api").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookie_is_accepted_needs_the_ui_header_to_change_state_and_dies_at_logout() {
    let s = Servers::start().await;
    let b = base(&s);

    // The UI itself needs no token; the API does.
    let index = raw("GET", &format!("{b}/"), &[], "").await;
    assert_eq!(index.status, 200);
    assert!(
        index
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(index.body.contains("/ui/app.js"), "{}", index.body);
    let js = raw("GET", &format!("{b}/ui/app.js"), &[], "").await;
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        raw("GET", &format!("{b}/api/clients"), &[], "")
            .await
            .status,
        401
    );

    // Login: the UI header is required, the token must match.
    let login = format!("{b}/ui/login");
    let json = ("content-type", "application/json");
    let body = format!("{{\"token\":\"{TOKEN}\"}}");
    assert_eq!(raw("POST", &login, &[json], &body).await.status, 403);
    let wrong = raw(
        "POST",
        &login,
        &[json, ("x-lwm2m-ui", "1")],
        r#"{"token":"nope"}"#,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let ok = raw("POST", &login, &[json, ("x-lwm2m-ui", "1")], &body).await;
    assert_eq!(ok.status, 204);
    let set = ok.header("set-cookie").unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{set}");
    }
    let pair = set.split(';').next().unwrap().to_owned();
    let (name, id) = pair.split_once('=').unwrap();
    assert_eq!(name, "lwm2m_session");
    assert_eq!(id.len(), 64, "32 random bytes in hex");
    assert_ne!(id, TOKEN);
    // A second login gets another session.
    let again = raw("POST", &login, &[json, ("x-lwm2m-ui", "1")], &body).await;
    assert!(!again.header("set-cookie").unwrap().contains(id));

    let cookie = ("cookie", pair.as_str());
    let clients = raw("GET", &format!("{b}/api/clients"), &[cookie], "").await;
    assert_eq!(clients.status, 200, "{}", clients.body);
    assert_eq!(clients.body, "[]");
    // The event stream answers with the cookie (EventSource cannot send a header).
    let events = tokio::time::timeout(Duration::from_secs(20), async {
        let url = format!("{b}/api/event");
        let cookie = pair.clone();
        tokio::task::spawn_blocking(move || {
            let req = ureq::http::Request::builder()
                .uri(&url)
                .header("cookie", cookie)
                .body(())
                .unwrap();
            let resp = agent().run(req).unwrap();
            (
                resp.status().as_u16(),
                resp.headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or("").to_owned()),
            )
        })
        .await
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(events.0, 200);
    assert_eq!(events.1.as_deref(), Some("text/event-stream"));

    // A state-changing request authenticated by the cookie alone (what a cross-site form
    // could make a browser send) is refused; with the UI header it runs.
    let route = format!("{b}/api/security/clients/nobody");
    let forged = raw("DELETE", &route, &[cookie], "").await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let real = raw("DELETE", &route, &[cookie, ("x-lwm2m-ui", "1")], "").await;
    assert!(
        ![401, 403].contains(&real.status),
        "{} {}",
        real.status,
        real.body
    );

    // A made-up cookie is nobody.
    let fake = format!("lwm2m_session={}", "0".repeat(64));
    let r = raw("GET", &format!("{b}/api/clients"), &[("cookie", &fake)], "").await;
    assert_eq!(r.status, 401);

    // Logout needs the header, clears the cookie and forgets the session.
    let logout = format!("{b}/ui/logout");
    assert_eq!(raw("POST", &logout, &[cookie], "").await.status, 403);
    let out = raw("POST", &logout, &[cookie, ("x-lwm2m-ui", "1")], "").await;
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = raw("GET", &format!("{b}/api/clients"), &[cookie], "").await;
    assert_eq!(r.status, 401);
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value; panics on a line
/// that is not a comment or a sample, or a sample without a TYPE.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line:?}"
        );
        let labels = &key[name.len()..];
        if !labels.is_empty() {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{line:?}"));
            for kv in inner.split(',') {
                let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{line:?}"
                );
                let v = v.strip_suffix('"').unwrap_or_else(|| panic!("{line:?}"));
                assert!(!v.contains('"'), "{line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {line:?}");
        samples.insert(key.to_owned(), value);
    }
    samples
}

async fn metrics_until(
    b: &str,
    what: &str,
    cond: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let auth = format!("Bearer {TOKEN}");
        let r = raw(
            "GET",
            &format!("{b}/metrics"),
            &[("authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let m = parse_metrics(&r.body);
        if cond(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_registrations_requests_by_code_and_latency() {
    let s = Servers::start().await;
    let b = base(&s);
    assert_eq!(
        raw("GET", &format!("{b}/metrics"), &[], "").await.status,
        401
    );
    let m = metrics_until(&b, "empty", |_| true).await;
    assert_eq!(m["lwm2m_registrations"], 0.0);
    assert_eq!(m["lwm2m_dtls_handshakes_total{server=\"server\"}"], 0.0);

    let mut dev = CoapPeer::new(s.server.local_addr()).await;
    dev.register(&["ep=metered", "lwm2m=1.1"], "</3/0>").await;
    // A Read through the API, answered 2.05 by the device; another answered 4.04.
    let api = s.api.clone();
    let read = tokio::spawn(async move {
        crate::server_support::http(
            "GET",
            &format!("{api}/clients/metered/3/0/0"),
            None,
            Some(TOKEN),
        )
        .await
    });
    let r = dev.next_request().await;
    let mut answer = message::response(ResponseType::Content, b"Acme".to_vec());
    message::set_option(
        &mut answer,
        lwm2m_proto::coap::CoapOption::ContentFormat,
        vec![0],
    );
    dev.respond(r, answer).await;
    assert_eq!(read.await.unwrap().0, 200);
    let api = s.api.clone();
    let missing = tokio::spawn(async move {
        crate::server_support::http(
            "GET",
            &format!("{api}/clients/metered/3/0/1"),
            None,
            Some(TOKEN),
        )
        .await
    });
    let r = dev.next_request().await;
    dev.respond(r, message::response(ResponseType::NotFound, Vec::new()))
        .await;
    assert_eq!(missing.await.unwrap().0, 502);

    let m = metrics_until(&b, "register and reads counted", |m| {
        m.get("lwm2m_requests_total{server=\"server\",operation=\"read\",code=\"4.04\"}")
            == Some(&1.0)
    })
    .await;
    assert_eq!(m["lwm2m_registrations"], 1.0);
    assert_eq!(m["lwm2m_registrations_total"], 1.0);
    assert_eq!(
        m["lwm2m_requests_total{server=\"server\",operation=\"register\",code=\"2.01\"}"],
        1.0
    );
    assert_eq!(
        m["lwm2m_requests_total{server=\"server\",operation=\"read\",code=\"2.05\"}"],
        1.0
    );
    let labels = "server=\"server\",operation=\"read\"";
    assert_eq!(
        m[&format!("lwm2m_request_duration_seconds_count{{{labels}}}")],
        2.0
    );
    assert_eq!(
        m[&format!("lwm2m_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}")],
        2.0
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("lwm2m_request_duration_seconds_bucket{{{labels}")))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.iter().all(|v| *v <= 2.0));
    assert_eq!(m["lwm2m_requests_pending"], 0.0);
    assert_eq!(m["lwm2m_events_dropped_total"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_answers_only_allowed_origins() {
    let allowed = "http://ops.example:3000";
    let off = Servers::start().await;
    let on = Servers::start_with(Setup {
        web: WebOptions {
            cors: vec![allowed.to_owned()],
        },
        ..Setup::default()
    })
    .await;
    let auth = format!("Bearer {TOKEN}");
    let preflight = [
        ("origin", allowed),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "authorization"),
    ];

    // Off: no CORS headers at all.
    let r = raw(
        "GET",
        &format!("{}/clients", off.api),
        &[("origin", allowed), ("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = raw("OPTIONS", &format!("{}/clients", off.api), &preflight, "").await;
    assert!(r.header("access-control-allow-origin").is_none());

    // On: the allowed origin gets them, on the preflight (no token needed) and the call.
    let r = raw(
        "OPTIONS",
        &format!("{}/security/clients", on.api),
        &preflight,
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(allowed));
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert!(r.header("access-control-allow-credentials").is_none());
    let r = raw(
        "GET",
        &format!("{}/clients", on.api),
        &[("origin", allowed), ("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(allowed));
    // Without the token the call is still refused.
    let r = raw(
        "GET",
        &format!("{}/clients", on.api),
        &[("origin", allowed)],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    // Another origin gets nothing.
    let other = [
        ("origin", "http://evil.example"),
        ("access-control-request-method", "PUT"),
    ];
    let r = raw("OPTIONS", &format!("{}/clients", on.api), &other, "").await;
    assert!(r.header("access-control-allow-origin").is_none());
    let r = raw(
        "GET",
        &format!("{}/clients", on.api),
        &[("origin", "http://evil.example"), ("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}
