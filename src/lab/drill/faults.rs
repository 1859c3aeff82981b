//! Faults the drills inject outside the emulators: the store directory turning read-only.
//!
//! The drills run as root, for whom `chmod` changes nothing, and a read-only remount of a tmpfs
//! or bind mount fails with EBUSY while the store's files are open for writing. The immutable
//! attribute (`chattr +i`) does stop root: writes on already open descriptors and creating files
//! fail with EPERM until it is cleared. Owns only that; it must never touch files outside the
//! directory it is given.

use std::{path::Path, process::Command};

use anyhow::Context as _;

/// Makes `dir` and everything under it immutable (`on`), or writable again.
///
/// The directory itself goes first, so no file can be created between the two steps.
///
/// # Errors
/// Fails if `chattr` is missing or refuses (a file system without the attribute).
pub fn set_immutable(dir: &Path, on: bool) -> anyhow::Result<()> {
    let flag = if on { "+i" } else { "-i" };
    let steps: &[&[&str]] = if on {
        &[&[flag], &["-R", flag]]
    } else {
        &[&["-R", flag]]
    };
    for args in steps {
        let status = Command::new("chattr")
            .args(*args)
            .arg(dir)
            .status()
            .context("running chattr (e2fsprogs)")?;
        anyhow::ensure!(
            status.success(),
            "chattr {} {} failed: {status}",
            args.join(" "),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_immutable_directory_refuses_writes_even_on_open_files_until_cleared() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut file = std::fs::File::create(&path).unwrap();
        if set_immutable(dir.path(), true).is_err() {
            // No chattr, or a file system without the attribute (tmpfs on old kernels).
            return;
        }
        let refused = file.write_all(b"x").is_err();
        let create_refused = std::fs::File::create(dir.path().join("new")).is_err();
        set_immutable(dir.path(), false).unwrap();
        assert!(refused && create_refused);
        file.write_all(b"y").unwrap();
    }
}
