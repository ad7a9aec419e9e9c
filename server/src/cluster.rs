//! Several `serve` instances sharing one Redis ([`crate::store::redis`]): a cluster behind
//! a UDP load balancer.
//!
//! - Registrations carry their owner: the instance whose socket the client last spoke to
//!   (its NAT binding). A client's Update that lands on another instance (the load
//!   balancer moved it, or its instance died) is looked up in Redis there and taken over
//!   ([`lwm2m_proto::server::Lwm2mServer::adopt`]); the former owner hears of it on its
//!   `release` channel and forgets the endpoint.
//! - A REST call about a client (`/api/clients/{ep}/...`, `/leshan/api/clients/{ep}/...`)
//!   that reaches an instance that does not own the client is forwarded over Redis pub/sub
//!   to the owner (`lwm2m:ops:{instance}`), which runs it through its own API and publishes
//!   the answer back (`lwm2m:replies:{instance}`): the CoAP request leaves from the socket
//!   the client's NAT binding points at.
//! - Notifications are published on `lwm2m:events`; every instance's event stream carries
//!   the other instances' as [`Event::Remote`].
//!
//! DTLS sessions stay with the instance that made them: a client that moves handshakes
//! again (and, over DTLS, registers again: only plain-CoAP Updates are taken over).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lwm2m_proto::registry::Registry;
use lwm2m_proto::server::ServerEvent;
use serde_json::{Value as Json, json};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;

use crate::driver::ServerHandle;
use crate::events::{Event, EventBus};
use crate::store::StoreError;
use crate::store::redis::{PREFIX, RedisConnection, RedisRegistrations, release_channel};

/// Marks a request forwarded by another instance: it is run here, never forwarded again.
const FORWARDED: &str = "x-lwm2m-forwarded-by";

/// How long a forwarded call may take (the operation's own timeout runs at the owner).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(330);

/// The largest request body forwarded.
const MAX_BODY: usize = 16 << 20;

fn channel(kind: &str, instance: &str) -> String {
    format!("{PREFIX}{kind}:{instance}")
}

fn events_channel() -> String {
    format!("{PREFIX}events")
}

/// A REST call on its way to the instance that owns the client.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OpRequest {
    id: u64,
    from: String,
    method: String,
    uri: String,
    content_type: Option<String>,
    accept: Option<String>,
    /// Hex.
    body: String,
}

/// Its answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OpReply {
    id: u64,
    status: u16,
    content_type: Option<String>,
    /// Hex.
    body: String,
}

/// An event published for the other instances.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Published {
    origin: String,
    name: String,
    data: Json,
}

fn hex(bytes: &[u8]) -> String {
    crate::store::hex(bytes)
}

fn unhex(s: &str) -> Vec<u8> {
    lwm2m_proto::value::parse_hex(s).unwrap_or_default()
}

