//! A small HTTP/1.1 proxy in front of moto that injects Secrets Manager faults: throttling,
//! 500s and any other error answer, either instead of forwarding the request (nothing applied)
//! or after moto applied it (the answer is lost). One request per connection (moto answers
//! `Connection: close`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// When a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum When {
    /// Instead of forwarding: moto never sees the request.
    Before,
    /// After moto answered: the request was applied, its answer is replaced.
    After,
}

/// The error answer a fault sends.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: &'static str,
}

pub(crate) const THROTTLE: Answer = Answer {
    status: 400,
    code: "ThrottlingException",
    message: "Rate exceeded",
};

pub(crate) const SERVER_ERROR: Answer = Answer {
    status: 500,
    code: "InternalServiceError",
    message: "injected internal error",
};

/// One planned fault: the next `count` requests of operation `op` (any when `None`) get
/// `answer`, at `when`.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub(crate) op: Option<&'static str>,
    pub(crate) when: When,
    pub(crate) answer: Answer,
    pub(crate) count: usize,
}

#[derive(Default)]
struct Plan {
    faults: VecDeque<Fault>,
    /// Every request fails like this, before forwarding, while set.
    outage: Option<Answer>,
    /// Pseudo-random faults: (per-mille probability, state of a xorshift generator).
    random: Option<(u64, u64)>,
}

/// The proxy. Dropping it stops accepting connections.
pub(crate) struct FaultProxy {
    port: u16,
    plan: Arc<Mutex<Plan>>,
    injected: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`).
    pub(crate) async fn start(upstream: &str) -> Self {
        super::assert_loopback(upstream);
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let injected = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let task = {
            let (plan, injected, forwarded) = (
                Arc::clone(&plan),
                Arc::clone(&injected),
                Arc::clone(&forwarded),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let (plan, injected, forwarded, upstream) = (
                        Arc::clone(&plan),
                        Arc::clone(&injected),
                        Arc::clone(&forwarded),
                        upstream.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = serve(client, &upstream, &plan, &injected, &forwarded).await;
                    });
                }
            })
        };
        Self {
            port,
            plan,
            injected,
            forwarded,
            task,
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn push(&self, fault: Fault) {
        self.plan.lock().unwrap().faults.push_back(fault);
    }

    /// Fails every request before forwarding until [`FaultProxy::heal`].
    pub(crate) fn outage(&self, answer: Answer) {
        self.plan.lock().unwrap().outage = Some(answer);
    }

    /// Fails a pseudo-random `per_mille` of requests, half before forwarding and half after,
    /// half throttling and half 500s.
    pub(crate) fn random_faults(&self, per_mille: u64, seed: u64) {
        self.plan.lock().unwrap().random = Some((per_mille, seed.max(1)));
    }

    /// Ends every fault.
    pub(crate) fn heal(&self) {
        let mut plan = self.plan.lock().unwrap();
        plan.faults.clear();
        plan.outage = None;
        plan.random = None;
    }

    /// Faults injected so far.
    pub(crate) fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Requests moto saw so far.
    pub(crate) fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }
}

/// Decides the fault (if any) for a request of `op`.
fn decide(plan: &Mutex<Plan>, op: &str) -> Option<(When, Answer)> {
    let mut plan = plan.lock().unwrap();
    if let Some(answer) = &plan.outage {
        return Some((When::Before, answer.clone()));
    }
    if let Some(i) = plan
        .faults
        .iter()
        .position(|f| f.op.is_none_or(|o| o == op))
    {
        let fault = plan.faults[i].clone();
        if fault.count <= 1 {
            plan.faults.remove(i);
        } else {
            plan.faults[i].count -= 1;
        }
        return Some((fault.when, fault.answer));
    }
    if let Some((per_mille, state)) = plan.random.as_mut() {
        // xorshift64
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        if x % 1000 < *per_mille {
            let when = if (x >> 20) & 1 == 0 {
                When::Before
            } else {
                When::After
            };
            let answer = if (x >> 21) & 1 == 0 {
                THROTTLE
            } else {
                SERVER_ERROR
            };
            return Some((when, answer));
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head and `Content-Length` body).
async fn read_request(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = client.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(buf);
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn operation(request: &[u8]) -> String {
    let end = find(request, b"\r\n\r\n").unwrap_or(request.len());
    String::from_utf8_lossy(&request[..end])
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("x-amz-target").then(|| {
                value
                    .trim()
                    .trim_start_matches("secretsmanager.")
                    .to_owned()
            })
        })
        .unwrap_or_default()
}

fn error_answer(answer: &Answer) -> Vec<u8> {
    let body = format!(
        "{{\"__type\":\"{}\",\"message\":\"{}\"}}",
        answer.code, answer.message
    );
    format!(
        "HTTP/1.1 {} Injected\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        answer.status,
        answer.code,
        body.len()
    )
    .into_bytes()
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    plan: &Mutex<Plan>,
    injected: &AtomicUsize,
    forwarded: &AtomicUsize,
) -> std::io::Result<()> {
    let request = read_request(&mut client).await?;
    if request.is_empty() {
        return Ok(());
    }
    let op = operation(&request);
    let fault = decide(plan, &op);
    if let Some((When::Before, answer)) = &fault {
        injected.fetch_add(1, Ordering::SeqCst);
        client.write_all(&error_answer(answer)).await?;
        return client.shutdown().await;
    }
    let mut moto = TcpStream::connect(upstream).await?;
    moto.write_all(&request).await?;
    let mut response = Vec::new();
    moto.read_to_end(&mut response).await?;
    forwarded.fetch_add(1, Ordering::SeqCst);
    if let Some((When::After, answer)) = &fault {
        injected.fetch_add(1, Ordering::SeqCst);
        client.write_all(&error_answer(answer)).await?;
    } else {
        client.write_all(&response).await?;
    }
    client.shutdown().await
}
