use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Collects what the layer writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Captured {
    type Writer = Captured;

    fn make_writer(&'w self) -> Captured {
        self.clone()
    }
}

/// The lines `log` writes through the layer, each parsed (a line that is not JSON fails).
fn lines_of(log: impl FnOnce()) -> Vec<Value> {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(JsonLayer::new(captured.clone()));
    tracing::subscriber::with_default(subscriber, log);
    let bytes = captured.0.lock().unwrap().clone();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

#[test]
fn an_event_is_one_object_with_its_fields_flat_and_its_span_nested() {
    let lines = lines_of(|| {
        let span = tracing::info_span!("request", request_id = "r-1", route = "/Users/{id}");
        let _entered = span.enter();
        let id = String::from("7f3c");
        tracing::warn!(
            status = 201u64,
            delta = -3i64,
            ok = true,
            ratio = 0.5f64,
            resource_id = %id,
            attributes = ?["cn", "sn"],
            "request"
        );
    });
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    let timestamp = line["timestamp"].as_str().unwrap();
    assert!(
        timestamp.ends_with('Z') && timestamp.len() == 27,
        "{timestamp}"
    );
    time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["target"], module_path!());
    assert_eq!(line["message"], "request");
    assert_eq!(line["status"], 201);
    assert_eq!(line["delta"], -3);
    assert_eq!(line["ok"], true);
    assert_eq!(line["ratio"], 0.5);
    assert_eq!(line["resource_id"], "7f3c");
    assert_eq!(line["attributes"], r#"["cn", "sn"]"#);
    assert_eq!(
        line["span"],
        serde_json::json!({"name": "request", "request_id": "r-1", "route": "/Users/{id}"})
    );
}

#[test]
fn the_innermost_span_is_the_one_shown_and_outside_spans_there_is_none() {
    let lines = lines_of(|| {
        tracing::info!("before");
        let outer = tracing::info_span!("outer", a = 1u64);
        let _outer = outer.enter();
        let inner = tracing::info_span!("inner", b = 2u64);
        inner.in_scope(|| tracing::info!("inside"));
        tracing::info!(parent: None, "explicitly without a parent");
    });
    assert_eq!(lines.len(), 3);
    assert!(lines[0].get("span").is_none(), "{}", lines[0]);
    assert_eq!(
        lines[1]["span"],
        serde_json::json!({"name": "inner", "b": 2})
    );
    assert!(lines[2].get("span").is_none(), "{}", lines[2]);
}

#[test]
fn fields_recorded_into_a_span_later_replace_or_join_its_own() {
    let lines = lines_of(|| {
        let span = tracing::info_span!(
            "request",
            route = "/Users",
            resource_id = tracing::field::Empty
        );
        span.in_scope(|| tracing::info!("first"));
        span.record("resource_id", "u-1");
        span.record("route", "/Users/{id}");
        span.in_scope(|| tracing::info!("second"));
    });
    assert_eq!(
        lines[0]["span"],
        serde_json::json!({"name": "request", "route": "/Users"})
    );
    assert_eq!(
        lines[1]["span"],
        serde_json::json!({"name": "request", "route": "/Users/{id}", "resource_id": "u-1"})
    );
}

#[test]
fn timestamps_are_rfc3339_in_utc_with_microseconds() {
    for text in [
        "2026-01-02T03:04:05.000006Z",
        "1999-12-31T23:59:59.999999Z",
        "0042-10-09T00:00:00.000000Z",
    ] {
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap();
        let mut out = String::new();
        write_timestamp(&mut out, at);
        assert_eq!(out, text);
    }
}

#[test]
fn every_control_character_is_escaped() {
    let text: String = (0u8..0x20)
        .map(char::from)
        .chain(['"', '\\', '\u{7f}'])
        .collect();
    let lines = lines_of(|| tracing::info!(value = text.as_str(), "x"));
    assert_eq!(lines[0]["value"], text.as_str());
}

#[test]
fn numbers_json_cannot_hold_are_null() {
    let lines = lines_of(|| tracing::info!(nan = f64::NAN, inf = f64::INFINITY, "odd"));
    assert_eq!(lines[0]["nan"], Value::Null);
    assert_eq!(lines[0]["inf"], Value::Null);
}

#[test]
fn records_from_the_log_crate_keep_their_own_target() {
    // What tracing-log makes of a `log` record: its origin in `log.*` fields.
    let lines = lines_of(|| {
        tracing::info!(
            log.target = "ldap3::conn",
            log.module_path = "ldap3::conn",
            log.file = "src/conn.rs",
            log.line = 12u64,
            "connected"
        )
    });
    assert_eq!(lines[0]["target"], "ldap3::conn");
    assert_eq!(lines[0]["message"], "connected");
    let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
    assert!(keys.iter().all(|key| !key.starts_with("log.")), "{keys:?}");
}

proptest! {
    /// Whatever a value holds (quotes, backslashes, control characters, any Unicode), the line
    /// parses and gives it back unchanged, as a string field, a formatted field and a span field.
    #[test]
    fn any_text_survives_a_line(
        text in prop_oneof![any::<String>(), "[\\x00-\\x1f\"\\\\/a-zé\u{7f}\u{2028}😀]{0,40}"]
    ) {
        let lines = lines_of(|| {
            let span = tracing::info_span!("s", value = text.as_str());
            span.in_scope(|| tracing::info!(plain = text.as_str(), shown = %text, "{}", text));
        });
        prop_assert_eq!(lines.len(), 1);
        prop_assert_eq!(&lines[0]["plain"], &Value::from(text.as_str()));
        prop_assert_eq!(&lines[0]["shown"], &Value::from(text.as_str()));
        prop_assert_eq!(&lines[0]["message"], &Value::from(text.as_str()));
        prop_assert_eq!(&lines[0]["span"]["value"], &Value::from(text.as_str()));
    }
}

#[test]
fn for_the_journal_each_line_starts_with_its_priority() {
    let captured = Captured::default();
    let layer = JsonLayer::new(captured.clone()).with_syslog_prefix();
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::error!("e");
        tracing::warn!("w");
        tracing::info!("i");
        tracing::debug!("d");
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let prefixes: Vec<&str> = text.lines().map(|line| &line[..3]).collect();
    assert_eq!(prefixes, ["<3>", "<4>", "<6>", "<7>"]);
    for line in text.lines() {
        serde_json::from_str::<Value>(&line[3..]).unwrap();
    }
}
