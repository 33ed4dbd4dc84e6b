//! The harness modules; everything public is re-exported at the crate root.

pub(crate) mod cluster;
pub(crate) mod database;
pub(crate) mod guest;
pub(crate) mod ledger;
pub(crate) mod names;
pub(crate) mod pgbouncer;
pub(crate) mod process;
pub(crate) mod proxy;
pub(crate) mod require;
