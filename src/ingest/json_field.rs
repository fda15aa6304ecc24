//! One field of a JSON object, read without building the object: every other value is
//! parsed (so malformed JSON is still an error) and dropped as it is read, nothing allocated
//! but the wanted string. With the fast engine, building a `serde_json::Value` per line cost
//! as much as a fifth of the encoding.
//!
//! The field is found as `serde_json::Value` lookups would find it: the key itself when the
//! object has it, else the dotted path through nested objects; of repeated keys, the last.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What the object holds at the field.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Field {
    /// A string.
    Text(String),
    /// Nothing, or null.
    Missing,
    /// Another kind of value: "a number", "an array", ...
    Other(&'static str),
    /// The line is not an object but this kind of value.
    NotObject(&'static str),
}

/// A field name and its dotted path, split once for all lines.
#[derive(Clone, Debug)]
pub(super) struct FieldPath {
    whole: String,
    segments: Vec<String>,
}

impl FieldPath {
    pub(super) fn new(field: &str) -> Self {
        FieldPath {
            whole: field.to_owned(),
            segments: field.split('.').map(str::to_owned).collect(),
        }
    }

    /// The field as given.
    pub(super) fn name(&self) -> &str {
        &self.whole
    }
}

/// The field `field` of the JSON object `line`.
///
/// # Errors
///
/// serde_json's, for a line that is not one JSON value.
pub(super) fn extract(line: &str, field: &FieldPath) -> Result<Field, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(line);
    let top = Top {
        field: &field.whole,
        segments: &field.segments,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(top)
}

/// A value: a string kept, anything else consumed and named by its kind.
enum Value {
    Str(String),
    Kind(&'static str),
}

const NULL: &str = "null";

impl Value {
    fn into_field(self) -> Field {
        match self {
            Value::Str(s) => Field::Text(s),
            Value::Kind(NULL) => Field::Missing,
            Value::Kind(kind) => Field::Other(kind),
        }
    }
}

/// Visits any value as a [`Value`].
struct AnyValue;

impl<'de> DeserializeSeed<'de> for AnyValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Kinds(Value::Kind, Value::Str))
    }
}

/// A visitor for a value whose kind (or string) is all that matters: `kind` maps a kind,
/// `text` a string. Arrays and objects are consumed element by element.
struct Kinds<K, S>(K, S);

