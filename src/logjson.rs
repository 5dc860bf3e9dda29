//! Log lines as JSON objects, one per line, for the journal and log shippers.
//!
//! Each event becomes `{"timestamp", "level", <the event's fields>, "target", "span": {"name",
//! <the current span's fields>}}`: the event's fields are flattened into the line (`message`
//! among them), the span is the innermost one the event happened in. Values keep their JSON
//! type (numbers, booleans), anything formatted (`%x`, `?x`) is a string.
//!
//! Written for the write path's cost: every SCIM write logs two lines (the audit record and the
//! access line), and a general JSON formatter that builds a `serde_json::Value` per line and
//! then serializes it took 12% of a write's instructions. Here a line is written straight into a
//! buffer kept per thread, and a span's fields are rendered once, when it opens (or a field is
//! recorded into it later), then copied into each line logged inside it.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The layer; `make_writer` gives where each line goes (stderr in the daemon).
pub struct JsonLayer<W> {
    make_writer: W,
    syslog_prefix: bool,
}

impl<W> JsonLayer<W> {
    pub fn new(make_writer: W) -> JsonLayer<W> {
        JsonLayer {
            make_writer,
            syslog_prefix: false,
        }
    }

    /// Starts each line with its syslog priority (`<3>` error, `<4>` warn, `<6>` info, `<7>`
    /// debug and trace), which journald takes off the line and keeps as its `PRIORITY`, so that
    /// `journalctl -p err` finds the errors.
    pub fn with_syslog_prefix(mut self) -> JsonLayer<W> {
        self.syslog_prefix = true;
        self
    }
}

/// A span's fields, each rendered as the line writes it (`,"key":value`), and the span
/// object's members ready to copy.
struct SpanFields {
    fields: Vec<(&'static str, String)>,
    /// `"name":"...","field":value,...` (without the braces).
    rendered: String,
}

impl SpanFields {
    fn render(&mut self, name: &str) {
        self.rendered.clear();
        self.rendered.push_str("\"name\":");
        escape_into(&mut self.rendered, name);
        for (_, member) in &self.fields {
            self.rendered.push_str(member);
        }
    }
}

/// Collects a span's fields: each is rendered alone by an [`EventVisitor`], so that values
/// look the same in a span as in a line, and a field recorded again replaces its value.
struct SpanVisitor<'a>(&'a mut SpanFields);

impl SpanVisitor<'_> {
    fn set(&mut self, field: &Field, record: impl FnOnce(&mut EventVisitor<'_>)) {
        let mut member = String::new();
        record(&mut EventVisitor {
            line: &mut member,
            log_target: None,
        });
        let fields = &mut self.0.fields;
        match fields.iter_mut().find(|(known, _)| *known == field.name()) {
            Some(slot) => slot.1 = member,
            None => fields.push((field.name(), member)),
        }
    }
}

