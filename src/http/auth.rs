//! Bearer token check: SHA-256 of the presented token compared in constant time with every
//! configured hash; a match yields the token's name, for the audit log.

use std::sync::Arc;

use http::HeaderMap;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::{sha256, AuthConfig, NamedToken};

/// Checks `Authorization` headers against the configured tokens.
pub struct Authenticator {
    tokens: Vec<NamedToken>,
}

impl Authenticator {
    /// An authenticator accepting the tokens of `config`.
    pub fn new(config: &AuthConfig) -> Authenticator {
        Authenticator {
            tokens: config.tokens.clone(),
        }
    }

    /// The name of the configured token that `Authorization: Bearer <token>` presents, or None.
    /// A bare `<token>` is accepted too: Okta's "HTTP Header" mode sends whatever the admin
    /// typed.
    ///
    /// Every configured hash is compared, whether or not an earlier one matched, so the time
    /// taken does not tell which (or whether a) token matched.
    pub fn check(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())?;
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            Some(_) => return None,
            None => value,
        };
        if token.is_empty() {
            return None;
        }
        let (matched, _n_compared) = compare_all(&self.tokens, &sha256(token.as_bytes()));
        matched
            .and_then(|idx| self.tokens.get(idx))
            .map(|named| named.name.clone())
    }
}

/// Compares `presented` with every configured hash, whether or not an earlier one matched, and
/// returns the index of the match (if any) and how many hashes were compared (all of them,
/// which the tests check).
fn compare_all(tokens: &[NamedToken], presented: &[u8; 32]) -> (Option<usize>, usize) {
    let mut matched = subtle::Choice::from(0u8);
    let mut matched_idx = 0u32;
    let mut n_compared = 0;
    for (idx, named) in tokens.iter().enumerate() {
        let equal = named.hash.ct_eq(presented);
        matched_idx =
            u32::conditional_select(&matched_idx, &u32::try_from(idx).unwrap_or(u32::MAX), equal);
        matched |= equal;
        n_compared += 1;
    }
    let found = bool::from(matched)
        .then(|| usize::try_from(matched_idx).ok())
        .flatten();
    (found, n_compared)
}

/// A freshly generated token: the plaintext to give the IdP, and the config line.
pub struct NewToken {
    /// 256 random bits, hex-encoded.
    pub plaintext: String,
    /// `sha256:<hex>` of the plaintext.
    pub hash_line: String,
}

/// Generates a 256-bit random token from the operating system's generator.
pub fn new_token() -> NewToken {
    let bytes: [u8; 32] = rand::random();
    let plaintext = hex::encode(bytes);
    let hash_line = format!("sha256:{}", hex::encode(sha256(plaintext.as_bytes())));
    NewToken {
        plaintext,
        hash_line,
    }
}

#[cfg(test)]
mod tests;
