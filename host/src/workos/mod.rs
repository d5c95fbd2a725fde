//! The WorkOS wire protocol.
//!
//! Owns: signatures ([`signature`]) and event envelopes and records ([`event`]).
//! Must not: touch the database, HTTP servers or wasm.

pub mod event;
pub mod signature;
