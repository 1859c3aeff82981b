//! The part of KQL the ADX emulator understands: `.create table T (C: type, …)`,
//! `.alter-merge table T (…)` and `.create[-or-alter] table T ingestion json mapping "M"` with the
//! mapping as a JSON array (in a ```…``` literal or a quoted string), plus JSON mapping paths
//! (`$`, `.prop`, `['prop']`, `["prop"]`, `[n]`) and how a mapping turns a record into a row.
//!
//! Owns parsing `manifests/adx/kube-events.kql` (so that file is tested by every emulator run)
//! and applying mappings the way ADX does: unmapped fields are dropped, missing paths ingest as
//! empty. It must never accept a mapping that names a column the table does not have.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The manifest shipped in the repository.
pub const KUBE_EVENTS_KQL: &str = include_str!("../../../manifests/adx/kube-events.kql");

/// A KQL or mapping problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be parsed.
    #[error("cannot parse `{command}`: {message}")]
    Parse {
        /// The command's first line.
        command: String,
        /// What is wrong.
        message: String,
    },
    /// A mapping path is not a supported JSON path.
    #[error("`{path}` is not a supported JSON path: {message}")]
    Path {
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A mapping names a column its table does not have.
    #[error("mapping {mapping} maps column {column}, which table {table} does not have")]
    UnknownColumn {
        /// The mapping.
        mapping: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `.name` or `['name']`.
    Key(String),
    /// `[n]`.
    Index(usize),
}

/// A parsed JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(pub Vec<Step>);

impl JsonPath {
    /// Parses `$`, `$.a.b`, `$['a.b']`, `$["a"]`, `$.a[0]`.
    ///
    /// # Errors
    /// [`Error::Path`] for anything else (wildcards, filters, slices, a missing `$`).
    pub fn parse(path: &str) -> Result<Self, Error> {
        let bad = |message: &str| Error::Path {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        let mut rest = path
            .trim()
            .strip_prefix('$')
            .ok_or_else(|| bad("must start with `$`"))?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if name.is_empty() || name == "*" {
                    return Err(bad("empty or wildcard property"));
                }
                steps.push(Step::Key(name.to_owned()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"');
                if let Some(quote) = quote {
                    let inner = &after[1..];
                    let end = inner
                        .find(quote)
                        .ok_or_else(|| bad("unterminated quoted property"))?;
                    steps.push(Step::Key(inner[..end].to_owned()));
                    rest = inner[end + 1..]
                        .strip_prefix(']')
                        .ok_or_else(|| bad("expected `]`"))?;
                } else {
                    let end = after.find(']').ok_or_else(|| bad("expected `]`"))?;
                    let index = after[..end]
                        .trim()
                        .parse()
                        .map_err(|_| bad("only quoted names and indexes go in brackets"))?;
                    steps.push(Step::Index(index));
                    rest = &after[end + 1..];
                }
            } else {
                return Err(bad("expected `.` or `[`"));
            }
        }
        Ok(Self(steps))
    }

    /// The value at this path, if any.
    #[must_use]
    pub fn resolve<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(value, |current, step| match step {
            Step::Key(key) => current.get(key),
            Step::Index(index) => current.get(*index),
        })
    }
}

impl std::fmt::Display for JsonPath {
    /// The path in bracket form (`$['a']['b.c'][0]`), which [`JsonPath::parse`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("$")?;
        for step in &self.0 {
            match step {
                Step::Key(key) => write!(f, "['{key}']")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// One column of a mapping.
#[derive(Debug, Clone)]
pub struct MappingColumn {
    /// Target column.
    pub column: String,
    /// Where its value comes from.
    pub path: JsonPath,
}

/// A JSON ingestion mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Its name.
    pub name: String,
    /// Its columns.
    pub columns: Vec<MappingColumn>,
}

/// A table: its columns in order, with their types.
#[derive(Debug, Clone, Default)]
pub struct TableSchema {
    /// `(name, type)`.
    pub columns: Vec<(String, String)>,
    /// Its JSON mappings by name.
    pub mappings: BTreeMap<String, Mapping>,
}

/// Tables (with their mappings) by name.
pub type Schema = BTreeMap<String, TableSchema>;

/// Parses the commands of a KQL script that the emulator understands; others are ignored.
///
/// # Errors
/// A malformed table or mapping command, a bad path, or a mapping of an unknown column.
pub fn parse_script(script: &str) -> Result<Schema, Error> {
    let text: String = script
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut schema = Schema::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find('.') {
        rest = &rest[at..];
        let head: String = rest.lines().next().unwrap_or("").to_owned();
        let words: Vec<&str> = head.split_whitespace().collect();
        match words.as_slice() {
            [
                ".create" | ".alter-merge" | ".create-merge",
                "table",
                name,
                ..,
            ] if !head.contains("ingestion") => {
                let name = name.split('(').next().unwrap_or(name).trim().to_owned();
                let open = rest
                    .find('(')
                    .ok_or_else(|| parse_error(&head, "expected `(`"))?;
                let close = open
                    + rest[open..]
                        .find(')')
                        .ok_or_else(|| parse_error(&head, "expected `)`"))?;
                let table = schema.entry(name).or_default();
                for column in rest[open + 1..close].split(',') {
                    let Some((column, kind)) = column.split_once(':') else {
                        return Err(parse_error(&head, "a column needs `name: type`"));
                    };
                    let column = column.trim().to_owned();
                    if !table.columns.iter().any(|(c, _)| *c == column) {
                        table.columns.push((column, kind.trim().to_owned()));
                    }
                }
                rest = &rest[close + 1..];
            }
            [
                ".create" | ".create-or-alter",
                "table",
                table,
                "ingestion",
                "json",
                "mapping",
                name,
                ..,
            ] => {
                let table = (*table).to_owned();
                // The literal follows the name, on the same line or the next.
                let name_end = rest.find(*name).map_or(head.len(), |at| at + name.len());
                let name = name.trim_matches(['"', '\'']).to_owned();
                let after = &rest[name_end..];
                let (json, consumed) = mapping_literal(after).ok_or_else(|| {
                    parse_error(&head, "expected the mapping as a ```…``` or quoted literal")
                })?;
                let entries: Vec<Value> = serde_json::from_str(json).map_err(|e| {
                    parse_error(&head, &format!("the mapping is not a JSON array: {e}"))
                })?;
                let mut columns = Vec::new();
                for entry in &entries {
                    let column = entry
                        .get("column")
                        .or_else(|| entry.get("Column"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| parse_error(&head, "a mapping entry has no column"))?;
                    let path = entry
                        .get("Properties")
                        .and_then(|p| p.get("Path"))
                        .or_else(|| entry.get("path"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            parse_error(&head, "a mapping entry has no Properties.Path")
                        })?;
                    columns.push(MappingColumn {
                        column: column.to_owned(),
                        path: JsonPath::parse(path)?,
                    });
                }
                let schema_table = schema.entry(table.clone()).or_default();
                for column in &columns {
                    if !schema_table
                        .columns
                        .iter()
                        .any(|(c, _)| *c == column.column)
                    {
                        return Err(Error::UnknownColumn {
                            mapping: name,
                            table,
                            column: column.column.clone(),
                        });
                    }
                }
                schema_table
                    .mappings
                    .insert(name.clone(), Mapping { name, columns });
                rest = &after[consumed..];
            }
            _ => rest = &rest[1..],
        }
    }
    Ok(schema)
}

fn parse_error(command: &str, message: &str) -> Error {
    Error::Parse {
        command: command.trim().to_owned(),
        message: message.to_owned(),
    }
}

/// The mapping JSON after a mapping command: a ```…``` literal, or a '…'/"…" string. Returns the
/// JSON and how many bytes of `text` it used.
fn mapping_literal(text: &str) -> Option<(&str, usize)> {
    let trimmed = text.trim_start();
    let skipped = text.len() - trimmed.len();
    if let Some(inner) = trimmed.strip_prefix("```") {
        let end = inner.find("```")?;
        return Some((&inner[..end], skipped + 3 + end + 3));
    }
    let quote = trimmed.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = &trimmed[1..];
    let end = inner.find(quote)?;
    Some((&inner[..end], skipped + 1 + end + 1))
}

/// Applies `mapping` to `record`: one row with every table column; mapped values converted to
/// the column type as ADX stores them, everything else empty.
#[must_use]
pub fn apply(table: &TableSchema, mapping: &Mapping, record: &Value) -> Map<String, Value> {
    let mut row = Map::new();
    for (column, kind) in &table.columns {
        let value = mapping
            .columns
            .iter()
            .find(|m| m.column == *column)
            .and_then(|m| m.path.resolve(record));
        row.insert(column.clone(), convert(value, kind));
    }
    row
}

fn convert(value: Option<&Value>, kind: &str) -> Value {
    match (kind, value) {
        ("string", None | Some(Value::Null)) => Value::String(String::new()),
        ("string", Some(Value::String(s))) => Value::String(s.clone()),
        ("string", Some(other)) => Value::String(other.to_string()),
        ("datetime", Some(Value::String(s))) => s
            .parse::<jiff::Timestamp>()
            .map_or(Value::Null, |t| Value::String(t.to_string())),
        ("long" | "int", Some(Value::String(s))) => {
            s.parse::<i64>().map_or(Value::Null, Value::from)
        }
        (_, Some(v)) => v.clone(),
        (_, None) => Value::Null,
    }
}

/// Whose ingestion mappings a `.show … ingestion mappings` command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingScope {
    /// `.show table T ingestion …`.
    Table(String),
    /// `.show database D ingestion …`.
    Database(String),
}

/// A parsed `.show (table T | database D) ingestion [kind] mappings` or
/// `.show (table T | database D) ingestion kind mapping "M"` (names bare or `['…']`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowMappings {
    /// The table or database.
    pub scope: MappingScope,
    /// `json`, `csv`…, lower-case; `None` for every kind.
    pub kind: Option<String>,
    /// One mapping by name, or all of them.
    pub name: Option<String>,
}

/// Parses a `.show … ingestion mappings` command; `None` for anything else.
#[must_use]
pub fn parse_show_mappings(command: &str) -> Option<ShowMappings> {
    let rest = command.trim().strip_prefix(".show")?;
    let rest = rest.trim_start();
    let (is_table, rest) = if let Some(rest) = rest.strip_prefix("table") {
        (true, rest)
    } else {
        (false, rest.strip_prefix("database")?)
    };
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let (entity, rest) = entity_name(rest.trim_start())?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let unquote = |name: &str| name.trim_matches(['"', '\'']).to_owned();
    let (kind, name) = match words.as_slice() {
        ["ingestion", "mappings"] => (None, None),
        ["ingestion", kind, "mappings"] => (Some(kind.to_ascii_lowercase()), None),
        ["ingestion", kind, "mapping", name] => {
            (Some(kind.to_ascii_lowercase()), Some(unquote(name)))
        }
        _ => return None,
    };
    let scope = if is_table {
        MappingScope::Table(entity)
    } else {
        MappingScope::Database(entity)
    };
    Some(ShowMappings { scope, kind, name })
}

/// A table or database name at the start of `text` (bare, or `['…']`/`["…"]`) and the rest.
fn entity_name(text: &str) -> Option<(String, &str)> {
    if let Some(inner) = text.strip_prefix('[') {
        let quote = inner.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let inner = &inner[1..];
        let end = inner.find(quote)?;
        let rest = inner[end + 1..].strip_prefix(']')?;
        return Some((inner[..end].to_owned(), rest));
    }
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
}

/// The one query shape the emulator answers: `T | where E == "v" and … | count`, which the sink
/// sends to check whether a batch is in a table. The table is bare or `['name']`; each `E` is a
/// column (bare or `['name']`), `tostring(E)`, `column_ifexists('name', E)`, `dynamic(null)`, or
/// a property of one (`E.name`, as in `log.Uid` on a `dynamic` column); literals are `"…"` or
/// `'…'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountQuery {
    /// The table.
    pub table: String,
    /// `(expression, value)` pairs that must all hold.
    pub conditions: Vec<(Expr, String)>,
}

/// A scalar expression of a [`CountQuery`] condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A column of the table: the query fails when the table has no such column.
    Column(String),
    /// A string literal.
    Text(String),
    /// `dynamic(null)`.
    Null,
    /// `tostring(E)`: strings as they are, null as `""`, anything else as its JSON text.
    ToString(Box<Expr>),
    /// `column_ifexists('name', E)`: the column if the table has it, else `E`.
    ColumnIfExists(String, Box<Expr>),
    /// `E.name`: a property of a `dynamic` value (null when absent).
    Member(Box<Expr>, String),
}

