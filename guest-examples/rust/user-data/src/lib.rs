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

wit_bindgen::generate!({
    path: "../../../wit",
    world: "authkit:handler/full-handler",
});

use authkit::handler::{db, log, users};
use exports::authkit::handler::actions::{AuthenticationContext, Guest as Actions, RegistrationContext, Verdict};
use exports::authkit::handler::events::{Event, Guest as Events};
use exports::authkit::handler::queries::{Caller, Guest as Queries};
use exports::authkit::handler::schema::{Guest as Schema, Index};
use serde_json::json;

struct Handler;

impl Schema for Handler {
    fn indexes() -> Vec<Index> {
        vec![
            Index { table: "users".into(), field: "authId".into() },
            Index { table: "todoLists".into(), field: "userId".into() },
        ]
    }
}

impl Events for Handler {
    fn handle(event: Event) -> Result<(), String> {
        let Some(user) = &event.user else {
            log::log(log::Level::Info, &format!("{} {}: nothing to do", event.event_type, event.id));
            return Ok(());
        };
        match event.event_type.as_str() {
            "user.created" => created(&user.id),
            "user.updated" => updated(&user.id),
            "user.deleted" => deleted(&user.id),
            _ => Ok(()),
        }
    }
}

impl Actions for Handler {
    fn authenticate(ctx: AuthenticationContext) -> Verdict {
        match find_app_user(&ctx.user.id) {
            Ok(Some(doc)) if is_banned(&doc.body) => Verdict::Deny("This account has been suspended.".into()),
            Ok(_) => Verdict::Allow,
            // Could not read the app's table: let the host apply its fallback.
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
        match name.as_str() {
            "my-todo-lists" => {
                let caller = caller.ok_or("sign in to see your todo lists")?;
                Ok(json!({ "lists": todo_lists_of(&caller.user.id)? }).to_string())
            }
            other => Err(format!("there is no query {other:?}; this handler answers my-todo-lists")),
        }
    }
}

/// Every todo list of the user, oldest first, each with its id.
fn todo_lists_of(user_id: &str) -> Result<Vec<serde_json::Value>, String> {
    let (mut lists, mut cursor) = (Vec::new(), None);
    loop {
        let page = db::find("todoLists", "userId", &json!(user_id).to_string(), 100, cursor.as_deref())
            .map_err(|e| format!("{e:?}"))?;
        for doc in page.documents {
            let mut list: serde_json::Value = serde_json::from_str(&doc.body).map_err(|e| e.to_string())?;
            list["id"] = json!(doc.id);
            lists.push(list);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(lists),
        }
    }
}

fn is_banned(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|doc| doc["banned"] == json!(true))
}

/// The app's view of a WorkOS user.
fn app_fields(user: &users::User) -> serde_json::Value {
    let first = user.first_name.as_deref().unwrap_or_default();
    let last = user.last_name.as_deref().unwrap_or_default();
    json!({ "email": user.email, "name": format!("{first} {last}").trim() })
}

fn created(id: &str) -> Result<(), String> {
    let Some(user) = users::get(id).map_err(|e| format!("{e:?}"))? else {
        // Deleted before this (late) create was handled: nothing to keep.
        log::log(log::Level::Info, &format!("user {id} is already deleted"));
        return Ok(());
    };
    let fields = app_fields(&user);
    if let Some(existing) = find_app_user(id)? {
        db::patch("users", &existing.id, &fields.to_string()).map_err(|e| format!("{e:?}"))?;
        return Ok(());
    }
    let mut doc = fields;
    doc["authId"] = json!(id);
    db::insert("users", &doc.to_string()).map_err(|e| format!("{e:?}"))?;
    let first = user.first_name.as_deref().unwrap_or("Your");
    let list = json!({ "name": format!("{first}'s Todo List"), "userId": id });
    db::insert("todoLists", &list.to_string()).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn updated(id: &str) -> Result<(), String> {
    let Some(existing) = find_app_user(id)? else {
        log::log(log::Level::Warn, &format!("User not found: {id}"));
        return Ok(());
    };
    let Some(user) = users::get(id).map_err(|e| format!("{e:?}"))? else {
        return Ok(());
    };
    db::patch("users", &existing.id, &app_fields(&user).to_string()).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn deleted(id: &str) -> Result<(), String> {
    let Some(existing) = find_app_user(id)? else {
        log::log(log::Level::Warn, &format!("User not found: {id}"));
        return Ok(());
    };
    db::delete("users", &existing.id).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn find_app_user(id: &str) -> Result<Option<db::Document>, String> {
    let page = db::find("users", "authId", &json!(id).to_string(), 1, None).map_err(|e| format!("{e:?}"))?;
    Ok(page.documents.into_iter().next())
}

export!(Handler);
