#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod schema;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mcp_auth_core::raw::{self, RawRecords};
use mcp_auth_core::record::{self, RecordKey, RecordKind};
use mcp_auth_core::{
    Expect, IssuerId, Namespace, PendingAuthorization, PendingAuthorizationStore, RefreshLease,
    StoreCapabilities, StoreError, StoreInfo, Timestamp, TokenKey, TokenSet, TokenStore, Version,
    Versioned,
};
use rusqlite::{Connection, OptionalExtension, params};

const BACKEND: &str = "sqlite";

/// How long a writer waits for another process's write lock before giving up with
/// [`StoreError::Unavailable`].
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors specific to this backend, carried as the source of a [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteStoreError {
    /// The platform has no data directory (no `$HOME`, no `$XDG_DATA_HOME`).
    #[error("no platform data directory; pass an explicit database path")]
    NoDataDir,
    /// The database was written by a newer version of this crate.
    #[error(
        "database {path} has schema version {found}, newer than this mcp-auth supports ({supported}); upgrade mcp-auth"
    )]
    NewerSchema {
        /// Database path.
        path: PathBuf,
        /// `PRAGMA user_version` found.
        found: i64,
        /// Newest version this crate writes.
        supported: i64,
    },
    /// Preparing the database file or directory failed.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task was cancelled or panicked.
    #[error("database task failed: {0}")]
    Task(String),
    /// A write (or the refresh lease) on a store opened read-only.
    #[error(
        "{} is open read-only ({reason}), so {operation} is refused; {}",
        path.display(),
        reason.remedy()
    )]
    ReadOnly {
        /// Database path.
        path: PathBuf,
        /// What was refused (`"writing tokens/…"`, `"taking the refresh lease for …"`).
        operation: String,
        /// Why the store is read-only.
        reason: ReadOnlyReason,
    },
    /// A database this process may not write has a `-wal` file with changes not yet in the main
    /// file, and no usable `-shm` index to read it through.
    #[error(
        "{}: its -wal file holds changes not yet in the main file, and this process can neither use nor create the -shm index beside it (the directory is not writable); open the database once with write access so SQLite folds the WAL into the file, or make the directory writable ({source})",
        path.display()
    )]
    WalUnreadable {
        /// Database path.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A database this process may only read needs a schema upgrade that only a writer can do.
    #[error(
        "database {} has schema version {found}, older than this mcp-auth uses ({supported}), and it is read-only here so it cannot be upgraded; open it once with write access",
        path.display()
    )]
    ReadOnlyNeedsUpgrade {
        /// Database path.
        path: PathBuf,
        /// `PRAGMA user_version` found.
        found: i64,
        /// The version this crate uses.
        supported: i64,
    },
}

/// Why a store is read-only ([`SqliteStore::read_only_reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadOnlyReason {
    /// [`SqliteOptions::read_only`] asked for it.
    Requested,
    /// The database file, its directory or its file system is not writable by this process
    /// (SQLite also needs to create `<file>-wal` and `<file>-shm` beside the file).
    NotWritable,
}

impl ReadOnlyReason {
    fn remedy(self) -> &'static str {
        match self {
            Self::Requested => "open the store without SqliteOptions::read_only to write",
            Self::NotWritable => {
                "make the file and its directory writable by this user (SQLite creates <file>-wal and <file>-shm beside it), or use a writable copy"
            }
        }
    }
}

impl fmt::Display for ReadOnlyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Requested => "opened with SqliteOptions::read_only",
            Self::NotWritable => "the file or its directory is not writable by this process",
        })
    }
}

/// Options for [`SqliteStore::open_with`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The tenant.
    pub namespace: Namespace,
    /// How long to wait for another process's lock (see [`DEFAULT_BUSY_TIMEOUT`]).
    pub busy_timeout: Duration,
    /// Open the database read-only (default `false`): reads work, every write and the refresh
    /// lease fail with [`StoreError::PermissionDenied`] ([`SqliteStoreError::ReadOnly`]). The
    /// file must exist. Without this option a database whose file or directory is not writable
    /// is opened read-only anyway ([`SqliteStore::read_only`] tells).
    pub read_only: bool,
    /// Run every SQLite call on the calling thread, also on a current-thread tokio runtime
    /// (default `false`: there it goes to tokio's blocking pool, which starts a thread). For a
    /// short-lived process that does one thing at a time, such as a command-line tool: a call
    /// then blocks the runtime while it runs, up to `busy_timeout` when another process holds
    /// the database's lock. A multi-threaded runtime always uses `block_in_place`, with no thread
    /// hop either way.
    pub run_inline: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            namespace: Namespace::default(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            read_only: false,
            run_inline: false,
        }
    }
}

struct Shared {
    path: PathBuf,
    conn: Mutex<Conn>,
    /// `Some` when the database could only be opened read-only (or was asked to be).
    read_only: Option<ReadOnlyReason>,
    busy_timeout: Duration,
    /// [`SqliteOptions::run_inline`].
    run_inline: bool,
    /// Decoded token sets by (namespace, storage key), each with the version it was decoded at.
    /// A read still asks SQLite for the current version (so another process's write is always
    /// seen); only the JSON decoding is skipped when the version is unchanged. Versions are
    /// random per write, so a stale entry can never match.
    decoded_tokens: Mutex<HashMap<(String, String), (i64, TokenSet)>>,
    /// The answers of `binding_and_token_versions`, valid while the database's change stamp
    /// (`PRAGMA data_version`, which moves when another connection commits, and this
    /// connection's `total_changes`) is the one they were read at: a warm `access_token()`
    /// then costs one pragma instead of two index lookups.
    versions: Mutex<VersionsCache>,
}

