//! What happens to a verified WorkOS request.
//!
//! Owns: [`ingest`] (group commit into the inbox before the acknowledgement),
//! [`sync`] (what one event does to the directory tables), [`worker`] (claiming
//! due events, applying them in order with the handler, retrying with backoff,
//! dead-lettering), [`actions`] (deciding an Actions request in time),
//! [`queries`] (answering an app's read-only query) and [`retention`]
//! (deleting done events once they are old).
//! Must not: parse HTTP or know about signatures.

pub mod actions;
pub mod ingest;
pub mod queries;
pub mod retention;
pub mod sync;
pub mod worker;

use crate::runtime::GuestUser;
use crate::workos::event::User;

/// A WorkOS user as the WIT `user` record.
pub fn guest_user(u: User) -> GuestUser {
    GuestUser {
        id: u.id,
        email: u.email,
        email_verified: u.email_verified,
        first_name: u.first_name,
        last_name: u.last_name,
        name: u.name,
        profile_picture_url: u.profile_picture_url,
        last_sign_in_at: u.last_sign_in_at,
        locale: u.locale,
        external_id: u.external_id,
        metadata: serde_json::Value::Object(u.metadata.unwrap_or_default()).to_string(),
        created_at: u.created_at,
        updated_at: u.updated_at,
    }
}
