//! What the HTTP server adapters ([`super::harness_http`], [`super::leshan`]) share: the
//! HTTP client (bearer token, JSON bodies, statuses given back rather than failed on), the
//! `text/event-stream` reader, and [`HttpApi`], the connection both adapters hold (base URL,
//! token, agent, and the object versions each endpoint registered, to type payloads).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lwm2m_proto::ObjectId;
use serde_json::Value as Json;

use super::json::{ReadError, versions};
use super::{AdapterError, RegistrationView};

/// Why an HTTP server adapter got no answer from its server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request failed (connection, time limit, ...).
    #[error("{method} {url}: {reason}")]
    Request {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP client's error.
        reason: String,
    },
    /// The answer's body could not be read.
    #[error("{method} {url}: reading the answer: {reason}")]
    Body {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP client's error.
        reason: String,
    },
    /// The event stream answered another status than 200.
    #[error("GET {url}: {status}")]
    EventStatus {
        /// The URL.
        url: String,
        /// The status.
        status: ureq::http::StatusCode,
    },
    /// No thread to read the event stream on.
    #[error("cannot start the event thread: {reason}")]
    EventThread {
        /// The OS error.
        reason: String,
    },
}

/// Why an HTTP server adapter cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The spec after `NAME://` is not `HOST:PORT[...]`.
    #[error("{adapter}://{rest}: expected HOST:PORT")]
    Authority {
        /// The adapter's name (`leshan+http`, ...).
        adapter: &'static str,
        /// The spec after `NAME://`.
        rest: String,
    },
    /// The API refused the bearer token.
    #[error("{adapter}: {base} refused the token ({status}); give ?token= the API token")]
    Token {
        /// The adapter's name.
        adapter: &'static str,
        /// The API's base URL.
        base: String,
        /// 401 or 403.
        status: u16,
    },
    /// The first request answered another status than 200.
    #[error("{adapter}: GET {base}/api/clients answered {status}: {body}")]
    Status {
        /// The adapter's name.
        adapter: &'static str,
        /// The API's base URL.
        base: String,
        /// The status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// No answer, or no event stream.
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// An HTTP answer: status and JSON body (`Null` if empty; a body that is not JSON stays as
/// its text).
pub(super) fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Json>,
) -> Result<(u16, Json), HttpError> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let text = body.map(Json::to_string).unwrap_or_default();
    let response = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.header("Content-Type", "application/json").send(&text)
        }
    };
    let mut response = response.map_err(|e| HttpError::Request {
        method: method.to_owned(),
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| HttpError::Body {
            method: method.to_owned(),
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    // A body that is not JSON (Leshan's errors are plain text) stays as its text.
    let body = match serde_json::from_str(&text) {
        Ok(j) => j,
        Err(_) if text.trim().is_empty() => Json::Null,
        Err(_) => Json::String(text),
    };
    Ok((status, body))
}

/// An agent that gives statuses back instead of failing on them, with a time limit.
pub(super) fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout)
        .build()
        .into()
}

/// Reads a `text/event-stream` body, calling `on_event(name, data)` for each event, until
/// the stream ends or `on_event` answers `false`.
pub(super) fn read_sse(body: impl std::io::Read, mut on_event: impl FnMut(&str, &str) -> bool) {
    let mut name = String::new();
    let mut data = String::new();
    for line in BufReader::new(body).lines() {
        let Ok(line) = line else { return };
        if line.is_empty() {
            if !data.is_empty() && !on_event(if name.is_empty() { "message" } else { &name }, &data)
            {
                return;
            }
            name.clear();
            data.clear();
        } else if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
}

/// `LOCATION[/][?token=T]` → `LOCATION` (without a trailing `/`) and the token, if given.
pub(super) fn split_token(rest: &str) -> (&str, Option<String>) {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_owned);
    (location.trim_end_matches('/'), token)
}

/// The object versions each endpoint registered, shared with the event thread.
#[derive(Debug, Clone, Default)]
struct Versions(Arc<Mutex<HashMap<String, BTreeMap<ObjectId, String>>>>);

impl Versions {
    /// Remembers the object versions in `endpoint`'s registration `view`.
    fn remember(&self, endpoint: &str, view: &RegistrationView) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint.to_owned(), versions(&view.registration));
    }

    /// What `endpoint` registered, if known.
    fn get(&self, endpoint: &str) -> Option<BTreeMap<ObjectId, String>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .cloned()
    }

    /// What `endpoint` registered; empty if not known.
    fn of(&self, endpoint: &str) -> BTreeMap<ObjectId, String> {
        self.get(endpoint).unwrap_or_default()
    }
}

/// A REST API reached over HTTP: where, with which token, and the versions cache.
#[derive(Debug)]
pub(super) struct HttpApi {
    /// The adapter's name, for its errors.
    adapter: &'static str,
    /// `http://HOST:PORT[/PREFIX]`.
    pub(super) base: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// The object versions by endpoint (from events and look-ups).
    versions: Versions,
}

