//! What happens to an event after its signature is verified.
//!
//! Owns: [`ingest`] (group commit into the inbox before the acknowledgement),
//! [`sync`] (what one event does to the directory tables) and [`worker`] (claiming
//! due events, applying them in order, retrying with backoff, dead-lettering).
//! Must not: parse HTTP or know about signatures.

pub mod ingest;
pub mod sync;
pub mod worker;
