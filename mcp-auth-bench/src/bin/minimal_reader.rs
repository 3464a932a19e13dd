//! The baseline of the `token_process` benchmark: the least a process can do to read a stored
//! token. `minimal_reader DB NAMESPACE KEY` opens the SQLite file of an `mcp-auth` store with
//! rusqlite, SELECTs the value of the row (`NAMESPACE`, `KEY`) and prints its length in bytes. No
//! decoding, no checks, no runtime: the floor under `mcp-auth token URL`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, namespace, key] = args.as_slice() else {
        eprintln!("usage: minimal_reader DB NAMESPACE KEY");
        return ExitCode::from(2);
    };
    let value = rusqlite::Connection::open(db).and_then(|conn| {
        conn.query_row(
            "SELECT value FROM records WHERE namespace = ?1 AND key = ?2",
            [namespace, key],
            |row| row.get::<_, Vec<u8>>(0),
        )
    });
    match value {
        Ok(value) => {
            println!("{}", value.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("minimal_reader: {e}");
            ExitCode::FAILURE
        }
    }
}
