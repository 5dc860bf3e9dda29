//! Repairs after failed writes: a write that failed with a transient directory error may have
//! been applied (its reply was lost), although the IdP was told 503 and the cache kept the
//! previous state. Once the directory answers again, the entries of those resources are put back
//! to the cached state (`Service::repair_suspects`), so that no rejected change stays.

use std::sync::Arc;
use std::time::Duration;

use super::{run, ReconcileConfig, RunOptions};
use crate::service::Service;

/// Wait between a failed write and the first check of its entry: an operation that timed out
/// may still finish in the directory, and the failures of one outage are checked in one pass.
const SETTLE: Duration = Duration::from_secs(1);

/// How often waiting suspects are tried again while the directory does not answer.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Checks the entries of failed writes whenever the directory answers, until `stopped`.
///
/// These repairs follow the write path's own failures, so they are made whatever
/// `reconcile.drift` says; when more resources failed than are tracked, a full reconciliation
/// run (with the configured policies) takes their place.
pub async fn repair_after_failures(
    service: Arc<Service>,
    config: ReconcileConfig,
    stopped: impl std::future::Future<Output = ()>,
) {
    let mut stopped = std::pin::pin!(stopped);
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = retry.tick() => {}
            () = service.suspect_added() => {
                tokio::select! {
                    () = tokio::time::sleep(SETTLE) => {}
                    () = &mut stopped => break,
                }
            }
            () = &mut stopped => break,
        }
        let (pending, overflowed) = service.pending_suspects();
        if pending == 0 && !overflowed {
            continue;
        }
        if let Err(err) = service.directory().ping().await {
            tracing::debug!(error = %err, n_entries = pending, "directory not answering; entries of failed writes checked later");
            continue;
        }
        let context = crate::audit::AuditContext::system("reconcile", "repair");
        let pass = tokio::select! {
            pass = crate::audit::scope(context, service.repair_suspects()) => pass,
            () = &mut stopped => break,
        };
        if pass.checked > 0 {
            tracing::info!(
                checked = pass.checked,
                repaired = pass.repaired,
                removed = pass.removed,
                kept = pass.kept,
                retry = pass.retry,
                failed = pass.failed,
                "entries checked after failed writes"
            );
            crate::metrics::record_suspect_repairs(pass.repaired + pass.removed);
        }
        if pass.overflowed {
            let options = RunOptions {
                dry_run: false,
                drift: config.drift,
                orphans: config.orphans,
                page_size: config.page_size,
            };
            let Ok(_guard) = service.reconcile_lock().try_lock() else {
                // A run is going on; ask again so that one starts after the failures.
                service.request_full_reconcile();
                continue;
            };
            tracing::warn!("running a full reconciliation: more failed writes than tracked, or deletes that following could not see");
            tokio::select! {
                result = run(&service, options, &|_| {}) => {
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "reconcile run failed; tried again later");
                        service.request_full_reconcile();
                    }
                }
                () = &mut stopped => break,
            }
        }
    }
    let (left, overflowed) = service.pending_suspects();
    if left > 0 || overflowed {
        tracing::warn!(
            n_entries = left,
            "stopping with entries of failed writes unchecked; the next reconciliation run checks them"
        );
    }
}
