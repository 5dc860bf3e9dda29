//! Bearer token check: SHA-256 of the presented token compared in constant time with every
//! configured hash.

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{sha256, AuthConfig};

/// Checks `Authorization` headers against the configured token hashes.
pub struct Authenticator {
    token_hashes: Vec<[u8; 32]>,
}

impl Authenticator {
    /// An authenticator accepting the tokens of `config`.
    pub fn new(config: &AuthConfig) -> Authenticator {
        Authenticator {
            token_hashes: config.token_hashes.clone(),
        }
    }

    /// True when `Authorization: Bearer <token>` names a configured token. A bare `<token>` is
    /// accepted too: Okta's "HTTP Header" mode sends whatever the admin typed.
    ///
    /// Every configured hash is compared, whether or not an earlier one matched, so the time
    /// taken does not tell which (or whether a) token matched.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            Some(_) => return false,
            None => value,
        };
        if token.is_empty() {
            return false;
        }
        let (matched, _n_compared) = compare_all(&self.token_hashes, &sha256(token.as_bytes()));
        matched
    }
}

/// Compares `presented` with every hash in constant time, never stopping at a match; returns
/// whether one matched and how many were compared (for the test that proves "every").
fn compare_all(token_hashes: &[[u8; 32]], presented: &[u8; 32]) -> (bool, usize) {
    let mut matched = subtle::Choice::from(0u8);
    let mut n_compared = 0;
    for hash in token_hashes {
        matched |= hash.ct_eq(presented);
        n_compared += 1;
    }
    (matched.into(), n_compared)
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
