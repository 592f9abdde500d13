//! Fresh RSA signing keys, made by the real `openssl` (as the README tells
//! users to make theirs), for tests that need a key other than the demo one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A new 2048-bit RSA private key in PKCS#8 PEM, written to `path`.
pub fn write_rsa_key(path: &Path) {
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl made a key at {}", path.display());
}

/// A directory of its own for each call (tests run in parallel in one
/// process), removed when dropped.
pub struct KeyDir(PathBuf);

impl KeyDir {
    pub fn new() -> Self {
        static CALLS: AtomicU32 = AtomicU32::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mlmesh-keys-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A new RSA key in this directory: its path.
    pub fn rsa_key(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        write_rsa_key(&path);
        path
    }
}

impl Default for KeyDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new RSA private key's PEM bytes.
pub fn rsa_key_pem() -> Vec<u8> {
    let dir = KeyDir::new();
    std::fs::read(dir.rsa_key("key.pem")).unwrap()
}
