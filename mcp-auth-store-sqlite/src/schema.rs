//! Opening the database file: a new file is created already initialised (so an empty file is
//! never a database of ours and is refused), a file this process may not write is opened
//! read-only, and the schema is migrated forward.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mcp_auth_core::StoreError;
use rusqlite::{Connection, MAIN_DB, OpenFlags};

use crate::{BACKEND, ReadOnlyReason, SqliteStoreError, map_err_named};

/// The schema version this crate writes (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// Forward migrations; entry `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE records (
        namespace  TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        issuer     TEXT,
        value      BLOB    NOT NULL,
        version    INTEGER NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (namespace, key)
     ) WITHOUT ROWID;
     CREATE INDEX records_by_issuer ON records (namespace, kind, issuer);
     CREATE TABLE leases (
        namespace     TEXT    NOT NULL,
        key           TEXT    NOT NULL,
        holder        TEXT    NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
     ) WITHOUT ROWID;",
    // 1 → 2: records move to a rowid table with a unique key index. A `WITHOUT ROWID` table
    // keeps rows in its key B-tree, whose small cells push a ~1.4 KB token record out to
    // overflow pages (about 4.7 KB of file per record); a rowid table holds it in its own leaf
    // (about 2.2 KB), and a get at 100k records costs about 8 µs instead of 33 µs (measured with
    // the layouts side by side; `cargo xtask bench` prints the store's figures).
    "CREATE TABLE records_v2 (
        namespace  TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        issuer     TEXT,
        value      BLOB    NOT NULL,
        version    INTEGER NOT NULL,
        expires_at INTEGER,
        UNIQUE (namespace, key)
     );
     INSERT INTO records_v2 (namespace, key, kind, issuer, value, version, expires_at)
        SELECT namespace, key, kind, issuer, value, version, expires_at FROM records;
     DROP TABLE records;
     ALTER TABLE records_v2 RENAME TO records;
     CREATE INDEX records_by_issuer ON records (namespace, kind, issuer);",
];

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    let denied = matches!(
        source.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    );
    let e = SqliteStoreError::Io {
        path: path.to_owned(),
        source,
    };
    if denied {
        StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(e),
        }
    } else {
        StoreError::backend(BACKEND, e)
    }
}

/// An open database connection and how it was opened.
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    /// `None`: read-write.
    pub(crate) read_only: Option<ReadOnlyReason>,
    /// Opened with `immutable=1` (see [`open_read_only`]): what the files looked like then.
    pub(crate) immutable_snapshot: Option<FilesState>,
}

