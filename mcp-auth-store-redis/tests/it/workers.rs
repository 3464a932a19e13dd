//! The other processes of the multi-process tests: this test binary run again on one ignored
//! test, its worker body.

use std::process::Stdio;

/// Starts this test binary running only the ignored test `test` (its full name,
/// `module::function`) with `env` added, its output captured, killed if dropped.
pub(crate) fn spawn(test: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command.spawn().unwrap()
}
