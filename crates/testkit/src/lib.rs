//! Test helpers shared by deskpool's integration tests.

pub mod proxy;
pub mod vcsim;
