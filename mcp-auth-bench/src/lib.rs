//! Shared helpers of the benchmarks `cargo xtask bench` runs from this crate: medians, timing
//! inside a tokio task (where applications call the library), aligned tables, and the JSON
//! reports written under `target/bench/<name>.json`.
//!
//! House style of every benchmark here: three runs, medians of 10 000 calls, a table with the
//! ratio of ours to the cheapest baseline doing the same work. A benchmark checks correctness
//! (the right token, no HTTP request, exactly one refresh), never time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

/// Calls made before timing starts.
pub const WARMUP: usize = 1_000;
/// Timed calls per measurement; the measurement is their median.
pub const SAMPLES: usize = 10_000;
/// Runs of every measurement.
pub const RUNS: usize = 3;

/// The environment variable naming the Redis server of the Redis rows
/// (`redis://127.0.0.1:6391/`, as for the Redis store's tests).
pub const REDIS_URL_VAR: &str = "MCP_AUTH_TEST_REDIS_URL";

/// The median (upper median for an even count) of `samples`.
///
/// # Panics
///
/// When `samples` is empty.
pub fn median<T: Copy + Ord>(mut samples: Vec<T>) -> T {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// The median of `values` (upper median for an even count); `NaN` when empty.
pub fn median_f64(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `d` in microseconds.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `d` in milliseconds.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `ours / baseline`.
pub fn ratio(ours: f64, baseline: f64) -> f64 {
    ours / baseline
}

/// Runs `task` to completion inside a task on a worker thread of `rt` (where applications call
/// the library: a blocking call or `block_in_place` behaves differently there than on the thread
/// that blocks on the runtime), propagating a panic.
pub fn in_task<T, Fut>(rt: &tokio::runtime::Runtime, task: Fut) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    match rt.block_on(rt.spawn(task)) {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(match e.try_into_panic() {
            Ok(payload) => payload,
            Err(e) => Box::new(e.to_string()),
        }),
    }
}

/// The [`Duration`]s of `samples` sequential evaluations of `body`, after `warmup` untimed ones.
/// `body` may `.await` (use it inside an `async` block given to [`in_task`]); its value goes
/// through [`std::hint::black_box`] and is dropped inside the timed region. No closure, no clone
/// per call: what is timed is `body` (and one `Instant::now()`).
///
/// ```
/// let t = mcp_auth_bench::samples_of!(10, 100, { std::hint::black_box(2 + 2) });
/// assert_eq!(t.len(), 100);
/// ```
#[macro_export]
macro_rules! samples_of {
    ($warmup:expr, $samples:expr, $body:expr) => {{
        for _ in 0..$warmup {
            ::std::hint::black_box($body);
        }
        let mut timed = ::std::vec::Vec::with_capacity($samples);
        for _ in 0..$samples {
            let t = ::std::time::Instant::now();
            ::std::hint::black_box($body);
            timed.push(t.elapsed());
        }
        timed
    }};
}

/// The median [`Duration`] of [`samples_of!`] (default [`WARMUP`] and [`SAMPLES`]).
///
/// ```
/// let d = mcp_auth_bench::median_of!(10, 100, { std::hint::black_box(2 + 2) });
/// assert!(d < std::time::Duration::from_secs(1));
/// ```
#[macro_export]
macro_rules! median_of {
    ($body:expr) => {
        $crate::median_of!($crate::WARMUP, $crate::SAMPLES, $body)
    };
    ($warmup:expr, $samples:expr, $body:expr) => {
        $crate::median($crate::samples_of!($warmup, $samples, $body))
    };
}

/// Slices of one measurement interleaved with others: [`interleaved`] runs each slice in a task
/// of its own.
pub type Slice = Pin<Box<dyn Future<Output = Vec<Duration>> + Send>>;

/// Slices per measurement in [`interleaved`].
pub const SLICES: usize = 10;

/// Measures several things alternately, so that load from elsewhere on the machine falls on all
/// of them alike (a ratio of two measurements taken seconds apart measures the load as much as
/// the code): [`SLICES`] rounds, each running one slice of every case in turn (a case makes a
/// slice: typically an `async move` block of [`samples_of!`] with
/// `WARMUP / SLICES, SAMPLES / SLICES`, cloning what it needs once per slice). Returns each
/// case's median over all its slices.
pub fn interleaved(
    rt: &tokio::runtime::Runtime,
    cases: &mut [&mut dyn FnMut() -> Slice],
) -> Vec<Duration> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..SLICES {
        for (case, all) in cases.iter_mut().zip(samples.iter_mut()) {
            all.extend(in_task(rt, case()));
        }
    }
    samples.into_iter().map(median).collect()
}