impl HttpApi {
    /// The API at `base`, with a time limit on each call.
    pub(super) fn new(
        adapter: &'static str,
        base: String,
        token: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            adapter,
            base,
            token,
            agent: agent(Some(timeout)),
            versions: Versions::default(),
        }
    }

    /// `METHOD BASE+route` with a JSON body: the status and the answer.
    pub(super) fn call(
        &self,
        method: &str,
        route: &str,
        body: Option<&Json>,
    ) -> Result<(u16, Json), HttpError> {
        send(
            &self.agent,
            method,
            &format!("{}{route}", self.base),
            self.token.as_deref(),
            body,
        )
    }

    /// The adapter's error for `reason`.
    pub(super) fn failed(&self, reason: impl std::fmt::Display) -> AdapterError {
        AdapterError::Failed {
            adapter: self.adapter.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// `PUT BASE+route` with `body`; any status but 200, 201 or 204 is a failure.
    pub(super) fn put(&self, route: &str, body: &Json) -> Result<(), AdapterError> {
        let (status, j) = self
            .call("PUT", route, Some(body))
            .map_err(|e| self.failed(e))?;
        match status {
            200 | 201 | 204 => Ok(()),
            s => Err(self.failed(format!("PUT {route} answered {s}: {j}"))),
        }
    }

    /// `DELETE BASE+route`: gone already (404) is gone too; other statuses but 200 and 204
    /// are failures.
    pub(super) fn delete(&self, route: &str) -> Result<(), AdapterError> {
        let (status, j) = self
            .call("DELETE", route, None)
            .map_err(|e| self.failed(e))?;
        match status {
            200 | 204 | 404 => Ok(()),
            s => Err(self.failed(format!("DELETE {route} answered {s}: {j}"))),
        }
    }

    /// `GET BASE/api/clients/{endpoint}` read by `parse` (its versions cached); `None` if
    /// the answer is one `absent` says means the endpoint is not registered.
    pub(super) fn registration(
        &self,
        endpoint: &str,
        parse: impl FnOnce(&Json) -> Result<RegistrationView, ReadError>,
        absent: impl FnOnce(u16, &Json) -> bool,
    ) -> Result<Option<RegistrationView>, AdapterError> {
        let route = format!("/api/clients/{endpoint}");
        let (status, j) = self.call("GET", &route, None).map_err(|e| self.failed(e))?;
        if status == 200 {
            let v = parse(&j).map_err(|e| self.failed(e.to_string()))?;
            self.versions.remember(endpoint, &v);
            Ok(Some(v))
        } else if absent(status, &j) {
            Ok(None)
        } else {
            Err(self.failed(format!("GET {route} answered {status}: {j}")))
        }
    }

    /// The object versions `endpoint` registered: cached, else from the registration
    /// `look_up` gives (the adapter's look-up, which caches them), else none.
    pub(super) fn versions_for(
        &self,
        endpoint: &str,
        look_up: impl FnOnce() -> Option<RegistrationView>,
    ) -> BTreeMap<ObjectId, String> {
        self.versions
            .get(endpoint)
            .or_else(|| look_up().map(|v| versions(&v.registration)))
            .unwrap_or_default()
    }

    /// Opens `GET BASE/api/event` and, on a thread named `thread`, for each event whose
    /// data is JSON: caches the versions of the registration `registration_in` finds in it,
    /// then calls `on_event(name, data, versions_of)`, until the stream ends.
    pub(super) fn start_events(
        &self,
        thread: &str,
        registration_in: impl Fn(&Json) -> Option<RegistrationView> + Send + 'static,
        mut on_event: impl FnMut(&str, &Json, &dyn Fn(&str) -> BTreeMap<ObjectId, String>)
        + Send
        + 'static,
    ) -> Result<(), HttpError> {
        let url = format!("{}/api/event", self.base);
        let mut request = agent(None).get(&url).header("Accept", "text/event-stream");
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let response = request.call().map_err(|e| HttpError::Request {
            method: "GET".to_owned(),
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if response.status().as_u16() != 200 {
            return Err(HttpError::EventStatus {
                url,
                status: response.status(),
            });
        }
        let versions = self.versions.clone();
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                read_sse(response.into_body().into_reader(), |name, data| {
                    if let Ok(data) = serde_json::from_str::<Json>(data) {
                        if let Some(v) = registration_in(&data) {
                            versions.remember(&v.registration.endpoint, &v);
                        }
                        on_event(name, &data, &|ep| versions.of(ep));
                    }
                    true
                });
            })
            .map_err(|e| HttpError::EventThread {
                reason: e.to_string(),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_split_into_events() {
        let text =
            "event: REGISTRATION\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: SEND\ndata: {}\n\n";
        let mut seen = Vec::new();
        read_sse(text.as_bytes(), |n, d| {
            seen.push((n.to_owned(), d.to_owned()));
            true
        });
        assert_eq!(
            seen,
            vec![
                ("REGISTRATION".to_owned(), "{\"a\":1}".to_owned()),
                ("SEND".to_owned(), "{}".to_owned())
            ]
        );
    }

    #[test]
    fn tokens_split_from_locations() {
        assert_eq!(
            split_token("127.0.0.1:8080/leshan/?token=abc&x=1"),
            ("127.0.0.1:8080/leshan", Some("abc".to_owned()))
        );
        assert_eq!(split_token("h:1/"), ("h:1", None));
    }
}
