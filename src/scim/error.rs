//! The SCIM error: the only error type that reaches a client (RFC 7644 §3.12).
//!
//! One constructor per `scimType`; the HTTP layer renders it. It must never carry directory
//! server text, DNs of other entries or secrets.

use std::fmt;

/// `scimType` values of RFC 7644 §3.12, table 9.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScimType {
    InvalidFilter,
    TooMany,
    Uniqueness,
    Mutability,
    InvalidSyntax,
    InvalidPath,
    NoTarget,
    InvalidValue,
    InvalidVers,
    Sensitive,
}

impl ScimType {
    /// The wire spelling of the `scimType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::InvalidVers => "invalidVers",
            ScimType::Sensitive => "sensitive",
        }
    }
}

/// An error as the client sees it: HTTP status, optional `scimType` and a detail for the admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScimError {
    /// HTTP status code.
    pub status: u16,
    /// RFC 7644 `scimType`, only for 400 and 409 kinds.
    pub scim_type: Option<ScimType>,
    /// Human-readable detail, written for the IdP administrator.
    pub detail: String,
    /// Seconds for a `Retry-After` header (503, 429).
    pub retry_after: Option<u64>,
}

impl ScimError {
    fn new(status: u16, scim_type: Option<ScimType>, detail: impl Into<String>) -> ScimError {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400 `invalidFilter`: the filter syntax was invalid or the filter is not supported.
    pub fn invalid_filter(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::InvalidFilter), detail)
    }
    /// 400 `tooMany`: the filter or request would return or touch too many results.
    pub fn too_many(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::TooMany), detail)
    }
    /// 409 `uniqueness`: one or more unique attribute values are in use.
    pub fn uniqueness(detail: impl Into<String>) -> ScimError {
        ScimError::new(409, Some(ScimType::Uniqueness), detail)
    }
    /// 400 `mutability`: the request tried to modify an immutable attribute.
    pub fn mutability(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::Mutability), detail)
    }
    /// 400 `invalidSyntax`: the request body structure was invalid.
    pub fn invalid_syntax(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::InvalidSyntax), detail)
    }
    /// 400 `invalidPath`: the PATCH `path` was invalid or not supported.
    pub fn invalid_path(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::InvalidPath), detail)
    }
    /// 400 `noTarget`: the PATCH path did not yield an attribute or value to operate on.
    pub fn no_target(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::NoTarget), detail)
    }
    /// 400 `invalidValue`: a required value was missing or a value was not compatible.
    pub fn invalid_value(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::InvalidValue), detail)
    }
    /// 400 `invalidVers`: the protocol version is not supported.
    pub fn invalid_vers(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, Some(ScimType::InvalidVers), detail)
    }
    /// 403 `sensitive`: the request put sensitive data in the URI.
    pub fn sensitive(detail: impl Into<String>) -> ScimError {
        ScimError::new(403, Some(ScimType::Sensitive), detail)
    }
    /// 400 without a `scimType`.
    pub fn bad_request(detail: impl Into<String>) -> ScimError {
        ScimError::new(400, None, detail)
    }
    /// 401: no or wrong bearer token.
    pub fn unauthorized() -> ScimError {
        ScimError::new(401, None, "a valid bearer token is required")
    }
    /// 403: the request is understood and refused (RFC 7644 §4: a filter on a discovery
    /// endpoint).
    pub fn forbidden(detail: impl Into<String>) -> ScimError {
        ScimError::new(403, None, detail)
    }
    /// 404: the resource or endpoint does not exist.
    pub fn not_found(detail: impl Into<String>) -> ScimError {
        ScimError::new(404, None, detail)
    }
    /// 405: the endpoint exists but not for this method.
    pub fn method_not_allowed(method: &str) -> ScimError {
        ScimError::new(405, None, format!("method {method} is not allowed here"))
    }
    /// 409 without `scimType`: a conflict that is not about a unique attribute.
    pub fn conflict(detail: impl Into<String>) -> ScimError {
        ScimError::new(409, None, detail)
    }
    /// 412: `If-Match` did not match the resource's current version.
    pub fn precondition_failed(detail: impl Into<String>) -> ScimError {
        ScimError::new(412, None, detail)
    }
    /// 413: the request body is larger than the configured limit.
    pub fn payload_too_large(limit: usize) -> ScimError {
        ScimError::new(
            413,
            None,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }
    /// 429: too many requests; retry after the given seconds.
    pub fn too_many_requests(retry_after: u64) -> ScimError {
        let mut err = ScimError::new(429, None, "too many requests");
        err.retry_after = Some(retry_after);
        err
    }
    /// 500: an internal failure; the cause is in the log under the request id.
    pub fn internal() -> ScimError {
        ScimError::new(
            500,
            None,
            "internal error; the server log has the cause under this response's request id",
        )
    }
    /// 501: the operation is not implemented.
    pub fn not_implemented(detail: impl Into<String>) -> ScimError {
        ScimError::new(501, None, detail)
    }
    /// 503: the directory is unreachable or busy; retry after the given seconds.
    pub fn unavailable(retry_after: u64) -> ScimError {
        let mut err = ScimError::new(
            503,
            None,
            "the directory is unavailable; nothing was changed, retry later",
        );
        err.retry_after = Some(retry_after);
        err
    }
    /// 503 while the daemon starts: it waits for the directory and finishes the writes the
    /// previous run left, and serves nothing before, so that no write overtakes them.
    pub fn starting() -> ScimError {
        let mut err = ScimError::new(
            503,
            None,
            "scim2ldap is starting (waiting for the directory, finishing writes left by the previous run); nothing was changed, retry later",
        );
        err.retry_after = Some(1);
        err
    }
}

impl fmt::Display for ScimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scim_type {
            Some(scim_type) => write!(f, "{} {}: {}", self.status, scim_type.as_str(), self.detail),
            None => write!(f, "{}: {}", self.status, self.detail),
        }
    }
}

impl std::error::Error for ScimError {}
