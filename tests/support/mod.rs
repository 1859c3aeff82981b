//! Helpers shared by the command-line, manifest, docs and static-binary tests: rendering
//! kustomizations with `kubectl`, running `kevents`, reading `PromQL` metric names, and the tools
//! the tests need.
//!
//! A missing tool fails the test with what to install; nothing is skipped.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code; each test binary uses a subset"
)]

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_yaml_ng::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool that must be installed; fails the test naming how to install it.
pub fn tool(name: &str, install: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    assert!(
        found,
        "{name} is required by this test but is not on PATH: {install}"
    );
    Command::new(name)
}

/// Runs `command` to the end and returns its stdout; the test fails, showing stderr, unless it
/// succeeds.
pub fn stdout_of(command: &mut Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `kubectl kustomize <dir>`, as YAML text.
pub fn kustomize_text(dir: &str) -> String {
    let out = stdout_of(
        tool("kubectl", "install kubectl (make tools)")
            .arg("kustomize")
            .arg(repo().join(dir)),
    );
    String::from_utf8(out).unwrap()
}

/// The documents of a multi-document YAML text, without empty ones.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// `kubectl kustomize <dir>`, as YAML documents.
pub fn kustomize(dir: &str) -> Vec<Value> {
    yaml_docs(&kustomize_text(dir))
}

/// The value at a dotted path (`spec.template.spec`), if every step exists.
pub fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(value, |v, key| match key.parse::<usize>() {
            Ok(index) => v.get(index),
            Err(_) => v.get(key),
        })
}

/// The string at a dotted path.
pub fn str_at<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// Every object of a kind.
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| str_at(d, "kind") == Some(kind))
        .collect()
}

/// The one object of a kind.
pub fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all = of_kind(docs, kind);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one {kind}, found {}",
        all.len()
    );
    all[0]
}

/// The object of a kind and name.
pub fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| str_at(d, "metadata.name") == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

/// Parses a config duration such as `25s`, `1m30s`, `2h`, `100ms`.
pub fn duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text}"));
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            other => panic!("bad duration unit {other} in {text}"),
        };
        rest = &rest[unit..];
    }
    total
}

/// The `kevents` binary of this build.
pub const KEVENTS: &str = env!("CARGO_BIN_EXE_kevents");

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` from `addr` as (status code, body); `None` when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Starts `kevents run`, its files in `dir`, against an API server that is not there (so it
/// stays a follower), with its admin endpoints on a free port. Returns the process and the admin
/// address.
pub fn start_follower(dir: &Path) -> (Child, String) {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("kevents.yaml");
    std::fs::write(
        &config,
        format!("cluster:\n  name: test\nsink:\n  type: stdout\nadmin:\n  listen: {addr}\nshutdown:\n  grace_period: 5s\n"),
    )
    .unwrap();
    let child = Command::new(KEVENTS)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, addr)
}

/// Starts a follower (see `start_follower`), scrapes its `/metrics` and returns every sample
/// name it exports (histograms as `_bucket`, `_sum`, `_count`).
pub fn live_metric_names() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_follower(dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some((200, body)) = http_get(&addr, "/metrics") {
            break body;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("kevents never served /metrics on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Keywords of `PromQL` that look like identifiers but are not metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a `PromQL` expression selects: identifiers outside label matchers, ranges,
/// strings and label lists that are not functions or keywords.
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut j = i;
        while j < chars.len() {
            if chars[j] == '"' || chars[j] == '\'' || chars[j] == '`' {
                let quote = chars[j];
                j += 1;
                while j < chars.len() && chars[j] != quote {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
            } else if chars[j] == open {
                depth += 1;
            } else if chars[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        panic!("unbalanced {open}{close} in {expr}");
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            i = skip_to(i, '{', '}');
        } else if c == '[' {
            i = skip_to(i, '[', ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let next_word: String = chars[next..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            // A function or an aggregation: `f(`, or `sum by (…) (` / `sum without (…) (`.
            let before_paren = chars.get(next) == Some(&'(')
                || (!LABEL_LISTS.contains(&ident.as_str())
                    && (next_word == "by" || next_word == "without"));
            if LABEL_LISTS.contains(&ident.as_str()) {
                if before_paren {
                    i = skip_to(next, '(', ')');
                }
            } else if before_paren || KEYWORDS.contains(&ident.as_str()) {
                // A function or an aggregation; its arguments are scanned as they come.
            } else {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Writes Prometheus recording rules evaluating `exprs` and runs `promtool check rules` on them.
pub fn promtool_check_exprs(exprs: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({"record": format!("check:expr_{i}"), "expr": expr}))
        .collect();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        serde_yaml_ng::to_string(
            &serde_json::json!({"groups": [{"name": "check", "rules": rules}]}),
        )
        .unwrap(),
    )
    .unwrap();
    promtool(&["check", "rules"], &file);
}

/// Runs promtool on a file and fails with its output unless it succeeds.
pub fn promtool(args: &[&str], file: &Path) {
    let out = tool(
        "promtool",
        "apt-get install -y prometheus (Debian's package carries promtool; make tools)",
    )
    .args(args)
    .arg(file)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "promtool {} {} failed:\n{}{}",
        args.join(" "),
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A guard that is always current, at epoch 1: a test's own store, outside any leadership.
pub struct AlwaysCurrent;

impl kevents::store::Guard for AlwaysCurrent {
    fn is_current(&self) -> bool {
        true
    }
    fn epoch(&self) -> i64 {
        1
    }
}

/// Creates the store `root` (a first term) holding one captured event (uid `u1`, version 7),
/// and returns it open: drop it to let a `kevents` process open the store.
pub fn store_with_one_event(root: &Path) -> kevents::store::SledStore {
    use kevents::store::{self, CaptureItem, EventStore as _, OpenOptions};

    let handover = store::take_over(
        &OpenOptions {
            path: root.to_owned(),
            cache_capacity: 1 << 20,
            lock_timeout: Duration::from_secs(5),
        },
        &"test".into(),
        &AlwaysCurrent,
        &|| false,
    )
    .unwrap();
    handover
        .store
        .capture(
            &[CaptureItem {
                uid: "u1".into(),
                resource_version: "7".into(),
                record: br#"{"Uid":"u1"}"#.to_vec(),
                listed: None,
            }],
            None,
            0,
            &AlwaysCurrent,
        )
        .unwrap();
    handover.store
}
