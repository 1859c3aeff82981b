//! The shape `docs/architecture.md` promises, checked: the product's dependency tree holds none
//! of the test kit's or the lab's crates or features, the test kit does not depend on the
//! product, and the product's modules import each other without a cycle.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `cargo tree -p <package> -e normal` as `name version [features]` lines, one per package.
fn tree(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--no-dedupe",
            "-f",
            "{p} [{f}]",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn features_of<'a>(lines: &'a [String], name: &str) -> BTreeSet<&'a str> {
    lines
        .iter()
        .filter(|l| l.split_whitespace().next() == Some(name))
        .filter_map(|l| l.split_once('[')?.1.strip_suffix(']'))
        .flat_map(|f| f.split(','))
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn the_product_tree_holds_nothing_of_the_test_kit_or_the_lab() {
    let product = tree("kevents");
    let names: BTreeSet<&str> = product
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for foreign in ["kevents-testkit", "kevents-lab", "nix", "tempfile"] {
        assert!(
            !names.contains(foreign),
            "kevents depends on {foreign}:\n{}",
            product.join("\n")
        );
    }
    // Features only the emulators and the lab use.
    let tokio = features_of(&product, "tokio");
    assert!(!tokio.contains("process"), "tokio features {tokio:?}");
    let axum = features_of(&product, "axum");
    assert!(!axum.contains("form"), "axum features {axum:?}");
    // One YAML parser of our own choosing.
    assert!(names.contains("serde_yaml_ng"));
    assert!(
        !names.contains("serde_yaml"),
        "the archived serde_yaml is in the tree"
    );
}

#[test]
fn the_test_kit_does_not_depend_on_the_product_it_checks() {
    let kit = tree("kevents-testkit");
    assert!(
        !kit.iter()
            .any(|l| l.split_whitespace().next() == Some("kevents")),
        "kevents-testkit depends on kevents:\n{}",
        kit.join("\n")
    );
    // Nor does its source name the product crate.
    let mut files = Vec::new();
    rust_files(&repo().join("testkit/src"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("kevents::"),
            "{} uses the product crate",
            file.display()
        );
    }
}

#[test]
fn product_modules_import_each_other_without_a_cycle() {
    let graph = module_graph(&repo().join("src"));
    // The edges the cut removed stay removed.
    for (from, to) in [
        ("store", "leader"),
        ("leader", "pipeline"),
        ("source", "pipeline"),
    ] {
        assert!(
            !graph.get(from).is_some_and(|edges| edges.contains(to)),
            "{from} imports {to}: {graph:#?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}\n{graph:#?}", cycle.join(" -> "));
    }
    // The data flow's direction: nothing downstream reaches back up to the app.
    assert!(graph.values().all(|edges| !edges.contains("app")));
}

#[test]
fn the_module_graph_reads_grouped_and_inline_imports_and_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::write(
        dir.path().join("a/mod.rs"),
        "use crate::{b::X, c};\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::d; }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.rs"), "pub fn g() { crate::a::f(); }\n").unwrap();
    let graph = module_graph(dir.path());
    assert_eq!(graph["a"], ["b", "c"].map(str::to_owned).into());
    assert_eq!(graph["b"], ["a"].map(str::to_owned).into());
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "a"]);
    std::fs::write(dir.path().join("b.rs"), "pub fn g() {}\n").unwrap();
    assert_eq!(find_cycle(&module_graph(dir.path())), None);
}

/// A cycle of the graph as a path that ends where it starts, if there is one (depth-first
/// search: a node reached again while still on the path closes a cycle).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

/// Top-level module → the top-level modules its non-test code names through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let mut parts = relative.components();
        let first = parts.next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let edges = graph.entry(module.clone()).or_default();
        for name in crate_references(code) {
            if name != module && name != "self" {
                edges.insert(name);
            }
        }
    }
    graph
}

/// The first path segment after each `crate::`, and each top-level item of a `use crate::{…}`.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut at_item_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            if at_item_start && !item.is_empty() {
                                names.insert(item);
                            }
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        if at_item_start && !item.is_empty() {
                            names.insert(std::mem::take(&mut item));
                        }
                        at_item_start = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && at_item_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        names.insert(std::mem::take(&mut item));
                        at_item_start = false;
                    }
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
