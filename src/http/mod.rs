//! HTTP: the warp filter, the accept loop with graceful shutdown, routing, auth and body limits.
//!
//! A request is extracted by one warp filter (method, path, query, headers, body stream) and
//! routed here by a table over path segments, so that 404, 405 and 401 are ours and always carry
//! a SCIM error body. Domain failures are replies, never warp rejections. Every response carries
//! `X-Request-Id`, which also tags the request's log lines.

mod auth;
mod limit;
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
pub use limit::RateLimiter;
pub(crate) use route::etag_matches;
pub use route::Route;
pub use throttle::AuthThrottle;

use crate::control::Control;
use crate::scim::ScimError;
use crate::service::Service;

/// Name of the response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What every request handler shares.
#[derive(Clone)]
pub struct HttpState {
    /// The use cases.
    pub service: Arc<Service>,
    /// Token check (reloadable) and heartbeats.
    pub control: Control,
    /// The request rate limit, when enabled.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Path prefix of the SCIM endpoints, e.g. `/scim/v2`.
    pub base_path: Arc<str>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Failed authentications per client, to slow down token guessing.
    pub auth_throttle: Arc<AuthThrottle>,
    /// Peers whose `X-Forwarded-For` names the client (`server.trusted_proxies`).
    pub trusted_proxies: Arc<[std::net::IpAddr]>,
}

/// The address of the client of a connection, put into each request's extensions by `serve`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// One extracted request, before routing.
#[derive(Clone)]
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
                // Boxed so that the large request future is not copied on every move.
                Box::pin(handle(state, request, body)).await
            },
        )
}

/// How `serve` treats accepted connections.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// TLS handshake first (HTTPS); None serves plain HTTP.
    pub tls: Option<crate::tls::Acceptor>,
    /// Beaten every second while the accept loop runs (the watchdog's sign of life).
    pub heartbeat: Option<Control>,
    /// Longest a client may take to send a request's headers; None: `HEADER_READ_TIMEOUT`.
    pub header_read_timeout: Option<Duration>,
    /// Most connections open at once; None: `MAX_CONNECTIONS`.
    pub max_connections: Option<usize>,
}

/// Longest time a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send a request's headers, counted from when the connection
/// waits for a request: a connection that sends nothing, or a byte at a time, is closed, and so
/// is a keep-alive connection idle that long (IdPs reconnect).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Most connections served at once. Beyond it the accept loop waits (clients wait in the listen
/// backlog) until one closes, so that a flood of connections cannot take every file descriptor
/// the cache and the directory pool need; the header timeout frees idle ones.
pub const MAX_CONNECTIONS: usize = 1024;

