//! HTTP: the warp filter, the accept loop with graceful shutdown, routing, auth and body limits.
//!
//! A request is extracted by one warp filter (method, path, query, headers, body stream) and
//! routed here by a table over path segments, so that 404, 405 and 401 are ours and always carry
//! a SCIM error body. Domain failures are replies, never warp rejections. Every response carries
//! `X-Request-Id`, which also tags the request's log lines.

mod auth;
mod reply;
mod route;
pub mod throttle;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use http::{HeaderMap, Method, StatusCode};
use tokio::net::TcpListener;
use tracing::Instrument;
use warp::Filter;

pub use auth::{new_token, Authenticator, NewToken};
pub(crate) use route::etag_matches;
pub use route::Route;
pub use throttle::AuthThrottle;

use crate::scim::ScimError;
use crate::service::Service;

/// Name of the response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What every request handler shares.
#[derive(Clone)]
pub struct HttpState {
    /// The use cases.
    pub service: Arc<Service>,
    /// Token check.
    pub auth: Arc<Authenticator>,
    /// Path prefix of the SCIM endpoints, e.g. `/scim/v2`.
    pub base_path: Arc<str>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Failed authentications per client, to slow down token guessing.
    pub auth_throttle: Arc<AuthThrottle>,
}

/// The address of the client of a connection, put into each request's extensions by `serve`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// One extracted request, before routing.
pub(crate) struct RawRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    /// The client's address; `None` when the filter runs outside `serve`.
    pub(crate) peer: Option<SocketAddr>,
}

/// The warp filter: extracts everything and hands it to `handle`; it never rejects.
pub fn filter(
    state: HttpState,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::body::stream())
        .and(warp::any().map(move || state.clone()))
        .then(
            |method: Method,
             path: warp::path::FullPath,
             query: String,
             headers: HeaderMap,
             peer: Option<PeerAddr>,
             body,
             state: HttpState| async move {
                let request = RawRequest {
                    method,
                    path: path.as_str().to_string(),
                    query,
                    headers,
                    peer: peer.map(|PeerAddr(addr)| addr),
                };
                handle(state, request, body).await
            },
        )
}

/// Serves `filter` on `listener` until `shutdown` resolves, then drains in-flight requests for
/// at most `drain`.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(WithPeer {
            inner: warp::service(filter.clone()),
            peer,
        });
        let connection = builder
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        drain_secs = drain.as_secs(),
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain time over; closing remaining connections"),
    }
}

/// Authenticates, reads the body within the limit, routes, and logs one line.
async fn handle<S, B>(state: HttpState, request: RawRequest, body: S) -> warp::reply::Response
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let route = route::Route::resolve(&state.base_path, &request.path);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method,
        route = route.template(),
    );
    async move {
        let response = respond(&state, &request, route, body).await;
        let mut response = response.into_response(&request.headers);
        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        tracing::info!(
            status = response.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }
    .instrument(span)
    .await
}

async fn respond<S, B>(
    state: &HttpState,
    request: &RawRequest,
    route: Route,
    body: S,
) -> reply::Reply
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    match route {
        Route::Healthz => return reply::Reply::text(StatusCode::OK, "ok"),
        Route::Readyz => {
            return match state.service.ready().await {
                Ok(()) => reply::Reply::text(StatusCode::OK, "ready"),
                Err(reason) => {
                    tracing::warn!(reason = %reason, "not ready");
                    reply::Reply::text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
        }
        _ => {}
    }
    let now = Instant::now();
    let peer_ip = request.peer.map(|peer| peer.ip());
    if let Some(retry_after) = peer_ip.and_then(|ip| state.auth_throttle.blocked(ip, now)) {
        // Refused before the token is looked at, so that a right guess looks like a wrong one.
        tracing::warn!(retry_after, "client throttled after failed authentications");
        return reply::Reply::error(ScimError::too_many_requests(retry_after));
    }
    if !state.auth.check(&request.headers) {
        if let Some(ip) = peer_ip {
            state.auth_throttle.record_failure(ip, now);
        }
        return reply::Reply::error(ScimError::unauthorized());
    }
    if let Some(ip) = peer_ip {
        state.auth_throttle.record_success(ip);
    }
    let body = match read_body(&request.headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(err) => return reply::Reply::error(err),
    };
    route::dispatch(state, request, route, body).await
}

/// A tower service that tags each request of one connection with the client's address.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> tower_service::Service<http::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        request.extensions_mut().insert(PeerAddr(self.peer));
        self.inner.call(request)
    }
}

/// Reads the body, refusing with 413 as soon as it exceeds `limit`.
async fn read_body<S, B>(headers: &HeaderMap, mut body: S, limit: usize) -> Result<Bytes, ScimError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ScimError::payload_too_large(limit));
    }
    let mut collected = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ScimError::invalid_syntax("the request body could not be read"))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(ScimError::payload_too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(collected))
}

/// Binds `listen`; port 0 picks a free port.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Never constructed: documents that the filter's rejections are unreachable.
pub type NeverRejects = Infallible;