impl<'de, T, K: FnOnce(&'static str) -> T, S: FnOnce(String) -> T> Visitor<'de> for Kinds<K, S> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<T, E> {
        Ok((self.0)("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<T, E> {
        Ok((self.0)("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<T, E> {
        Ok((self.0)("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<T, E> {
        Ok((self.0)("a number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<T, E> {
        Ok((self.1)(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<T, E> {
        Ok((self.1)(v))
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok((self.0)(NULL))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok((self.0)("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok((self.0)("an object"))
    }
}

/// Which of the wanted keys a key is.
#[derive(Clone, Copy, PartialEq, Eq)]
struct KeyIs {
    /// The whole field (`a.b` as one key).
    literal: bool,
    /// The first segment of the dotted path (`a`), when the field has more than one.
    first: bool,
}

struct Key<'f> {
    field: &'f str,
    first: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = KeyIs;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KeyIs, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = KeyIs;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<KeyIs, E> {
        Ok(KeyIs {
            literal: key == self.field,
            first: self.first == Some(key),
        })
    }
}

/// The top-level object: the literal key, else the dotted path.
struct Top<'f> {
    field: &'f str,
    segments: &'f [String],
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        let first = (self.segments.len() > 1).then_some(self.segments[0].as_str());
        let mut literal = None;
        let mut dotted = None;
        while let Some(key) = map.next_key_seed(Key {
            field: self.field,
            first,
        })? {
            match key {
                KeyIs { literal: true, .. } => literal = Some(map.next_value_seed(AnyValue)?),
                KeyIs { first: true, .. } => {
                    dotted = map.next_value_seed(Path(&self.segments[1..]))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(literal.or(dotted).map_or(Field::Missing, Value::into_field))
    }
    // Anything else is not an object.
    fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
        Ok(Field::NotObject("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Field, E> {
        Ok(Field::NotObject("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Field, E> {
        Ok(Field::NotObject("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
        Ok(Field::NotObject("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Field, E> {
        Ok(Field::NotObject("a string"))
    }
    fn visit_unit<E>(self) -> Result<Field, E> {
        Ok(Field::NotObject(NULL))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::NotObject("an array"))
    }
}

/// The rest of a dotted path, inside a value: `None` when the value is not an object or the
/// path goes nowhere.
struct Path<'f>(&'f [String]);

impl<'de> DeserializeSeed<'de> for Path<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Path<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let (head, rest) = self.0.split_first().expect("a path has a segment");
        let mut found = None;
        while let Some(key) = map.next_key_seed(Key {
            field: head.as_str(),
            first: None,
        })? {
            if key.literal {
                found = if rest.is_empty() {
                    Some(map.next_value_seed(AnyValue)?)
                } else {
                    map.next_value_seed(Path(rest))?
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: `serde_json::Value` and the lookup it replaces.
    fn by_value(line: &str, field: &str) -> Result<Field, ()> {
        let mut value: serde_json::Value = serde_json::from_str(line).map_err(|_| ())?;
        let kind = |v: &serde_json::Value| match v {
            serde_json::Value::Null => NULL,
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        if !value.is_object() {
            return Ok(Field::NotObject(kind(&value)));
        }
        let found = if value.get(field).is_some() {
            value.get_mut(field)
        } else {
            field
                .split('.')
                .try_fold(&mut value, |v, key| v.as_object_mut()?.get_mut(key))
        };
        Ok(match found {
            None | Some(serde_json::Value::Null) => Field::Missing,
            Some(serde_json::Value::String(s)) => Field::Text(std::mem::take(s)),
            Some(other) => Field::Other(kind(other)),
        })
    }

    #[test]
    fn finds_what_value_lookups_find() {
        let lines = [
            r#"{"text": "a"}"#,
            r#"{"text": "a", "text": "b"}"#,
            r#"{"text": 1, "text": "b"}"#,
            r#"{"text": "b", "text": null}"#,
            r#"{"other": "x"}"#,
            r#"{"text": [1, {"a": 2}], "x": {}}"#,
            r#"{"text": {"t": 1}}"#,
            r#"{"te\u0078t": "escaped \"key\" \n"}"#,
            r#"{"meta": {"body": "deep"}, "meta.body": "literal"}"#,
            r#"{"meta": {"body": "deep"}}"#,
            r#"{"meta": {"body": {"x": "deeper"}}}"#,
            r#"{"meta": {"body": 3}, "meta": 4}"#,
            r#"{"meta": 4, "meta": {"body": "late"}}"#,
            r#"{"meta": [{"body": "no"}]}"#,
            r#"{"a": {"b": {"c": "abc"}}, "a.b": {"c": "no"}}"#,
            r#"[1, 2]"#,
            r#""text""#,
            r#"null"#,
            r#"12"#,
            r#"true"#,
            r#"{"text": "a"} trailing"#,
            r#"{"text": "a""#,
            r#"{"text": 1e400}"#,
            r#"{"x": 1e400, "text": "a"}"#,
            "",
        ];
        for line in lines {
            for field in ["text", "meta.body", "a.b.c", "a.b", "x"] {
                let got = extract(line, &FieldPath::new(field)).map_err(|_| ());
                if line.contains("1e400") && got.is_ok() {
                    // Values the field does not hold are parsed but not converted: a number
                    // too large for f64 there is not an error here, as it is in a Value.
                    continue;
                }
                assert_eq!(got, by_value(line, field), "{line} / {field}");
            }
        }
    }
}