impl Visit for SpanVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, |line| line.record_debug(field, value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, |line| line.record_str(field, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, |line| line.record_i64(field, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, |line| line.record_u64(field, value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.set(field, |line| line.record_i128(field, value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.set(field, |line| line.record_u128(field, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, |line| line.record_bool(field, value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, |line| line.record_f64(field, value));
    }
}

/// Writes an event's fields as `,"key":value` into the line. Records bridged from the `log`
/// crate carry their origin as `log.*` fields: the target replaces the line's, the rest (module,
/// file, line) is left out as it is for native events.
struct EventVisitor<'a> {
    line: &'a mut String,
    log_target: Option<String>,
}

impl EventVisitor<'_> {
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        self.line.push(',');
        escape_into(self.line, name);
        self.line.push(':');
        true
    }

    /// An integer, which JSON writes as its decimal digits.
    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        if self.key(field) {
            let _ = write!(self.line, "{value}");
        }
    }
}

impl Visit for EventVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            write_debug(self.line, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_string());
        } else if self.key(field) {
            escape_into(self.line, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.number(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.line.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            write_f64(self.line, value);
        }
    }
}

/// A float as a JSON number; JSON has no NaN or infinity, so those are `null`.
fn write_f64(out: &mut String, value: f64) {
    if value.is_finite() {
        let _ = write!(out, "{value}");
    } else {
        out.push_str("null");
    }
}

/// `value`'s `Debug` output (its `Display` for `%` fields) as a JSON string, escaped as it is
/// formatted.
fn write_debug(out: &mut String, value: &dyn fmt::Debug) {
    out.push('"');
    let _ = write!(Escaper(out), "{value:?}");
    out.push('"');
}

/// `text` as a JSON string.
fn escape_into(out: &mut String, text: &str) {
    out.push('"');
    let _ = Escaper(out).write_str(text);
    out.push('"');
}

/// Escapes what it is given for the inside of a JSON string (RFC 8259 section 7): quotation
/// mark, reverse solidus and control characters; everything else is copied as is.
struct Escaper<'a>(&'a mut String);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        let mut start = 0;
        // Runs of plain bytes are copied whole; most values have no byte to escape at all.
        while let Some(offset) = bytes[start..].iter().position(|&byte| needs_escape(byte)) {
            let at = start + offset;
            self.0.push_str(&text[start..at]);
            match bytes[at] {
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                b'\n' => self.0.push_str("\\n"),
                b'\r' => self.0.push_str("\\r"),
                b'\t' => self.0.push_str("\\t"),
                control => {
                    let _ = write!(self.0, "\\u{control:04x}");
                }
            }
            start = at + 1;
        }
        self.0.push_str(&text[start..]);
        Ok(())
    }
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC, microseconds (RFC 3339). Digits are written by hand:
/// seven padded numbers through `format!` cost more than the rest of a line's fixed part.
fn write_timestamp(out: &mut String, now: time::OffsetDateTime) {
    // A clock before year 0 or after 9999 is not one to keep a log by; clamped to four digits.
    let year = now.year().clamp(0, 9999) as u32;
    let parts: [(u32, usize, char); 7] = [
        (year, 4, '-'),
        (u32::from(u8::from(now.month())), 2, '-'),
        (u32::from(now.day()), 2, 'T'),
        (u32::from(now.hour()), 2, ':'),
        (u32::from(now.minute()), 2, ':'),
        (u32::from(now.second()), 2, '.'),
        (now.microsecond(), 6, 'Z'),
    ];
    for (value, width, separator) in parts {
        let mut digits = [b'0'; 6];
        let mut rest = value;
        for slot in digits[..width].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend(digits[..width].iter().map(|&digit| char::from(digit)));
        out.push(separator);
    }
}

thread_local! {
    /// The line being written, kept to save an allocation per line.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields {
            fields: Vec::new(),
            rendered: String::new(),
        };
        attrs.record(&mut SpanVisitor(&mut fields));
        fields.render(span.name());
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            values.record(&mut SpanVisitor(fields));
            fields.render(span.name());
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let write = |line: &mut String| {
            line.clear();
            let metadata = event.metadata();
            if self.syslog_prefix {
                line.push_str(match *metadata.level() {
                    tracing::Level::ERROR => "<3>",
                    tracing::Level::WARN => "<4>",
                    tracing::Level::INFO => "<6>",
                    _ => "<7>",
                });
            }
            line.push_str("{\"timestamp\":\"");
            write_timestamp(line, time::OffsetDateTime::now_utc());
            line.push_str("\",\"level\":\"");
            line.push_str(metadata.level().as_str());
            line.push('"');
            let mut visitor = EventVisitor {
                line,
                log_target: None,
            };
            event.record(&mut visitor);
            let log_target = visitor.log_target;
            line.push_str(",\"target\":");
            escape_into(line, log_target.as_deref().unwrap_or(metadata.target()));
            if let Some(span) = ctx.event_span(event) {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    line.push_str(",\"span\":{");
                    line.push_str(&fields.rendered);
                    line.push('}');
                }
            }
            line.push_str("}\n");
            let _ = self
                .make_writer
                .make_writer_for(event.metadata())
                .write_all(line.as_bytes());
        };
        // A line logged while another is written on this thread (a writer that logs) gets a
        // buffer of its own.
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => write(&mut line),
            Err(_) => write(&mut String::new()),
        });
    }
}

#[cfg(test)]
mod tests;
