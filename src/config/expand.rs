//! `${VAR}` expansion in configuration values, and its inverse for printing.
//!
//! Owns the expansion syntax: `${VAR}` (an unset variable is an error), `${VAR:-default}` (the
//! default when unset or empty) and `$$` (a literal `$`). It works on YAML string scalars after
//! parsing, so an expanded value can never inject YAML structure, and the result is always a
//! string: `name: ${CLUSTER}` with `CLUSTER=2024` is the string `2024`, never an integer, and
//! `true`, `null`, `1e3` or `0x10` likewise stay as written. The keys that are numbers or booleans
//! read their string back themselves (`super::scalar`). It never logs a value: expanded values may
//! be secrets.

use serde_yaml_ng::Value;

/// An expansion failure, naming the configuration key and the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${VAR}` names a variable that is not set and has no default.
    #[error(
        "{key}: environment variable `{var}` is not set (write `${{{var}:-default}}` to allow that)"
    )]
    Unset {
        /// Dotted path of the configuration key.
        key: String,
        /// The variable name.
        var: String,
    },
    /// A `${` without its closing brace, or an empty or invalid variable name.
    #[error("{key}: malformed variable reference `{text}`")]
    Malformed {
        /// Dotted path of the configuration key.
        key: String,
        /// The offending text.
        text: String,
    },
}

/// Expands every string scalar in `value` in place. `lookup` returns a variable's value.
pub fn expand_tree(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ExpandError> {
    expand_at(value, "", lookup)
}

fn expand_at(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ExpandError> {
    match value {
        Value::String(text) => {
            if !text.contains('$') {
                return Ok(());
            }
            // Always a string, even for `${VAR}` alone: the key's own type decides how it is
            // read, so a string key keeps `2024` or `true` exactly as the variable holds it.
            *text = expand_str(text, path, lookup)?;
            Ok(())
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand_at(item, &format!("{path}[{index}]"), lookup)?;
            }
            Ok(())
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = match key {
                    Value::String(key) => key.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand_at(item, &child, lookup)?;
            }
            Ok(())
        }
        Value::Tagged(tagged) => expand_at(&mut tagged.value, path, lookup),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Expands one string. `key` names the configuration key in errors.
pub fn expand_str(
    text: &str,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let malformed = || ExpandError::Malformed {
                key: key.to_owned(),
                text: rest.chars().take(40).collect(),
            };
            let close = body.find('}').ok_or_else(malformed)?;
            let inner = &body[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                return Err(malformed());
            }
            match (
                lookup(name).filter(|v| !(default.is_some() && v.is_empty())),
                default,
            ) {
                (Some(found), _) => out.push_str(&found),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(ExpandError::Unset {
                        key: key.to_owned(),
                        var: name.to_owned(),
                    });
                }
            }
            rest = &body[close + 1..];
        } else {
            // A lone `$` (for example in a regular expression) stays as written.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Writes every `$` in the string scalars of `value` as `$$`, so expanding the printed text gives
/// the values back as they are (a value is printed after expansion, never re-expanded).
pub fn escape_tree(value: &mut Value) {
    match value {
        Value::String(text) => {
            if text.contains('$') {
                *text = text.replace('$', "$$");
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(escape_tree),
        Value::Mapping(map) => map.iter_mut().for_each(|(_, item)| escape_tree(item)),
        Value::Tagged(tagged) => escape_tree(&mut tagged.value),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "CLUSTER" => Some("aks-prod".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("9102".into()),
            _ => None,
        }
    }

    #[test]
    fn set_variables_are_substituted_inside_text() {
        assert_eq!(
            expand_str("c-${CLUSTER}-x", "k", &env).unwrap(),
            "c-aks-prod-x"
        );
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_key_and_variable() {
        let err = expand_str("${NOPE}", "cluster.name", &env).unwrap_err();
        assert_eq!(
            err,
            ExpandError::Unset {
                key: "cluster.name".into(),
                var: "NOPE".into()
            }
        );
        assert!(err.to_string().contains("cluster.name"));
        assert!(err.to_string().contains("NOPE"));
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(expand_str("${NOPE:-eu}", "k", &env).unwrap(), "eu");
        assert_eq!(expand_str("${EMPTY:-x}", "k", &env).unwrap(), "x");
        assert_eq!(expand_str("${NOPE:-}", "k", &env).unwrap(), "");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar_and_lone_dollar_stays() {
        assert_eq!(
            expand_str("a$${CLUSTER}", "k", &env).unwrap(),
            "a${CLUSTER}"
        );
        assert_eq!(expand_str("^a$", "k", &env).unwrap(), "^a$");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(matches!(
            expand_str("${CLUSTER", "k", &env),
            Err(ExpandError::Malformed { .. })
        ));
        assert!(matches!(
            expand_str("${1X}", "k", &env),
            Err(ExpandError::Malformed { .. })
        ));
    }

    #[test]
    fn a_whole_reference_stays_a_string_and_errors_carry_the_path() {
        let mut tree: Value = serde_yaml_ng::from_str(
            "admin:\n  port: ${PORT}\n  name: x-${PORT}\nlist: [\"${NOPE}\"]",
        )
        .unwrap();
        let err = expand_tree(&mut tree, &env).unwrap_err();
        assert!(err.to_string().starts_with("list[0]:"), "{err}");
        let mut tree: Value = serde_yaml_ng::from_str(
            "admin:\n  port: ${PORT}\n  name: x-${PORT}\n  flag: ${FLAG}\n  none: ${NULL}\n  \
             empty: ${EMPTY:-}\n  list:\n    - ${PORT}",
        )
        .unwrap();
        let lookup = |name: &str| match name {
            "FLAG" => Some("true".to_owned()),
            "NULL" => Some("~".to_owned()),
            other => env(other),
        };
        expand_tree(&mut tree, &lookup).unwrap();
        let admin = &tree["admin"];
        assert_eq!(admin["port"], Value::String("9102".into()));
        assert_eq!(admin["name"], Value::String("x-9102".into()));
        assert_eq!(admin["flag"], Value::String("true".into()));
        assert_eq!(admin["none"], Value::String("~".into()));
        assert_eq!(admin["empty"], Value::String(String::new()));
        assert_eq!(admin["list"][0], Value::String("9102".into()));
    }
}
