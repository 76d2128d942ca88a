//! The pieces of the `deskpool` binary, as a library so `main` only wires and tests can reach
//! the same code: configuration, logging, database connection, and the subcommands.

pub mod check;
pub mod config;
pub mod db;
pub mod logging;
pub mod serve;
pub mod tls;
pub mod token;
