//! Single-value changes to one attribute of one entry that wait for each other go to the
//! directory as one modify.
//!
//! Every user write that touches its groups (a delete, a suspension that removes memberships, a
//! rename) changes one `member` value in each group, inside its own plan. When an IdP offboards a
//! crowd, those changes meet on the same large group, and OpenLDAP's back-mdb rewrites the whole
//! member list for each of them; merged, the rewrite is paid once per batch. Each change still
//! completes only when its value is in place (or, for the batch, when the modify succeeded).

use tokio::sync::oneshot;

use super::DirectoryError;

/// Most changes merged into one modify (the rest wait for the next).
pub(super) const MAX_BATCH: usize = 1000;

/// An entry's DN and an attribute name.
pub(super) type Key = (String, String);

/// One value to add or delete, and where its result goes.
pub(super) struct ValueChange {
    pub(super) add: bool,
    pub(super) value: String,
    pub(super) reply: oneshot::Sender<Result<(), DirectoryError>>,
}

/// The changes waiting, by entry and attribute.
pub(super) type ValueQueue = crate::queue::KeyedQueue<Key, ValueChange>;
