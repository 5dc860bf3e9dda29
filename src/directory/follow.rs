//! Following the changes under a base as they happen: RFC 4533 content synchronization in
//! refreshAndPersist mode (OpenLDAP's `syncprov` overlay). The search runs on a connection of
//! its own, outside the pool, for as long as the follower keeps the stream.

use std::time::Duration;

use ldap3::controls::{
    parse_syncinfo, ControlType, EntryState, MakeCritical, RefreshMode, SyncInfo, SyncRequest,
    SyncState,
};
use ldap3::{Scope, SearchEntry};

use super::{pool::Conn, DirectoryError, Entry};

/// The result code of a search whose critical control the directory does not know
/// (unavailableCriticalExtension): without a synchronization provider, the Sync Request.
pub const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;

/// The result code of a search whose cookie the provider can no longer serve
/// (e-syncRefreshRequired, RFC 4533 §2.6): the client starts again without one.
pub const SYNC_REFRESH_REQUIRED: u32 = 4096;

/// What one message of the synchronization says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// An entry was added, changed, renamed, or moved into the base; `entry` holds the
    /// attributes asked for.
    Changed {
        /// The entry as sent.
        entry: Entry,
        /// Its `entryUUID`, in the usual text form.
        entry_uuid: String,
    },
    /// An entry was deleted, or moved out of the base.
    Deleted {
        /// Its DN before it went.
        dn: String,
        /// Its `entryUUID`.
        entry_uuid: String,
    },
    /// Entries deleted since the cookie, told by `entryUUID` only (a refresh from the
    /// provider's session log).
    DeletedIds(Vec<String>),
    /// Nothing to act on: an entry unchanged since the cookie, or a new cookie alone.
    Unchanged,
    /// The refresh phase is over; from now on, changes come as they happen. `present`: it
    /// ended with a present phase (RFC 4533 §3.3.1), which tells deleted entries only by
    /// leaving them out, as a provider does when its session log does not reach back to the
    /// cookie.
    RefreshDone {
        /// The refresh listed the entries present instead of the ones deleted.
        present: bool,
    },
}

/// One message: what happened, and the cookie that stands for the state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMessage {
    /// What happened.
    pub event: SyncEvent,
    /// The provider's new cookie, when the message carried one.
    pub cookie: Option<Vec<u8>>,
}

/// The messages of one refreshAndPersist search.
pub struct ChangeStream {
    stream: ldap3::SearchStream<'static, String, Vec<String>>,
    conn: Conn,
    /// The bound identity as the directory names it (Who am I?), normalized as it writes it
    /// into `modifiersName`.
    identity: Option<String>,
    /// How long the stream may stay silent before the connection is checked.
    keepalive: Duration,
    /// The timeout of that check.
    timeout: Duration,
}

impl super::Directory {
    /// Starts following the entries in `scope` of `base` that match `filter`, from `cookie`
    /// when one is kept: changes since it come first (the refresh phase), then each change as
    /// it happens. `attrs` are the attributes sent with each changed entry. A directory that
    /// cannot follow refuses the search or ends it at once.
    pub async fn follow(
        &self,
        base: &str,
        scope: super::SearchScope,
        filter: &str,
        attrs: Vec<String>,
        cookie: Option<Vec<u8>>,
    ) -> Result<ChangeStream, DirectoryError> {
        let scope = match scope {
            super::SearchScope::Base => Scope::Base,
            super::SearchScope::OneLevel => Scope::OneLevel,
            super::SearchScope::Subtree => Scope::Subtree,
        };
        let conn = self.pool.connect().await?;
        let mut ldap = conn.ldap.clone();
        let identity =
            tokio::time::timeout(self.pool.timeout(), ldap.extended(ldap3::exop::WhoAmI))
                .await
                .map_err(|_| DirectoryError::Timeout)?
                .map_err(DirectoryError::from)?
                .success()
                .ok()
                .and_then(|(exop, _)| {
                    exop.parse::<ldap3::exop::WhoAmIResp>()
                        .authzid
                        .strip_prefix("dn:")
                        .map(str::to_string)
                });
        let mut ldap = conn.ldap.clone();
        let request = SyncRequest {
            mode: RefreshMode::RefreshAndPersist,
            cookie,
            reload_hint: false,
        };
        // The answer to the request itself is awaited with the usual timeout; the messages
        // that follow may be hours apart, and the keepalive watches the connection instead.
        let stream = tokio::time::timeout(
            self.pool.timeout(),
            ldap.with_controls(request.critical())
                .streaming_search(base, scope, filter, attrs),
        )
        .await
        .map_err(|_| DirectoryError::Timeout)?
        .map_err(DirectoryError::from)?;
        Ok(ChangeStream {
            stream,
            conn,
            identity,
            keepalive: KEEPALIVE,
            timeout: self.pool.timeout(),
        })
    }
}

/// How long a followed search may stay silent before its connection is checked with a
/// `Who am I?` request: a connection that died without closing (a firewall dropping idle
/// flows, a host gone) is noticed within this time plus the operation timeout.
const KEEPALIVE: Duration = Duration::from_secs(60);

