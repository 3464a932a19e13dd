//! The cross-process locks of a namespace, and the refresh-lease table kept beside them.
//!
//! The keyring has no conditional write, so every mutation of a namespace (read, check, write of
//! a record and of its index) runs under an advisory `flock` on one lock file, taken after the
//! in-process mutex. The lock file's path derives from the store alone — the keyring's identity
//! and the namespace — never from environment variables, so every process that opens the same
//! keyring and namespace meets at the same file:
//!
//! - directory: `/run/user/<uid>/mcp-auth-locks` when `/run/user/<uid>` is a directory owned by
//!   the user, else `/tmp/mcp-auth-<uid>-locks`; created `0700`, and refused when it is a
//!   symbolic link, not a directory, owned by another user, or writable by group or others;
//! - file: `mcp-auth-<kind>-<hex SHA-256 of (keyring identity, namespace)>.lock`, where `kind` is
//!   `secret-service`, `keyutils` or `keyring` (another keyring-core store, identified by its
//!   vendor string).
//!
//! The refresh leases of the namespace live in `<same stem>.leases` (holder tokens and expiry
//! times, no secret), read and rewritten (atomically, by rename) under a second lock file,
//! `<same stem>.leases.lock`, so that a slow keyring call never delays a lease change.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use crate::KeyringStoreError;
use crate::lease::LeaseTable;

/// How long a mutation waits for another process's lock before giving up.
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest pause between two attempts to take a contended lock.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// The file name stem of a namespace's lock and lease files: the same keyring (`kind` and
/// `identity`) and namespace (its keyring `service`, `mcp-auth:<namespace key>`) always give the
/// same stem, and different ones (practically) never do.
pub(crate) fn stem(kind: &str, identity: &str, service: &str) -> String {
    // Length-prefixed, so the pair is encoded injectively before hashing.
    let input = format!(
        "mcp-auth-store-keyring lock v1\n{}:{identity}\n{service}",
        identity.len()
    );
    let digest = Sha256::digest(input.as_bytes());
    format!("mcp-auth-{kind}-{}", HEXLOWER.encode(&digest))
}

/// The user's id, as the kernel sees it for files this process creates.
fn current_uid() -> Result<u32, KeyringStoreError> {
    static UID: OnceLock<u32> = OnceLock::new();
    if let Some(uid) = UID.get() {
        return Ok(*uid);
    }
    let uid = uid_from_proc().or_else(|_| uid_from_probe_file())?;
    Ok(*UID.get_or_init(|| uid))
}

/// The effective uid from `/proc/self/status` (Linux). Unlike the owner of `/proc/self`, this
/// is right for processes that made themselves non-dumpable.
fn uid_from_proc() -> Result<u32, KeyringStoreError> {
    let path = Path::new("/proc/self/status");
    let status = fs::read_to_string(path).map_err(|source| KeyringStoreError::LockIo {
        path: path.to_owned(),
        action: "read",
        source,
    })?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| KeyringStoreError::LockIo {
            path: path.to_owned(),
            action: "find the effective uid in",
            source: io::Error::new(io::ErrorKind::InvalidData, "no `Uid:` line"),
        })
}

/// The owner of a file created (and removed at once) in `/tmp`, where there is no `/proc`.
fn uid_from_probe_file() -> Result<u32, KeyringStoreError> {
    let path = PathBuf::from(format!("/tmp/.mcp-auth-uid-{}", crate::new_version()));
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|file| file.metadata());
    let _ = fs::remove_file(&path);
    created
        .map(|meta| meta.uid())
        .map_err(|source| KeyringStoreError::LockIo {
            path,
            action: "create a probe file to learn the user id at",
            source,
        })
}

/// The two locks of a namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LockKind {
    /// `<stem>.lock`: every mutation of the namespace's keyring items.
    Records,
    /// `<stem>.leases.lock`: the lease table `<stem>.leases`. Separate, so that a slow keyring
    /// call (a D-Bus timeout, an unlock prompt) never delays a lease renewal past its TTL.
    Leases,
}

