//! What a run found and did, as a readable table and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

/// Most findings a report keeps; the counters keep counting past it.
const MAX_FINDINGS: usize = 10_000;

/// What differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// Mapped attribute values differ.
    Attributes,
    /// The enabled/disabled state differs (a lock was added or removed by hand).
    EnabledState,
    /// A group's members differ.
    Members,
    /// The entry is under another DN.
    Moved,
    /// The entry is gone.
    Missing,
    /// An entry under a managed base that the IdP never granted.
    Orphan,
}

impl FindingKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FindingKind::Attributes => "attributes",
            FindingKind::EnabledState => "enabled-state",
            FindingKind::Members => "members",
            FindingKind::Moved => "moved",
            FindingKind::Missing => "missing",
            FindingKind::Orphan => "orphan",
        }
    }
}

/// What was done about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Repaired.
    Repaired,
    /// Would be repaired (dry run).
    WouldRepair,
    /// Reported only (policy).
    Reported,
    /// Orphan disabled.
    Disabled,
    /// Orphan would be disabled (dry run).
    WouldDisable,
    /// In step by the time the repair ran.
    AlreadyInStep,
    /// The repair (or the disabling) was refused; the log has why, and the run went on.
    Failed,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Repaired => "repaired",
            Action::WouldRepair => "would repair",
            Action::Reported => "reported",
            Action::Disabled => "disabled",
            Action::WouldDisable => "would disable",
            Action::AlreadyInStep => "already in step",
            Action::Failed => "failed",
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What differed.
    pub kind: FindingKind,
    /// `User` or `Group`.
    pub resource_type: &'static str,
    /// SCIM id, when the entry belongs to a cached resource.
    pub id: Option<String>,
    /// The entry's DN.
    pub dn: String,
    /// Names of the differing attributes (never values).
    pub attributes: Vec<String>,
    /// What was done.
    pub action: Action,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Entries read from the directory.
    pub scanned: u64,
    /// Resources whose entry differed or was missing.
    pub drifted: u64,
    /// Of those, repaired.
    pub repaired: u64,
    /// Orphan entries found.
    pub orphans: u64,
    /// The findings (at most 10,000).
    pub findings: Vec<Finding>,
    /// Wall time of the run.
    pub duration: Duration,
}

impl Report {
    pub(crate) fn push(&mut self, finding: Finding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        }
    }

    /// True when anything differed or an orphan was found.
    pub fn found_drift(&self) -> bool {
        self.drifted > 0 || self.orphans > 0
    }

    /// The report for scripts.
    pub fn to_json(&self) -> Value {
        let findings: Vec<Value> = self
            .findings
            .iter()
            .map(|finding| {
                json!({
                    "kind": finding.kind.as_str(),
                    "resourceType": finding.resource_type,
                    "id": finding.id,
                    "dn": finding.dn,
                    "attributes": finding.attributes,
                    "action": finding.action.as_str(),
                })
            })
            .collect();
        json!({
            "scanned": self.scanned,
            "drifted": self.drifted,
            "repaired": self.repaired,
            "orphans": self.orphans,
            "durationMs": self.duration.as_millis() as u64,
            "findings": findings,
        })
    }

    /// The report for people: a table of findings, then the totals.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        if !self.findings.is_empty() {
            let rows: Vec<[String; 5]> = self
                .findings
                .iter()
                .map(|finding| {
                    [
                        finding.kind.as_str().to_string(),
                        finding.resource_type.to_string(),
                        finding.dn.clone(),
                        finding.attributes.join(","),
                        finding.action.as_str().to_string(),
                    ]
                })
                .collect();
            let header = ["KIND", "TYPE", "DN", "ATTRIBUTES", "ACTION"];
            let mut widths = header.map(str::len);
            for row in &rows {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = (*width).max(cell.chars().count());
                }
            }
            let mut line = |cells: [&str; 5]| {
                let mut text = String::new();
                for (idx, cell) in cells.iter().enumerate() {
                    let _ = write!(text, "{cell:<width$}  ", width = widths[idx]);
                }
                let _ = writeln!(out, "{}", text.trim_end());
            };
            line(header);
            for row in &rows {
                line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "scanned {} entries in {:.1} s: {} drifted, {} repaired, {} orphans",
            self.scanned,
            self.duration.as_secs_f64(),
            self.drifted,
            self.repaired,
            self.orphans
        );
        out
    }
}
