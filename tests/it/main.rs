//! Integration tests: the daemon in-process on `127.0.0.1:0` against a real `slapd` that each
//! test starts in a temp dir on a free port.

// Test helpers outside `#[test]` functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod daemon;
mod follow;
mod foundation;
mod groups;
mod hostile;
mod idp;
mod ops;
mod reconcile;
mod reliability;
mod secrets;
mod support;
mod users;