impl Expr {
    /// The first column this expression needs that `has_column` denies (ADX answers such a query
    /// with a semantic error).
    #[must_use]
    pub fn unresolved(&self, has_column: &dyn Fn(&str) -> bool) -> Option<String> {
        match self {
            Self::Column(name) => (!has_column(name)).then(|| name.clone()),
            Self::Text(_) | Self::Null => None,
            Self::ToString(inner) | Self::Member(inner, _) => inner.unresolved(has_column),
            Self::ColumnIfExists(name, default) => {
                if has_column(name) {
                    None
                } else {
                    default.unresolved(has_column)
                }
            }
        }
    }

    /// The value of this expression on `row` (a missing column reads as null).
    #[must_use]
    pub fn eval(&self, row: &Map<String, Value>, has_column: &dyn Fn(&str) -> bool) -> Value {
        match self {
            Self::Column(name) => row.get(name).cloned().unwrap_or(Value::Null),
            Self::Text(text) => Value::String(text.clone()),
            Self::Null => Value::Null,
            Self::ToString(inner) => Value::String(match inner.eval(row, has_column) {
                Value::String(text) => text,
                Value::Null => String::new(),
                other => other.to_string(),
            }),
            Self::ColumnIfExists(name, default) => {
                if has_column(name) {
                    row.get(name).cloned().unwrap_or(Value::Null)
                } else {
                    default.eval(row, has_column)
                }
            }
            Self::Member(inner, key) => inner
                .eval(row, has_column)
                .get(key)
                .cloned()
                .unwrap_or(Value::Null),
        }
    }
}

