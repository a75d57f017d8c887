//! Files on disk: an upload streamed to a partial file while it is hashed, then synced and
//! renamed into place. Files live under the data dir by id only; the name the client gave is
//! metadata and never part of a path.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::store::{FileMeta, PartFile};

/// Where stored files live under the data dir.
pub fn files_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("files")
}

/// A new file id: 128 random bits, base64url (so also a safe file name).
pub fn new_file_id() -> io::Result<String> {
    let mut raw = [0u8; 16];
    getrandom::getrandom(&mut raw).map_err(io::Error::other)?;
    Ok(B64URL.encode(raw))
}

/// Whether `id` could be a file id (and so is safe to join to the files dir).
pub fn valid_file_id(id: &str) -> bool {
    id.len() == 22
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The path of a stored file.
pub fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// Bytes an unprivileged process may still write on the file system that holds `dir`
/// (created if missing).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    fs::create_dir_all(dir)?;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is a NUL-terminated string and `stat` a plain struct statvfs(3) fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// Removes partial files left by a crash during an upload; returns how many.
pub fn remove_partials(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// Why bytes were refused.
#[derive(Debug)]
pub enum WriteError {
    /// More bytes than the declared size.
    Overrun,
    /// The disk said no (full, read-only...).
    Io(io::Error),
}

/// An upload in progress.
#[derive(Debug)]
pub struct Upload {
    /// The file's id.
    pub id: String,
    /// The name the client gave.
    pub name: String,
    /// The media type the client gave.
    pub mime: Option<String>,
    /// Declared size.
    pub size: u64,
    /// Bytes written so far.
    pub received: u64,
    file: File,
    sha: Sha256,
    part: PathBuf,
    done: PathBuf,
}

impl Upload {
    /// Creates the partial file.
    pub fn start(dir: &Path, name: String, mime: Option<String>, size: u64) -> io::Result<Upload> {
        fs::create_dir_all(dir)?;
        let id = new_file_id()?;
        let part = dir.join(format!("{id}.part"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)?;
        Ok(Upload {
            done: path_of(dir, &id),
            id,
            name,
            mime,
            size,
            received: 0,
            file,
            sha: Sha256::new(),
            part,
        })
    }

    /// Writes the next bytes; `Ok(true)` when the declared size is reached.
    pub fn write(&mut self, bytes: &[u8]) -> Result<bool, WriteError> {
        if self.received + bytes.len() as u64 > self.size {
            return Err(WriteError::Overrun);
        }
        self.file.write_all(bytes).map_err(WriteError::Io)?;
        self.sha.update(bytes);
        self.received += bytes.len() as u64;
        Ok(self.received == self.size)
    }

    /// Whether all bytes are in.
    pub fn is_complete(&self) -> bool {
        self.received == self.size
    }

    /// All bytes are in: the metadata to store, and the partial file, which the store writer
    /// syncs and moves into place before it commits the message (see [`PartFile::persist`]).
    pub fn into_part(self) -> (FileMeta, PartFile) {
        let meta = FileMeta {
            id: self.id,
            name: self.name,
            size: self.size,
            mime: self.mime,
            sha256: hex(&self.sha.finalize()),
        };
        let part = PartFile {
            file: self.file,
            part: self.part,
            done: self.done,
        };
        (meta, part)
    }

    /// Drops the upload and its partial file.
    pub fn abort(self) {
        drop(self.file);
        let _ = fs::remove_file(&self.part);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("chatd-upload-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn upload_writes_hashes_and_renames() {
        let dir = temp_dir("ok");
        let mut u = Upload::start(&dir, "a/../b.txt".into(), None, 5).unwrap();
        assert!(valid_file_id(&u.id));
        assert!(!u.write(b"he").unwrap());
        assert!(u.write(b"llo").unwrap());
        let id = u.id.clone();
        let (meta, part) = u.into_part();
        part.persist().unwrap();
        assert_eq!(
            meta.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(fs::read(path_of(&dir, &id)).unwrap(), b"hello");
        assert_eq!(meta.name, "a/../b.txt", "the name is metadata only");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn overrun_and_abort_leave_nothing() {
        let dir = temp_dir("abort");
        let mut u = Upload::start(&dir, "x".into(), None, 3).unwrap();
        assert!(matches!(u.write(b"four"), Err(WriteError::Overrun)));
        u.abort();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        let u = Upload::start(&dir, "y".into(), None, 3).unwrap();
        drop(u); // a crash: the partial file stays until the next start
        assert_eq!(remove_partials(&dir), 1);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_ids() {
        assert!(valid_file_id("AAAAAAAAAAAAAAAAAAAAAA"));
        assert!(!valid_file_id("../../../../etc/passwd"));
        assert!(!valid_file_id("short"));
    }
}
