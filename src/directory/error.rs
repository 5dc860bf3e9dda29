//! `DirectoryError`: LDAP failures, classified as transient (retry later) or permanent.

/// A failed directory operation. Messages may hold server text: they go to the log, never to a
/// client.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The directory could not be reached, is busy or shutting down; retrying later may succeed.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// The directory answered that it is busy (51), unavailable (52) or failed otherwise (80);
    /// retrying later may succeed.
    #[error("directory answered result {rc}: {text}")]
    Busy {
        /// LDAP result code.
        rc: u32,
        /// Server diagnostic text.
        text: String,
    },
    /// The connection failed under the operation (I/O error, closed by the server); retrying
    /// on a new connection may succeed.
    #[error("directory connection lost: {0}")]
    ConnectionLost(String),
    /// The operation did not complete within the configured timeout.
    #[error("directory operation timed out")]
    Timeout,
    /// The entry does not exist (result 32).
    #[error("no such object: {0}")]
    NoSuchObject(String),
    /// An entry with that DN exists already (result 68).
    #[error("entry already exists: {0}")]
    AlreadyExists(String),
    /// A value to add exists already (result 20).
    #[error("attribute or value exists: {0}")]
    ValueExists(String),
    /// A value to delete is missing (result 16).
    #[error("no such attribute: {0}")]
    NoSuchAttribute(String),
    /// A value is another entry's already (result 19 from a uniqueness constraint, such as
    /// OpenLDAP's unique overlay).
    #[error("value not unique: {0}")]
    NotUnique(String),
    /// scim2ldap itself found the name or number this write needs taken by another entry or
    /// resource, before changing anything. `detail` is written for the client (no DN of another
    /// entry, no server text); `cause` goes to the log.
    #[error("taken: {cause}")]
    Taken {
        /// What the client is told.
        detail: String,
        /// The whole cause, for the log.
        cause: String,
    },
    /// Another constraint refused the change (result 19: a password policy, a second value of
    /// a single-valued attribute, size limits).
    #[error("constraint violation: {0}")]
    ConstraintViolation(String),
    /// The entry would break the schema (results 17, 18, 21, 64, 65, 67, 69).
    #[error("schema violation (result {rc}): {text}")]
    SchemaViolation {
        /// LDAP result code.
        rc: u32,
        /// Server diagnostic text.
        text: String,
    },
    /// The directory ended a search at its size limit (result 4). Reconciliation reads whole
    /// subtrees with paged searches; OpenLDAP caps their total at the bind DN's hard size
    /// limit (500 unless set) for any identity but the rootdn.
    #[error(
        "the directory ended the search at its size limit (result 4: {0}); give the bind DN unlimited paged searches, on OpenLDAP olcLimits: dn.exact=\"<bind DN>\" size.prtotal=unlimited"
    )]
    SizeLimit(String),
    /// A bind was refused (result 49).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The bound identity may not do this (result 50).
    #[error("insufficient access rights: {0}")]
    InsufficientAccess(String),
    /// Any other result code.
    #[error("LDAP result {rc}: {text}")]
    Other {
        /// LDAP result code.
        rc: u32,
        /// Server diagnostic text.
        text: String,
    },
    /// A failure on the client side that is not a directory answer (bad URL, TLS setup).
    #[error("directory client: {0}")]
    Client(String),
}

impl DirectoryError {
    /// True when the same request may succeed later without any change: the directory was
    /// unreachable, busy or slow. Such failures become 503 with `Retry-After`.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DirectoryError::Unavailable(_)
                | DirectoryError::Busy { .. }
                | DirectoryError::ConnectionLost(_)
                | DirectoryError::Timeout
        )
    }

    /// The connection the operation ran on is gone.
    pub fn connection_lost(&self) -> bool {
        matches!(self, DirectoryError::ConnectionLost(_))
    }

    /// The directory answered (with a refusal): the connection works.
    pub fn is_answer(&self) -> bool {
        !matches!(
            self,
            DirectoryError::Unavailable(_)
                | DirectoryError::ConnectionLost(_)
                | DirectoryError::Timeout
                | DirectoryError::Client(_)
        )
    }

    /// Classifies an LDAP result code with its diagnostic text.
    pub fn from_result(rc: u32, text: String) -> DirectoryError {
        match rc {
            // busy, unavailable, unwillingToPerform is permanent; server down, connect error.
            51 | 52 | 80 | 81 | 91 => DirectoryError::Busy { rc, text },
            3 | 85 => DirectoryError::Timeout,
            4 => DirectoryError::SizeLimit(text),
            16 => DirectoryError::NoSuchAttribute(text),
            // One code for every constraint; the unique overlay's text says which.
            19 if text.to_ascii_lowercase().contains("unique") => DirectoryError::NotUnique(text),
            19 => DirectoryError::ConstraintViolation(text),
            20 => DirectoryError::ValueExists(text),
            32 => DirectoryError::NoSuchObject(text),
            49 => DirectoryError::InvalidCredentials,
            50 => DirectoryError::InsufficientAccess(text),
            68 => DirectoryError::AlreadyExists(text),
            17 | 18 | 21 | 64 | 65 | 67 | 69 => DirectoryError::SchemaViolation { rc, text },
            _ => DirectoryError::Other { rc, text },
        }
    }
}

impl From<ldap3::LdapError> for DirectoryError {
    fn from(err: ldap3::LdapError) -> DirectoryError {
        use ldap3::LdapError;
        match err {
            LdapError::LdapResult { result } => DirectoryError::from_result(result.rc, result.text),
            LdapError::Timeout { .. } => DirectoryError::Timeout,
            LdapError::Io { .. }
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::IdScrubSend { .. }
            | LdapError::EndOfStream => DirectoryError::ConnectionLost(err.to_string()),
            other => DirectoryError::Client(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DirectoryError;

    #[test]
    fn a_refusal_is_an_answer_and_only_a_failed_connection_is_lost() {
        for rc in [51, 52, 80] {
            let busy = DirectoryError::from_result(rc, "x".to_string());
            assert!(busy.is_transient() && busy.is_answer() && !busy.connection_lost());
        }
        for rc in [16, 19, 20, 32, 50, 65, 68] {
            let refused = DirectoryError::from_result(rc, "x".to_string());
            assert!(!refused.is_transient() && refused.is_answer(), "{rc}");
        }
        let lost = DirectoryError::from(ldap3::LdapError::EndOfStream);
        assert!(lost.is_transient() && lost.connection_lost() && !lost.is_answer());
        let timeout = DirectoryError::from_result(3, "x".to_string());
        assert!(timeout.is_transient() && !timeout.is_answer() && !timeout.connection_lost());
    }
}
