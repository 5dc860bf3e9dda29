use super::{compare_all, new_token, Authenticator};
use crate::config::sha256;

fn headers(token: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let value = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    headers.insert(http::header::AUTHORIZATION, value);
    headers
}

#[test]
fn good_and_bad_tokens_are_compared_with_every_configured_hash() {
    let tokens: Vec<String> = (0..3).map(|_| new_token().plaintext).collect();
    let hashes: Vec<[u8; 32]> = tokens.iter().map(|t| sha256(t.as_bytes())).collect();
    // A match on the first hash, on the last, and no match: the same work each time.
    for (presented, expected) in [
        (tokens[0].as_str(), true),
        (tokens[2].as_str(), true),
        ("not-a-configured-token", false),
    ] {
        let (matched, n_compared) = compare_all(&hashes, &sha256(presented.as_bytes()));
        assert_eq!(matched, expected, "{presented}");
        assert_eq!(n_compared, hashes.len(), "{presented}");
    }
    let auth = Authenticator {
        token_hashes: hashes,
    };
    assert!(auth.check(&headers(&tokens[1])));
    assert!(!auth.check(&headers("not-a-configured-token")));
    assert!(!auth.check(&http::HeaderMap::new()));
}
