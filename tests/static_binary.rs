//! The statically linked `kevents` that the container image ships (`target/static/kevents`, built
//! by `make static` / scripts/static-build.sh): it is static, it runs, and it accepts the example
//! config; and the Dockerfile ships exactly that build on a shell-less base as user 65534.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::{path::PathBuf, process::Command};

use support::repo;

/// ELF program header type of the dynamic loader request.
const PT_INTERP: u32 = 3;

fn static_binary() -> PathBuf {
    let path = repo().join("target/static/kevents");
    assert!(
        path.is_file(),
        "{} is missing: build it with `make static` (scripts/static-build.sh)",
        path.display()
    );
    path
}

fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap()))
}

#[test]
fn the_static_binary_has_no_dynamic_loader_and_prints_its_version() {
    let path = static_binary();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "64-bit");
    assert_eq!(bytes[5], 1, "little endian");
    let phoff = usize::try_from(u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap())).unwrap();
    let (phentsize, phnum) = (u16_at(&bytes, 0x36), u16_at(&bytes, 0x38));
    assert!(phnum > 0);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_ne!(
            kind,
            PT_INTERP,
            "{} asks for a dynamic loader",
            path.display()
        );
    }
    let out = Command::new(&path).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kevents {}", env!("CARGO_PKG_VERSION")),
        "a stale static build: run `make static`"
    );
}

#[test]
fn the_static_binary_accepts_the_example_config() {
    let out = Command::new(static_binary())
        .args(["check-config", "--config"])
        .arg(repo().join("examples/kevents.yaml"))
        .env_clear()
        .env("CLUSTER", "aks-prod")
        .env("POD_NAME", "kevents-0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("name: aks-prod"), "{stdout}");
    assert!(stdout.contains("identity: kevents-0-"), "{stdout}");
    // Without the required cluster name it names the field, exit 2.
    let out = Command::new(static_binary())
        .args(["check-config", "--config"])
        .arg(repo().join("examples/kevents.yaml"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CLUSTER"));
}

#[test]
fn the_image_ships_the_static_build_as_65534_on_a_base_without_a_shell() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage");
    let build = &lines[stages[0]..*stages.last().unwrap()];
    assert!(
        build
            .iter()
            .any(|l| l.contains("./scripts/static-build.sh")),
        "the image's binary comes from scripts/static-build.sh, the build the tests run"
    );
    let runtime = &lines[*stages.last().unwrap()..];
    let base = runtime[0].split_whitespace().nth(1).unwrap();
    assert!(
        base.starts_with("gcr.io/distroless/static") || base == "scratch",
        "runtime base {base}"
    );
    assert!(
        !runtime.iter().any(|l| l.starts_with("RUN ")),
        "nothing runs in the runtime stage: it has no shell"
    );
    assert!(runtime.contains(&"USER 65534:65534"));
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("COPY --from=") && l.ends_with("/usr/local/bin/kevents"))
    );
    let entrypoint = runtime
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .unwrap();
    assert!(
        entrypoint.starts_with("ENTRYPOINT [\""),
        "exec form: no shell to run it"
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore admits only what the build needs"
    );
}