/// See [`Shared::versions`].
#[derive(Default)]
struct VersionsCache {
    stamp: Option<(i64, u64)>,
    /// By token key: the answer of each namespace that asked.
    entries: HashMap<TokenKey, Vec<CachedVersions>>,
}

/// (namespace, binding version, token version).
type CachedVersions = (String, Option<i64>, Option<i64>);

/// Token keys kept in the versions cache before it is cleared.
const VERSIONS_CACHE_MAX: usize = 1024;

/// Entries kept in the decoded-token cache before it is cleared.
const DECODED_TOKENS_MAX: usize = 1024;

struct Conn {
    connection: Connection,
    /// Set while the connection is `immutable=1` (a read-only database whose WAL index could not
    /// be created): what the files looked like when it was opened. SQLite does no change
    /// detection on such a connection, so when the files change (another process with write
    /// access writes) the connection is reopened.
    immutable_snapshot: Option<schema::FilesState>,
}

impl Conn {
    /// Reopens an `immutable=1` connection once the files changed under it, so that another
    /// process's writes are seen (through the `-shm` index it created, when there is one).
    fn refresh_if_stale(&mut self, path: &Path, busy_timeout: Duration) -> Result<(), StoreError> {
        let Some(snapshot) = &self.immutable_snapshot else {
            return Ok(());
        };
        if *snapshot == schema::FilesState::of(path) {
            return Ok(());
        }
        let reopened = schema::open_read_only(path, busy_timeout, ReadOnlyReason::NotWritable)?;
        self.connection = reopened.conn;
        self.immutable_snapshot = reopened.immutable_snapshot;
        Ok(())
    }
}

