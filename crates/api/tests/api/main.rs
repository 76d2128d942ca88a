//! Integration tests of the HTTP API against a real PostgreSQL (`#[sqlx::test]` gives each
//! test its own migrated database; needs DATABASE_URL). One binary for all of them.

mod common;

mod access;
mod claims;
mod floor;
mod fuzz;
mod gauges;
mod input;
mod limits;
mod logs;
mod ops;
mod pools;
mod tokens;
mod ui;