/// One instance's membership of the cluster.
pub struct Cluster {
    instance: String,
    redis: Arc<RedisConnection>,
    registrations: Arc<RedisRegistrations>,
    publisher: redis::aio::MultiplexedConnection,
    pending: Mutex<HashMap<u64, oneshot::Sender<OpReply>>>,
    next: AtomicU64,
    /// This instance's API without authentication (callers were checked where they came
    /// in), for the calls other instances forward.
    api: OnceLock<Router>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Joins: opens the publishing connection. The instance name must be unique in the
    /// cluster. Call [`Cluster::run`] once the LwM2M Server runs.
    pub async fn join(
        redis: Arc<RedisConnection>,
        registrations: Arc<RedisRegistrations>,
    ) -> Result<Arc<Self>, StoreError> {
        let publisher = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| StoreError::Redis {
                reason: e.to_string(),
            })?;
        Ok(Arc::new(Self {
            instance: registrations.instance().to_owned(),
            redis,
            registrations,
            publisher,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            api: OnceLock::new(),
        }))
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Starts listening (forwarded calls, answers, takeovers, other instances' events)
    /// and publishing this instance's notifications.
    pub fn run(self: &Arc<Self>, server: ServerHandle, bus: EventBus, registry: Arc<Registry>) {
        let me = self.clone();
        let subscriber_bus = bus.clone();
        tokio::spawn(async move { me.listen(server, subscriber_bus).await });
        let me = self.clone();
        tokio::spawn(async move { me.publish_events(bus, registry).await });
    }

    /// Sets the API forwarded calls run through (once).
    pub(crate) fn serve_forwarded(&self, api: Router) {
        let _ = self.api.set(api);
    }

    async fn listen(self: Arc<Self>, server: ServerHandle, bus: EventBus) {
        let ops = channel("ops", &self.instance);
        let replies = channel("replies", &self.instance);
        let release = release_channel(&self.instance);
        let events = events_channel();
        loop {
            let mut pubsub = match self.redis.client().get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("cluster: cannot subscribe in Redis: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut subscribed = true;
            for ch in [&ops, &replies, &release, &events] {
                if let Err(e) = pubsub.subscribe(ch).await {
                    tracing::error!("cluster: cannot subscribe to {ch}: {e}");
                    subscribed = false;
                }
            }
            if !subscribed {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let name = msg.get_channel_name().to_owned();
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                if name == ops {
                    let me = self.clone();
                    tokio::spawn(async move { me.run_forwarded(&payload).await });
                } else if name == replies {
                    self.answer(&payload);
                } else if name == release {
                    if let Err(e) = server.release(&payload).await {
                        tracing::debug!("cluster: releasing {payload:?}: {e}");
                    }
                } else if name == events {
                    self.remote_event(&bus, &payload);
                }
            }
            tracing::error!("cluster: the Redis subscription ended; subscribing again");
        }
    }

    fn answer(&self, payload: &str) {
        let Ok(reply) = serde_json::from_str::<OpReply>(payload) else {
            tracing::warn!("cluster: an answer that does not decode");
            return;
        };
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reply.id);
        if let Some(tx) = waiting {
            let _ = tx.send(reply);
        }
    }

    fn remote_event(&self, bus: &EventBus, payload: &str) {
        let Ok(p) = serde_json::from_str::<Published>(payload) else {
            return;
        };
        if p.origin == self.instance || !bus.has_subscribers() {
            return;
        }
        let name = match p.name.as_str() {
            "NOTIFICATION" => "NOTIFICATION",
            _ => return,
        };
        bus.send(Event::Remote {
            instance: p.origin,
            name,
            data: p.data,
        });
    }

    async fn publish_events(self: Arc<Self>, bus: EventBus, registry: Arc<Registry>) {
        let mut rx = bus.subscribe();
        let mut con = self.publisher.clone();
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("cluster: {n} events not published (too many at once)");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if !matches!(&*event, Event::Server(ServerEvent::Notification { .. })) {
                continue;
            }
            let Some((name, data)) = crate::json::event(&registry, &event) else {
                continue;
            };
            let message = Published {
                origin: self.instance.clone(),
                name: name.to_owned(),
                data,
            };
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            if let Err(e) = redis::cmd("PUBLISH")
                .arg(events_channel())
                .arg(text)
                .query_async::<i64>(&mut con)
                .await
            {
                tracing::warn!("cluster: publishing a notification: {e}");
            }
        }
    }

    async fn publish(&self, channel: &str, text: String) -> redis::RedisResult<i64> {
        let mut con = self.publisher.clone();
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(text)
            .query_async(&mut con)
            .await
    }

