//! A Python virtual environment with packages from PyPI, made once per
//! target directory, for tests that drive mlmesh with other projects' real
//! clients (Triton's `tritonclient`). Needs `python3` with its `venv` module
//! (Debian: `python3-venv`; `scripts/test.sh` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's `python`, with `packages` installed. Made under `dir` on first
/// use; a finished install leaves a marker naming the packages, so a second
/// run (or a changed list) is told apart from a half-made venv.
pub fn venv(dir: &Path, packages: &[&str]) -> PathBuf {
    let python = dir.join("bin/python");
    let marker = dir.join("mlmesh-installed.txt");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) && python.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(dir);
    run(
        Command::new("python3").arg("-m").arg("venv").arg(dir),
        "python3 -m venv (on Debian/Ubuntu: apt-get install python3-venv)",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
        "pip install from PyPI",
    );
    std::fs::write(&marker, wanted).expect("write the venv marker");
    python
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