/// Whether a value equals a string literal as `==` compares them: strings by text, null never,
/// other values by their JSON value.
#[must_use]
pub fn equals_text(value: &Value, text: &str) -> bool {
    match value {
        Value::String(value) => value == text,
        Value::Null => false,
        other => serde_json::from_str::<Value>(text).is_ok_and(|v| v == *other),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    Text(String),
    Equals,
    Pipe,
    Open,
    Close,
    Comma,
    Dot,
}

/// A `'…'` literal at the start of `rest` (backslash escapes): its text and length.
fn single_quoted(rest: &str) -> Option<(String, usize)> {
    let mut text = String::new();
    let mut chars = rest.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '\'' => return Some((text, at + 1)),
            '\\' => text.push(chars.next()?.1),
            c => text.push(c),
        }
    }
    None
}

fn tokens(query: &str) -> Option<Vec<Token>> {
    let bytes = query.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &query[at..];
        let c = bytes[at];
        let single = match c {
            b'|' => Some(Token::Pipe),
            b'(' => Some(Token::Open),
            b')' => Some(Token::Close),
            b',' => Some(Token::Comma),
            b'.' => Some(Token::Dot),
            _ => None,
        };
        if c.is_ascii_whitespace() {
            at += 1;
        } else if let Some(token) = single {
            out.push(token);
            at += 1;
        } else if rest.starts_with("==") {
            out.push(Token::Equals);
            at += 2;
        } else if let Some(quoted) = rest.strip_prefix("['") {
            let end = quoted.find("']")?;
            out.push(Token::Name(quoted[..end].to_owned()));
            at += 2 + end + 2;
        } else if c == b'"' {
            // A JSON-style string literal: find the closing quote, skipping escapes.
            let mut end = at + 1;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let literal = query.get(at..=end)?;
            out.push(Token::Text(serde_json::from_str(literal).ok()?));
            at = end + 1;
        } else if c == b'\'' {
            let (text, len) = single_quoted(rest)?;
            out.push(Token::Text(text));
            at += len;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let len = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            out.push(Token::Name(rest[..len].to_owned()));
            at += len;
        } else {
            return None;
        }
    }
    Some(out)
}