/// A credential store in one SQLite file, safe to share between processes.
///
/// WAL journal, one connection per store handle (clones and [`SqliteStore::with_namespace`] share
/// it), every write in a `BEGIN IMMEDIATE` transaction, blocking work off the async executor.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    namespace: Namespace,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .field("namespace", &self.namespace)
            .field("read_only", &self.shared.read_only)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// The default database path: `<platform data dir>/mcp-auth/credentials.db` (on Linux
    /// `$XDG_DATA_HOME/mcp-auth/credentials.db`, else `~/.local/share/mcp-auth/credentials.db`).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] ([`SqliteStoreError::NoDataDir`]) when the platform has no data
    /// directory (no home directory, say).
    pub fn default_path() -> Result<PathBuf, StoreError> {
        dirs::data_dir()
            .map(|d| d.join("mcp-auth").join("credentials.db"))
            .ok_or_else(|| StoreError::backend(BACKEND, SqliteStoreError::NoDataDir))
    }

    /// Opens (creating if needed) the database at [`SqliteStore::default_path`], default
    /// namespace.
    ///
    /// # Errors
    ///
    /// As [`SqliteStore::default_path`] and [`SqliteStore::open_with`].
    pub async fn open_default() -> Result<Self, StoreError> {
        Self::open(Self::default_path()?).await
    }

    /// Opens (creating if needed) the database at `path`, default namespace.
    ///
    /// # Errors
    ///
    /// As [`SqliteStore::open_with`].
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database at `path` with `options`.
    ///
    /// A new database is created with mode 0600 (and a new parent directory with mode 0700),
    /// fully initialised before it appears at `path`. An existing file of length 0 is refused
    /// with [`StoreError::Corrupt`] (it can only be a truncated database), never initialised
    /// again. A database whose file or directory this process may not write is opened
    /// read-only: reads work, writes fail with [`StoreError::PermissionDenied`] (see
    /// [`SqliteStore::read_only`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::PermissionDenied`] when the file or its directory cannot be created or opened;
    /// [`StoreError::Corrupt`] when the file is empty or is not an SQLite database (or a damaged
    /// one); [`StoreError::Unavailable`] when the database stays busy or locked past
    /// `busy_timeout`; [`StoreError::Backend`] when it was written by a newer schema than this
    /// version reads, or on another SQLite or I/O failure.
    pub async fn open_with(
        path: impl Into<PathBuf>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let busy = options.busy_timeout;
        let read_only = options.read_only;
        let run_inline = options.run_inline;
        let opened = run_blocking(run_inline, {
            let path = path.clone();
            move || schema::open(&path, busy, read_only)
        })
        .await?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                conn: Mutex::new(Conn {
                    connection: opened.conn,
                    immutable_snapshot: opened.immutable_snapshot,
                }),
                read_only: opened.read_only,
                busy_timeout: busy,
                run_inline,
                decoded_tokens: Mutex::default(),
                versions: Mutex::default(),
            }),
            namespace: options.namespace,
        })
    }

    /// The same database, seen through another (isolated) namespace.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            namespace,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// True when the database is open read-only: reads work, every write (and the refresh
    /// lease) fails with [`StoreError::PermissionDenied`] whose source is
    /// [`SqliteStoreError::ReadOnly`], saying why and what to do.
    pub fn read_only(&self) -> bool {
        self.shared.read_only.is_some()
    }

    /// Why the database is open read-only, if it is.
    pub fn read_only_reason(&self) -> Option<ReadOnlyReason> {
        self.shared.read_only
    }

    /// Refuses a write on a read-only store, naming the operation.
    fn check_writable(&self, operation: impl FnOnce() -> String) -> Result<(), StoreError> {
        match self.shared.read_only {
            None => Ok(()),
            Some(reason) => Err(StoreError::PermissionDenied {
                backend: BACKEND,
                source: Box::new(SqliteStoreError::ReadOnly {
                    path: self.shared.path.clone(),
                    operation: operation(),
                    reason,
                }),
            }),
        }
    }

    /// Runs `f` on the connection without stalling the async executor: through
    /// `block_in_place` on a multi-threaded tokio runtime (no thread hop for the caller),
    /// `spawn_blocking` on a current-thread runtime, inline outside tokio.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = Arc::clone(&self.shared);
        let namespace = self.namespace.clone();
        run_blocking(self.shared.run_inline, move || {
            let mut conn = shared.conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.refresh_if_stale(&shared.path, shared.busy_timeout)?;
            f(&mut conn.connection, namespace.as_str())
        })
        .await
    }

    /// Runs a short read (one indexed row) on the caller's thread when the connection is free
    /// and the database is writable (WAL, where readers never wait for writers): no hand-off to
    /// another thread for a few microseconds of work. Otherwise (connection busy, read-only or
    /// immutable database) as [`SqliteStore::with_conn`].
    async fn with_read_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.shared.read_only.is_none()
            && let Ok(mut conn) = self.shared.conn.try_lock()
        {
            return f(&mut conn.connection, self.namespace.as_str());
        }
        self.with_conn(f).await
    }

    async fn get_raw(&self, key: RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        self.with_read_conn(move |conn, ns| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT value, version FROM records WHERE namespace = ?1 AND key = ?2",
                )
                .map_err(|e| map_err(e, &key))?;
            stmt.query_row(params![ns, key.storage_key()], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()
            .map_err(|e| map_err(e, &key))
            .map(|found| found.map(|(bytes, v)| (bytes, version_of(v))))
        })
        .await
    }

    /// One statement per expectation, each atomic on its own (autocommit), so no transaction
    /// round trips: `Any` upserts, `Absent` inserts unless present, `Version` updates only the
    /// row still at that version.
    async fn put_raw(
        &self,
        key: RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.check_writable(|| format!("writing {key}"))?;
        let issuer = issuer_column(&key).map(str::to_owned);
        self.with_conn(move |conn, ns| {
            let version = new_version();
            let storage_key = key.storage_key();
            let kind = key.kind().as_str();
            let changed = match &expect {
                Expect::Any => conn
                    .prepare_cached(
                        "INSERT INTO records (namespace, key, kind, issuer, value, version)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (namespace, key) DO UPDATE SET
                           kind = excluded.kind, issuer = excluded.issuer,
                           value = excluded.value, version = excluded.version",
                    )
                    .and_then(|mut s| {
                        s.execute(params![ns, storage_key, kind, issuer, bytes, version])
                    }),
                Expect::Absent => conn
                    .prepare_cached(
                        "INSERT INTO records (namespace, key, kind, issuer, value, version)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (namespace, key) DO NOTHING",
                    )
                    .and_then(|mut s| {
                        s.execute(params![ns, storage_key, kind, issuer, bytes, version])
                    }),
                Expect::Version(expected) => match parse_version(expected) {
                    Some(expected) => conn
                        .prepare_cached(
                            "UPDATE records SET kind = ?3, issuer = ?4, value = ?5, version = ?6
                             WHERE namespace = ?1 AND key = ?2 AND version = ?7",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                ns,
                                storage_key,
                                kind,
                                issuer,
                                bytes,
                                version,
                                expected
                            ])
                        }),
                    // A version this backend never issued cannot be current.
                    None => Ok(0),
                },
            }
            .map_err(|e| map_err(e, &key))?;
            if changed == 0 {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                });
            }
            // A write of a secret-bearing record replaced older secrets: move it into the main
            // file (where secure_delete zeroed the old bytes) without waiting for readers.
            scrub(conn, false);
            Ok(version_of(version))
        })
        .await
    }

    async fn delete_raw(&self, key: RecordKey, expect: Expect) -> Result<bool, StoreError> {
        self.check_writable(|| format!("deleting {key}"))?;
        self.with_conn(move |conn, ns| {
            let storage_key = key.storage_key();
            let deleted = match &expect {
                Expect::Any => conn
                    .prepare_cached("DELETE FROM records WHERE namespace = ?1 AND key = ?2")
                    .and_then(|mut s| s.execute(params![ns, storage_key]))
                    .map(|n| n > 0)
                    .map_err(|e| map_err(e, &key)),
                Expect::Version(expected) => {
                    let deleted = match parse_version(expected) {
                        Some(v) => conn
                            .prepare_cached(
                                "DELETE FROM records WHERE namespace = ?1 AND key = ?2 AND version = ?3",
                            )
                            .and_then(|mut s| s.execute(params![ns, storage_key, v]))
                            .map_err(|e| map_err(e, &key))?,
                        None => 0,
                    };
                    if deleted == 0 {
                        return Err(StoreError::Conflict {
                            key: key.to_string(),
                        });
                    }
                    Ok(true)
                }
                // "Delete only if absent": nothing to delete, but a present record conflicts.
                Expect::Absent => {
                    let present = conn
                        .prepare_cached("SELECT 1 FROM records WHERE namespace = ?1 AND key = ?2")
                        .and_then(|mut s| {
                            s.query_row(params![ns, storage_key], |_| Ok(())).optional()
                        })
                        .map_err(|e| map_err(e, &key))?;
                    if present.is_some() {
                        return Err(StoreError::Conflict {
                            key: key.to_string(),
                        });
                    }
                    Ok(false)
                }
            };
            // A logout: no byte of what was deleted stays in the file or its `-wal`.
            if matches!(deleted, Ok(true)) {
                scrub(conn, true);
            }
            deleted
        })
        .await
    }

    /// One `SELECT` of every record of `kind` in this namespace.
    async fn scan_raw(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<(RecordKey, Vec<u8>, Version)>, StoreError> {
        self.scan_with(kind, |key, bytes, version| {
            Ok(Some((key, bytes.to_vec(), version)))
        })
        .await
    }

    /// One `SELECT` of every record of `kind` in this namespace, each row's key parsed and
    /// `decode` applied to its value; `Ok(None)` leaves a row out. The order of the result is
    /// unspecified.
    ///
    /// A small scan (or one on a single core) is decoded on this thread, all but its first
    /// [`SCAN_CHUNK`] rows straight from SQLite's row buffers. A large one is read into
    /// [`Chunk`]s of [`SCAN_CHUNK`] rows that other threads decode while this one reads (and
    /// decodes a chunk itself whenever they are all busy); decoded chunks come back to be cleared
    /// and filled again, so the copies of the values never pile up and the reader and the
    /// decoders do not allocate and free a buffer per row (doing so, they contended for the
    /// allocator, and decoding on two threads was slower than on one).
    async fn scan_with<T: Send + 'static>(
        &self,
        kind: RecordKind,
        decode: impl Fn(RecordKey, &[u8], Version) -> Result<Option<T>, StoreError>
        + Send
        + Sync
        + 'static,
    ) -> Result<Vec<T>, StoreError> {
        self.with_conn(move |conn, ns| {
            let what = format!("{} scan", kind.as_str());
            // Storage keys are `<kind>/…`: the key range makes this one range scan of the
            // primary key (the kind index would cost one primary-key lookup per row).
            let (from, until) = (format!("{}/", kind.as_str()), format!("{}0", kind.as_str()));
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value, version FROM records
                     WHERE namespace = ?1 AND key >= ?3 AND key < ?4 AND kind = ?2",
                )
                .map_err(|e| map_err_named(e, &what))?;
            let mut rows = stmt
                .query(params![ns, kind.as_str(), from, until])
                .map_err(|e| map_err_named(e, &what))?;
            let decode_row = |raw: &str, bytes: &[u8], version: i64| {
                let key = RecordKey::from_storage_key(raw).ok_or_else(|| StoreError::Corrupt {
                    key: raw.to_owned(),
                    reason: "unrecognised storage key".to_owned(),
                })?;
                decode(key, bytes, version_of(version))
            };
            // Fills `chunk` (emptied first) with up to SCAN_CHUNK rows; an empty chunk is the end.
            let mut next_chunk = |chunk: &mut Chunk| -> Result<(), StoreError> {
                chunk.clear();
                while chunk.len() < SCAN_CHUNK {
                    let Some(row) = rows.next().map_err(|e| map_err_named(e, &what))? else {
                        break;
                    };
                    let (key, value, version) =
                        row_parts(row).map_err(|e| map_err_named(e, &what))?;
                    chunk.push(key, value, version);
                }
                Ok(())
            };
            let mut first = Chunk::default();
            next_chunk(&mut first)?;
            let threads = std::thread::available_parallelism().map_or(1, usize::from);
            if first.len() < SCAN_CHUNK || threads < 2 {
                // Small (or single core): decode here, the rest straight from SQLite's buffers.
                let mut found = Vec::with_capacity(first.len());
                for (key, value, version) in first.rows() {
                    found.extend(decode_row(key, value, version)?);
                }
                while let Some(row) = rows.next().map_err(|e| map_err_named(e, &what))? {
                    let (key, value, version) =
                        row_parts(row).map_err(|e| map_err_named(e, &what))?;
                    found.extend(decode_row(key, value, version)?);
                }
                return Ok(found);
            }
            // This thread reads; decoders (one per core but this one, at least one) decode.
            let decoders = (threads - 1).clamp(1, 3);
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Chunk>(decoders);
            let receiver = Mutex::new(receiver);
            // Decoded chunks, back to the reader to be filled again.
            let (give_back, spare) = std::sync::mpsc::channel::<Chunk>();
            // Set by a decoder that met a bad row: the reader stops reading, and every decoder
            // keeps draining the channel (without decoding) until it closes.
            let failed = std::sync::atomic::AtomicBool::new(false);
            // Decodes `chunk` into `found`; the first error stops it.
            let decode_chunk = |chunk: &Chunk, found: &mut Vec<T>| -> Result<(), StoreError> {
                for (key, value, version) in chunk.rows() {
                    found.extend(decode_row(key, value, version)?);
                }
                Ok(())
            };
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..decoders)
                    .map(|_| {
                        let give_back = give_back.clone();
                        scope.spawn(|| {
                            let give_back = give_back;
                            let mut found = Vec::new();
                            let mut error = None;
                            loop {
                                let chunk = receiver
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .recv();
                                let Ok(chunk) = chunk else {
                                    return error.map_or(Ok(found), Err);
                                };
                                if error.is_none()
                                    && let Err(e) = decode_chunk(&chunk, &mut found)
                                {
                                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                    error = Some(e);
                                }
                                // Once the reader is done, nobody takes it: it waits in the
                                // channel until the scan returns.
                                let _ = give_back.send(chunk);
                            }
                        })
                    })
                    .collect();
                drop(give_back);
                let mut read = Ok(());
                // Decoding costs more than reading: when every decoder is busy (the channel is
                // full), this thread decodes the chunk itself instead of waiting.
                let mut found = Vec::new();
                let mut chunk = first;
                while !chunk.is_empty() {
                    // A decoder met a bad row (its error is reported): stop reading.
                    if failed.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    chunk = match sender.try_send(chunk) {
                        Ok(()) => spare.try_recv().unwrap_or_default(),
                        // Every decoder is busy, or none is left (they only stop once the channel
                        // closes, so that would take a panic, which `join` reports): decode the
                        // rows here rather than wait, or leave them out.
                        Err(
                            std::sync::mpsc::TrySendError::Full(mine)
                            | std::sync::mpsc::TrySendError::Disconnected(mine),
                        ) => {
                            if let Err(e) = decode_chunk(&mine, &mut found) {
                                read = Err(e);
                                break;
                            }
                            mine
                        }
                    };
                    if let Err(e) = next_chunk(&mut chunk) {
                        read = Err(e);
                        break;
                    }
                }
                drop(sender);
                for handle in handles {
                    match handle.join() {
                        Ok(part) => found.extend(part?),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                read.map(|()| found)
            })
        })
        .await
    }

    /// `Expect::Any` upserts of many records, [`IMPORT_BATCH`] per `BEGIN IMMEDIATE`
    /// transaction (one commit, one fsync each; the write lock is held for one batch at a time).
    async fn put_many_raw(
        &self,
        records: Vec<(RecordKey, Vec<u8>)>,
    ) -> Result<Vec<Version>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.check_writable(|| format!("writing {} records", records.len()))?;
        let mut versions = Vec::with_capacity(records.len());
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let batch: Vec<_> = records.by_ref().take(IMPORT_BATCH).collect();
            let last = records.peek().is_none();
            versions.extend(
                self.with_conn(move |conn, ns| {
                    let what = format!("a batch of {} records", batch.len());
                    let tx = conn
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(|e| map_err_named(e, &what))?;
                    let mut versions = Vec::with_capacity(batch.len());
                    {
                        let mut stmt = tx
                            .prepare_cached(
                                "INSERT INTO records (namespace, key, kind, issuer, value, version)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                                 ON CONFLICT (namespace, key) DO UPDATE SET
                                   kind = excluded.kind, issuer = excluded.issuer,
                                   value = excluded.value, version = excluded.version",
                            )
                            .map_err(|e| map_err_named(e, &what))?;
                        for (key, bytes) in &batch {
                            let version = new_version();
                            stmt.execute(params![
                                ns,
                                key.storage_key(),
                                key.kind().as_str(),
                                issuer_column(key),
                                bytes,
                                version
                            ])
                            .map_err(|e| map_err(e, key))?;
                            versions.push(version_of(version));
                        }
                    }
                    tx.commit().map_err(|e| map_err_named(e, &what))?;
                    // As after every write, once for the whole import.
                    if last {
                        scrub(conn, false);
                    }
                    Ok(versions)
                })
                .await?,
            );
        }
        Ok(versions)
    }

    async fn list_raw(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        self.with_conn(move |conn, ns| {
            let what = format!("{} list", kind.as_str());
            let mut stmt = conn
                .prepare_cached("SELECT key FROM records WHERE namespace = ?1 AND kind = ?2")
                .map_err(|e| map_err_named(e, &what))?;
            let rows = stmt
                .query_map(params![ns, kind.as_str()], |row| row.get::<_, String>(0))
                .map_err(|e| map_err_named(e, &what))?;
            let mut keys = Vec::new();
            for row in rows {
                let raw = row.map_err(|e| map_err_named(e, &what))?;
                let key = RecordKey::from_storage_key(&raw).ok_or_else(|| StoreError::Corrupt {
                    key: raw.clone(),
                    reason: "unrecognised storage key".to_owned(),
                })?;
                keys.push(key);
            }
            Ok(keys)
        })
        .await
    }
}