impl LockKind {
    fn file_name(self, stem: &str) -> String {
        match self {
            Self::Records => format!("{stem}.lock"),
            Self::Leases => format!("{stem}.leases.lock"),
        }
    }
}

/// The records' lock file of `stem`, in [`lock_dir`].
pub(crate) fn lock_path(stem: &str) -> Result<PathBuf, KeyringStoreError> {
    Ok(lock_dir()?.join(LockKind::Records.file_name(stem)))
}

/// The directory of every lock file of this user, created if needed and checked to be private.
pub(crate) fn lock_dir() -> Result<PathBuf, KeyringStoreError> {
    let uid = current_uid()?;
    let runtime = PathBuf::from(format!("/run/user/{uid}"));
    let dir = match fs::symlink_metadata(&runtime) {
        Ok(meta) if meta.is_dir() && meta.uid() == uid => runtime.join("mcp-auth-locks"),
        _ => PathBuf::from(format!("/tmp/mcp-auth-{uid}-locks")),
    };
    private_dir(&dir, uid)?;
    Ok(dir)
}

/// Creates `dir` with mode `0700` if it is missing, then checks that only `uid` controls it.
pub(crate) fn private_dir(dir: &Path, uid: u32) -> Result<(), KeyringStoreError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(KeyringStoreError::LockIo {
                path: dir.to_owned(),
                action: "create the lock directory",
                source,
            });
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| KeyringStoreError::LockIo {
        path: dir.to_owned(),
        action: "inspect the lock directory",
        source,
    })?;
    let unsafe_dir = |reason: String| KeyringStoreError::UnsafeLockDir {
        path: dir.to_owned(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("is a symbolic link".to_owned()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".to_owned()));
    }
    if meta.uid() != uid {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not by this user (uid {uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// An exclusive `flock` on a namespace's lock file, released when dropped (the file is closed).
pub(crate) struct FileLock {
    _file: File,
    path: PathBuf,
    dir: PathBuf,
    stem: String,
}

impl FileLock {
    /// Takes the `kind` lock of `stem`, waiting at most `timeout` for another holder.
    pub(crate) fn acquire(
        stem: &str,
        kind: LockKind,
        timeout: Duration,
    ) -> Result<Self, KeyringStoreError> {
        let dir = lock_dir()?;
        let path = dir.join(kind.file_name(stem));
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|source| KeyringStoreError::LockIo {
                    path: path.clone(),
                    action: "open",
                    source,
                })?;
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(fs::TryLockError::WouldBlock) => {
                        let waited = started.elapsed();
                        if waited >= timeout {
                            return Err(KeyringStoreError::LockTimeout { path, waited });
                        }
                        std::thread::sleep(pause.min(timeout.saturating_sub(waited)));
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                    Err(fs::TryLockError::Error(source)) => {
                        return Err(KeyringStoreError::LockIo {
                            path,
                            action: "lock",
                            source,
                        });
                    }
                }
            }
            // The holder may have removed the file (see `remove_file`), or a cleaner of /tmp
            // did: a lock on a removed file excludes nobody, so lock the file the path names
            // now. (The removed file stays open here, so its inode number is not reused.)
            let held = file
                .metadata()
                .map_err(|source| KeyringStoreError::LockIo {
                    path: path.clone(),
                    action: "inspect",
                    source,
                })?;
            match fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(Self {
                        _file: file,
                        path,
                        dir,
                        stem: stem.to_owned(),
                    });
                }
                _ if started.elapsed() >= timeout => {
                    return Err(KeyringStoreError::LockTimeout {
                        path,
                        waited: started.elapsed(),
                    });
                }
                _ => continue,
            }
        }
    }

    /// Removes the held lock file when what it guards is gone (an empty namespace, no lease),
    /// so that lock files do not pile up. Only as the **last step** under the lock: from the
    /// removal on, another process can create and lock a new file at the same path. A process
    /// waiting on the removed file sees, once it gets it, that the path no longer names it, and
    /// starts over. Best effort: a file left behind is harmless.
    pub(crate) fn remove_file(&self) {
        let _ = fs::remove_file(&self.path);
    }

    fn leases_path(&self) -> PathBuf {
        self.dir.join(format!("{}.leases", self.stem))
    }

    /// The namespace's lease table (under the [`LockKind::Leases`] lock). A missing file is an empty table, and so is a file that is
    /// not a lease table (it is only ever replaced whole, by rename, so this means someone else
    /// wrote it); it is overwritten by the next lease change.
    pub(crate) fn read_leases(&self) -> Result<LeaseTable, KeyringStoreError> {
        let path = self.leases_path();
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LeaseTable::default()),
            Err(source) => Err(KeyringStoreError::LockIo {
                path,
                action: "read",
                source,
            }),
        }
    }

    /// Replaces the namespace's lease table (removes the file when the table is empty).
    pub(crate) fn write_leases(&self, table: &LeaseTable) -> Result<(), KeyringStoreError> {
        let path = self.leases_path();
        if table.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(KeyringStoreError::LockIo {
                    path,
                    action: "remove",
                    source,
                }),
            };
        }
        // Written beside, then renamed over: a reader sees the old table or the new one. No
        // fsync: a lease table lost in a crash only frees leases, as a reboot would.
        let tmp = self.dir.join(format!("{}.leases.tmp", self.stem));
        let io_error = |path: &Path, action: &'static str| {
            let path = path.to_owned();
            move |source| KeyringStoreError::LockIo {
                path,
                action,
                source,
            }
        };
        let bytes = serde_json::to_vec(table)
            .map_err(|e| io_error(&tmp, "encode the lease table for")(io::Error::other(e)))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error(&tmp, "create"))?;
        io::Write::write_all(&mut file, &bytes).map_err(io_error(&tmp, "write"))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_error(&path, "replace"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn stem_depends_on_keyring_and_namespace_only() {
        let a = stem("keyutils", "keyutils", "abc");
        assert_eq!(a, stem("keyutils", "keyutils", "abc"));
        assert_ne!(a, stem("keyutils", "keyutils", "abd"));
        assert_ne!(a, stem("keyutils", "keyutil", "sabc"));
        assert!(a.starts_with("mcp-auth-keyutils-"));
        assert_eq!(a.len(), "mcp-auth-keyutils-".len() + 64);
    }

    #[test]
    fn uid_is_the_owner_of_files_this_process_creates() {
        let dir = tempfile::tempdir().unwrap();
        let uid = current_uid().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert_eq!(fs::metadata(&file).unwrap().uid(), uid);
        assert_eq!(uid_from_probe_file().unwrap(), uid);
    }

    #[test]
    fn private_dir_is_created_0700_and_unsafe_ones_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let uid = current_uid().unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;

        let fresh = base.path().join("fresh");
        private_dir(&fresh, uid).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        private_dir(&fresh, uid).unwrap(); // existing and private: fine

        let open = base.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&open, uid).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o720)).unwrap();
        assert!(private_dir(&open, uid).is_err(), "group-writable accepted");

        let link = base.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let err = private_dir(&link, uid).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let file = base.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = private_dir(&file, uid).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");

        let theirs = base.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
        let err = private_dir(&theirs, uid.wrapping_add(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("owned by uid"), "{err}");
        if uid == 0 {
            // As root, also with a directory really owned by someone else.
            std::os::unix::fs::chown(&theirs, Some(4242), None).unwrap();
            let err = private_dir(&theirs, uid).unwrap_err().to_string();
            assert!(err.contains("owned by uid 4242"), "{err}");
        }
    }
}
