//! Test helpers shared by deskpool's integration tests.

pub mod vcsim;
