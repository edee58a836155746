//! Canonical JSON: the byte form that Aegis signs and hashes.
//!
//! The rules are small and explicit so that any implementation can reproduce them:
//!
//! - object keys are sorted by their UTF-8 bytes, at every level of nesting;
//! - no insignificant whitespace (no spaces after `:` or `,`, no newlines);
//! - strings are escaped exactly as `serde_json` escapes them: `"` and `\` with a backslash,
//!   `\b \f \n \r \t` by name, every other control character below U+0020 as `\u00xx`
//!   (lowercase hex), everything else (including non-ASCII) written as is;
//! - numbers are written as `serde_json` writes them (integers in decimal, floats in their
//!   shortest round-trip form).
//!
//! Sorting is done here, explicitly, so the result does not depend on whether `serde_json`'s
//! `preserve_order` feature is enabled somewhere in the dependency graph.

use serde::Serialize;
use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_canonical_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// The canonical form of `value` as a `String`.
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// The canonical bytes of any serializable value (serialized to a [`Value`] first).
///
/// Fails only where `serde_json::to_value` fails: maps with non-string keys, or a `Serialize`
/// implementation that reports an error.
pub fn to_canonical_vec_of<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    Ok(to_canonical_vec(&serde_json::to_value(value)?))
}

/// Where canonical output goes: a byte vector or a string. Both are infallible sinks.
trait Sink {
    fn push_str(&mut self, s: &str);
    fn push_char(&mut self, c: char);
}

impl Sink for Vec<u8> {
    fn push_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    fn push_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

impl Sink for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
    fn push_char(&mut self, c: char) {
        self.push(c);
    }
}

fn write_value<S: Sink>(out: &mut S, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // `Number`'s Display is the same formatter serde_json's serializer uses.
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push_char('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_char(',');
                }
                write_value(out, item);
            }
            out.push_char(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // `str` orders by its UTF-8 bytes.
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push_char('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_char(',');
                }
                write_string(out, key);
                out.push_char(':');
                write_value(out, item);
            }
            out.push_char('}');
        }
    }
}

fn write_string<S: Sink>(out: &mut S, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_char('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\u{08}' => Some("\\b"),
            '\u{0c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            c if (c as u32) < 0x20 => Some(""),
            _ => None,
        };
        let Some(escape) = escape else { continue };
        if let Some(plain) = s.get(start..i) {
            out.push_str(plain);
        }
        if escape.is_empty() {
            let b = c as u32;
            out.push_str("\\u00");
            out.push_char(char::from(
                HEX.get((b >> 4) as usize).copied().unwrap_or(b'0'),
            ));
            out.push_char(char::from(
                HEX.get((b & 0xf) as usize).copied().unwrap_or(b'0'),
            ));
        } else {
            out.push_str(escape);
        }
        start = i + c.len_utf8();
    }
    if let Some(rest) = s.get(start..) {
        out.push_str(rest);
    }
    out.push_char('"');
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use serde_json::json;

    fn canon(v: &Value) -> String {
        String::from_utf8(to_canonical_vec(v)).unwrap()
    }

    #[test]
    fn sorts_keys_at_every_level_and_drops_whitespace() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "m": "s"}, "A": false});
        assert_eq!(
            canon(&v),
            r#"{"A":false,"a":{"m":"s","z":[3,{"x":null,"y":true}]},"b":1}"#
        );
        assert_eq!(to_canonical_string(&v), canon(&v));
    }

    #[test]
    fn sorts_by_utf8_bytes_not_utf16() {
        // U+FF61 sorts after U+1F600 in UTF-16 code units but before it in UTF-8 bytes.
        let mut map = serde_json::Map::new();
        map.insert("\u{1F600}".into(), json!(1));
        map.insert("\u{FF61}".into(), json!(2));
        map.insert("é".into(), json!(3));
        map.insert("z".into(), json!(4));
        let s = canon(&Value::Object(map));
        assert_eq!(s, "{\"z\":4,\"é\":3,\"\u{FF61}\":2,\"\u{1F600}\":1}");
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut a = serde_json::Map::new();
        a.insert("x".into(), json!(1));
        a.insert("y".into(), json!(2));
        let mut b = serde_json::Map::new();
        b.insert("y".into(), json!(2));
        b.insert("x".into(), json!(1));
        assert_eq!(
            to_canonical_vec(&Value::Object(a)),
            to_canonical_vec(&Value::Object(b))
        );
    }

    #[test]
    fn strings_and_numbers_match_serde_json() {
        let samples = [
            json!("plain"),
            json!("quote \" backslash \\ slash /"),
            json!("\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}"),
            json!("ünïcödé \u{2028} \u{1F600}"),
            json!(0),
            json!(-17),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(0.1),
            json!(123456789.125),
            json!([1, "a", null, true, 2.5]),
        ];
        for v in samples {
            assert_eq!(canon(&v), serde_json::to_string(&v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn output_parses_back_to_the_same_value() {
        let v = json!({"k\n": ["\u{1}", {"b": 2, "a": 1.25}], "": {}});
        let back: Value = serde_json::from_slice(&to_canonical_vec(&v)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn serialize_helper_sorts_struct_fields() {
        #[derive(Serialize)]
        struct S {
            zeta: u8,
            alpha: &'static str,
        }
        let bytes = to_canonical_vec_of(&S {
            zeta: 1,
            alpha: "a",
        })
        .unwrap();
        assert_eq!(bytes, br#"{"alpha":"a","zeta":1}"#);
    }
}
