//! The route table: path segments to a `Route`, then method to one service call.
//!
//! Paths are normalised the way identity providers need: duplicate slashes collapse (Okta turns a
//! base URL ending in `/` into `//Users`), a trailing slash is dropped, and the resource
//! endpoint names match ignoring case.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use super::reply::Reply;
use super::{HttpState, RawRequest};
use crate::scim::query::ListQuery;
use crate::scim::ScimError;
use crate::service::{Conditions, Patched, ResourceReply};
use crate::store::Kind;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`: the process is alive.
    Healthz,
    /// `/readyz`: the directory answers and the cache is open.
    Readyz,
    /// `/metrics`: Prometheus metrics (bearer token required on this listener).
    Metrics,
    /// `/ServiceProviderConfig`.
    ServiceProviderConfig,
    /// `/ResourceTypes`.
    ResourceTypes,
    /// `/ResourceTypes/{name}`.
    ResourceType(String),
    /// `/Schemas`.
    Schemas,
    /// `/Schemas/{urn}`.
    Schema(String),
    /// `/Users` or `/Groups`.
    Collection(Kind),
    /// `/Users/{id}` or `/Groups/{id}`.
    Resource(Kind, String),
    /// `/.search`, `/Users/.search`, `/Groups/.search`.
    Search(Option<Kind>),
    /// `/Me`: not offered.
    Me,
    /// `/Bulk`: not offered.
    Bulk,
    /// Anything else.
    NotFound,
}

impl Route {
    /// Resolves a request path (still percent-encoded) under `base_path`.
    pub fn resolve(base_path: &str, path: &str) -> Route {
        let segments: Vec<String> = path
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(|segment| {
                percent_encoding::percent_decode_str(segment)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        match segments.as_slice() {
            [only] if only == "healthz" => return Route::Healthz,
            [only] if only == "readyz" => return Route::Readyz,
            [only] if only == "metrics" => return Route::Metrics,
            _ => {}
        }
        let base: Vec<&str> = base_path.split('/').filter(|s| !s.is_empty()).collect();
        if segments.len() < base.len()
            || !segments
                .iter()
                .zip(&base)
                .all(|(segment, base)| segment.eq_ignore_ascii_case(base))
        {
            return Route::NotFound;
        }
        let rest: Vec<&str> = segments[base.len()..].iter().map(String::as_str).collect();
        let is = |segment: &str, name: &str| segment.eq_ignore_ascii_case(name);
        let kind = |segment: &str| {
            if is(segment, "Users") {
                Some(Kind::User)
            } else if is(segment, "Groups") {
                Some(Kind::Group)
            } else {
                None
            }
        };
        match rest.as_slice() {
            [one] if is(one, "ServiceProviderConfig") => Route::ServiceProviderConfig,
            [one] if is(one, "ResourceTypes") => Route::ResourceTypes,
            [one, name] if is(one, "ResourceTypes") => Route::ResourceType((*name).to_string()),
            [one] if is(one, "Schemas") => Route::Schemas,
            [one, urn] if is(one, "Schemas") => Route::Schema((*urn).to_string()),
            [one] if is(one, ".search") => Route::Search(None),
            [one] if is(one, "Me") => Route::Me,
            [one] if is(one, "Bulk") => Route::Bulk,
            [one] => kind(one).map_or(Route::NotFound, Route::Collection),
            [one, two] if is(two, ".search") => {
                kind(one).map_or(Route::NotFound, |k| Route::Search(Some(k)))
            }
            [one, id] => {
                kind(one).map_or(Route::NotFound, |k| Route::Resource(k, (*id).to_string()))
            }
            _ => Route::NotFound,
        }
    }

    /// The route template, for logs and metrics (never the id itself).
    pub fn template(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::ServiceProviderConfig => "/ServiceProviderConfig",
            Route::ResourceTypes => "/ResourceTypes",
            Route::ResourceType(_) => "/ResourceTypes/{name}",
            Route::Schemas => "/Schemas",
            Route::Schema(_) => "/Schemas/{urn}",
            Route::Collection(Kind::User) => "/Users",
            Route::Collection(Kind::Group) => "/Groups",
            Route::Resource(Kind::User, _) => "/Users/{id}",
            Route::Resource(Kind::Group, _) => "/Groups/{id}",
            Route::Search(None) => "/.search",
            Route::Search(Some(Kind::User)) => "/Users/.search",
            Route::Search(Some(Kind::Group)) => "/Groups/.search",
            Route::Me => "/Me",
            Route::Bulk => "/Bulk",
            Route::NotFound => "unknown",
        }
    }
}

/// Calls the one service function a route and method name, and renders the outcome. Each
/// service future is boxed: they are large, and this one would otherwise be as large as the
/// largest of them and be copied whole on every move.
pub(crate) async fn dispatch(
    state: &HttpState,
    request: &RawRequest,
    route: Route,
    body: Bytes,
) -> Reply {
    let service = &state.service;
    // HEAD is GET without the body (RFC 9110 §9.3.2), which hyper leaves out of the reply.
    let method = match request.method {
        Method::HEAD => &Method::GET,
        ref method => method,
    };
    let outcome: Result<Reply, ScimError> = match route {
        Route::Healthz | Route::Readyz | Route::Metrics => Ok(Reply::text(StatusCode::OK, "ok")),
        Route::NotFound => Err(ScimError::not_found(format!(
            "no SCIM endpoint at {}; the base URL is {}",
            request.path, state.base_path
        ))),
        Route::Me => Err(ScimError::not_implemented(
            "/Me is not offered: the bearer token does not stand for a user",
        )),
        Route::Bulk => Err(ScimError::not_implemented(
            "bulk operations are not offered; see /ServiceProviderConfig",
        )),
        Route::ServiceProviderConfig | Route::ResourceTypes | Route::Schemas
            if *method != Method::GET =>
        {
            return Reply::method_not_allowed(&request.method, "GET, HEAD")
        }
        Route::ResourceType(_) | Route::Schema(_) if *method != Method::GET => {
            return Reply::method_not_allowed(&request.method, "GET, HEAD")
        }
        // RFC 7644 §4: a discovery endpoint does not filter, and says so rather than answer
        // everything to a client that would take it for the matches.
        Route::ServiceProviderConfig | Route::ResourceTypes | Route::Schemas
            if form_urlencoded::parse(request.query.as_bytes())
                .any(|(key, _)| key.eq_ignore_ascii_case("filter")) =>
        {
            Err(ScimError::forbidden(
                "discovery endpoints take no filter (RFC 7644 §4); read the whole list",
            ))
        }
        Route::ServiceProviderConfig => Ok(Reply::json(
            StatusCode::OK,
            service.discovery().service_provider_config(),
        )),
        Route::ResourceTypes => Ok(Reply::json(
            StatusCode::OK,
            service.discovery().resource_types(),
        )),
        Route::ResourceType(name) => service
            .discovery()
            .resource_type(&name)
            .map(|doc| Reply::json(StatusCode::OK, doc)),
        Route::Schemas => Ok(Reply::json(StatusCode::OK, service.discovery().schemas())),
        Route::Schema(urn) => service
            .discovery()
            .schema(&urn)
            .map(|doc| Reply::json(StatusCode::OK, doc)),
        Route::Search(kind) => {
            if *method != Method::POST {
                return Reply::method_not_allowed(&request.method, "POST");
            }
            match parse_json(&request.headers, &body)
                .and_then(|doc| ListQuery::from_search_request(&doc))
            {
                Ok(query) => Box::pin(service.list(kind, &query))
                    .await
                    .map(|list| Reply::json(StatusCode::OK, list)),
                Err(err) => Err(err),
            }
        }
        Route::Collection(kind) => match *method {
            Method::GET => match ListQuery::from_query_string(&request.query) {
                Ok(query) => Box::pin(service.list(Some(kind), &query))
                    .await
                    .map(|list| Reply::json(StatusCode::OK, list)),
                Err(err) => Err(err),
            },
            Method::POST => match parse_json(&request.headers, &body)
                .and_then(|doc| Ok((doc, projection(&request.query)?)))
            {
                Ok((doc, projection)) => Box::pin(service.create(kind, doc, &projection))
                    .await
                    .map(|created| resource_reply(StatusCode::CREATED, created, true)),
                Err(err) => Err(err),
            },
            _ => return Reply::method_not_allowed(&request.method, "GET, HEAD, POST"),
        },
        Route::Resource(kind, id) => {
            let conditions = conditions(&request.headers);
            let projection = match projection(&request.query) {
                Ok(projection) => projection,
                Err(err) => return Reply::error(err),
            };
            match *method {
                Method::GET => Box::pin(service.get(kind, &id, &projection))
                    .await
                    .map(|found| match &conditions.if_none_match {
                        Some(tags) if etag_matches(tags, &found.etag) => {
                            Reply::not_modified(found.etag)
                        }
                        _ => resource_reply(StatusCode::OK, found, false),
                    }),
                Method::PUT => match parse_json(&request.headers, &body) {
                    Ok(doc) => Box::pin(service.replace(kind, &id, doc, &conditions, &projection))
                        .await
                        .map(|replaced| resource_reply(StatusCode::OK, replaced, false)),
                    Err(err) => Err(err),
                },
                Method::PATCH => match parse_json(&request.headers, &body) {
                    Ok(doc) => Box::pin(service.patch(kind, &id, doc, &conditions, &projection))
                        .await
                        .map(|patched| match patched {
                            Patched::Resource(patched) => {
                                resource_reply(StatusCode::OK, patched, false)
                            }
                            Patched::NoContent { etag } => Reply::no_content(etag),
                        }),
                    Err(err) => Err(err),
                },
                Method::DELETE => Box::pin(service.delete(kind, &id, &conditions))
                    .await
                    .map(|()| Reply::empty(StatusCode::NO_CONTENT)),
                _ => {
                    return Reply::method_not_allowed(
                        &request.method,
                        "GET, HEAD, PUT, PATCH, DELETE",
                    )
                }
            }
        }
    };
    match outcome {
        Ok(reply) => reply,
        Err(err) => {
            if err.status >= 500 {
                tracing::warn!(status = err.status, detail = %err.detail, "request failed");
            } else {
                // A refusal's detail may quote a value the client sent (a taken userName).
                tracing::debug!(status = err.status, scim_type = ?err.scim_type, "request refused");
                tracing::trace!(detail = %err.detail, "refusal detail");
            }
            Reply::error(err)
        }
    }
}

fn resource_reply(status: StatusCode, reply: ResourceReply, with_location: bool) -> Reply {
    let location = with_location.then(|| reply.location.clone());
    Reply::resource(status, reply.body, reply.etag, location)
}

/// `attributes` / `excludedAttributes` from the query string of a single-resource request; a
/// bad one is refused as on a list, not ignored (the client would take the full resource for
/// its projection).
fn projection(query: &str) -> Result<ListQuery, ScimError> {
    ListQuery::from_query_string(query)
}

fn conditions(headers: &HeaderMap) -> Conditions {
    let header = |name: http::header::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    Conditions {
        if_match: header(http::header::IF_MATCH),
        if_none_match: header(http::header::IF_NONE_MATCH),
    }
}

/// True when an `If-None-Match` / `If-Match` list names `etag` (weak comparison) or is `*`.
pub(crate) fn etag_matches(list: &str, etag: &str) -> bool {
    let strip = |tag: &str| {
        tag.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    let etag = strip(etag);
    list.split(',')
        .any(|tag| tag.trim() == "*" || strip(tag) == etag)
}

/// Parses a JSON request body. Identity providers send `application/scim+json`,
/// `application/json` (with or without a charset), `text/plain` or no type at all; all are read
/// as JSON. A type that cannot hold JSON (a form, XML) is refused.
fn parse_json(headers: &HeaderMap, body: &Bytes) -> Result<Value, ScimError> {
    if let Some(content_type) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    {
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let acceptable = media_type.is_empty()
            || media_type == "application/json"
            || media_type == "text/plain"
            || media_type == "*/*"
            || media_type.ends_with("+json");
        if !acceptable {
            return Err(ScimError::invalid_syntax(format!(
                "content type `{media_type}` is not JSON; send application/scim+json"
            )));
        }
    }
    if body.is_empty() {
        return Err(ScimError::invalid_syntax(
            "the request body is empty; a JSON object is required",
        ));
    }
    crate::scim::json::parse_object(body)
}
