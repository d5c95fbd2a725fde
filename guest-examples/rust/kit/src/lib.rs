//! A small kit for authkit-host handlers in Rust.
//!
//! What it gives over the raw bindings of `wit/handler.wit`:
//! - [`bindings!`]: one line that generates a handler's bindings for the world
//!   it implements, sharing the host imports (and their types) with this crate;
//! - [`Table`]: typed documents with serde, `users.insert(&AppUser { .. })`,
//!   `users.find_one::<AppUser>("authId", id)`, and the by-field writes most
//!   handlers need: `upsert_one`, `patch_one`, `delete_one`;
//! - [`indexes!`]: a handler's declared indexes (its `schema` export) in one line;
//! - serde on every record of the WIT (the event, the user, the Actions
//!   contexts, the caller), and [`data`]: an event's `data` decoded into a
//!   serde type, [`WorkosUser`] for `user.*` events;
//! - [`Error`]: one error type for host refusals and JSON, that turns into the
//!   `String` error a handler returns;
//! - [`log`]: `log::info(..)` and friends.
//!
//! Owns: nothing but these conveniences over the generated bindings. Must not:
//! hide what the host does (every call is one host call, or one per page).

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use {serde, wit_bindgen};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "authkit:handler/host",
    // The host's records (users::User, db::Document...) with serde.
    additional_derives: [serde::Serialize, serde::Deserialize],
});

/// The raw host imports, as generated.
pub use self::authkit::handler::{db as raw_db, log as raw_log, types, users};

/// Generates a handler's bindings for `world` (e.g. `"authkit:handler/app-handler"`)
/// of the WIT at `path` (relative to the crate's manifest), reusing this kit's
/// import bindings so [`Table`], [`users`] and the exports' records share types.
/// Then implement the exported `Guest` traits and call `export!(YourType)`.
/// Depend on this crate under its own name, `authkit-guest` (the generated
/// code names it), and on `serde` (its derives on the records name it).
#[macro_export]
macro_rules! bindings {
    ($path:literal, $world:literal) => {
        $crate::wit_bindgen::generate!({
            path: $path,
            world: $world,
            runtime_path: "authkit_guest::wit_bindgen::rt",
            // The exports' records (the event, the Actions contexts, the caller) with serde.
            additional_derives: [authkit_guest::serde::Serialize, authkit_guest::serde::Deserialize],
            with: {
                "authkit:handler/types@0.1.0": authkit_guest::types,
                "authkit:handler/db@0.1.0": authkit_guest::raw_db,
                "authkit:handler/users@0.1.0": authkit_guest::users,
                "authkit:handler/log@0.1.0": authkit_guest::raw_log,
            },
        });
    };
}

/// Implements the `schema` export for a handler type, from its tables and the
/// fields to index: `authkit_guest::indexes!(Handler { USERS => "authId" });`.
/// Use it in a crate whose [`bindings!`] world exports `schema`.
#[macro_export]
macro_rules! indexes {
    ($handler:ty { $($table:expr => $field:literal),* $(,)? }) => {
        impl exports::authkit::handler::schema::Guest for $handler {
            fn indexes() -> ::std::vec::Vec<exports::authkit::handler::schema::Index> {
                ::std::vec![$(exports::authkit::handler::schema::Index {
                    table: $crate::Table::name(&$table).into(),
                    field: $field.into(),
                }),*]
            }
        }
    };
}

/// Why a kit call failed: the host refused it, or JSON did not fit the type.
#[derive(Debug)]
pub enum Error {
    Db(raw_db::Error),
    Users(users::Error),
    Json(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(e) => write!(f, "{e:?}"),
            Error::Users(e) => write!(f, "{e:?}"),
            Error::Json(e) => write!(f, "JSON: {e}"),
        }
    }
}

impl From<raw_db::Error> for Error {
    fn from(e: raw_db::Error) -> Error {
        Error::Db(e)
    }
}

impl From<users::Error> for Error {
    fn from(e: users::Error) -> Error {
        Error::Users(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Json(e.to_string())
    }
}

impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

/// A stored document with its body decoded.
#[derive(Debug, Clone)]
pub struct Doc<T> {
    pub id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub body: T,
}

impl Doc<serde_json::Value> {
    /// The body with the document's id added as `"id"` (for answers to the app).
    pub fn with_id(self) -> serde_json::Value {
        let mut body = self.body;
        if let Some(object) = body.as_object_mut() {
            object.insert("id".into(), self.id.into());
        }
        body
    }
}

/// What [`Table::upsert_one`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    /// No document matched: this new one was stored under this id.
    Inserted(String),
    /// The first matching document (this id) was patched.
    Patched(String),
}

