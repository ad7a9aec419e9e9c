//! The web UI of `serve` (static ES modules embedded in the binary, served at `/`), its
//! session cookie, and CORS.
//!
//! Login (`POST /ui/login`, `{"token": ...}`) checks the API token and answers a session
//! cookie (`lwm2m_session`, 32 bytes from the OS random source, `HttpOnly`,
//! `SameSite=Strict`, expires after [`SESSION_TTL`]); `POST /ui/logout` forgets the session.
//! The API accepts the cookie instead of the bearer token, so a browser's `EventSource`
//! works. A state-changing request (not GET/HEAD) authenticated by the cookie must also
//! carry the header `X-Lwm2m-Ui: 1`, which a cross-site form cannot send: with
//! `SameSite=Strict` that keeps other sites from making the browser act.
//!
//! CORS is off unless [`WebOptions::cors`] lists origins: then requests from those origins
//! get `Access-Control-Allow-Origin` (bearer token only, no credentials) and preflights are
//! answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::auth::{generate_token, token_matches};

/// The session cookie's name.
pub const COOKIE: &str = "lwm2m_session";
/// The header a cookie-authenticated state-changing request must carry (value `1`).
pub const UI_HEADER: &str = "x-lwm2m-ui";
/// How long a session lives after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 1024;

/// Web options of the API listener.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// Origins (`https://ops.example:8443`) allowed to call the API from a browser with the
    /// bearer token; empty: CORS off.
    pub cors: Vec<String>,
}

#[derive(Default)]
struct Sessions(Mutex<HashMap<String, Instant>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        match s
            .iter()
            .find(|(k, _)| token_matches(k, id))
            .map(|(k, e)| (k.clone(), *e))
        {
            Some((_, exp)) if exp > now => true,
            Some((k, _)) => {
                s.remove(&k);
                false
            }
            None => false,
        }
    }

    fn create(&self) -> Option<String> {
        let id = generate_token().ok()?;
        let now = Instant::now();
        let mut s = self.lock();
        s.retain(|_, exp| *exp > now);
        while s.len() >= MAX_SESSIONS {
            let oldest = s.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())?;
            s.remove(&oldest);
        }
        s.insert(id.clone(), now + SESSION_TTL);
        Some(id)
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

struct UiState {
    token: String,
    sessions: Sessions,
    cors: Vec<String>,
}

/// Wraps the API router (whose routes check the bearer token) with the UI's routes, the
/// session cookie (turned into the bearer token for the routes inside) and CORS.
pub fn wrap(api: Router, token: &str, web: &WebOptions) -> Router {
    let st = Arc::new(UiState {
        token: token.to_owned(),
        sessions: Sessions::default(),
        cors: web.cors.clone(),
    });
    Router::new()
        .route("/", get(|| asset("index.html")))
        .route("/ui/app.js", get(|| asset("app.js")))
        .route("/ui/style.css", get(|| asset("style.css")))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .with_state(st.clone())
        .merge(api)
        .layer(middleware::from_fn_with_state(st.clone(), session))
        .layer(middleware::from_fn_with_state(st, cors))
}

async fn asset(name: &str) -> Response {
    let (body, kind): (&'static str, &str) = match name {
        "index.html" => (include_str!("../ui/index.html"), "text/html; charset=utf-8"),
        "app.js" => (
            include_str!("../ui/app.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => (include_str!("../ui/style.css"), "text/css; charset=utf-8"),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn has_ui_header(headers: &HeaderMap) -> bool {
    headers.get(UI_HEADER).is_some_and(|v| v.as_bytes() == b"1")
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn login(
    State(st): State<Arc<UiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !has_ui_header(&headers) {
        return text(StatusCode::FORBIDDEN, "missing X-Lwm2m-Ui: 1");
    }
    let presented = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|j| j.get("token").and_then(|t| t.as_str()).map(str::to_owned));
    let Some(presented) = presented else {
        return text(StatusCode::BAD_REQUEST, "expected {\"token\": \"...\"}");
    };
    if !token_matches(&st.token, presented.trim()) {
        tracing::info!("web UI login refused: wrong token");
        return text(StatusCode::UNAUTHORIZED, "wrong token");
    }
    let Some(id) = st.sessions.create() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the OS random source failed",
        );
    };
    tracing::info!("web UI login");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(st): State<Arc<UiState>>, headers: HeaderMap) -> Response {
    if !has_ui_header(&headers) {
        return text(StatusCode::FORBIDDEN, "missing X-Lwm2m-Ui: 1");
    }
    if let Some(id) = cookie_value(&headers, COOKIE) {
        st.sessions.remove(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("lwm2m_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// A request without a bearer token but with a live session cookie gets the bearer token
/// (inside the process only); a state-changing one also needs [`UI_HEADER`].
async fn session(State(st): State<Arc<UiState>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    if headers.get(header::AUTHORIZATION).is_none()
        && let Some(id) = cookie_value(headers, COOKIE)
        && st.sessions.valid(id)
    {
        let safe = matches!(*request.method(), Method::GET | Method::HEAD);
        if !safe && !has_ui_header(headers) {
            return text(
                StatusCode::FORBIDDEN,
                "a request authenticated by the session cookie must carry X-Lwm2m-Ui: 1",
            );
        }
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", st.token)) {
            request.headers_mut().insert(header::AUTHORIZATION, v);
        }
    }
    next.run(request).await
}

async fn cors(State(st): State<Arc<UiState>>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| st.cors.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut r = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, PUT, POST, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(request).await
    };
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; lwm2m_session=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie_value(&h, "c"), None);
    }

    #[test]
    fn sessions_expire_and_are_forgotten() {
        let s = Sessions::default();
        let id = s.create().unwrap();
        assert_eq!(id.len(), 64);
        assert!(s.valid(&id));
        assert!(!s.valid("nope"));
        s.remove(&id);
        assert!(!s.valid(&id));
        let id = s.create().unwrap();
        s.lock()
            .insert(id.clone(), Instant::now() - Duration::from_secs(1));
        assert!(!s.valid(&id));
        assert!(s.lock().is_empty());
    }
}