/// Rows a scan reads before handing them to a decoder (see `SqliteStore::scan_with`).
const SCAN_CHUNK: usize = 512;

/// The key, value and version of a scanned row, borrowed from SQLite's buffers.
fn row_parts<'r>(row: &'r rusqlite::Row<'_>) -> rusqlite::Result<(&'r str, &'r [u8], i64)> {
    let key = row.get_ref(0)?.as_str()?;
    let value = row.get_ref(1)?.as_blob()?;
    Ok((key, value, row.get(2)?))
}

/// Rows of a scan copied out of SQLite for a decoder thread: every key in one string and every
/// value in one buffer (three allocations per chunk, reused from chunk to chunk, instead of two
/// per row).
#[derive(Default)]
struct Chunk {
    keys: String,
    values: Vec<u8>,
    /// Per row: where its key and its value end, and its version.
    ends: Vec<(usize, usize, i64)>,
}

impl Chunk {
    fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.ends.clear();
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn push(&mut self, key: &str, value: &[u8], version: i64) {
        self.keys.push_str(key);
        self.values.extend_from_slice(value);
        self.ends
            .push((self.keys.len(), self.values.len(), version));
    }

    fn rows(&self) -> impl Iterator<Item = (&str, &[u8], i64)> {
        let (mut key_from, mut value_from) = (0, 0);
        self.ends.iter().map(move |&(key_end, value_end, version)| {
            // Boundaries recorded by `push` (whole strings, so char boundaries): `get` never
            // fails, and cannot panic if it did.
            let key = self.keys.get(key_from..key_end).unwrap_or_default();
            let value = self.values.get(value_from..value_end).unwrap_or_default();
            (key_from, value_from) = (key_end, value_end);
            (key, value, version)
        })
    }
}

