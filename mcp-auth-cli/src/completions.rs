//! `mcp-auth completions SHELL` and `mcp-auth man`: shell completion scripts and the roff man
//! page, generated from the same clap definition as the parser, printed on stdout for a package
//! or a user to install.

use std::io::Write as _;

use clap::CommandFactory as _;

use crate::{Cli, Failure};

/// The completion script of `shell` for every command and option of `mcp-auth`.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "mcp-auth", &mut script);
    write_stdout(&script)
}

/// The man page of `mcp-auth` (roff), with every subcommand listed.
pub(crate) fn man() -> Result<(), Failure> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| format!("cannot render the man page: {e}"))?;
    write_stdout(&page)
}

/// One write, with a closed stdout (`| head`) reported as an error rather than a panic.
fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::from(format!("cannot write to stdout: {e}")))
}
