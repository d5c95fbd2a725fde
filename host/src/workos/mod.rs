//! The WorkOS wire protocol.
//!
//! Owns: signatures ([`signature`]), event envelopes and records ([`event`]),
//! and Actions requests and signed responses ([`action`]).
//! Must not: touch the database, HTTP servers or wasm.

pub mod action;
pub mod event;
pub mod signature;
