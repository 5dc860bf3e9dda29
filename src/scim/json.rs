//! Strict JSON reading of request bodies: UTF-8 only, no duplicate keys, bounded nesting.
//!
//! serde_json alone keeps the last of two equal keys, so `{"active":true,"active":false}` would
//! mean whatever the last one says; a request that is ambiguous is refused instead.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ScimError;

/// `value` as compact JSON text, as `value.to_string()` gives it but written straight into a
/// byte buffer: `Value`'s `Display` goes through `fmt::Write` for every token, which costs about
/// twice as much, and every write renders its resource once or twice.
pub fn to_text(value: &Value) -> String {
    // A `Value` always serializes (its map keys are strings); `Display` is the same text.
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// Deepest nesting accepted; SCIM resources are three levels deep at most.
const MAX_DEPTH: usize = 32;

/// Parses `body` as one JSON object.
///
/// Fails with 400 `invalidSyntax` on invalid UTF-8, malformed JSON, a duplicate key, nesting
/// deeper than 32, or a top level that is not an object.
pub fn parse_object(body: &[u8]) -> Result<Value, ScimError> {
    let text = std::str::from_utf8(body)
        .map_err(|err| ScimError::invalid_syntax(format!("the body is not UTF-8: {err}")))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = StrictValue { depth: 0 }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|err| ScimError::invalid_syntax(format!("the body is not valid JSON: {err}")))?;
    if !value.is_object() {
        return Err(ScimError::invalid_syntax("the body must be a JSON object"));
    }
    Ok(value)
}

#[derive(Clone, Copy)]
struct StrictValue {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut values = Vec::new();
        while let Some(value) = seq.next_element_seed(inner)? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(inner)?;
            if object.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
        }
        Ok(Value::Object(object))
    }
}

impl StrictValue {
    fn nested<E: de::Error>(self) -> Result<StrictValue, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(StrictValue {
            depth: self.depth + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_object, to_text};

    #[track_caller]
    fn check_refused(body: &[u8], detail_part: &str) {
        let err = parse_object(body).expect_err("body must be refused");
        assert_eq!(err.status, 400);
        assert_eq!(err.scim_type, Some(crate::scim::ScimType::InvalidSyntax));
        assert!(err.detail.contains(detail_part), "{}", err.detail);
    }

    #[test]
    fn ambiguous_or_malformed_bodies_are_refused() {
        check_refused(
            br#"{"active":true,"active":false}"#,
            "duplicate key `active`",
        );
        check_refused(b"{\"userName\":\"\xff\"}", "not UTF-8");
        check_refused(b"[1,2]", "must be a JSON object");
        check_refused(b"{\"a\":1} x", "not valid JSON");
        let deep = format!("{}{}", "{\"a\":".repeat(40), "}".repeat(40));
        check_refused(deep.as_bytes(), "nesting deeper");
    }

    #[test]
    fn plain_objects_parse() {
        let value =
            parse_object(br#"{"userName":"bjensen","emails":[{"value":"a@b"}]}"#).expect("parses");
        assert_eq!(value["emails"][0]["value"], "a@b");
    }

    #[test]
    fn to_text_writes_what_display_writes() {
        let value = parse_object(
            r#"{"userName":"bj\"ensen\\","name":{"givenName":"Bär\u0001","n":[1,-2.5,true,null]},"e":{},"x":[]}"#
                .as_bytes(),
        )
        .expect("parses");
        assert_eq!(to_text(&value), value.to_string());
        assert!(to_text(&value).contains(r#""bj\"ensen\\""#));
    }
}
