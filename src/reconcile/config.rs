//! The `[reconcile]` section.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{parse_duration, Problems};

/// What a run does with drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftPolicy {
    /// Put the entry back as the cache says.
    Repair,
    /// Only report it.
    Report,
}

/// What a run does with entries the IdP never granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// Report them.
    Report,
    /// Disable orphan users (as a suspension would) and report them.
    Disable,
    /// Neither.
    Ignore,
}

/// `[reconcile]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawReconcile {
    /// `drift`, default `repair`: `repair` or `report`. Env `SCIM2LDAP__RECONCILE__DRIFT`.
    pub drift: Option<String>,
    /// `orphans`, default `report`: `report`, `disable` or `ignore`. Env `SCIM2LDAP__RECONCILE__ORPHANS`.
    pub orphans: Option<String>,
    /// `interval`, default `1h`; `0s` turns the periodic run off. Env `SCIM2LDAP__RECONCILE__INTERVAL`.
    pub interval: Option<String>,
    /// `at_startup`, default true: run once right after start-up. Env `SCIM2LDAP__RECONCILE__AT_STARTUP`.
    pub at_startup: Option<bool>,
    /// `page_size`, default 500: entries per page of the scan. Env `SCIM2LDAP__RECONCILE__PAGE_SIZE`.
    pub page_size: Option<u32>,
    /// `follow`, default false: follow changes under the managed bases as they happen (RFC
    /// 4533, OpenLDAP's `syncprov`). Env `SCIM2LDAP__RECONCILE__FOLLOW`.
    pub follow: Option<bool>,
}

/// The validated `[reconcile]` section.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Drift policy.
    pub drift: DriftPolicy,
    /// Orphan policy.
    pub orphans: OrphanPolicy,
    /// Time between periodic runs; `None` when off.
    pub interval: Option<Duration>,
    /// Run once at start-up.
    pub at_startup: bool,
    /// Entries per page.
    pub page_size: u32,
    /// Follow changes as they happen, beside the periodic runs.
    pub follow: bool,
}

impl ReconcileConfig {
    /// Validates `[reconcile]`, recording every problem.
    pub(crate) fn from_raw(raw: RawReconcile, problems: &mut Problems) -> Option<ReconcileConfig> {
        let drift = match raw.drift.as_deref().unwrap_or("repair") {
            "repair" => Some(DriftPolicy::Repair),
            "report" => Some(DriftPolicy::Report),
            other => {
                problems.push(format!(
                    "`reconcile.drift`: `{other}` is not one of repair, report"
                ));
                None
            }
        };
        let orphans = match raw.orphans.as_deref().unwrap_or("report") {
            "report" => Some(OrphanPolicy::Report),
            "disable" => Some(OrphanPolicy::Disable),
            "ignore" => Some(OrphanPolicy::Ignore),
            other => {
                problems.push(format!(
                    "`reconcile.orphans`: `{other}` is not one of report, disable, ignore"
                ));
                None
            }
        };
        let interval = problems.check(
            "reconcile.interval",
            parse_duration(raw.interval.as_deref().unwrap_or("1h")),
        );
        let page_size = match raw.page_size.unwrap_or(500) {
            n @ 1..=10_000 => Some(n),
            n => {
                problems.push(format!(
                    "`reconcile.page_size`: {n} is not between 1 and 10000"
                ));
                None
            }
        };
        Some(ReconcileConfig {
            drift: drift?,
            orphans: orphans?,
            interval: interval.map(|interval| (!interval.is_zero()).then_some(interval))?,
            at_startup: raw.at_startup.unwrap_or(true),
            page_size: page_size?,
            follow: raw.follow.unwrap_or(false),
        })
    }
}