    /// Runs a call another instance forwarded and publishes the answer.
    async fn run_forwarded(&self, payload: &str) {
        let Ok(op) = serde_json::from_str::<OpRequest>(payload) else {
            tracing::warn!("cluster: a forwarded call that does not decode");
            return;
        };
        let reply = match self.api.get() {
            Some(api) => {
                let mut builder = Request::builder()
                    .method(op.method.as_str())
                    .uri(op.uri.as_str())
                    .header(FORWARDED, op.from.as_str());
                if let Some(ct) = &op.content_type {
                    builder = builder.header(header::CONTENT_TYPE, ct.as_str());
                }
                if let Some(accept) = &op.accept {
                    builder = builder.header(header::ACCEPT, accept.as_str());
                }
                match builder.body(Body::from(unhex(&op.body))) {
                    Ok(request) => {
                        use tower::ServiceExt;
                        match api.clone().oneshot(request).await {
                            Ok(response) => reply_of(op.id, response).await,
                            Err(never) => match never {},
                        }
                    }
                    Err(e) => OpReply {
                        id: op.id,
                        status: 400,
                        content_type: Some("application/json".into()),
                        body: hex(json!({"error": e.to_string()}).to_string().as_bytes()),
                    },
                }
            }
            None => OpReply {
                id: op.id,
                status: 503,
                content_type: Some("application/json".into()),
                body: hex(json!({"error": "instance starting"}).to_string().as_bytes()),
            },
        };
        let Ok(text) = serde_json::to_string(&reply) else {
            return;
        };
        if let Err(e) = self.publish(&channel("replies", &op.from), text).await {
            tracing::warn!("cluster: answering {}: {e}", op.from);
        }
    }

    /// Forwards a call to the instance that owns the client and waits for its answer.
    async fn forward(&self, owner: &str, endpoint: &str, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("request body: {e}")),
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let header_text = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let op = OpRequest {
            id,
            from: self.instance.clone(),
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            content_type: header_text(header::CONTENT_TYPE),
            accept: header_text(header::ACCEPT),
            body: hex(&body),
        };
        let Ok(text) = serde_json::to_string(&op) else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the call");
        };
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let forget = || {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        };
        match self.publish(&channel("ops", owner), text).await {
            Ok(0) => {
                forget();
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "endpoint {endpoint:?} speaks to server instance {owner:?}, which does \
                         not answer (stopped?); its next Update moves it to a live instance"
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => {
                forget();
                return error(StatusCode::SERVICE_UNAVAILABLE, &format!("Redis: {e}"));
            }
        }
        match tokio::time::timeout(FORWARD_TIMEOUT, rx).await {
            Ok(Ok(reply)) => {
                let mut response = Response::new(Body::from(unhex(&reply.body)));
                *response.status_mut() =
                    StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
                if let Some(ct) = reply
                    .content_type
                    .and_then(|c| HeaderValue::from_str(&c).ok())
                {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                response
            }
            _ => {
                forget();
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("no answer from server instance {owner:?}"),
                )
            }
        }
    }
}

async fn reply_of(id: u64, response: Response) -> OpReply {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(response.into_body(), MAX_BODY)
        .await
        .unwrap_or_default();
    OpReply {
        id,
        status,
        content_type,
        body: hex(&body),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The endpoint a client route is about (`/api/clients/{ep}/...` or
/// `/leshan/api/clients/{ep}/...`, with something after the name: an operation).
fn client_of(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/api/clients/")
        .or_else(|| path.strip_prefix("/leshan/api/clients/"))?;
    let (ep, op) = rest.split_once('/')?;
    (!ep.is_empty() && !op.is_empty()).then(|| crate::query::percent_decode(ep))
}

/// Middleware: runs a client operation here if this instance owns the client (or nobody
/// does), else forwards it to the owner.
pub(crate) async fn route(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(FORWARDED) {
        return next.run(request).await;
    }
    let Some(endpoint) = client_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let registrations = cluster.registrations.clone();
    let ep = endpoint.clone();
    let owner = tokio::task::spawn_blocking(move || registrations.owner(&ep)).await;
    match owner {
        Ok(Ok(Some(owner))) if owner != cluster.instance => {
            cluster.forward(&owner, &endpoint, request).await
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        _ => next.run(request).await,
    }
}
