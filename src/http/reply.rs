//! Replies: JSON bodies with the SCIM media type, ETags, and SCIM errors. The status of an error
//! is chosen by `ScimError` alone; this module only renders it.

use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::scim::ScimError;

/// The SCIM media type (RFC 7644 §8.1).
pub const SCIM_JSON: &str = "application/scim+json";

/// A reply not yet rendered: the content type depends on the request's `Accept`.
pub struct Reply {
    status: StatusCode,
    body: Body,
    etag: Option<String>,
    location: Option<String>,
    retry_after: Option<u64>,
    www_authenticate: bool,
    allow: Option<&'static str>,
}

enum Body {
    Json(Value),
    Text(&'static str),
    Metrics(String),
    Empty,
}

impl Reply {
    fn new(status: StatusCode, body: Body) -> Reply {
        Reply {
            status,
            body,
            etag: None,
            location: None,
            retry_after: None,
            www_authenticate: false,
            allow: None,
        }
    }

    /// A JSON document.
    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply::new(status, Body::Json(body))
    }

    /// A resource with its ETag and, for 201, its `Location`.
    pub fn resource(
        status: StatusCode,
        body: Value,
        etag: String,
        location: Option<String>,
    ) -> Reply {
        let mut reply = Reply::new(status, Body::Json(body));
        reply.etag = Some(etag);
        reply.location = location;
        reply
    }

    /// A plain-text body (health endpoints).
    pub fn text(status: StatusCode, text: &'static str) -> Reply {
        Reply::new(status, Body::Text(text))
    }

    /// Rendered metrics.
    pub fn metrics(text: String) -> Reply {
        Reply::new(StatusCode::OK, Body::Metrics(text))
    }

    /// No body.
    pub fn empty(status: StatusCode) -> Reply {
        Reply::new(status, Body::Empty)
    }

    /// `204 No Content` with the resource's new ETag (RFC 7644 §3.14: an ETag goes in the
    /// header of every reply about a resource).
    pub fn no_content(etag: String) -> Reply {
        let mut reply = Reply::new(StatusCode::NO_CONTENT, Body::Empty);
        reply.etag = Some(etag);
        reply
    }

    /// `304 Not Modified` with the current ETag.
    pub fn not_modified(etag: String) -> Reply {
        let mut reply = Reply::new(StatusCode::NOT_MODIFIED, Body::Empty);
        reply.etag = Some(etag);
        reply
    }

    /// A SCIM error document (RFC 7644 §3.12); `status` is a string there, as the RFC shows.
    pub fn error(err: ScimError) -> Reply {
        let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": err.status.to_string(),
            "detail": err.detail,
        });
        if let (Some(scim_type), Some(map)) = (err.scim_type, body.as_object_mut()) {
            map.insert("scimType".to_string(), Value::from(scim_type.as_str()));
        }
        let mut reply = Reply::new(status, Body::Json(body));
        reply.retry_after = err.retry_after;
        reply.www_authenticate = err.status == 401;
        reply
    }

    /// A 405 error that lists the allowed methods.
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> Reply {
        let mut reply = Reply::error(ScimError::method_not_allowed(method.as_str()));
        reply.allow = Some(allow);
        reply
    }

    /// Renders the reply; JSON bodies are `application/scim+json` unless the client's `Accept`
    /// asks for `application/json` and not for the SCIM type (OneLogin requires
    /// `application/json`, see tests/fixtures/idp/onelogin).
    pub fn into_response(self, request_headers: &HeaderMap) -> warp::reply::Response {
        let (body, content_type): (String, _) = match self.body {
            Body::Json(value) => (
                crate::scim::json::to_text(&value),
                Some(json_content_type(request_headers)),
            ),
            Body::Text(text) => (text.to_string(), Some("text/plain; charset=utf-8")),
            Body::Metrics(text) => (text, Some(crate::metrics::CONTENT_TYPE)),
            Body::Empty => (String::new(), None),
        };
        let mut response = warp::reply::Response::new(body.into());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(content_type) = content_type {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
        }
        if let Some(etag) = self.etag.and_then(|etag| HeaderValue::from_str(&etag).ok()) {
            headers.insert(http::header::ETAG, etag);
        }
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(http::header::LOCATION, location);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.www_authenticate {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scim2ldap\""),
            );
        }
        if let Some(allow) = self.allow {
            headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

fn json_content_type(request_headers: &HeaderMap) -> &'static str {
    let accept = request_headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    if accept.contains("application/json") && !accept.contains("scim+json") {
        "application/json"
    } else {
        SCIM_JSON
    }
}
