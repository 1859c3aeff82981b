//! The statically linked `kevents` builds that the container image ships, built by `make static` /
//! scripts/static-build.sh: `target/static/kevents` for amd64 and `target/static/aarch64/kevents`
//! for arm64. Each is a static ELF file for its machine, runs, and accepts the example config; the
//! aarch64 one runs under `qemu-aarch64-static` (Debian qemu-user-static, installed by
//! `make tools`; without it the test fails). And the Dockerfile cross-builds exactly that build for
//! the platform asked for, on a shell-less base as user 65534.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::{path::PathBuf, process::Command};

use support::{repo, tool};

/// ELF program header types: the dynamic loader request, and the dynamic section.
const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;
/// Dynamic section tags: end of the section, a needed shared library, the size of the `RELA`
/// relocation table, and the packed relative relocations (`DT_RELR`).
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_RELASZ: u64 = 8;
const DT_RELR: u64 = 36;
/// A `RELA` table any larger means the relative relocations are not packed: ~800 KiB unpacked,
/// mapped by every replica (docs/cost-at-low-rates.md, "A smaller executable").
const RELA_BOUND: u64 = 64 << 10;

/// One architecture's static build.
struct Build {
    /// Under the repository root.
    path: &'static str,
    /// ELF `e_machine`: `EM_X86_64` or `EM_AARCH64`.
    machine: u16,
    /// Runs it on this `x86_64` machine: directly, or under user-mode emulation.
    runner: fn() -> Option<Command>,
}

const AMD64: Build = Build {
    path: "target/static/kevents",
    machine: 62,
    runner: || None,
};

const ARM64: Build = Build {
    path: "target/static/aarch64/kevents",
    machine: 183,
    runner: || {
        Some(tool(
            "qemu-aarch64-static",
            "apt-get install -y qemu-user-static (make tools)",
        ))
    },
};

impl Build {
    fn binary(&self) -> PathBuf {
        let path = repo().join(self.path);
        assert!(
            path.is_file(),
            "{} is missing: build it with `make static` (scripts/static-build.sh)",
            path.display()
        );
        path
    }

