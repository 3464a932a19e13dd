//! No secret reaches a `tracing` field or message: a whole login, refresh, migration and logout
//! run with a TRACE subscriber capturing everything, then the capture is searched for every
//! token, secret, code and verifier the authorization servers issued.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::common::*;
use mcp_auth_core::{Expect, IssuerId, Timestamp, TokenKey};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_trace() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let as1 = auth_server(|_| {}).await;
    let as2 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(store.clone());
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource(&mcp));
    let current = store.get_tokens(&key).await.unwrap().unwrap();
    let mut stale = current.value.clone();
    stale.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(&key, &stale, Expect::Version(current.version))
        .await
        .unwrap();
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    mcp.set_authorization_servers(vec![as2.clone()]);
    assert_eq!(call_with_recovery(&auth, &mcp).await.unwrap(), 200);
    auth.logout(&resource(&mcp)).await.unwrap();

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("authorize"),
        "the engine emitted no spans at all:\n{text}"
    );
    let mut secrets: Vec<String> = as1.issued_tokens();
    secrets.extend(as2.issued_tokens());
    for server in [&as1, &as2] {
        for c in server.registrations() {
            secrets.extend(c.client_secret);
        }
        for r in server.requests() {
            for field in [
                "code",
                "code_verifier",
                "refresh_token",
                "client_secret",
                "token",
            ] {
                secrets.extend(r.form.get(field).cloned());
            }
            secrets.extend(r.query.get("state").cloned());
            secrets.extend(r.query.get("code_challenge").cloned());
        }
    }
    assert!(
        secrets.len() > 10,
        "too few secrets collected to mean anything"
    );
    for secret in secrets {
        assert!(
            !text.contains(&secret),
            "a secret appears in the trace output"
        );
    }
}
