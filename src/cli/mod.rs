//! The `keyscope` command line: `serve` runs the server; every other command is a gRPC
//! client of a running keyscope (`--server`, `--token`, or `KEYSCOPE_SERVER`,
//! `KEYSCOPE_TOKEN`). Human output by default, `--json` for machines. Exit codes: 0 success
//! (or allowed), 1 error, 2 usage error, 3 denied (`check`).

mod args;
mod client;
mod output;
mod principals;
mod run;

pub use args::{Cli, Command};
pub use run::run;