/// A table printed with aligned columns: the first column left-aligned, the others right-aligned.
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a title line and column headers.
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty, extra cells widen the table).
    pub fn row<S: ToString>(&mut self, cells: &[S]) {
        self.rows
            .push(cells.iter().map(ToString::to_string).collect());
    }

    /// The table as text: the title, the headers, a rule, the rows.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in self.rows.iter().chain([&self.headers]) {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let format_line = |cells: &[String]| {
            let mut out = String::from(" ");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = " ".repeat(w - cell.chars().count());
                if i == 0 {
                    out.push_str(&format!(" {cell}{pad}"));
                } else {
                    out.push_str(&format!("   {pad}{cell}"));
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("\n{}\n", self.title);
        out.push_str(&format_line(&self.headers));
        out.push('\n');
        let rule = widths.iter().sum::<usize>() + 3 * widths.len().saturating_sub(1);
        out.push_str(&format!("  {}\n", "-".repeat(rule)));
        for row in &self.rows {
            out.push_str(&format_line(row));
            out.push('\n');
        }
        out
    }

    /// Prints [`Table::render`] to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the one holding the running benchmark
/// (`target/release/deps/<bench>`), else `target/` of the workspace.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Writes `report` (pretty JSON) to `target/bench/<name>.json` and returns the path.
///
/// # Errors
///
/// The I/O error when `target/bench` cannot be created or the file cannot be written.
pub fn write_json(name: &str, report: &serde_json::Value) -> std::io::Result<PathBuf> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// Writes the report and says where, or why not (a benchmark's figures are already printed).
pub fn report_json(name: &str, report: &serde_json::Value) {
    match write_json(name, report) {
        Ok(path) => println!("written to {}", path.display()),
        Err(e) => println!("could not write target/bench/{name}.json: {e}"),
    }
}

/// The Redis URL from [`REDIS_URL_VAR`], or `None` (after printing that the Redis rows are
/// skipped) when it is unset or empty.
pub fn redis_url() -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            println!(
                "note: {REDIS_URL_VAR} is not set: the Redis rows are skipped (`cargo xtask bench` \
                 starts a redis-server and sets it)"
            );
            None
        }
    }
}

/// Deletes every key matching `pattern` (a `SCAN MATCH` glob, e.g. a benchmark's own namespace
/// `mcp-auth:{<namespace key>}:*`) from the Redis server at `url`; how many were deleted. Never
/// `FLUSHDB`: the server may be shared.
///
/// # Errors
///
/// The [`redis::RedisError`] when `url` is not a Redis URL, the server cannot be reached, or a
/// `SCAN` or `UNLINK` fails; keys deleted before the failure stay deleted.
pub async fn delete_redis_keys(url: &str, pattern: &str) -> redis::RedisResult<usize> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor = 0_u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<usize>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), to pick records in an order no
/// cache predicts without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % (n.max(1) as u64)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_table() {
        assert_eq!(median(vec![3, 1, 2]), 2);
        assert_eq!(median_f64(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        let mut t = Table::new("t", &["a", "bb"]);
        t.row(&["x", "1.0"]);
        let text = t.render();
        assert!(text.contains("  x   1.0"), "{text}");
        let mut r = Rng::new(1);
        assert!((0..100).all(|_| r.below(7) < 7));
    }
}