/// Records written per transaction by [`TokenStore::put_tokens_any`] and its siblings.
const IMPORT_BATCH: usize = 1000;

/// The `issuer` column of a record; it serves `delete_issuer_tokens` (exact byte comparison).
fn issuer_column(key: &RecordKey) -> Option<&str> {
    match key {
        RecordKey::Registration(issuer) => Some(issuer.as_str()),
        RecordKey::Tokens(token_key) => Some(token_key.issuer.as_str()),
        _ => None,
    }
}

/// A fresh random record version. Random rather than counted so that a write needs no extra
/// statement, and a record deleted and recreated never gets a version seen before (no ABA).
fn new_version() -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let raw = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: time, pid and a counter still make collisions implausible.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ (u64::from(std::process::id()) << 40) ^ FALLBACK.fetch_add(1, Ordering::Relaxed)
    });
    // SQLite integers are signed; keep the full 64 bits.
    raw as i64
}

fn version_of(v: i64) -> Version {
    Version::new(format!("{v:x}"))
}

fn parse_version(v: &Version) -> Option<i64> {
    u64::from_str_radix(v.as_str(), 16).ok().map(|u| u as i64)
}

/// Runs blocking work without stalling other tasks: `block_in_place` on a multi-threaded tokio
/// runtime (the worker hands its other tasks to another thread; the caller pays no thread hop),
/// the blocking pool on a current-thread runtime (where `block_in_place` is not allowed), inline
/// outside tokio (so other executors work instead of panicking). `inline`: on the calling thread
/// on a current-thread runtime too ([`SqliteOptions::run_inline`]).
async fn run_blocking<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        Ok(_) if inline => f(),
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| StoreError::backend(BACKEND, SqliteStoreError::Task(e.to_string())))?,
        Err(_) => f(),
    }
}

