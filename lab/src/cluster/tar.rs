//! A minimal ustar writer (directories, regular files, symlinks; uid/gid 0, mtime 0) for
//! image layers and OCI archives, so images are byte-for-byte reproducible.

use super::error::{ClusterError, Result};

/// An in-memory tar archive.
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Tar::default()
    }
    /// A directory entry (`path` without trailing slash).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.header(&format!("{path}/"), mode, 0, b'5', "")
    }
    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(path, mode, data.len() as u64, b'0', "")?;
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }
    /// A symbolic link `path` → `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.header(path, 0o777, 0, b'2', target)
    }
    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8, link: &str) -> Result<()> {
        let mut h = [0u8; 512];
        let (prefix, name) = split_path(path)?;
        if link.len() > 100 {
            return Err(ClusterError::Setup(format!(
                "tar: link target too long: {link}"
            )));
        }
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[148..156].fill(b' ');
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let chk = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(chk.as_bytes());
        self.buf.extend_from_slice(&h);
        Ok(())
    }
}

/// Splits a path into ustar's prefix (≤155) and name (≤100).
fn split_path(path: &str) -> Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    let too_long = || ClusterError::Setup(format!("tar: path too long: {path}"));
    let trimmed = path.trim_end_matches('/');
    let mut cut = None;
    for (i, c) in trimmed.char_indices() {
        if c == '/' && i <= 155 && path.len() - i - 1 <= 100 {
            cut = Some(i);
            break;
        }
    }
    let i = cut.ok_or_else(too_long)?;
    Ok((&path[..i], &path[i + 1..]))
}

/// Writes `v` as zero-padded octal with a trailing NUL into `field`.
fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    let b = s.as_bytes();
    let start = b.len().saturating_sub(width);
    field[..width].copy_from_slice(&b[start..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_tar_lists_what_we_write() {
        let mut t = Tar::new();
        t.dir("bin", 0o755).unwrap();
        t.file("bin/hello", 0o755, b"hi\n").unwrap();
        t.symlink("bin/sh", "hello").unwrap();
        let long = format!("{}/file", "d".repeat(120));
        t.file(&long, 0o644, b"x").unwrap();
        let bytes = t.finish();
        assert_eq!(bytes.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tar");
        std::fs::write(&p, &bytes).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.contains("bin/hello"), "{list}");
        assert!(list.contains("bin/sh -> hello"), "{list}");
        assert!(list.contains(&long), "{list}");
    }
}
