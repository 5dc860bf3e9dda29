use std::sync::Arc;

use super::{compare_all, new_token, Authenticator};
use crate::config::{sha256, NamedToken};

fn headers(token: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let value = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    headers.insert(http::header::AUTHORIZATION, value);
    headers
}

#[test]
fn good_and_bad_tokens_are_compared_with_every_configured_hash() {
    let plaintexts: Vec<String> = (0..3).map(|_| new_token().plaintext).collect();
    let tokens: Vec<NamedToken> = plaintexts
        .iter()
        .enumerate()
        .map(|(idx, t)| NamedToken {
            name: Arc::from(format!("token-{}", idx + 1)),
            hash: sha256(t.as_bytes()),
        })
        .collect();
    // A match on the first hash, on the last, and no match: the same work each time.
    for (presented, expected) in [
        (plaintexts[0].as_str(), Some(0)),
        (plaintexts[2].as_str(), Some(2)),
        ("not-a-configured-token", None),
    ] {
        let (matched, n_compared) = compare_all(&tokens, &sha256(presented.as_bytes()));
        assert_eq!(matched, expected, "{presented}");
        assert_eq!(n_compared, tokens.len(), "{presented}");
    }
    let auth = Authenticator { tokens };
    assert_eq!(
        auth.check(&headers(&plaintexts[1])).as_deref(),
        Some("token-2")
    );
    assert!(auth.check(&headers("not-a-configured-token")).is_none());
    assert!(auth.check(&http::HeaderMap::new()).is_none());
}