/// Serves `filter` on `listener` until `shutdown` resolves, then drains in-flight requests for
/// at most `drain`.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
    options: ServeOptions,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1 only, which every IdP speaks: telling HTTP/1 from HTTP/2 first waits for a
    // client's first bytes with no time limit, and HTTP/2 has no header timeout, so silent
    // connections would keep their slots for good.
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .http1_only();
    // Without a timer hyper drops its header timeout silently.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_read_timeout.unwrap_or(HEADER_READ_TIMEOUT));
    let connections = Arc::new(tokio::sync::Semaphore::new(
        options.max_connections.unwrap_or(MAX_CONNECTIONS),
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (permit, stream, peer) = tokio::select! {
            // A connection slot first, then the connection; never closed, so always Some.
            accepted = async {
                let permit = connections.clone().acquire_owned().await.ok()?;
                Some((permit, listener.accept().await))
            } => match accepted {
                None => break,
                Some((permit, Ok((stream, peer)))) => (permit, stream, peer),
                Some((_, Err(err))) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = beat.tick() => {
                if let Some(control) = &options.heartbeat {
                    control.beat_loop();
                }
                continue;
            }
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(WithPeer {
            inner: warp::service(filter.clone()),
            peer,
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &options.tls {
            None => {
                tokio::spawn(async move {
                    let _slot = permit;
                    let connection =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    if let Err(err) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
                    }
                });
            }
            Some(tls) => {
                // The handshake runs in the connection's task with the certificate in force
                // now; a reload changes it for later handshakes only.
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let _slot = permit;
                    let stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            crate::metrics::record_tls_handshake_failure();
                            tracing::debug!(peer = %peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            crate::metrics::record_tls_handshake_failure();
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let connection =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    if let Err(err) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
                    }
                });
            }
        }
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

/// The filter of the metrics listener (`server.metrics_listen`): `/metrics` without
/// authentication, 404 for any other path; other methods than GET are warp's 405.
pub fn metrics_filter(
    service: Arc<Service>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::path::full())
        .and(warp::any().map(move || service.clone()))
        .then(
            |path: warp::path::FullPath, service: Arc<Service>| async move {
                let started = Instant::now();
                let reply = if path.as_str() == "/metrics" {
                    metrics_reply(&service).await
                } else {
                    reply::Reply::text(StatusCode::NOT_FOUND, "not found")
                };
                let response = reply.into_response(&HeaderMap::new());
                crate::metrics::record_request(
                    "/metrics (metrics_listen)",
                    &Method::GET,
                    response.status().as_u16(),
                    started.elapsed(),
                );
                response
            },
        )
}

async fn metrics_reply(service: &Service) -> reply::Reply {
    let snapshot = service.metrics_snapshot().await;
    reply::Reply::metrics(crate::metrics::render(&snapshot))
}

/// Authenticates, reads the body within the limit, routes, and logs one line.
async fn handle<S, B>(state: HttpState, request: RawRequest, body: S) -> warp::reply::Response
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let started = Instant::now();
    let request_id = crate::new_uuid().simple().to_string();
    let route = route::Route::resolve(&state.base_path, &request.path);
    // The one span of a request: every line logged while it runs carries these fields (the
    // JSON format shows only the innermost span, so the service adds none of its own). Fields
    // are set here, not recorded later: the JSON format re-parses a span's fields on each record.
    // Cut: the path is the client's, read before its token is (an id is 36 characters).
    let resource_id = match &route {
        Route::Resource(_, id) => {
            Some(&id[..id.char_indices().nth(64).map_or(id.len(), |(at, _)| at)])
        }
        _ => None,
    };
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method,
        route = route.template(),
        resource_id,
    );
    let template = route.template();
    async move {
        let mut token = None;
        let response = respond(&state, &request, &request_id, route, body, &mut token).await;
        let mut response = response.into_response(&request.headers);
        if let Ok(value) = http::HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        let elapsed = started.elapsed();
        crate::metrics::record_request(
            template,
            &request.method,
            response.status().as_u16(),
            elapsed,
        );
        tracing::info!(
            token = token.as_deref().unwrap_or("-"),
            status = response.status().as_u16(),
            duration_us = elapsed.as_micros() as u64,
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
    request_id: &str,
    route: Route,
    body: S,
    token: &mut Option<Arc<str>>,
) -> reply::Reply
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    match route {
        Route::Healthz => return reply::Reply::text(StatusCode::OK, "ok"),
        Route::Readyz if state.control.is_starting() => {
            return reply::Reply::text(StatusCode::SERVICE_UNAVAILABLE, "starting")
        }
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
    let peer_ip = request
        .peer
        .map(|peer| throttle::client_address(peer.ip(), &request.headers, &state.trusted_proxies));
    if let Some(retry_after) = peer_ip.and_then(|ip| state.auth_throttle.blocked(ip, now)) {
        // Refused before the token is looked at, so that a right guess looks like a wrong one.
        // The block itself was logged when it began; the access line records each refusal.
        tracing::debug!(retry_after, "client throttled after failed authentications");
        return reply::Reply::error(ScimError::too_many_requests(retry_after));
    }
    let Some(token_name) = state.control.authenticator().check(&request.headers) else {
        if let Some(ip) = peer_ip {
            if state.auth_throttle.record_failure(ip, now) {
                tracing::warn!(client = %ip, "client blocked after failed authentications; its requests get 429 until the window ends");
            }
        }
        return reply::Reply::error(ScimError::unauthorized());
    };
    if let Some(ip) = peer_ip {
        state.auth_throttle.record_success(ip);
    }
    *token = Some(token_name.clone());
    if state.control.is_starting() {
        return reply::Reply::error(ScimError::starting());
    }
    // The rate limit protects the directory from its IdPs, so it counts authenticated requests
    // only: a flood without a valid token (answered above, by the throttle or 401) cannot use
    // up the IdPs' share. Monitoring is not throttled by a flood of provisioning requests.
    if route != Route::Metrics {
        if let Some(limiter) = &state.limiter {
            if let Err(retry_after) = limiter.acquire() {
                crate::metrics::record_rate_limited();
                return reply::Reply::error(ScimError::too_many_requests(retry_after));
            }
        }
    }
    if route == Route::Metrics {
        return metrics_reply(&state.service).await;
    }
    let body = match read_body(&request.headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(err) => return reply::Reply::error(err),
    };
    let context = crate::audit::AuditContext {
        actor: token_name,
        request_id: Some(request_id.to_string()),
        operation: match request.method {
            Method::POST => "create",
            Method::PUT => "replace",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "read",
        },
        resource_type: match &route {
            Route::Collection(kind) | Route::Resource(kind, _) => Some(kind.as_str()),
            _ => None,
        },
    };
    if matches!(request.method, Method::GET | Method::HEAD) {
        return crate::audit::scope(
            context,
            Box::pin(route::dispatch(state, request, route, body)),
        )
        .await;
    }
    // A write runs in a task of its own: hyper drops a request's future when its client hangs
    // up, and a write dropped between its directory operations and its commit would leave the
    // cache behind the directory (and its intent to be replayed over later writes). The task
    // finishes the write whether or not anybody waits for the answer.
    let (state, request) = (state.clone(), request.clone());
    let write = crate::audit::scope(context, async move {
        route::dispatch(&state, &request, route, body).await
    });
    match tokio::spawn(write.in_current_span()).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::error!(error = %err, "a write's task failed");
            reply::Reply::error(ScimError::internal())
        }
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
        drain(&mut body, declared.unwrap_or(0), limit).await;
        return Err(ScimError::payload_too_large(limit));
    }
    let mut collected = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ScimError::invalid_syntax("the request body could not be read"))?;
        if collected.len() + chunk.remaining() > limit {
            drain(&mut body, 0, limit).await;
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

/// Reads and drops the rest of an oversized body, up to a few times the limit, so that the 413
/// reaches the client: closing a socket with unread data makes the kernel reset it, and the
/// client may then see the reset instead of the reply. Bodies far over the limit are not read.
async fn drain<S, B>(body: &mut S, declared: u64, limit: usize)
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let cap = (limit as u64).saturating_mul(4);
    if declared > cap {
        return;
    }
    let mut drained = 0u64;
    while let Some(Ok(chunk)) = body.next().await {
        drained += chunk.remaining() as u64;
        if drained > cap {
            return;
        }
    }
}

/// Binds `listen`; port 0 picks a free port.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Never constructed: documents that the filter's rejections are unreachable.
pub type NeverRejects = Infallible;

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
