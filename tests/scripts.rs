//! The shell scripts that cannot run here (the kind drills need Docker) or that build the image's
//! binary: shellcheck finds nothing in them, and every drill scenario has its fault and its
//! documented property.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use support::{repo, tool};

/// The kind drills, the static build and its profile (other scripts have their own owners and
/// tests).
fn scripts() -> Vec<String> {
    let mut all = vec![
        "scripts/static-build.sh".to_owned(),
        "scripts/pgo-profile.sh".to_owned(),
    ];
    for entry in std::fs::read_dir(repo().join("chaos/kind")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if std::path::Path::new(&name)
            .extension()
            .is_some_and(|e| e == "sh")
        {
            all.push(format!("chaos/kind/{name}"));
        }
    }
    all.sort();
    all
}

#[test]
fn the_drill_and_build_scripts_pass_shellcheck() {
    let scripts = scripts();
    assert!(scripts.len() >= 6, "{scripts:?}");
    let out = tool("shellcheck", "apt-get install -y shellcheck (make tools)")
        .current_dir(repo())
        .args(["--external-sources", "--severity=info"])
        .args(&scripts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_drill_scenario_has_a_fault_and_a_documented_property() {
    let drill = std::fs::read_to_string(repo().join("chaos/kind/drill.sh")).unwrap();
    let readme = std::fs::read_to_string(repo().join("chaos/README.md")).unwrap();
    let list = drill
        .lines()
        .find_map(|l| l.strip_prefix("SCENARIOS=("))
        .and_then(|l| l.strip_suffix(')'))
        .unwrap();
    let scenarios: Vec<&str> = list.split_whitespace().collect();
    assert_eq!(
        scenarios,
        [
            "delete-leader",
            "kill-leader",
            "drain-leader-node",
            "partition-leader",
            "rolling-restart"
        ]
    );
    for scenario in scenarios {
        let function = format!("fault_{}()", scenario.replace('-', "_"));
        assert!(drill.contains(&function), "drill.sh has no {function}");
        assert!(
            readme.contains(&format!("| `{scenario}` |")),
            "chaos/README.md states no property for {scenario}"
        );
    }
}
