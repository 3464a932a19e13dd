//! Opening the database file safely and migrating its schema forward.

use std::path::Path;
use std::time::Duration;

use mcp_auth_core::StoreError;
use rusqlite::{Connection, OpenFlags};

use crate::{BACKEND, SqliteStoreError, map_err_named};

/// The schema version this crate writes (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 1;

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
];

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    let denied = source.kind() == std::io::ErrorKind::PermissionDenied;
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

/// Creates the parent directory (0700) and the file (0600) if they do not exist yet.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(|e| io_err(parent, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| io_err(path, e))?;
    Ok(())
}

/// Opens the connection: WAL, busy timeout, foreign-key-free schema migrated to
/// [`SCHEMA_VERSION`].
pub(crate) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    prepare_file(path)?;
    let what = format!("database {}", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| map_err_named(e, &what))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| map_err_named(e, &what))?;
    // WAL lets readers proceed while a writer commits. FULL sync: a commit is on disk before it
    // is acknowledged, so not even an OS crash loses an acknowledged credential.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| map_err_named(e, &what))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| map_err_named(e, &what))?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let what = format!("database {}", path.display());
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
