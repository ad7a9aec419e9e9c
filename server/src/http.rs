//! `serve`'s HTTP side as one router: our API ([`crate::rest`]), the Leshan-compatible
//! routes ([`crate::leshan`]), `/metrics`, the cluster's forwarding of client operations
//! ([`crate::cluster`]), all behind the bearer token, and the web UI ([`crate::ui`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};

use crate::auth::token_matches;
use crate::rest::{ApiError, ApiState};

/// The API's router (with the web UI and `/metrics`); serve it with `axum::serve`, inside
/// a tokio runtime (the metrics collector is a task).
pub fn router(state: ApiState) -> Router {
    let state = Arc::new(state);
    let metrics = crate::metrics::Metrics::start(state.server.clone(), &state.bus);
    let api = crate::rest::routes(state.clone())
        .merge(crate::leshan::router(state.clone()))
        .merge(crate::metrics::router(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") });
    let api = match &state.cluster {
        Some(cluster) => {
            let api = api.layer(middleware::from_fn_with_state(
                cluster.clone(),
                crate::cluster::route,
            ));
            cluster.serve_forwarded(api.clone());
            api
        }
        None => api,
    };
    let api = api.layer(middleware::from_fn_with_state(state.clone(), require_token));
    crate::ui::wrap(api, &state.token, &state.web)
}

/// How long open connections (event streams) get to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves the API on `listener` until `shutdown` completes; then open connections get
/// [`SHUTDOWN_GRACE`] to finish (event streams never do) before they are dropped.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        r = &mut server => return r.map_err(std::io::Error::other)?,
        () = shutdown => {}
    }
    let _ = stop.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(r) => r.map_err(std::io::Error::other)?,
        Err(_) => {
            server.abort();
            Ok(())
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive
/// (RFC 7235 §2.1), so `bearer` and `BEARER` do too.
fn bearer_credentials(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

async fn require_token(
    State(st): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> HttpResponse {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials);
    if presented.is_some_and(|t| token_matches(&st.token, t.trim())) {
        next.run(request).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    }
}
