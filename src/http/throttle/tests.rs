use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{client_address, AuthThrottle};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

#[test]
fn a_client_is_throttled_after_too_many_failures_until_the_window_ends() {
    let throttle = AuthThrottle::new(3, Duration::from_secs(60), 100);
    let start = Instant::now();
    let peer = ip("192.0.2.7");
    for n in 0..3 {
        assert_eq!(throttle.blocked(peer, start), None, "after {n} failures");
        // The third failure is the one that blocks.
        assert_eq!(
            throttle.record_failure(peer, start + Duration::from_secs(n)),
            n == 2
        );
    }
    assert_eq!(
        throttle.blocked(peer, start + Duration::from_secs(2)),
        Some(58)
    );
    // Another client is not affected.
    assert_eq!(throttle.blocked(ip("192.0.2.8"), start), None);
    // The window ends; failures are counted afresh.
    assert_eq!(
        throttle.blocked(peer, start + Duration::from_secs(60)),
        None
    );
    throttle.record_failure(peer, start + Duration::from_secs(61));
    assert_eq!(
        throttle.blocked(peer, start + Duration::from_secs(61)),
        None
    );
}

#[test]
fn success_forgets_failures() {
    let throttle = AuthThrottle::new(2, Duration::from_secs(60), 100);
    let now = Instant::now();
    let peer = ip("192.0.2.7");
    throttle.record_failure(peer, now);
    throttle.record_success(peer);
    throttle.record_failure(peer, now);
    assert_eq!(throttle.blocked(peer, now), None);
    assert_eq!(throttle.len(), 1);
}

#[test]
fn ipv6_clients_are_keyed_by_their_64_prefix() {
    let throttle = AuthThrottle::new(2, Duration::from_secs(60), 100);
    let now = Instant::now();
    throttle.record_failure(ip("2001:db8:1:2::1"), now);
    throttle.record_failure(ip("2001:db8:1:2:ffff::9"), now);
    assert!(throttle.blocked(ip("2001:db8:1:2::77"), now).is_some());
    assert_eq!(throttle.blocked(ip("2001:db8:1:3::1"), now), None);
    // An IPv4-mapped address is the IPv4 client.
    throttle.record_failure(ip("192.0.2.1"), now);
    throttle.record_failure(ip("::ffff:192.0.2.1"), now);
    assert!(throttle.blocked(ip("192.0.2.1"), now).is_some());
}

#[test]
fn the_map_never_grows_past_its_capacity() {
    let capacity = 50;
    let throttle = AuthThrottle::new(3, Duration::from_secs(60), capacity);
    let start = Instant::now();
    // A flood of distinct addresses, each failing once, spread over two windows.
    for n in 0..1000u32 {
        let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        throttle.record_failure(peer, start + Duration::from_millis(u64::from(n) * 100));
        assert!(throttle.len() <= capacity);
    }
    assert_eq!(throttle.len(), capacity);
    // A throttled client is still tracked while a flood goes on within its window.
    let throttle = AuthThrottle::new(3, Duration::from_secs(60), capacity);
    let attacker = ip("198.51.100.1");
    for _ in 0..3 {
        throttle.record_failure(attacker, start);
    }
    for n in 0..(capacity as u32 - 1) {
        throttle.record_failure(
            IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)),
            start,
        );
    }
    assert!(throttle.blocked(attacker, start).is_some());
}

#[test]
fn behind_a_proxy_on_this_host_the_client_is_the_address_the_proxy_appended() {
    let headers = |values: &[&str]| {
        let mut map = http::HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    };
    let local = ip("127.0.0.1");
    let trusted = [local, ip("::1")];
    // nginx's $proxy_add_x_forwarded_for: what the client claimed, then the address it saw.
    assert_eq!(
        client_address(local, &headers(&["10.9.9.9, 203.0.113.7"]), &trusted),
        ip("203.0.113.7")
    );
    assert_eq!(
        client_address(local, &headers(&["10.9.9.9", "2001:db8::5"]), &trusted),
        ip("2001:db8::5")
    );
    assert_eq!(
        client_address(ip("::1"), &headers(&["198.51.100.2"]), &trusted),
        ip("198.51.100.2")
    );
    // No header, or one that names no address: the peer itself.
    assert_eq!(client_address(local, &headers(&[]), &trusted), local);
    assert_eq!(
        client_address(local, &headers(&["198.51.100.2, unknown"]), &trusted),
        local
    );
    // A peer that is not a trusted proxy is the client, whatever it claims; with no trusted
    // proxy (a TCP-level proxy passes the client's header through), not even a local one.
    assert_eq!(
        client_address(local, &headers(&["203.0.113.7"]), &[]),
        local
    );
    assert_eq!(
        client_address(ip("192.0.2.7"), &headers(&["203.0.113.7"]), &trusted),
        ip("192.0.2.7")
    );
}