/// Opens the database at `path`: read-only when asked to; otherwise read-write (creating it when
/// it does not exist), falling back to read-only when the file or its directory is not writable.
pub(crate) fn open(
    path: &Path,
    busy_timeout: Duration,
    read_only: bool,
) -> Result<Opened, StoreError> {
    if read_only {
        return open_read_only(path, busy_timeout, ReadOnlyReason::Requested);
    }
    prepare_file(path, busy_timeout)?;
    match open_read_write(path, busy_timeout) {
        Ok(conn) => Ok(Opened {
            conn,
            read_only: None,
            immutable_snapshot: None,
        }),
        // Not writable (a read-only file, directory or file system): still serve reads. Only
        // when that is confirmed: SQLite's "cannot open" also covers other failures.
        Err(e @ StoreError::PermissionDenied { .. }) => {
            if confirmed_not_writable(path) {
                open_read_only(path, busy_timeout, ReadOnlyReason::NotWritable)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// True when this process may not write the database file, its `-wal` or `-shm`, or create
/// files in its directory (as SQLite must, for the `-wal` and `-shm`).
fn confirmed_not_writable(path: &Path) -> bool {
    let denied = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        )
    };
    for file in [
        path.to_owned(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        if let Err(e) = std::fs::OpenOptions::new().write(true).open(&file)
            && denied(&e)
        {
            return true;
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let probe = dir.join(format!(".mcp-auth-write-probe.{:016x}", random_u64()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            false
        }
        Err(e) => denied(&e),
    }
}

/// The error for a database file of length 0.
fn empty_file(path: &Path) -> StoreError {
    StoreError::Corrupt {
        key: format!("database {}", path.display()),
        reason: "the file is empty (0 bytes), so it holds no credentials: it was truncated (by a \
                 crash, a bad copy or a full disk), and it is not initialised again silently; \
                 restore it from a backup, or delete it to start with an empty store"
            .to_owned(),
    }
}

/// Refuses an empty file; other problems are left to SQLite to report.
fn refuse_empty(path: &Path) -> Result<(), StoreError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    refuse_empty_file(path, &meta)
}

/// [`refuse_empty`] for metadata already read.
fn refuse_empty_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), StoreError> {
    if meta.is_file() && meta.len() == 0 {
        Err(empty_file(path))
    } else {
        Ok(())
    }
}

/// Creates the parent directory (0700) if needed, and the database (0600, initialised) if it
/// does not exist; refuses an existing empty file.
fn prepare_file(path: &Path, busy_timeout: Duration) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(|e| io_err(parent, e))?;
    }
    match std::fs::metadata(path) {
        Ok(meta) => refuse_empty_file(path, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_initialised(path, busy_timeout)
        }
        Err(e) => Err(io_err(path, e)),
    }
}

/// Creates the database at `path` fully initialised, atomically: it is built under a temporary
/// name in the same directory and hard-linked into place only if `path` still does not exist.
/// So a file at `path` is never seen half-created, by this process or another one racing to
/// create it (the loser of the race uses the winner's database); an empty file at `path` can only
/// be damage.
fn create_initialised(path: &Path, busy_timeout: Duration) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io_err(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the database path must name a file",
            ),
        )
    })?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{:016x}.new", random_u64()));
    let temp = dir.join(temp_name);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    // Named after the database: the temporary name would only confuse.
    options.open(&temp).map_err(|e| io_err(path, e))?;
    let result = initialise(&temp, busy_timeout).and_then(|()| publish(&temp, path, dir));
    for leftover in [temp.clone(), sibling(&temp, "-wal"), sibling(&temp, "-shm")] {
        let _ = std::fs::remove_file(leftover);
    }
    result
}

/// Turns the new empty file `temp` into a complete, empty database and syncs it.
fn initialise(temp: &Path, busy_timeout: Duration) -> Result<(), StoreError> {
    let conn = open_read_write(temp, busy_timeout)?;
    // Closing the only connection checkpoints the WAL into the file and removes the WAL.
    conn.close()
        .map_err(|(_, e)| map_err_named(e, &format!("database {}", temp.display())))?;
    std::fs::File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(temp, e))
}

/// Moves the initialised `temp` to `path` unless a database appeared there meanwhile.
fn publish(temp: &Path, path: &Path, dir: &Path) -> Result<(), StoreError> {
    match std::fs::hard_link(temp, path) {
        Ok(()) => {}
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        // A file system without hard links: rename, which cannot refuse to replace, so check
        // first (a creation racing in between on such a file system is the one gap).
        Err(_) if !path.exists() => std::fs::rename(temp, path).map_err(|e| io_err(path, e))?,
        Err(_) => return Ok(()),
    }
    // Make the new directory entry durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Opens read-write: WAL, `synchronous=FULL`, busy timeout, schema migrated to
/// [`SCHEMA_VERSION`]. A file SQLite could only open read-only is `PermissionDenied`.
fn open_read_write(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let what = format!("database {}", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| map_err_named(e, &what))?;
    // SQLite silently opens a write-protected file read-only.
    if conn
        .is_readonly(MAIN_DB)
        .map_err(|e| map_err_named(e, &what))?
    {
        return Err(StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(SqliteStoreError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the file is not writable",
                ),
            }),
        });
    }
    conn.busy_timeout(busy_timeout)
        .map_err(|e| map_err_named(e, &what))?;
    // WAL lets readers proceed while a writer commits. FULL sync: a commit is on disk before it
    // is acknowledged, so not even an OS crash loses an acknowledged credential.
    // Deleted and overwritten records (old tokens, logged-out credentials) are zeroed in the
    // file, not left in free pages; the `-wal` shrinks to nothing whenever it is reset, and the
    // store checkpoints after writes of secrets (see `SqliteStore::scrub`). One batch: `token`
    // opens the store on every call.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; \
         PRAGMA journal_size_limit = 0;",
    )
    .map_err(|e| map_err_named(e, &what))?;
    tighten_modes(path)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// An existing database made readable by others (a copy, a restore, a umask) is tightened to