impl ChangeStream {
    /// The next message. `Ok(None)` when the directory ended the search with success, or
    /// answered with a plain entry: it does not follow this base (no synchronization provider
    /// on that database), or no longer.
    pub async fn next(&mut self) -> Result<Option<SyncMessage>, DirectoryError> {
        loop {
            let item = tokio::select! {
                item = self.stream.next() => Some(item),
                () = tokio::time::sleep(self.keepalive) => None,
            };
            let Some(item) = item else {
                self.check_connection().await?;
                continue;
            };
            let item = item.map_err(DirectoryError::from)?;
            let Some(item) = item else {
                let result = self.stream.finish().await;
                if result.rc == 0 {
                    return Ok(None);
                }
                return Err(DirectoryError::from_result(result.rc, result.text));
            };
            if item.is_ref() {
                continue;
            }
            if item.is_intermediate() {
                return Ok(Some(info_message(parse_syncinfo(item))));
            }
            let state = item.1.iter().find_map(|control| match control.0 {
                Some(ControlType::SyncState) => Some(control.1.parse::<SyncState>()),
                _ => None,
            });
            let entry = SearchEntry::construct(item);
            let entry = Entry {
                dn: entry.dn,
                attrs: entry.attrs.into_iter().collect(),
            };
            let Some(state) = state else {
                // A plain search result: the database has no synchronization provider, and
                // the directory answers as if the control were not there.
                return Ok(None);
            };
            return Ok(Some(entry_message(entry, state)));
        }
    }

    /// The DN the search's connection is bound as, as the directory writes it (into
    /// `modifiersName`); `None` when the directory did not say.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Checks that the connection still answers.
    async fn check_connection(&mut self) -> Result<(), DirectoryError> {
        let mut ldap = self.conn.ldap.clone();
        ldap.with_timeout(self.timeout);
        ldap.extended(ldap3::exop::WhoAmI)
            .await
            .map_err(DirectoryError::from)?
            .success()
            .map_err(DirectoryError::from)?;
        Ok(())
    }
}

/// An entry message as an event.
fn entry_message(entry: Entry, state: SyncState) -> SyncMessage {
    let entry_uuid = uuid_text(&state.entry_uuid);
    let event = match state.state {
        EntryState::Present => SyncEvent::Unchanged,
        EntryState::Add | EntryState::Modify => SyncEvent::Changed { entry, entry_uuid },
        EntryState::Delete => SyncEvent::Deleted {
            dn: entry.dn,
            entry_uuid,
        },
    };
    SyncMessage {
        event,
        cookie: state.cookie,
    }
}

/// A Sync Info intermediate message as an event.
fn info_message(info: SyncInfo) -> SyncMessage {
    match info {
        SyncInfo::NewCookie(cookie) => SyncMessage {
            event: SyncEvent::Unchanged,
            cookie: Some(cookie),
        },
        SyncInfo::RefreshDelete {
            cookie,
            refresh_done,
        } => refresh_phase_end(cookie, refresh_done, false),
        SyncInfo::RefreshPresent {
            cookie,
            refresh_done,
        } => refresh_phase_end(cookie, refresh_done, true),
        SyncInfo::SyncIdSet {
            cookie,
            refresh_deletes,
            sync_uuids,
        } => SyncMessage {
            // Without refreshDeletes the set names entries present and unchanged.
            event: if refresh_deletes {
                let mut ids: Vec<String> = sync_uuids.iter().map(|id| uuid_text(id)).collect();
                ids.sort();
                SyncEvent::DeletedIds(ids)
            } else {
                SyncEvent::Unchanged
            },
            cookie,
        },
    }
}

/// The end of a refresh phase: of the whole refresh when `refresh_done`.
fn refresh_phase_end(cookie: Option<Vec<u8>>, refresh_done: bool, present: bool) -> SyncMessage {
    SyncMessage {
        event: if refresh_done {
            SyncEvent::RefreshDone { present }
        } else {
            SyncEvent::Unchanged
        },
        cookie,
    }
}

/// The 16 octets of a sync UUID in the text form `entryUUID` has (RFC 4122, lowercase);
/// any other length as lowercase hex.
pub fn uuid_text(octets: &[u8]) -> String {
    let hex: String = octets.iter().map(|b| format!("{b:02x}")).collect();
    if octets.len() != 16 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::uuid_text;

    #[test]
    fn sync_uuids_read_as_entry_uuids() {
        let octets = [
            0x2f, 0x6c, 0x3a, 0x1e, 0x8b, 0x04, 0x10, 0x3d, 0x9a, 0x1b, 0x4f, 0x5d, 0x2a, 0x77,
            0x00, 0xff,
        ];
        assert_eq!(uuid_text(&octets), "2f6c3a1e-8b04-103d-9a1b-4f5d2a7700ff");
        assert_eq!(uuid_text(&[0xab, 0x01]), "ab01");
    }
}