/// Maps a SQLite error to the store error a caller can act on.
fn map_err(e: rusqlite::Error, key: &RecordKey) -> StoreError {
    map_err_named(e, &key.to_string())
}

fn map_err_named(e: rusqlite::Error, what: &str) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::unavailable(BACKEND, e)
        }
        Some(
            ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::AuthorizationForStatementDenied,
        ) => StoreError::PermissionDenied {
            backend: BACKEND,
            source: Box::new(e),
        },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            key: what.to_owned(),
            reason: format!("the database file is damaged: {e}"),
        },
        Some(ErrorCode::DiskFull) | Some(ErrorCode::SystemIoFailure) => {
            StoreError::unavailable(BACKEND, e)
        }
        _ => match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt {
                key: what.to_owned(),
                reason: "stored column has the wrong type".to_owned(),
            },
            other => StoreError::backend(BACKEND, other),
        },
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms_to_system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[async_trait]
impl RawRecords for SqliteStore {
    async fn get_record(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        self.get_raw(key.clone()).await
    }

    async fn put_record(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.put_raw(key.clone(), bytes, expect).await
    }

    async fn delete_record(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError> {
        self.delete_raw(key.clone(), expect).await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        self.list_raw(kind).await
    }

    async fn scan_records(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<(RecordKey, Vec<u8>, Version)>, StoreError> {
        self.scan_raw(kind).await
    }

    async fn put_records_any(
        &self,
        records: Vec<(RecordKey, Vec<u8>)>,
    ) -> Result<Vec<Version>, StoreError> {
        self.put_many_raw(records).await
    }
}

mcp_auth_core::impl_record_stores!(SqliteStore);

impl StoreInfo for SqliteStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::ALL
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        // The hot path of every `access_token()`: one query; the record is decoded only when
        // its version changed since the last read.
        let key = key.clone();
        let shared = Arc::clone(&self.shared);
        self.with_conn(move |conn, ns| {
            let record_key = RecordKey::Tokens(key.clone());
            let storage_key = record_key.storage_key();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT value, version FROM records WHERE namespace = ?1 AND key = ?2",
                )
                .map_err(|e| map_err(e, &record_key))?;
            let mut rows = stmt
                .query(params![ns, storage_key])
                .map_err(|e| map_err(e, &record_key))?;
            let Some(row) = rows.next().map_err(|e| map_err(e, &record_key))? else {
                return Ok(None);
            };
            let version: i64 = row.get(1).map_err(|e| map_err(e, &record_key))?;
            let slot = (ns.to_owned(), storage_key);
            let mut cache = shared
                .decoded_tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((cached_version, tokens)) = cache.get(&slot)
                && *cached_version == version
            {
                return Ok(Some(Versioned {
                    value: tokens.clone(),
                    version: version_of(version),
                }));
            }
            let bytes = row
                .get_ref(0)
                .and_then(|v| v.as_blob().map_err(rusqlite::Error::from))
                .map_err(|e| map_err(e, &record_key))?;
            let tokens = record::decode_tokens(&key, bytes)?;
            if cache.len() >= DECODED_TOKENS_MAX {
                cache.clear();
            }
            cache.insert(slot, (version, tokens.clone()));
            Ok(Some(Versioned {
                value: tokens,
                version: version_of(version),
            }))
        })
        .await
    }

    async fn put_tokens(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        raw::put_tokens(self, key, tokens, expect).await
    }

    async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError> {
        raw::delete_tokens(self, key, expect).await
    }

    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
        self.check_writable(|| format!("deleting the tokens of issuer {issuer}"))?;
        let issuer = issuer.clone();
        self.with_conn(move |conn, ns| {
            let what = format!("tokens of issuer {issuer}");
            // `issuer` is compared as an exact byte string (BINARY collation).
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM records WHERE namespace = ?1 AND kind = 'tokens' AND issuer = ?2",
                )
                .and_then(|mut stmt| stmt.execute(params![ns, issuer.as_str()]))
                .map_err(|e| map_err_named(e, &what))?;
            if deleted > 0 {
                scrub(conn, true);
            }
            Ok(deleted)
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        raw::list_tokens(self).await
    }

    /// One `SELECT`, the records decoded off the connection lock (the decoded-token cache is
    /// left alone).
    async fn scan_tokens(&self) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
        self.scan_with(RecordKind::Tokens, |key, bytes, version| {
            let Some(key) = key.into_tokens() else {
                return Ok(None);
            };
            let value = record::decode_tokens(&key, bytes)?;
            Ok(Some((key, Versioned { value, version })))
        })
        .await
    }

    /// One `BEGIN IMMEDIATE` transaction per 1000 records.
    async fn put_tokens_any(
        &self,
        tokens: &[(TokenKey, TokenSet)],
    ) -> Result<Vec<Version>, StoreError> {
        raw::put_tokens_any(self, tokens).await
    }

    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        self.with_read_conn(move |conn, ns| {
            let named = |e| map_err_named(e, "the versions of a binding and its tokens");
            // A read-only (possibly immutable) connection detects no change: always query.
            let stamp = match shared.read_only {
                None => Some((
                    conn.prepare_cached("PRAGMA data_version")
                        .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)))
                        .map_err(named)?,
                    conn.total_changes(),
                )),
                Some(_) => None,
            };
            if stamp.is_some() {
                let cache = shared
                    .versions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if cache.stamp == stamp
                    && let Some((_, b, t)) = cache
                        .entries
                        .get(&key)
                        .and_then(|all| all.iter().find(|(n, _, _)| n == ns))
                {
                    return Ok((b.map(version_of), t.map(version_of)));
                }
            }
            let binding = RecordKey::Binding(key.resource.clone()).storage_key();
            let tokens = RecordKey::Tokens(key.clone()).storage_key();
            // One statement, one row, versions only: no value (and no overflow page) is read.
            let (b, t) = conn
                .prepare_cached(
                    "SELECT (SELECT version FROM records WHERE namespace = ?1 AND key = ?2),
                            (SELECT version FROM records WHERE namespace = ?1 AND key = ?3)",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![ns, binding, tokens], |row| {
                        Ok((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
                    })
                })
                .map_err(named)?;
            if stamp.is_some() {
                // Read after the stamp: at least as new as it, so safe to keep under it.
                let mut cache = shared
                    .versions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if cache.stamp != stamp || cache.entries.len() >= VERSIONS_CACHE_MAX {
                    cache.entries.clear();
                    cache.stamp = stamp;
                }
                let all = cache.entries.entry(key).or_default();
                all.retain(|(n, _, _)| n != ns);
                all.push((ns.to_owned(), b, t));
            }
            Ok((b.map(version_of), t.map(version_of)))
        })
        .await
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.check_writable(|| format!("taking the refresh lease for {key}"))?;
        let key = key.clone();
        self.with_conn(move |conn, ns| {
            let what = format!("refresh lease for {key}");
            let now = now_ms();
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let expires = now.saturating_add(ttl_ms);
            let lease = RefreshLease::new(key.clone(), ttl);
            // One atomic statement: insert a free lease, or take over an expired one; a live
            // lease held by anyone (in any process) leaves the row unchanged.
            let acquired = conn
                .prepare_cached(
                    "INSERT INTO leases (namespace, key, holder, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (namespace, key) DO UPDATE SET
                       holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
                     WHERE leases.expires_at_ms <= ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![ns, key.storage_key(), lease.token(), expires, now])
                })
                .map_err(|e| map_err_named(e, &what))?;
            Ok((acquired > 0).then(|| {
                RefreshLease::from_parts(key, lease.token().to_owned(), ms_to_system_time(expires))
            }))
        })
        .await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.check_writable(|| format!("renewing the refresh lease for {}", lease.key()))?;
        let lease = lease.clone();
        self.with_conn(move |conn, ns| {
            let what = format!("refresh lease for {}", lease.key());
            let now = now_ms();
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let expires = now.saturating_add(ttl_ms);
            // One atomic statement: extend our own lease, or take back a free (expired) one;
            // a live lease of another holder leaves the row unchanged.
            let renewed = conn
                .prepare_cached(
                    "INSERT INTO leases (namespace, key, holder, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (namespace, key) DO UPDATE SET
                       holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
                     WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        ns,
                        lease.key().storage_key(),
                        lease.token(),
                        expires,
                        now
                    ])
                })
                .map_err(|e| map_err_named(e, &what))?;
            Ok((renewed > 0).then(|| {
                RefreshLease::from_parts(
                    lease.key().clone(),
                    lease.token().to_owned(),
                    ms_to_system_time(expires),
                )
            }))
        })
        .await
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        self.check_writable(|| format!("releasing the refresh lease for {}", lease.key()))?;
        let lease = lease.clone();
        self.with_conn(move |conn, ns| {
            let what = format!("refresh lease for {}", lease.key());
            conn.prepare_cached(
                "DELETE FROM leases WHERE namespace = ?1 AND key = ?2 AND holder = ?3",
            )
            .and_then(|mut s| s.execute(params![ns, lease.key().storage_key(), lease.token()]))
            .map(|n| n > 0)
            .map_err(|e| map_err_named(e, &what))
        })
        .await
    }
}

