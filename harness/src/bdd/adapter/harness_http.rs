//! `lwm2m-harness+http://HOST:PORT?token=T`: our own REST API (`serve --http`, README's
//! REST table) and its server-sent events (`GET /api/event`), so `lwm2m-harness serve` in
//! another process, or on another machine, is a server under test.
//!
//! Every client operation maps to one route (`GET /api/clients/{ep}/{path}?format=` ...,
//! asked to wait `?timeout=120` for a sleeping client); the answer's JSON (code, format,
//! named nodes, links, location, observation) is turned back into a [`Response`], typed by
//! the object versions the client registered. Credentials go to `PUT
//! /api/security/clients`, bootstrap configurations to `PUT /api/bootstrap/{ep}`.
//! Not offered: the decoder's findings (the API gives them as text only) and the list of
//! a client's observations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::coap::ExchangeError;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{OpError, Operation, Response};
use lwm2m_proto::{Lwm2mPath, ObjectId};
use serde_json::{Value as Json, json};

use super::json::{Body, registration_from, response_from, versions, write_body};
use super::{
    AdapterError, AdapterInfo, EventSink, Feature, RegistrationView, ServerAdapter, Sinks,
};

/// The adapter's name.
pub const NAME: &str = "lwm2m-harness+http";

/// How long the API is asked to wait for a client (a sleeping one included).
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// Object versions by endpoint, to type payloads.
type Versions = Arc<Mutex<HashMap<String, BTreeMap<ObjectId, String>>>>;

/// An observation by endpoint and the id the API gave it.
type ObservationKey = (String, u64);

/// Our REST API as a server adapter (see the module documentation).
pub struct HarnessHttp {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    registry: Arc<Registry>,
    info: AdapterInfo,
    sinks: Arc<Sinks>,
    versions: Versions,
    /// Observations started through the adapter: (endpoint, id) → paths, composite.
    observations: Mutex<HashMap<ObservationKey, (Vec<Lwm2mPath>, bool)>>,
}

impl std::fmt::Debug for HarnessHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessHttp")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// An HTTP answer: status and JSON body (`Null` if empty or not JSON).
pub(super) fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Json>,
) -> Result<(u16, Json), String> {
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
    let mut response = response.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
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
/// the stream ends.
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

/// `HOST:PORT[/]?token=T` → base URL and token.
fn parse_authority(rest: &str) -> Result<(String, Option<String>), String> {
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!("{NAME}://{rest}: expected HOST:PORT"));
    }
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_owned);
    Ok((format!("http://{authority}"), token))
}

impl HarnessHttp {
    /// Connects to the API at `rest` (`HOST:PORT?token=T`): checks the token, subscribes
    /// to the events; `Err` says why not.
    pub fn connect(rest: &str, registry: Arc<Registry>) -> Result<Self, String> {
        let (base, token) = parse_authority(rest)?;
        let agent = agent(Some(OP_TIMEOUT + Duration::from_secs(10)));
        let (status, body) = send(
            &agent,
            "GET",
            &format!("{base}/api/clients"),
            token.as_deref(),
            None,
        )?;
        match status {
            200 => {}
            401 | 403 => {
                return Err(format!(
                    "{NAME}: {base} refused the token ({status}); give ?token= the API token"
                ));
            }
            s => {
                return Err(format!(
                    "{NAME}: GET {base}/api/clients answered {s}: {body}"
                ));
            }
        }
        let features = Feature::all()
            .into_iter()
            .filter(|f| !matches!(f, Feature::Findings | Feature::RegistrationFindings))
            .collect::<BTreeSet<_>>();
        let adapter = Self {
            base,
            token,
            agent,
            registry,
            info: AdapterInfo {
                adapter: NAME.to_owned(),
                product: "lwm2m-harness serve".to_owned(),
                version: "unknown (the REST API does not say)".to_owned(),
                features,
            },
            sinks: Arc::new(Sinks::default()),
            versions: Versions::default(),
            observations: Mutex::default(),
        };
        adapter.start_events()?;
        Ok(adapter)
    }

