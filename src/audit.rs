//! The audit log: one record per change applied to the directory, on the tracing target
//! `scim2ldap::audit` at info level, so that it can be routed apart from the rest of the log.
//!
//! A record says who (the name of the bearer token, never the token), which operation, which
//! resource (type and id), which LDAP attributes the change touched (names only, never values),
//! and the result. The HTTP layer sets the context of a request with [`scope`]; work outside a
//! request (replay at start-up, reconciliation) runs with [`AuditContext::system`] or none, and
//! is recorded as done by `system`.

use std::sync::Arc;

/// The tracing target of audit records.
pub const TARGET: &str = "scim2ldap::audit";

/// Who asked for the changes made while a future runs, and why.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// The token name (`okta`, `token-1`), or a component name (`replay`, `reconcile`).
    pub actor: Arc<str>,
    /// The request id, when the change comes from a request.
    pub request_id: Option<String>,
    /// `create`, `replace`, `patch`, `delete`, or what a component calls its work.
    pub operation: &'static str,
    /// `User` or `Group`, when the caller knows.
    pub resource_type: Option<&'static str>,
}

impl AuditContext {
    /// Work not started by a client: `actor` is the component (`replay`, `reconcile`).
    pub fn system(actor: &str, operation: &'static str) -> AuditContext {
        AuditContext {
            actor: Arc::from(actor),
            request_id: None,
            operation,
            resource_type: None,
        }
    }
}

tokio::task_local! {
    static CONTEXT: AuditContext;
}

/// Runs `future` with `context` as the audit context of every change it makes.
pub async fn scope<F: std::future::Future>(context: AuditContext, future: F) -> F::Output {
    CONTEXT.scope(context, future).await
}

/// The audit context of the running future, to carry into work done on its behalf elsewhere.
pub fn current() -> Option<AuditContext> {
    CONTEXT.try_with(AuditContext::clone).ok()
}

/// True while a client's request runs (its context carries a request id).
pub fn in_request() -> bool {
    CONTEXT
        .try_with(|context| context.request_id.is_some())
        .unwrap_or(false)
}

/// One change as applied (or attempted) on the directory.
#[derive(Debug, Clone)]
pub struct Change {
    /// `User` or `Group`, if the change itself tells.
    pub resource_type: Option<&'static str>,
    /// The SCIM id.
    pub resource_id: String,
    /// LDAP attribute names touched, without values.
    pub attributes: Vec<String>,
    /// Directory operations the change took.
    pub n_operations: usize,
}

/// Emits the audit record of `change`; `error` is a short class (`unavailable`, `refused`),
/// never directory text.
pub fn record(change: &Change, error: Option<&str>) {
    let (actor, request_id, operation, context_type) = CONTEXT
        .try_with(|context| {
            (
                context.actor.clone(),
                context.request_id.clone(),
                context.operation,
                context.resource_type,
            )
        })
        .unwrap_or_else(|_| (Arc::from("system"), None, "change", None));
    let resource_type = change.resource_type.or(context_type).unwrap_or("Resource");
    let attributes = change.attributes.join(",");
    let result = if error.is_some() { "failed" } else { "ok" };
    crate::metrics::record_audit(error.is_none());
    tracing::info!(
        target: TARGET,
        token = %actor,
        request_id = request_id.as_deref().unwrap_or("-"),
        operation,
        resource_type,
        resource_id = %change.resource_id,
        attributes = %attributes,
        n_operations = change.n_operations,
        result,
        error = error.unwrap_or(""),
        "directory change"
    );
}

/// Adds `name` to `names` unless it is there already (ignoring case).
pub(crate) fn push_name(names: &mut Vec<String>, name: &str) {
    if !names.iter().any(|known| known.eq_ignore_ascii_case(name)) {
        names.push(name.to_string());
    }
}
