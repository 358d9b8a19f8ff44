//! Serde building blocks that accept exactly what the audit JSON Schema's `type` keywords
//! accept, so the typed decoder can read an event straight from the record bytes and still
//! refuse everything the schema refuses: a string is never `null`, an object is never an array
//! (serde would otherwise read a struct from a JSON array), and an `integer` is any number with
//! no fractional part. `audit::tests::typed_checks_never_pass_what_the_schema_refuses` holds
//! these types and `audit_event.schema.json` together.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON string, borrowed from the input when it holds no escapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'a> Str<'a> {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of characters, as JSON Schema's `minLength` / `maxLength` count them.
    pub fn num_chars(&self) -> usize {
        self.0.chars().count()
    }
}

impl<'a> From<Str<'a>> for Cow<'a, str> {
    fn from(s: Str<'a>) -> Cow<'a, str> {
        s.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        deserializer.deserialize_str(StrVisitor).map(Str)
    }
}

/// A JSON object read into `T`; an array (which serde would read into a struct field by
/// field) is refused.
#[derive(Debug, Default)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

/// For optional properties: present means the value's own type, never `null` (which
/// `Option`'s own `Deserialize` would take as absent). Use with `#[serde(default)]`.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Which JSON types a property may have (JSON Schema's `type`, as a list).
#[derive(Debug, Clone, Copy)]
pub struct Types {
    pub integer: bool,
    pub string: bool,
    pub array: bool,
}

/// Accepts a value of one of its types, and reads nothing from it.
struct TypesVisitor(Types);

impl<'de> Visitor<'de> for TypesVisitor {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let names: Vec<&str> = [
            (self.0.integer, "an integer"),
            (self.0.string, "a string"),
            (self.0.array, "an array"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(" or "))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        if self.0.integer {
            Ok(())
        } else {
            Err(E::invalid_type(de::Unexpected::Signed(v), &self))
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        if self.0.integer {
            Ok(())
        } else {
            Err(E::invalid_type(de::Unexpected::Unsigned(v), &self))
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // JSON Schema: an integer is a number without a fractional part (`1.0` is one).
        if self.0.integer && v.is_finite() && v.fract() == 0.0 {
            Ok(())
        } else {
            Err(E::invalid_type(de::Unexpected::Float(v), &self))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.0.string {
            Ok(())
        } else {
            Err(E::invalid_type(de::Unexpected::Str(v), &self))
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if !self.0.array {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// An integer or a string (`correlation_id`, `connection_id`), or with `ARRAY` also an array
/// (`request_id`): checked, not kept.
#[derive(Debug)]
pub struct IntegerOrString<const ARRAY: bool = false>;

/// `request_id`'s types.
pub type IntegerStringOrArray = IntegerOrString<true>;

impl<'de, const ARRAY: bool> Deserialize<'de> for IntegerOrString<ARRAY> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let types = Types {
            integer: true,
            string: true,
            array: ARRAY,
        };
        deserializer.deserialize_any(TypesVisitor(types))?;
        Ok(IntegerOrString)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, Default)]
    struct Inner<'a> {
        #[serde(default, deserialize_with = "present", borrow)]
        name: Option<Str<'a>>,
    }

    #[test]
    fn strings_borrow_unless_escaped_and_are_never_null() {
        let Object(inner): Object<Inner> = serde_json::from_str(r#"{"name": "plain"}"#).unwrap();
        assert!(matches!(inner.name, Some(Str(Cow::Borrowed("plain")))));
        let Object(inner): Object<Inner> = serde_json::from_str(r#"{"name": "a\u003db"}"#).unwrap();
        assert_eq!(inner.name.unwrap().as_str(), "a=b");
        let Object(inner): Object<Inner> = serde_json::from_str("{}").unwrap();
        assert!(inner.name.is_none());
        assert!(serde_json::from_str::<Object<Inner>>(r#"{"name": null}"#).is_err());
        assert!(serde_json::from_str::<Object<Inner>>(r#"{"name": 1}"#).is_err());
    }

    #[test]
    fn objects_are_never_arrays() {
        assert!(serde_json::from_str::<Object<Inner>>(r#"["x"]"#).is_err());
        assert!(serde_json::from_str::<Object<Inner>>("[]").is_err());
        assert!(serde_json::from_str::<Object<IgnoredAny>>(r#"{"a": [1, {"b": null}]}"#).is_ok());
        // serde alone would take the array as the struct's fields, in order.
        assert!(serde_json::from_str::<Inner>(r#"["x"]"#).is_ok());
    }

    #[test]
    fn integers_are_numbers_without_a_fraction() {
        for ok in [
            "1",
            "-3",
            "1.0",
            "170112233445566901",
            "18446744073709551616",
            r#""abc""#,
        ] {
            assert!(serde_json::from_str::<IntegerOrString>(ok).is_ok(), "{ok}");
        }
        for bad in ["1.5", "true", "null", "[]", "{}"] {
            assert!(serde_json::from_str::<IntegerOrString>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<IntegerStringOrArray>("[1, \"a\", {}]").is_ok());
        assert!(serde_json::from_str::<IntegerStringOrArray>("{}").is_err());
    }
}