#[async_trait]
impl PendingAuthorizationStore for SqliteStore {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        let key = RecordKey::Pending(pending.state.clone());
        self.check_writable(|| format!("recording {key}"))?;
        let bytes = record::encode_pending(pending)?;
        let expires_at = pending.expires_at.unix_seconds();
        self.with_conn(move |conn, ns| {
            let now = Timestamp::now().unix_seconds();
            // Expired flows free their state; purging them here keeps the table small.
            conn.prepare_cached(
                "DELETE FROM records WHERE namespace = ?1 AND kind = 'pending' AND expires_at <= ?2",
            )
            .and_then(|mut s| s.execute(params![ns, now]))
            .map_err(|e| map_err(e, &key))?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO records (namespace, key, kind, issuer, value, version, expires_at)
                     VALUES (?1, ?2, 'pending', NULL, ?3, ?4, ?5)
                     ON CONFLICT (namespace, key) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![ns, key.storage_key(), bytes, new_version(), expires_at])
                })
                .map_err(|e| map_err(e, &key))?;
            if inserted == 0 {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                });
            }
            Ok(())
        })
        .await
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        // Redeeming deletes the flow: a write.
        self.check_writable(|| format!("redeeming {}", RecordKey::Pending(state.to_owned())))?;
        let state = state.to_owned();
        self.with_conn(move |conn, ns| {
            let key = RecordKey::Pending(state.clone());
            let found: Option<(Vec<u8>, i64)> = conn
                .prepare_cached(
                    "SELECT value, version FROM records WHERE namespace = ?1 AND key = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![ns, key.storage_key()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                })
                .map_err(|e| map_err(e, &key))?;
            let Some((bytes, version)) = found else {
                return Ok(None);
            };
            // Decode before deleting: a corrupt record is reported and left in place.
            let pending = record::decode_pending(&state, &bytes)?;
            // Delete exactly what was read; if another process redeemed it first, it is theirs.
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM records WHERE namespace = ?1 AND key = ?2 AND version = ?3",
                )
                .and_then(|mut s| s.execute(params![ns, key.storage_key(), version]))
                .map_err(|e| map_err(e, &key))?;
            Ok((deleted > 0 && !pending.expires_at.is_past()).then_some(pending))
        })
        .await
    }
}

/// Writes raw bytes as a record, bypassing encoding. For conformance tests that plant corrupt
/// data; not part of the supported API.
#[doc(hidden)]
pub async fn write_raw_record(
    store: &SqliteStore,
    key: &RecordKey,
    bytes: &[u8],
) -> Result<(), StoreError> {
    store
        .put_raw(key.clone(), bytes.to_vec(), Expect::Any)
        .await
        .map(|_| ())
}

// The workspace README's examples use this crate and the core: they are compiled as this crate's
// doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadme;

/// Checkpoints the `-wal` into the main file so replaced or deleted secrets leave no copy
/// behind: `TRUNCATE` (waits for readers up to the busy timeout, then empties the `-wal`) after
/// deletions, `PASSIVE` (never waits) after writes. Best effort: a busy checkpoint is finished
/// by a later one, and the data itself is already committed.
fn scrub(conn: &rusqlite::Connection, truncate: bool) {
    let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
    let _ = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
}
