//! Whole-number and boolean configuration keys that also take their value as a string.
//!
//! `${VAR}` expansion always yields a string, so a string key keeps `2024`, `1e3` or `true`
//! exactly as the variable holds it; the keys that are numbers or booleans read such a string back
//! here. Used as `#[serde(default, deserialize_with = "...")]` on `Option` fields: the caller's
//! `serde_path_to_error` adds the dotted key to every error. Owns only this syntax; ranges and
//! defaults are validation's job. It never logs a value.
//!
//! An empty or blank string is unset, the same as leaving the key out: `${VAR:-}` of an unset
//! variable then means "the default", which is what an operator writing it expects (and what a
//! string key such as `leader.identity` already does with an empty value).

use std::{fmt, marker::PhantomData};

use serde::de::{self, Deserializer, Visitor};

/// A whole number: a YAML integer, or a string of decimal digits (`"500"`, from `${PAGE_SIZE}`).
/// YAML's other integer spellings (`0x10`, `1_000`, `+5`) are not read from a string.
pub(super) fn whole<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_any(WholeVisitor(PhantomData))
}

/// A boolean: a YAML boolean, or the string `true`, `True`, `TRUE`, `false`, `False` or `FALSE`
/// (YAML 1.2's spellings; `yes`/`no`/`on`/`off` are not booleans there, nor here).
pub(super) fn boolean<'de, D>(deserializer: D) -> Result<Option<bool>, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_any(BoolVisitor)
}

struct WholeVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Visitor<'_> for WholeVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number such as 500")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        T::try_from(value)
            .map(Some)
            .map_err(|_| E::custom(format_args!("`{value}` is too large")))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        match u64::try_from(value) {
            Ok(value) => self.visit_u64(value),
            Err(_) => Err(E::custom(format_args!(
                "`{value}` is negative, expected a whole number such as 500"
            ))),
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format_args!(
                "`{text}` is not a whole number such as 500"
            )));
        }
        let value = text
            .parse::<u64>()
            .map_err(|_| E::custom(format_args!("`{text}` is too large")))?;
        self.visit_u64(value)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

struct BoolVisitor;

impl Visitor<'_> for BoolVisitor {
    type Value = Option<bool>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`true` or `false`")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Some(value))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        match text.trim() {
            "" => Ok(None),
            "true" | "True" | "TRUE" => Ok(Some(true)),
            "false" | "False" | "FALSE" => Ok(Some(false)),
            other => Err(E::custom(format_args!(
                "`{other}` is not `true` or `false`"
            ))),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_yaml_ng::Value;

    #[derive(Debug, Deserialize)]
    struct Keys {
        #[serde(default, deserialize_with = "super::whole")]
        count: Option<u32>,
        #[serde(default, deserialize_with = "super::boolean")]
        enabled: Option<bool>,
    }

    fn keys(count: Value, enabled: Value) -> Result<Keys, serde_yaml_ng::Error> {
        let mut map = serde_yaml_ng::Mapping::new();
        map.insert("count".into(), count);
        map.insert("enabled".into(), enabled);
        Keys::deserialize(Value::Mapping(map))
    }

    #[test]
    fn numbers_and_booleans_are_read_natively_or_from_their_string() {
        let native = keys(Value::from(9102), Value::from(true)).unwrap();
        assert_eq!((native.count, native.enabled), (Some(9102), Some(true)));
        let text = keys(Value::from(" 9102 "), Value::from("FALSE")).unwrap();
        assert_eq!((text.count, text.enabled), (Some(9102), Some(false)));
    }

    #[test]
    fn an_empty_string_or_null_is_unset() {
        let empty = keys(Value::from(""), Value::from(" ")).unwrap();
        assert_eq!((empty.count, empty.enabled), (None, None));
        let null = keys(Value::Null, Value::Null).unwrap();
        assert_eq!((null.count, null.enabled), (None, None));
    }

    #[test]
    fn strings_that_yaml_would_retype_are_not_numbers_or_booleans_here() {
        for text in [
            "abc", "1e3", "0x10", "1_000", "+5", "-5", "~", "null", "9.5",
        ] {
            let err = keys(Value::from(text), Value::Null).unwrap_err();
            assert!(
                err.to_string().contains("not a whole number"),
                "{text}: {err}"
            );
        }
        for text in ["yes", "on", "1", "~"] {
            let err = keys(Value::Null, Value::from(text)).unwrap_err();
            assert!(
                err.to_string().contains("not `true` or `false`"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn out_of_range_and_mistyped_values_are_rejected() {
        let err = keys(Value::from("4294967296"), Value::Null).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        let err = keys(Value::from(-1), Value::Null).unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = keys(Value::from(1.5), Value::Null).unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
        let err = keys(Value::Null, Value::from(1)).unwrap_err();
        assert!(err.to_string().contains("`true` or `false`"), "{err}");
    }
}
