//! The `turbine` binary's library half: choosing a backend, resolving and loading models.
//! This is the only crate that names a backend.
#![warn(missing_docs)]

pub mod config;
pub mod constraint;
pub mod http;
pub mod loadgen;
pub mod setup;
pub mod speculation;