    fn command(&self) -> Command {
        let binary = self.binary();
        match (self.runner)() {
            Some(mut runner) => {
                runner.arg(binary);
                runner
            }
            None => Command::new(binary),
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn usize_at(bytes: &[u8], at: usize) -> usize {
    usize::try_from(u64_at(bytes, at)).unwrap()
}

/// Reads the ELF64 headers of `build`: its machine, no program interpreter, and no needed
/// libraries in its dynamic section. A static-pie executable (amd64) has one, for its own
/// relocations, which must be packed (`DT_RELR`, scripts/static-build.sh); a static executable
/// that is not position-independent (arm64: Rust's target links it so) has none and nothing to
/// relocate.
fn assert_static_elf_for_its_machine(build: &Build) {
    let path = build.binary();
    let name = path.display();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{name} is not an ELF file");
    assert_eq!(bytes[4], 2, "{name} is not 64-bit");
    assert_eq!(bytes[5], 1, "{name} is not little endian");
    assert_eq!(
        u16_at(&bytes, 0x12),
        build.machine,
        "{name} is built for another machine (e_machine)"
    );
    let phoff = usize_at(&bytes, 0x20);
    let (phentsize, phnum) = (
        usize::from(u16_at(&bytes, 0x36)),
        usize::from(u16_at(&bytes, 0x38)),
    );
    assert!(phnum > 0, "{name} has no program headers");
    let (mut dynamic, mut packed) = (false, false);
    for header in (0..phnum).map(|i| phoff + i * phentsize) {
        let kind = u32_at(&bytes, header);
        assert_ne!(kind, PT_INTERP, "{name} asks for a dynamic loader");
        if kind == PT_DYNAMIC {
            dynamic = true;
            let (offset, size) = (
                usize_at(&bytes, header + 0x08),
                usize_at(&bytes, header + 0x20),
            );
            for entry in (offset..offset + size).step_by(16) {
                let tag = u64_at(&bytes, entry);
                if tag == DT_NULL {
                    break;
                }
                assert_ne!(tag, DT_NEEDED, "{name} needs a shared library");
                packed |= tag == DT_RELR;
                if tag == DT_RELASZ {
                    let size = u64_at(&bytes, entry + 8);
                    assert!(
                        size < RELA_BOUND,
                        "{name} has a {size}-byte RELA relocation table: not linked with \
                         -z pack-relative-relocs"
                    );
                }
            }
        }
    }
    assert!(
        packed || !dynamic,
        "{name} has no packed relative relocations (DT_RELR): not linked with -z pack-relative-relocs"
    );
}

fn assert_prints_its_version(build: &Build) {
    let out = build.command().arg("--version").output().unwrap();
    assert!(
        out.status.success(),
        "{} --version: {}",
        build.path,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kevents {}", env!("CARGO_PKG_VERSION")),
        "a stale static build {}: run `make static`",
        build.path
    );
}

fn assert_accepts_the_example_config(build: &Build) {
    let out = build
        .command()
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
    let out = build
        .command()
        .args(["check-config", "--config"])
        .arg(repo().join("examples/kevents.yaml"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CLUSTER"));
}

/// The size of section `name` in an ELF64 file, from its section headers (`strip=symbols` keeps
/// them).
fn elf_section_size(bytes: &[u8], name: &str) -> Option<u64> {
    let shoff = usize_at(bytes, 0x28);
    let (shentsize, shnum, shstrndx) = (
        usize::from(u16_at(bytes, 0x3a)),
        usize::from(u16_at(bytes, 0x3c)),
        usize::from(u16_at(bytes, 0x3e)),
    );
    let names = usize_at(bytes, shoff + shstrndx * shentsize + 0x18);
    (0..shnum)
        .map(|i| shoff + i * shentsize)
        .find_map(|header| {
            let at = names + usize::try_from(u32_at(bytes, header)).unwrap();
            let end = at + bytes[at..].iter().position(|b| *b == 0).unwrap();
            (&bytes[at..end] == name.as_bytes()).then(|| u64_at(bytes, header + 0x20))
        })
}

/// The input sections the linker put in the output section `.text`, as (name, address, size),
/// from a GNU ld link map (`-Map`): an input section's line starts with one space and its name,
/// followed by its address and size on the same line or, for a long name, on the next one.
fn text_input_sections(map: &str) -> (u64, Vec<(String, u64, u64)>) {
    let hex = |word: &str| u64::from_str_radix(word.strip_prefix("0x")?, 16).ok();
    let mut lines = map
        .lines()
        .skip_while(|l| !l.starts_with(".text "))
        .peekable();
    let header: Vec<&str> = lines
        .next()
        .expect("no .text in the link map")
        .split_whitespace()
        .collect();
    let size = hex(header[2]).unwrap();
    let mut sections = Vec::new();
    while let Some(line) = lines.next() {
        if !line.is_empty() && !line.starts_with(' ') {
            break;
        }
        if !line.starts_with(" .") {
            continue;
        }
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.len() == 1 {
            let next = lines.peek().copied().unwrap_or_default();
            words.extend(next.split_whitespace());
        }
        if let (Some(address), Some(length)) = (
            words.get(1).and_then(|w| hex(w)),
            words.get(2).and_then(|w| hex(w)),
        ) && length > 0
        {
            sections.push((words[0].to_owned(), address, length));
        }
    }
    (size, sections)
}

/// The share of `.text` a build laid out by pgo/kevents-amd64.profdata.gz puts apart as never run in
/// the profile's workload: ~50 % measured (docs/cost-at-low-rates.md, "Laid out by a profile").
/// Without the profile only functions marked `#[cold]` go there.
const NEVER_RUN_SHARE_MIN_PERCENT: u64 = 30;

/// The amd64 build is laid out by the profile (scripts/static-build.sh): the code the profile
/// never saw run (`.text.unlikely.*`) is one block at the start of `.text`, apart from the code
/// that runs, and it is a large share of `.text`. Read from the link map the script keeps next to
/// the binary, which must be this binary's (same `.text` size).
#[test]
fn the_amd64_static_binary_keeps_code_that_never_ran_in_its_profile_apart() {
    let binary = AMD64.binary();
    let map_path = PathBuf::from(format!("{}.map", binary.display()));
    let map = std::fs::read_to_string(&map_path)
        .unwrap_or_else(|e| panic!("{}: {e}: build it with `make static`", map_path.display()));
    let (text, sections) = text_input_sections(&map);
    assert_eq!(
        elf_section_size(&std::fs::read(&binary).unwrap(), ".text"),
        Some(text),
        "{} is not the link map of {}: run `make static`",
        map_path.display(),
        binary.display()
    );
    let (apart, run): (Vec<_>, Vec<_>) = sections
        .iter()
        .partition(|(name, ..)| name.starts_with(".text.unlikely"));
    let apart_bytes: u64 = apart.iter().map(|(.., size)| size).sum();
    let share = apart_bytes * 100 / text;
    assert!(
        share >= NEVER_RUN_SHARE_MIN_PERCENT,
        "only {share} % of .text ({apart_bytes} of {text} bytes) is code the profile never saw \
         run: is the build laid out by pgo/kevents-amd64.profdata.gz? (scripts/static-build.sh)"
    );
    let last_apart = apart.iter().map(|(_, address, size)| address + size).max();
    let first_run = run.iter().map(|(_, address, _)| *address).min();
    let (Some(last_apart), Some(first_run)) = (last_apart, first_run) else {
        panic!("the link map's .text has no code that runs, or none apart")
    };
    assert!(
        last_apart <= first_run,
        "code that never ran ends at {last_apart:#x}, after code that runs begins at {first_run:#x}"
    );
}

#[test]
fn the_amd64_static_binary_is_a_static_x86_64_executable() {
    assert_static_elf_for_its_machine(&AMD64);
}

#[test]
fn the_arm64_static_binary_is_a_static_aarch64_executable() {
    assert_static_elf_for_its_machine(&ARM64);
}

#[test]
fn the_amd64_static_binary_prints_its_version() {
    assert_prints_its_version(&AMD64);
}

#[test]
fn the_arm64_static_binary_prints_its_version_under_qemu() {
    assert_prints_its_version(&ARM64);
}

#[test]
fn the_amd64_static_binary_accepts_the_example_config() {
    assert_accepts_the_example_config(&AMD64);
}

#[test]
fn the_arm64_static_binary_accepts_the_example_config_under_qemu() {
    assert_accepts_the_example_config(&ARM64);
}

#[test]
fn the_image_ships_the_static_build_for_its_platform_as_65534_on_a_base_without_a_shell() {
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
        build[0].starts_with("FROM --platform=$BUILDPLATFORM "),
        "the build stage runs on the builder's platform and cross-compiles: {}",
        build[0]
    );
    let script = build
        .iter()
        .position(|l| !l.starts_with("COPY ") && l.contains("./scripts/static-build.sh"))
        .expect("the image's binary comes from scripts/static-build.sh, the build the tests run");
    let target_arch = build
        .iter()
        .position(|l| *l == "ARG TARGETARCH")
        .expect("the build stage declares ARG TARGETARCH, the platform the image is for");
    assert!(target_arch < script, "ARG TARGETARCH comes before its use");
    let words: Vec<&str> = build[script].split_whitespace().collect();
    let after = |flag: &str| {
        let at = words.iter().position(|w| *w == flag);
        at.and_then(|at| words.get(at + 1)).copied()
    };
    assert_eq!(
        after("--arch"),
        Some("\"$TARGETARCH\""),
        "the script builds the target platform's binary: {}",
        build[script]
    );
    let out = after("--out").expect("the script installs the binary for the runtime stage");
    let runtime = &lines[*stages.last().unwrap()..];
    assert!(
        !runtime[0].contains("--platform"),
        "the runtime base is the target platform's: {}",
        runtime[0]
    );
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
    let copy = format!("COPY --from=build {out} /usr/local/bin/kevents");
    assert!(runtime.contains(&copy.as_str()), "{copy}");
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
    // The profile the script lays the binary out by reaches the build stage: without it the
    // image's binary would be laid out differently from the one the tests and benchmarks measure.
    if repo().join("pgo/kevents-amd64.profdata.gz").exists() {
        let copied = build[..script].iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&"COPY")
                && words.get(1).is_some_and(|w| *w == "pgo" || *w == "pgo/")
        });
        assert!(
            copied,
            "the build stage copies pgo/ before running the script"
        );
        assert!(
            ignore
                .lines()
                .any(|l| l.trim() == "!pgo/" || l.trim() == "!pgo"),
            ".dockerignore admits pgo/"
        );
    }
}
