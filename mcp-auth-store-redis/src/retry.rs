//! Riding out Redis outages: which failures are retried, with what backoff, and for how long.
//!
//! Every command runs inside one retry budget ([`crate::RedisOptions::retry_budget`]): failures
//! that a restart, a failover or a dropped connection explains (refused, reset, broken pipe,
//! timeouts, `LOADING`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, and on a cluster `MOVED`/`ASK`
//! left over from a moving slot) are retried with a short
//! exponential backoff until the budget is spent; every other failure (a script error, a wrong
//! type, a failed AUTH or ACL check, a refused TLS certificate) is returned at once. The
//! `ConnectionManager` (and the cluster connection) reconnects in the background
//! after a dropped connection; this loop decides when to try again and when to give up, so the
//! manager itself makes a single connection attempt per reconnect.

use std::future::Future;
use std::time::Duration;

use redis::{ErrorKind, RedisError, RedisResult, RetryMethod, ServerErrorKind};
use tokio::time::Instant;

/// The first pause after a transient failure; it doubles up to [`MAX_DELAY`].
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(500);

/// True for a failure that a later attempt may not meet: the server restarting, loading its
/// dataset, failing over, or the connection dropping or timing out.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    if is_tls_failure(e) {
        // A refused certificate (unknown CA, wrong name, expired) fails the same way every time.
        return false;
    }
    match e.kind() {
        // Connection refused/reset/aborted, broken pipe, EOF, connect and response timeouts.
        // Not a permission error on a Unix socket.
        ErrorKind::Io => !matches!(e.retry_method(), RetryMethod::NoRetry),
        // MOVED/ASK reach here only when the cluster connection's own redirections ran out
        // (a slot moving or failing over): the next attempt uses the refreshed slot map.
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        ErrorKind::ClusterConnectionNotFound => true,
        _ => false,
    }
}

/// True for a failed TLS handshake: the server's certificate was refused (or ours was). The
/// `redis` crate reports it as an I/O error around the rustls error and keeps that error
/// private, so this reads rustls's messages (`invalid peer certificate: …`, `received fatal
/// alert: …`, `peer sent no certificates`).
pub(crate) fn is_tls_failure(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Io && {
        let text = e.to_string();
        [
            "peer certificate",
            "fatal alert",
            "peer sent no certificates",
            "invalid dns name",
        ]
        .iter()
        .any(|needle| text.to_ascii_lowercase().contains(needle))
    }
}

/// True when the failed attempt certainly did not reach the server's command loop, so it cannot
/// have been applied: the connection was refused, or the server answered that it cannot run
/// commands yet. Anything else (a reset, a broken pipe, a timeout) may have been applied with
/// only its reply lost.
fn certainly_not_applied(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
        )
}

/// Why [`within`] gave up.
#[derive(Debug)]
pub(crate) struct GaveUp {
    /// The last error.
    pub(crate) error: RedisError,
    /// Some attempt failed in a way that may have been applied on the server with its reply
    /// lost.
    pub(crate) maybe_applied: bool,
}

/// Runs `op` on a clone of `conn` (a connection, or for a cluster's first connection the client)
/// until it succeeds, fails with an error that is not
/// [`is_transient`], or `budget` has passed since the first attempt (one last attempt is made
/// at the deadline). Each attempt is bounded by the connection's connect and response timeouts,
/// so this never waits much longer than `budget` plus one attempt.
///
/// After a dropped connection the `ConnectionManager` starts a reconnect at once, and the next
/// command waits for it. An attempt made after a pause can therefore fail instantly with the
/// outcome of a reconnect started *before* the pause (while the server was still down); such a
/// fast failure is followed by one immediate attempt, which waits for the reconnect that the
/// failure itself just started. So a server that is back is noticed within one pause.
pub(crate) async fn within<C, T, F, Fut>(conn: &C, budget: Duration, op: F) -> Result<T, GaveUp>
where
    C: Clone,
    F: Fn(C) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let deadline = Instant::now() + budget;
    let mut delay = FIRST_DELAY;
    let mut maybe_applied = false;
    let mut fresh_attempt_due = false;
    loop {
        let started = Instant::now();
        let error = match op(conn.clone()).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !is_transient(&error) {
            return Err(GaveUp {
                error,
                maybe_applied,
            });
        }
        maybe_applied |= !certainly_not_applied(&error);
        let now = Instant::now();
        if now >= deadline {
            return Err(GaveUp {
                error,
                maybe_applied,
            });
        }
        if fresh_attempt_due && now - started < FIRST_DELAY {
            fresh_attempt_due = false;
            continue;
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_DELAY);
        fresh_attempt_due = true;
    }
}