type Tokens = std::iter::Peekable<std::vec::IntoIter<Token>>;

/// `primary ('.' name)*`, where a primary is a literal, a call or a column.
fn expression(tokens: &mut Tokens) -> Option<Expr> {
    let mut expr = match tokens.next()? {
        Token::Text(text) => Expr::Text(text),
        Token::Name(name) if tokens.peek() == Some(&Token::Open) => {
            tokens.next();
            let expr = match name.as_str() {
                "dynamic" => {
                    (tokens.next()? == Token::Name("null".to_owned())).then_some(Expr::Null)?
                }
                "tostring" => Expr::ToString(Box::new(expression(tokens)?)),
                "column_ifexists" => {
                    let Token::Text(column) = tokens.next()? else {
                        return None;
                    };
                    if tokens.next()? != Token::Comma {
                        return None;
                    }
                    Expr::ColumnIfExists(column, Box::new(expression(tokens)?))
                }
                _ => return None,
            };
            if tokens.next()? != Token::Close {
                return None;
            }
            expr
        }
        Token::Name(name) => Expr::Column(name),
        _ => return None,
    };
    while tokens.peek() == Some(&Token::Dot) {
        tokens.next();
        let Token::Name(key) = tokens.next()? else {
            return None;
        };
        expr = Expr::Member(Box::new(expr), key);
    }
    Some(expr)
}

