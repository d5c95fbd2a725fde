//! The WorkOS wire protocol.
//!
//! Owns: signatures ([`signature`]), event envelopes and records ([`event`]),
//! Actions requests and signed responses ([`action`]), AuthKit access tokens
//! ([`jwt`]) and the cache of the key sets they are checked with ([`jwks`]).
//! Must not: touch the database, serve HTTP or run wasm; its only I/O is
//! [`jwks`] fetching key sets from the WorkOS API.

pub mod action;
pub mod event;
pub mod jwks;
pub mod jwt;
pub mod signature;
