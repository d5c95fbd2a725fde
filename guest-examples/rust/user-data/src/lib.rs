//! The reference integration's "User data" and "Actions" examples as one
//! authkit-host handler.
//!
//! Events: it keeps the app's own `users` table (indexed by `authId`, the
//! WorkOS user id) in step with `user.created`, `user.updated` and
//! `user.deleted`, warning when an update or delete finds no app user, and gives
//! every new user a `todoLists` document named after their first name.
//!
//! Actions: registrations with a `@gmail.com` address are denied, as in the
//! reference; sign-ins are allowed, except for a user whose app `users`
//! document says `"banned": true`.
//!
//! Queries: `my-todo-lists` answers the signed-in caller's todo lists
//! (`POST /query/my-todo-lists` with the user's AuthKit access token), like
//! the reference's `getAuthUser` plus a query on the user's id. Without a
//! caller it is an error for the app.
//!
//! The host has already brought its own users table up to date with the event
//! (and it ignores stale updates and users deleted before a late create), so
//! this handler reads the user from there: whatever order WorkOS delivers the
//! events in, the app's table ends with the newest data.
//!
//! Written with the `authkit-guest` kit (`../kit`): the bindings and the
//! declared indexes in one line each, typed documents with serde, and by-field
//! writes (`upsert_one`, `patch_one`, `delete_one`).

authkit_guest::bindings!("../../../wit", "authkit:handler/full-handler");

use authkit_guest::{Doc, Error, Table, Upserted, log, users};
use exports::authkit::handler::actions::{AuthenticationContext, Guest as Actions, RegistrationContext, Verdict};
use exports::authkit::handler::events::{Event, Guest as Events};
use exports::authkit::handler::queries::{Caller, Guest as Queries};
use serde::{Deserialize, Serialize};
use serde_json::json;

const USERS: Table = Table("users");
const TODO_LISTS: Table = Table("todoLists");

/// A document of the app's `users` table.
#[derive(Serialize, Deserialize)]
struct AppUser {
    #[serde(rename = "authId")]
    auth_id: String,
    email: Option<String>,
    name: String,
    /// Set by the app; sign-ins of a banned user are denied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    banned: bool,
}

/// The one field of an app user that sign-ins look at.
#[derive(Deserialize)]
struct BanFlag {
    #[serde(default)]
    banned: bool,
}

#[derive(Serialize, Deserialize)]
struct TodoList {
    name: String,
    #[serde(rename = "userId")]
    user_id: String,
}

struct Handler;

authkit_guest::indexes!(Handler { USERS => "authId", TODO_LISTS => "userId" });

impl Events for Handler {
    fn handle(event: Event) -> Result<(), String> {
        let Some(user) = &event.user else {
            log::info(&format!("{} {}: nothing to do", event.event_type, event.id));
            return Ok(());
        };
        Ok(match event.event_type.as_str() {
            "user.created" => created(&user.id),
            "user.updated" => updated(&user.id),
            "user.deleted" => deleted(&user.id),
            _ => Ok(()),
        }?)
    }
}

impl Actions for Handler {
    fn authenticate(ctx: AuthenticationContext) -> Verdict {
        // Only `banned` matters here: a document that lacks the other fields
        // (written by the app, or by an older version) still decides.
        match USERS.find_one::<BanFlag>("authId", &ctx.user.id) {
            Ok(Some(doc)) if doc.body.banned => Verdict::Deny("This account has been suspended.".into()),
            Ok(_) => Verdict::Allow,
            // Could not read the users table: let the host apply its fallback.
            Err(e) => panic!("cannot read the users table: {e}"),
        }
    }

    fn register_user(ctx: RegistrationContext) -> Verdict {
        if ctx.user_data.email.to_ascii_lowercase().ends_with("@gmail.com") {
            return Verdict::Deny("Gmail accounts are not allowed".into());
        }
        Verdict::Allow
    }
}

impl Queries for Handler {
    fn run(name: String, _args_json: String, caller: Option<Caller>) -> Result<String, String> {
        if name != "my-todo-lists" {
            return Err(format!("there is no query {name:?}; this handler answers my-todo-lists"));
        }
        let caller = caller.ok_or("sign in to see your todo lists")?;
        let lists = TODO_LISTS.find("userId", &caller.user.id)?.into_iter().map(Doc::with_id);
        Ok(json!({ "lists": lists.collect::<Vec<_>>() }).to_string())
    }
}

/// The app's view of a WorkOS user. As a patch it leaves `banned` alone.
fn app_user(user: &users::User) -> AppUser {
    let first = user.first_name.as_deref().unwrap_or_default();
    let last = user.last_name.as_deref().unwrap_or_default();
    let name = format!("{first} {last}").trim().to_string();
    AppUser { auth_id: user.id.clone(), email: user.email.clone(), name, banned: false }
}

fn created(id: &str) -> Result<(), Error> {
    let Some(user) = users::get(id)? else {
        // Deleted before this (late) create was handled: nothing to keep.
        log::info(&format!("user {id} is already deleted"));
        return Ok(());
    };
    if let Upserted::Inserted(_) = USERS.upsert_one("authId", &id, &app_user(&user))? {
        let first = user.first_name.as_deref().unwrap_or("Your");
        TODO_LISTS.insert(&TodoList { name: format!("{first}'s Todo List"), user_id: id.to_string() })?;
    }
    Ok(())
}

fn updated(id: &str) -> Result<(), Error> {
    // A user the host no longer has was deleted after this update: nothing to do.
    let Some(user) = users::get(id)? else { return Ok(()) };
    if !USERS.patch_one("authId", &id, &app_user(&user))? {
        log::warn(&format!("User not found: {id}"));
    }
    Ok(())
}

fn deleted(id: &str) -> Result<(), Error> {
    if !USERS.delete_one("authId", &id)? {
        log::warn(&format!("User not found: {id}"));
    }
    Ok(())
}

export!(Handler);