/// Parses a [`CountQuery`]; `None` for anything else.
#[must_use]
pub fn parse_count_query(query: &str) -> Option<CountQuery> {
    let mut tokens = tokens(query)?.into_iter().peekable();
    let Some(Token::Name(table)) = tokens.next() else {
        return None;
    };
    if tokens.next()? != Token::Pipe || tokens.next()? != Token::Name("where".to_owned()) {
        return None;
    }
    let mut conditions = Vec::new();
    loop {
        let expr = expression(&mut tokens)?;
        let (Token::Equals, Token::Text(value)) = (tokens.next()?, tokens.next()?) else {
            return None;
        };
        conditions.push((expr, value));
        match tokens.next()? {
            Token::Name(and) if and == "and" => {}
            Token::Pipe => break,
            _ => return None,
        }
    }
    if tokens.next()? != Token::Name("count".to_owned()) || tokens.next().is_some() {
        return None;
    }
    Some(CountQuery { table, conditions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_mappings_commands_parse_for_tables_and_databases() {
        assert_eq!(
            parse_show_mappings(".show table ['KubeEvents'] ingestion json mappings"),
            Some(ShowMappings {
                scope: MappingScope::Table("KubeEvents".to_owned()),
                kind: Some("json".to_owned()),
                name: None,
            })
        );
        assert_eq!(
            parse_show_mappings(".show database k8s ingestion mappings"),
            Some(ShowMappings {
                scope: MappingScope::Database("k8s".to_owned()),
                kind: None,
                name: None,
            })
        );
        assert_eq!(
            parse_show_mappings(".show table T ingestion JSON mapping \"M\"").map(|s| s.name),
            Some(Some("M".to_owned()))
        );
        assert_eq!(parse_show_mappings(".show tables"), None);
        assert_eq!(parse_show_mappings(".show table T details"), None);
        assert_eq!(parse_show_mappings(".get ingestion resources"), None);
        let path = JsonPath::parse("$.log['app.kubernetes.io/name'][0]").unwrap();
        assert_eq!(JsonPath::parse(&path.to_string()).unwrap(), path);
    }

    #[test]
    fn json_paths_support_dots_quoted_brackets_and_indexes_only() {
        let record = serde_json::json!({"a": {"b": [10, 20]}, "x.y": 1, "log": {"app.kubernetes.io/name": "n"}});
        let get = |p: &str| JsonPath::parse(p).unwrap().resolve(&record).cloned();
        assert_eq!(get("$.a.b[1]"), Some(serde_json::json!(20)));
        assert_eq!(get("$['x.y']"), Some(serde_json::json!(1)));
        assert_eq!(get("$[\"a\"]['b'][0]"), Some(serde_json::json!(10)));
        assert_eq!(
            get("$.log['app.kubernetes.io/name']"),
            Some(serde_json::json!("n"))
        );
        assert_eq!(get("$.missing.deeper"), None);
        assert_eq!(get("$"), Some(record.clone()));
        for bad in ["a.b", "$.*", "$..a", "$[?(@.a)]", "$[1:2]", "$['a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_shipped_manifest_parses_with_both_mappings_over_the_table_columns() {
        let schema = parse_script(KUBE_EVENTS_KQL).unwrap();
        let table = &schema["KubeEvents"];
        assert_eq!(table.columns.len(), 22);
        assert_eq!(
            table.columns[0],
            ("TimeGenerated".to_owned(), "datetime".to_owned())
        );
        assert!(table.columns.iter().any(|(c, _)| c == "Uid"));
        assert_eq!(table.mappings["KubeEventsFlatMapping"].columns.len(), 22);
        assert_eq!(table.mappings["FluentBitMappingEvents"].columns.len(), 20);
    }

    #[test]
    fn the_count_query_the_sink_sends_parses_and_anything_else_does_not() {
        let query =
            r#"['KubeEvents'] | where ['Uid'] == "a\"b" and ResourceVersion == "12" | count"#;
        assert_eq!(
            parse_count_query(query),
            Some(CountQuery {
                table: "KubeEvents".to_owned(),
                conditions: vec![
                    (Expr::Column("Uid".to_owned()), "a\"b".to_owned()),
                    (Expr::Column("ResourceVersion".to_owned()), "12".to_owned()),
                ],
            })
        );
        for other in [
            "KubeEvents | count",
            "KubeEvents | where Uid == \"a\" | take 1",
            "KubeEvents | where Uid != \"a\" | count",
            "KubeEvents | where Uid == \"a\" or Uid == \"b\" | count",
            "KubeEvents | where Uid == \"a | count",
            "KubeEvents | where toupper(Uid) == \"a\" | count",
            "KubeEvents | where column_ifexists(Uid, \"\") == \"a\" | count",
            "KubeEvents | where dynamic({}) == \"a\" | count",
            "KubeEvents | where log. == \"a\" | count",
        ] {
            assert_eq!(parse_count_query(other), None, "{other}");
        }
    }

    #[test]
    fn dynamic_properties_and_column_ifexists_resolve_against_the_table_columns() {
        let query = r#"['T'] | where column_ifexists('Uid', tostring(column_ifexists('log', dynamic(null)).Uid)) == "u-1" and tostring(log.RV) == '7' | count"#;
        let parsed = parse_count_query(query).unwrap();
        let (uid, rv) = (&parsed.conditions[0].0, &parsed.conditions[1].0);
        let row = |value: Value| match value {
            Value::Object(map) => map,
            _ => unreachable!("an object literal"),
        };
        // A table with a dynamic `log` column and no `Uid` column.
        let log_only = |c: &str| c == "log";
        let with_log = row(serde_json::json!({"log": {"Uid": "u-1", "RV": 7}}));
        assert!(equals_text(&uid.eval(&with_log, &log_only), "u-1"));
        assert!(equals_text(&rv.eval(&with_log, &log_only), "7"));
        assert_eq!(uid.unresolved(&log_only), None);
        // A table with a `Uid` column (the mapping took `$.log.Uid`): the column wins.
        let uid_only = |c: &str| c == "Uid";
        let with_uid = row(serde_json::json!({"Uid": "u-1"}));
        assert!(equals_text(&uid.eval(&with_uid, &uid_only), "u-1"));
        assert_eq!(uid.unresolved(&uid_only), None);
        // `log.RV` names a column this table lacks: a semantic error.
        assert_eq!(rv.unresolved(&uid_only), Some("log".to_owned()));
        // Neither column: the condition holds for no row.
        assert!(!equals_text(
            &uid.eval(&row(serde_json::json!({})), &|_| false),
            "u-1"
        ));
        assert!(!equals_text(&Value::Null, ""));
    }

    #[test]
    fn a_mapping_of_an_unknown_column_is_rejected() {
        let script = ".create table T (A: string)\n.create table T ingestion json mapping \"M\" '[{\"column\":\"B\",\"Properties\":{\"Path\":\"$.b\"}}]'";
        assert!(matches!(
            parse_script(script),
            Err(Error::UnknownColumn { .. })
        ));
    }

    #[test]
    fn mapping_fills_every_column_and_leaves_missing_paths_empty() {
        let schema = parse_script(KUBE_EVENTS_KQL).unwrap();
        let table = &schema["KubeEvents"];
        let record = serde_json::json!({"TimeGenerated": "2024-05-01T10:00:00Z", "Name": "n", "Count": 3, "Extra": "dropped"});
        let row = apply(table, &table.mappings["KubeEventsFlatMapping"], &record);
        assert_eq!(row.len(), 22);
        assert_eq!(row["Name"], "n");
        assert_eq!(row["Count"], "3");
        assert_eq!(row["Namespace"], "");
        assert_eq!(row["TimeGenerated"], "2024-05-01T10:00:00Z");
        assert_eq!(row["FirstSeen"], Value::Null);
        assert!(!row.contains_key("Extra"));
    }
}
