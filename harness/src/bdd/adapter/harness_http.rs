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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lwm2m_proto::bootstrap::BootstrapConfig;
use lwm2m_proto::coap::ExchangeError;
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::{OpError, Operation, Response};
use lwm2m_proto::{Lwm2mPath, ObjectId};
use serde_json::{Value as Json, json};

use super::http::{ConnectError, HttpApi, HttpError, split_token};
use super::json::{Body, registration_from, response_from, write_body};
use super::{
    AdapterError, AdapterInfo, EventSink, Feature, RegistrationView, ServerAdapter, Sinks,
};

/// The adapter's name.
pub const NAME: &str = "lwm2m-harness+http";

/// How long the API is asked to wait for a client (a sleeping one included).
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// An observation by endpoint and the id the API gave it.
type ObservationKey = (String, u64);

/// Our REST API as a server adapter (see the module documentation).
pub struct HarnessHttp {
    api: HttpApi,
    registry: Arc<Registry>,
    info: AdapterInfo,
    sinks: Arc<Sinks>,
    /// Observations started through the adapter: (endpoint, id) → paths, composite.
    observations: Mutex<HashMap<ObservationKey, (Vec<Lwm2mPath>, bool)>>,
}

impl std::fmt::Debug for HarnessHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessHttp")
            .field("base", &self.api.base)
            .finish_non_exhaustive()
    }
}

/// `HOST:PORT[/]?token=T` → base URL and token.
fn parse_authority(rest: &str) -> Result<(String, Option<String>), ConnectError> {
    let (authority, token) = split_token(rest);
    if authority.is_empty() || !authority.contains(':') {
        return Err(ConnectError::Authority {
            adapter: NAME,
            rest: rest.to_owned(),
        });
    }
    Ok((format!("http://{authority}"), token))
}

impl HarnessHttp {
    /// Connects to the API at `rest` (`HOST:PORT?token=T`): checks the token, subscribes
    /// to the events; `Err` says why not.
    pub fn connect(rest: &str, registry: Arc<Registry>) -> Result<Self, ConnectError> {
        let (base, token) = parse_authority(rest)?;
        let api = HttpApi::new(NAME, base, token, OP_TIMEOUT + Duration::from_secs(10));
        let base = &api.base;
        let (status, body) = api.call("GET", "/api/clients", None)?;
        match status {
            200 => {}
            401 | 403 => {
                return Err(ConnectError::Token {
                    adapter: NAME,
                    base: base.clone(),
                    status,
                });
            }
            status => {
                return Err(ConnectError::Status {
                    adapter: NAME,
                    base: base.clone(),
                    status,
                    body: body.to_string(),
                });
            }
        }
        let features = Feature::all()
            .into_iter()
            .filter(|f| !matches!(f, Feature::Findings | Feature::RegistrationFindings))
            .collect::<BTreeSet<_>>();
        let adapter = Self {
            api,
            registry,
            info: AdapterInfo {
                adapter: NAME.to_owned(),
                product: "lwm2m-harness serve".to_owned(),
                version: "unknown (the REST API does not say)".to_owned(),
                features,
            },
            sinks: Arc::new(Sinks::default()),
            observations: Mutex::default(),
        };
        adapter.start_events()?;
        Ok(adapter)
    }

    /// Opens `GET /api/event` and feeds the sinks from a thread of its own.
    fn start_events(&self) -> Result<(), HttpError> {
        let (sinks, registry) = (self.sinks.clone(), self.registry.clone());
        self.api.start_events(
            "lwm2m-harness+http events",
            |data| registration_from(data.get("registration")?).ok(),
            move |name, data, versions_of| {
                if let Some(event) = super::json::event_from(name, data, &registry, versions_of) {
                    sinks.deliver(&event);
                } else if let Some(event) = super::json::bootstrap_event_from(name, data) {
                    sinks.deliver_bootstrap(&event);
                } else if name == "SECURITY"
                    && let Some(failed) = super::json::dtls_failure_from(data)
                {
                    sinks.deliver_dtls(&failed);
                }
            },
        )
    }

    /// The object versions `endpoint` registered (cached from events and look-ups).
    fn versions_for(&self, endpoint: &str) -> BTreeMap<ObjectId, String> {
        self.api
            .versions_for(endpoint, || self.registration(endpoint).ok().flatten())
    }
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
                let records = super::json::create_records(*object, *instance, resources);
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
            .api
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
        self.api
            .registration(endpoint, registration_from, |status, _| status == 404)
    }

    fn subscribe(&self, sink: EventSink) -> Result<(), AdapterError> {
        self.sinks.add(sink);
        Ok(())
    }

    fn put_psk(&self, endpoint: &str, identity: &[u8], key: &[u8]) -> Result<(), AdapterError> {
        let identity = String::from_utf8(identity.to_vec())
            .map_err(|_| self.api.failed("the API takes UTF-8 PSK identities only"))?;
        let body = json!({"endpoint": endpoint, "credentials": {
            "mode": "psk", "identity": identity,
            "key": key.iter().map(|b| format!("{b:02x}")).collect::<String>()}});
        self.api.put("/api/security/clients", &body)
    }

    fn remove_psk(&self, endpoint: &str) -> Result<(), AdapterError> {
        let route = format!("/api/security/clients/{endpoint}");
        self.api.delete(&route)
    }

    fn put_bootstrap_config(
        &self,
        endpoint: &str,
        config: &BootstrapConfig,
    ) -> Result<(), AdapterError> {
        let config = serde_json::to_value(config).map_err(|e| self.api.failed(e.to_string()))?;
        let (route, body) = if endpoint.contains(['*', '?']) {
            (
                "/api/bootstrap".to_owned(),
                json!({"pattern": endpoint, "config": config}),
            )
        } else {
            (format!("/api/bootstrap/{endpoint}"), config)
        };
        self.api.put(&route, &body)
    }

    fn remove_bootstrap_config(&self, endpoint: &str) -> Result<(), AdapterError> {
        let route = if endpoint.contains(['*', '?']) {
            format!("/api/bootstrap?pattern={endpoint}")
        } else {
            format!("/api/bootstrap/{endpoint}")
        };
        self.api.delete(&route)
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
        assert_eq!(
            parse_authority("?token=x"),
            Err(ConnectError::Authority {
                adapter: NAME,
                rest: "?token=x".into()
            })
        );
    }
}