fn decode<T: DeserializeOwned>(doc: raw_db::Document) -> Result<Doc<T>, Error> {
    Ok(Doc {
        body: serde_json::from_str(&doc.body)?,
        id: doc.id,
        created_at: doc.created_at,
        updated_at: doc.updated_at,
    })
}

/// One of the handler's document tables.
#[derive(Debug, Clone, Copy)]
pub struct Table(pub &'static str);

impl Table {
    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.0
    }

    /// Stores `body` (which must serialize to a JSON object); returns its id.
    pub fn insert(&self, body: &impl Serialize) -> Result<String, Error> {
        Ok(raw_db::insert(self.0, &serde_json::to_string(body)?)?)
    }

    pub fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<Doc<T>>, Error> {
        raw_db::get(self.0, id)?.map(decode).transpose()
    }

    /// Shallow merge of `fields` into the document (a `null` field is removed).
    pub fn patch(&self, id: &str, fields: &impl Serialize) -> Result<(), Error> {
        raw_db::patch(self.0, id, &serde_json::to_string(fields)?)?;
        Ok(())
    }

    /// Replaces the whole body.
    pub fn replace(&self, id: &str, body: &impl Serialize) -> Result<(), Error> {
        raw_db::replace(self.0, id, &serde_json::to_string(body)?)?;
        Ok(())
    }

    /// `false` if there was no such document.
    pub fn delete(&self, id: &str) -> Result<bool, Error> {
        Ok(raw_db::delete(self.0, id)?)
    }

    /// Every document whose declared-index `field` equals `value`, in id order
    /// (one host call per page of 100).
    pub fn find<T: DeserializeOwned>(&self, field: &str, value: &impl Serialize) -> Result<Vec<Doc<T>>, Error> {
        let value = serde_json::to_string(value)?;
        let (mut out, mut cursor) = (Vec::new(), None);
        loop {
            let page = raw_db::find(self.0, field, &value, 100, cursor.as_deref())?;
            for doc in page.documents {
                out.push(decode(doc)?);
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// The first document whose `field` equals `value`, if any (one host call).
    pub fn find_one<T: DeserializeOwned>(&self, field: &str, value: &impl Serialize) -> Result<Option<Doc<T>>, Error> {
        let page = raw_db::find(self.0, field, &serde_json::to_string(value)?, 1, None)?;
        page.documents.into_iter().next().map(decode).transpose()
    }

    /// Patches the first document whose `field` equals `value` with `body`, or
    /// inserts `body` if there is none (two host calls).
    pub fn upsert_one(&self, field: &str, value: &impl Serialize, body: &impl Serialize) -> Result<Upserted, Error> {
        match self.first_id(field, value)? {
            Some(id) => self.patch(&id, body).map(|()| Upserted::Patched(id)),
            None => self.insert(body).map(Upserted::Inserted),
        }
    }

    /// Patches the first document whose `field` equals `value`; `false` if there is none.
    pub fn patch_one(&self, field: &str, value: &impl Serialize, fields: &impl Serialize) -> Result<bool, Error> {
        let Some(id) = self.first_id(field, value)? else { return Ok(false) };
        self.patch(&id, fields)?;
        Ok(true)
    }

    /// Deletes the first document whose `field` equals `value`; `false` if there is none.
    pub fn delete_one(&self, field: &str, value: &impl Serialize) -> Result<bool, Error> {
        let Some(id) = self.first_id(field, value)? else { return Ok(false) };
        self.delete(&id)
    }

    fn first_id(&self, field: &str, value: &impl Serialize) -> Result<Option<String>, Error> {
        let page = raw_db::find(self.0, field, &serde_json::to_string(value)?, 1, None)?;
        Ok(page.documents.into_iter().next().map(|doc| doc.id))
    }
}

/// An event's `data` (the JSON WorkOS sent) as `T`.
pub fn data<T: DeserializeOwned>(data: &str) -> Result<T, Error> {
    Ok(serde_json::from_str(data)?)
}

/// The `data` of a `user.*` event, as WorkOS sends it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WorkosUser {
    pub id: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub profile_picture_url: Option<String>,
    pub external_id: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// Log lines, kept with the event or decision.
pub mod log {
    use super::raw_log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}