/// 0600, with its `-wal` and `-shm`: they hold client secrets and tokens.
fn tighten_modes(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    for file in [
        path.to_owned(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err(&file, e))?;
        }
    }
    Ok(())
}

/// Opens read-only, for reads only.
///
/// A WAL database can be read without write access only if its `-wal` and `-shm` files already
/// exist (another process has it open, or one crashed), or they can be created, or the file is
/// opened `immutable=1` (see <https://www.sqlite.org/wal.html#readonly>). So: a plain read-only
/// open first; if SQLite cannot open the WAL index and the `-wal` holds nothing (the last writer
/// closed cleanly and checkpointed everything into the main file), `immutable=1`. Never
/// `immutable=1` over a `-wal` with frames: those changes would be silently missed.
pub(crate) fn open_read_only(
    path: &Path,
    busy_timeout: Duration,
    reason: ReadOnlyReason,
) -> Result<Opened, StoreError> {
    refuse_empty(path)?;
    let what = format!("database {}", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| map_err_named(e, &what))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| map_err_named(e, &what))?;
    let cannot_open_wal = match schema_version(&conn) {
        Ok(found) => {
            check_readable_schema(path, found)?;
            return Ok(Opened {
                conn,
                read_only: Some(reason),
                immutable_snapshot: None,
            });
        }
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) => e,
        Err(e) => return Err(map_err_named(e, &what)),
    };
    drop(conn);
    let snapshot = FilesState::of(path);
    if snapshot.wal_has_frames {
        return Err(StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(SqliteStoreError::WalUnreadable {
                path: path.to_owned(),
                source: cannot_open_wal,
            }),
        });
    }
    let Some(uri) = immutable_uri(path) else {
        return Err(map_err_named(cannot_open_wal, &what));
    };
    let conn = Connection::open_with_flags(uri, flags).map_err(|e| map_err_named(e, &what))?;
    let found = schema_version(&conn).map_err(|e| map_err_named(e, &what))?;
    check_readable_schema(path, found)?;
    Ok(Opened {
        conn,
        read_only: Some(reason),
        immutable_snapshot: Some(snapshot),
    })
}

fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// A read-only store can use only a database already at [`SCHEMA_VERSION`]: it cannot migrate.
fn check_readable_schema(path: &Path, found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::backend(
            BACKEND,
            SqliteStoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            },
        ));
    }
    if found < SCHEMA_VERSION {
        return Err(StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(SqliteStoreError::ReadOnlyNeedsUpgrade {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            }),
        });
    }
    Ok(())
}

/// `file:<path>?immutable=1`, or `None` for a path that is not UTF-8.
fn immutable_uri(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            #[cfg(windows)]
            '\\' => uri.push('/'),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Some(uri)
}

/// `<path><suffix>`, e.g. the `-wal` beside a database.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// What the database file and its `-wal` look like, to notice another process writing a
/// database this process reads with `immutable=1` (which makes SQLite skip its own change
/// detection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FilesState {
    len: Option<u64>,
    modified: Option<SystemTime>,
    wal_has_frames: bool,
}

impl FilesState {
    pub(crate) fn of(path: &Path) -> Self {
        let meta = std::fs::metadata(path).ok();
        Self {
            len: meta.as_ref().map(std::fs::Metadata::len),
            modified: meta.and_then(|m| m.modified().ok()),
            wal_has_frames: std::fs::metadata(sibling(path, "-wal")).is_ok_and(|m| m.len() > 0),
        }
    }
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ (u64::from(std::process::id()) << 40)
    })
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let what = format!("database {}", path.display());
    // Up to date (every open but the first after an upgrade): no write lock taken.
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| map_err_named(e, &what))?;
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| map_err_named(e, &what))?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| map_err_named(e, &what))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::backend(
            BACKEND,
            SqliteStoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            },
        ));
    }
    let start = usize::try_from(found).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(sql).map_err(|e| map_err_named(e, &what))?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )
        .map_err(|e| map_err_named(e, &what))?;
    }
    tx.commit().map_err(|e| map_err_named(e, &what))
}