    /// Opens `GET /api/event` and feeds the sinks from a thread of its own.
    fn start_events(&self) -> Result<(), String> {
        let url = format!("{}/api/event", self.base);
        let mut request = agent(None).get(&url).header("Accept", "text/event-stream");
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let response = request.call().map_err(|e| format!("GET {url}: {e}"))?;
        if response.status().as_u16() != 200 {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let (sinks, versions, registry) = (
            self.sinks.clone(),
            self.versions.clone(),
            self.registry.clone(),
        );
        std::thread::Builder::new()
            .name("lwm2m-harness+http events".into())
            .spawn(move || {
                read_sse(response.into_body().into_reader(), |name, data| {
                    let Ok(data) = serde_json::from_str::<Json>(data) else {
                        return true;
                    };
                    if let Some(r) = data.get("registration")
                        && let Ok(v) = registration_from(r)
                    {
                        versions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(v.registration.endpoint.clone(), versions_of(&v));
                    }
                    let versions_of = |ep: &str| {
                        versions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(ep)
                            .cloned()
                            .unwrap_or_default()
                    };
                    if let Some(event) =
                        super::json::event_from(name, &data, &registry, &versions_of)
                    {
                        sinks.deliver(&event);
                    } else if let Some(event) = super::json::bootstrap_event_from(name, &data) {
                        sinks.deliver_bootstrap(&event);
                    }
                    true
                });
            })
            .map_err(|e| format!("cannot start the event thread: {e}"))?;
        Ok(())
    }

    fn call(&self, method: &str, route: &str, body: Option<&Json>) -> Result<(u16, Json), String> {
        send(
            &self.agent,
            method,
            &format!("{}{route}", self.base),
            self.token.as_deref(),
            body,
        )
    }

    fn failed(&self, reason: String) -> AdapterError {
        AdapterError::Failed {
            adapter: NAME.to_owned(),
            reason,
        }
    }

    /// The object versions `endpoint` registered (cached from events and look-ups).
    fn versions_for(&self, endpoint: &str) -> BTreeMap<ObjectId, String> {
        if let Some(v) = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
        {
            return v.clone();
        }
        match self.registration(endpoint) {
            Ok(Some(v)) => versions_of(&v),
            _ => BTreeMap::new(),
        }
    }
}

fn versions_of(v: &RegistrationView) -> BTreeMap<ObjectId, String> {
    versions(&v.registration)
}

/// A route's path segment for an LwM2M path (`3/0/1`).
fn segs(path: &Lwm2mPath) -> String {
    path.segments().join("/")
}

fn paths_json(paths: &[Lwm2mPath]) -> Json {
    json!({"paths": paths.iter().map(ToString::to_string).collect::<Vec<_>>()})
}

fn format_query(format: Option<lwm2m_proto::ContentFormat>) -> String {
    format.map_or(String::new(), |f| format!("&format={}", f.name()))
}

impl ServerAdapter for HarnessHttp {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn request(&self, endpoint: &str, operation: &Operation) -> Result<Response, OpError> {
        let invalid = |reason: String| OpError::Invalid { reason };
        let ep = endpoint;
        let t = format!("?timeout={}", OP_TIMEOUT.as_secs());
        let (method, route, body): (&str, String, Option<Json>) = match operation {
            Operation::Read { path, format } => (
                "GET",
                format!(
                    "/api/clients/{ep}/{}{t}{}",
                    segs(path),
                    format_query(*format)
                ),
                None,
            ),
            Operation::Discover { path } => (
                "GET",
                format!("/api/clients/{ep}/{}/discover{t}", segs(path)),
                None,
            ),
            Operation::Write {
                path,
                node,
                replace,
                format,
            } => (
                "PUT",
                format!(
                    "/api/clients/{ep}/{}{t}&replace={replace}{}",
                    segs(path),
                    format_query(*format)
                ),
                Some(write_body(path, node)),
            ),
            Operation::WriteAttributes { path, attributes } => {
                let q: Vec<String> = attributes.to_query();
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("&{}", q.join("&"))
                };
                (
                    "PUT",
                    format!("/api/clients/{ep}/{}/attributes{t}{q}", segs(path)),
                    None,
                )
            }
            Operation::Execute { path, args } => (
                "POST",
                format!("/api/clients/{ep}/{}{t}", segs(path)),
                Some(json!({ "args": args })),
            ),
            Operation::Create {
                object,
                instance,
                resources,
                format,
            } => {
                let base =
                    Lwm2mPath::Instance(*object, instance.unwrap_or(lwm2m_proto::InstanceId(0)));
                let records = lwm2m_proto::Node::Instance(resources.clone()).to_records(&base);
                let body = match instance {
                    Some(_) => super::json::nodes_json(&records),
                    None => {
                        let mut m = serde_json::Map::new();
                        for r in &records {
                            let (Lwm2mPath::Resource(_, _, res), Some(v)) = (r.path, &r.value)
                            else {
                                return Err(invalid(format!(
                                    "{NAME}: a Create without an instance id takes single \
                                     resources only ({})",
                                    r.path
                                )));
                            };
                            m.insert(res.0.to_string(), v.to_json());
                        }
                        json!({ "resources": m })
                    }
                };
                (
                    "POST",
                    format!("/api/clients/{ep}/{}{t}{}", object.0, format_query(*format)),
                    Some(body),
                )
            }
            Operation::Delete { path } => (
                "DELETE",
                format!("/api/clients/{ep}/{}{t}", segs(path)),
                None,
            ),
            Operation::ReadComposite { paths, format } => (
                "POST",
                format!("/api/clients/{ep}/composite{t}{}", format_query(*format)),
                Some(paths_json(paths)),
            ),
            Operation::WriteComposite { records, format } => (
                "PUT",
                format!("/api/clients/{ep}/composite{t}{}", format_query(*format)),
                Some(super::json::nodes_json(records)),
            ),
            Operation::Observe { path, format } => (
                "POST",
                format!(
                    "/api/clients/{ep}/{}/observe{t}{}",
                    segs(path),
                    format_query(*format)
                ),
                None,
            ),
            Operation::ObserveComposite { paths, format } => (
                "POST",
                format!(
                    "/api/clients/{ep}/composite/observe{t}{}",
                    format_query(*format)
                ),
                Some(paths_json(paths)),
            ),
            Operation::CancelObservation {
                observation,
                active,
            } => {
                let held = self
                    .observations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&(ep.to_owned(), observation.0))
                    .cloned();
                let Some((paths, composite)) = held else {
                    return Err(invalid(format!(
                        "{NAME}: observation {} was not started through this adapter",
                        observation.0
                    )));
                };
                let route = match (composite, paths.first()) {
                    (false, Some(p)) => format!("/api/clients/{ep}/{}/observe{t}", segs(p)),
                    _ => {
                        let list: Vec<String> = paths.iter().map(ToString::to_string).collect();
                        format!(
                            "/api/clients/{ep}/composite/observe{t}&paths={}",
                            list.join(",")
                        )
                    }
                };
                ("DELETE", format!("{route}&active={active}"), None)
            }
            other => {
                return Err(invalid(format!("{NAME}: {} is not mapped", other.name())));
            }
        };
        let schema_versions = self.versions_for(ep);
        let schema = self.registry.with_versions(&schema_versions);
        let (status, j) = self
            .call(method, &route, body.as_ref())
            .map_err(|e| invalid(format!("{NAME}: {e}")))?;
        let error = j
            .get("error")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = Body::of(operation);
        let response = match status {
            200 | 201 => {
                if let Operation::CancelObservation { active, .. } = operation {
                    let answer = j
                        .get("responses")
                        .and_then(Json::as_array)
                        .and_then(|a| a.last())
                        .cloned();
                    return match (active, answer) {
                        (false, _) => Ok(Response::empty()),
                        (true, Some(a)) => response_from(&a, Body::Nothing, &schema)
                            .map_err(|e| invalid(format!("{NAME}: {e}"))),
                        (true, None) => Err(invalid(format!(
                            "{NAME}: the API did not give the client's answer to the cancel"
                        ))),
                    };
                }
                response_from(&j, kind, &schema).map_err(|e| invalid(format!("{NAME}: {e}")))?
            }
            502 => {
                let inner = j.get("response").cloned().unwrap_or(Json::Null);
                response_from(&inner, kind, &schema).map_err(|e| invalid(format!("{NAME}: {e}")))?
            }
            504 => {
                return Err(OpError::Exchange {
                    address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                    error: ExchangeError::NoResponse { waited: OP_TIMEOUT },
                });
            }
            404 if error.starts_with("no registration") => {
                return Err(OpError::UnknownEndpoint {
                    endpoint: ep.to_owned(),
                });
            }
            s => {
                return Err(invalid(format!(
                    "{NAME}: {method} {route} answered {s}: {error}"
                )));
            }
        };
        if let (Some(id), Operation::Observe { path, .. }) = (response.observation, operation) {
            self.observations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((ep.to_owned(), id.0), (vec![*path], false));
        }
        if let (Some(id), Operation::ObserveComposite { paths, .. }) =
            (response.observation, operation)
        {
            self.observations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((ep.to_owned(), id.0), (paths.clone(), true));
        }
        Ok(response)
    }

    fn registration(&self, endpoint: &str) -> Result<Option<RegistrationView>, AdapterError> {
        let (status, j) = self
            .call("GET", &format!("/api/clients/{endpoint}"), None)
            .map_err(|e| self.failed(e))?;
        match status {
            200 => {
                let v = registration_from(&j).map_err(|e| self.failed(e))?;
                self.versions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(endpoint.to_owned(), versions_of(&v));
                Ok(Some(v))
            }
            404 => Ok(None),
            s => Err(self.failed(format!("GET /api/clients/{endpoint} answered {s}: {j}"))),
        }
    }

    fn subscribe(&self, sink: EventSink) -> Result<(), AdapterError> {
        self.sinks.add(sink);
        Ok(())
    }

    fn put_psk(&self, endpoint: &str, identity: &[u8], key: &[u8]) -> Result<(), AdapterError> {
        let identity = String::from_utf8(identity.to_vec())
            .map_err(|_| self.failed("the API takes UTF-8 PSK identities only".into()))?;
        let body = json!({"endpoint": endpoint, "credentials": {
            "mode": "psk", "identity": identity,
            "key": key.iter().map(|b| format!("{b:02x}")).collect::<String>()}});
        let (status, j) = self
            .call("PUT", "/api/security/clients", Some(&body))
            .map_err(|e| self.failed(e))?;
        match status {
            200 | 201 | 204 => Ok(()),
            s => Err(self.failed(format!("PUT /api/security/clients answered {s}: {j}"))),
        }
    }

    fn put_bootstrap_config(
        &self,
        endpoint: &str,
        config: &BootstrapConfig,
    ) -> Result<(), AdapterError> {
        let config = serde_json::to_value(config).map_err(|e| self.failed(e.to_string()))?;
        let (route, body) = if endpoint.contains(['*', '?']) {
            (
                "/api/bootstrap".to_owned(),
                json!({"pattern": endpoint, "config": config}),
            )
        } else {
            (format!("/api/bootstrap/{endpoint}"), config)
        };
        let (status, j) = self
            .call("PUT", &route, Some(&body))
            .map_err(|e| self.failed(e))?;
        match status {
            200 | 201 | 204 => Ok(()),
            s => Err(self.failed(format!("PUT {route} answered {s}: {j}"))),
        }
    }

    fn remove_bootstrap_config(&self, endpoint: &str) -> Result<(), AdapterError> {
        let route = if endpoint.contains(['*', '?']) {
            format!("/api/bootstrap?pattern={endpoint}")
        } else {
            format!("/api/bootstrap/{endpoint}")
        };
        let (status, j) = self
            .call("DELETE", &route, None)
            .map_err(|e| self.failed(e))?;
        match status {
            200 | 204 | 404 => Ok(()),
            s => Err(self.failed(format!("DELETE {route} answered {s}: {j}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_and_tokens_parse() {
        assert_eq!(
            parse_authority("127.0.0.1:8080?token=abc").unwrap(),
            ("http://127.0.0.1:8080".to_owned(), Some("abc".to_owned()))
        );
        assert_eq!(parse_authority("h:1/").unwrap().1, None);
        assert!(parse_authority("?token=x").is_err());
    }

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
}
