//! WorkOS event envelopes and the typed records the host keeps in its own tables.
//!
//! Owns: parsing a webhook body into an [`Event`], deciding which events touch the
//! directory tables ([`SyncAction`]), decoding users, organizations and memberships,
//! and the per-subject ordering key. Must not: touch the database or HTTP.
//! Unknown fields are tolerated everywhere: WorkOS adds fields over time.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::clock;

/// Why a (correctly signed) body is not an event we can accept.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("the body is not a WorkOS event: {0}")]
    NotAnEvent(&'static str),
    /// An envelope field of the wrong type, or given twice: serde's own
    /// account, which names what it found and where.
    #[error("the body is not a WorkOS event: {0}")]
    BadField(String),
    #[error("the event's data is not a valid {kind}: {reason}")]
    InvalidData { kind: &'static str, reason: String },
}

/// A parsed event envelope. `data` is kept as the exact JSON text WorkOS sent:
/// only the directory events are decoded further (see [`Event::sync_action`]),
/// and handlers receive it as text.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub data: Box<RawValue>,
    /// `created_at` of the envelope in unix ms, when present and well formed.
    pub created_at_ms: Option<i64>,
    /// The ordering key: events with the same subject are applied one at a time,
    /// oldest first. Events about a user (including memberships, sessions and
    /// authentications, which carry `user_id`) share the user's subject.
    pub subject: String,
    /// What the event does to the directory tables, decoded once by `parse`.
    action: SyncAction,
}

/// Longest event id or type we accept; WorkOS ids are about 30 characters.
const MAX_ID_LEN: usize = 256;

/// The envelope as it is read: fields borrow from the body where they can, and
/// `data` is not parsed into a tree (ingest runs this for every webhook).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
}

/// The two `data` fields the ordering key looks at.
#[derive(Deserialize)]
struct SubjectFields<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
}

impl Event {
    /// Parses and validates a webhook body. Directory events (`user.*`,
    /// `organization.*`, `organization_membership.*`) must carry a decodable record,
    /// so a malformed one is refused at the door instead of failing in the worker.
    pub fn parse(body: &[u8]) -> Result<Event, EventError> {
        if body.iter().find(|b| !b.is_ascii_whitespace()).is_none_or(|&b| b != b'{') {
            return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(e) => EventError::InvalidJson(e),
                Ok(_) => EventError::NotAnEvent("the body is not a JSON object"),
            });
        }
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => EventError::BadField(e.to_string()),
            _ => EventError::InvalidJson(e),
        })?;
        let id = envelope.id.ok_or(EventError::NotAnEvent("no string `id`"))?;
        let event = envelope.event.ok_or(EventError::NotAnEvent("no string `event`"))?;
        if id.is_empty() || id.len() > MAX_ID_LEN || event.is_empty() || event.len() > MAX_ID_LEN {
            return Err(EventError::NotAnEvent("`id` and `event` must be 1 to 256 characters"));
        }
        let data = envelope.data.ok_or(EventError::NotAnEvent("no `data` object"))?;
        if !data.get().starts_with('{') {
            return Err(EventError::NotAnEvent("`data` is not an object"));
        }
        let created_at_ms = match envelope.created_at {
            None => None,
            Some(s) => Some(
                clock::parse_rfc3339_ms(&s).ok_or(EventError::NotAnEvent("`created_at` is not an RFC 3339 time"))?,
            ),
        };
        let action = decode_action(&event, data)?;
        // A user event's subject is its record's id, which `decode_action` has
        // just read: `data` is not read a third time for it.
        let subject = match action.user_id() {
            Some(user) => format!("user:{user}"),
            None => subject_of(&event, &id, data),
        };
        Ok(Event {
            id: id.into_owned(),
            event: event.into_owned(),
            data: data.to_owned(),
            created_at_ms,
            subject,
            action,
        })
    }

    /// What this event does to the directory tables, with its record decoded.
    pub fn sync_action(&self) -> &SyncAction {
        &self.action
    }
}

/// What an event of type `event` with this `data` does to the directory tables.
fn decode_action(event: &str, data: &RawValue) -> Result<SyncAction, EventError> {
    let Some((kind, verb)) = event.rsplit_once('.') else {
        return Ok(SyncAction::None);
    };
    let kind = match kind {
        "user" => RecordKind::User,
        "organization" => RecordKind::Organization,
        "organization_membership" => RecordKind::Membership,
        _ => return Ok(SyncAction::None),
    };
    match verb {
        "created" | "updated" => Ok(SyncAction::Upsert(Box::new(Record::decode(kind, data)?))),
        "deleted" => {
            let id = record_id(kind, data)?;
            Ok(SyncAction::Delete { kind, id })
        }
        _ => Ok(SyncAction::None),
    }
}

/// The ordering key of event `event_id` of type `event` (see [`Event::subject`](Event)).
fn subject_of(event: &str, event_id: &str, data: &RawValue) -> String {
    // `data` is an object (checked by `parse`); fields of another type count as absent.
    let fields = serde_json::from_str::<SubjectFields>(data.get()).unwrap_or(SubjectFields { id: None, user_id: None });
    let id = fields.id.filter(|s| !s.is_empty());
    let user_id = fields.user_id.filter(|s| !s.is_empty());
    let kind = event.rsplit_once('.').map_or(event, |(kind, _)| kind);
    match (kind, id, user_id) {
        ("user", Some(id), _) => format!("user:{id}"),
        (_, _, Some(user)) => format!("user:{user}"),
        ("organization", Some(id), _) => format!("organization:{id}"),
        // Anything else has no ordering constraint beyond itself.
        _ => format!("event:{event_id}"),
    }
}

fn record_id(kind: RecordKind, data: &RawValue) -> Result<String, EventError> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    match serde_json::from_str::<IdOnly>(data.get()).map_err(|_| no_id(kind))?.id {
        Some(id) if valid_id(&id) => Ok(id.into_owned()),
        _ => Err(no_id(kind)),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN
}

fn no_id(kind: RecordKind) -> EventError {
    EventError::InvalidData { kind: kind.name(), reason: "no string `id`".into() }
}

/// The directory tables the host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    User,
    Organization,
    Membership,
}

impl RecordKind {
    /// The name used in tombstones and messages (the WorkOS `object` value).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::User => "user",
            RecordKind::Organization => "organization",
            RecordKind::Membership => "organization_membership",
        }
    }
}

#[derive(Debug, Clone)]
pub enum SyncAction {
    /// The event does not touch the directory tables.
    None,
    /// Boxed: a decoded record is far larger than the other variants.
    Upsert(Box<Record>),
    Delete {
        kind: RecordKind,
        id: String,
    },
}

impl SyncAction {
    /// The user a `user.*` event is about (its record's validated id).
    fn user_id(&self) -> Option<&str> {
        match self {
            SyncAction::Upsert(record) => match record.as_ref() {
                Record::User(user) => Some(&user.id),
                _ => None,
            },
            SyncAction::Delete { kind: RecordKind::User, id } => Some(id),
            _ => None,
        }
    }
}

/// A decoded directory record. The raw object is the event's `data`.
#[derive(Debug, Clone)]
pub enum Record {
    User(User),
    Organization(Organization),
    Membership(Membership),
}

impl Record {
    fn decode(kind: RecordKind, data: &RawValue) -> Result<Record, EventError> {
        let text = data.get();
        let decoded = match kind {
            RecordKind::User => serde_json::from_str(text).map(Record::User),
            RecordKind::Organization => serde_json::from_str(text).map(Record::Organization),
            RecordKind::Membership => serde_json::from_str(text).map(Record::Membership),
        };
        // A record without a usable `id` is refused as `record_id` says, whatever else is wrong with it.
        let record = match decoded {
            Ok(record) if valid_id(record.id()) => record,
            Ok(_) => return Err(no_id(kind)),
            Err(e) => {
                record_id(kind, data)?;
                return Err(EventError::InvalidData { kind: kind.name(), reason: e.to_string() });
            }
        };
        // Timestamps must parse, or the stale-update guard could not be applied.
        for (name, ts) in record.timestamps() {
            if let Some(ts) = ts
                && clock::parse_rfc3339_ms(ts).is_none()
            {
                return Err(EventError::InvalidData {
                    kind: kind.name(),
                    reason: format!("`{name}` is not an RFC 3339 time"),
                });
            }
        }
        Ok(record)
    }

    fn id(&self) -> &str {
        match self {
            Record::User(u) => &u.id,
            Record::Organization(o) => &o.id,
            Record::Membership(m) => &m.id,
        }
    }

    fn timestamps(&self) -> Vec<(&'static str, Option<&str>)> {
        let (created, updated) = match self {
            Record::User(u) => (&u.created_at, &u.updated_at),
            Record::Organization(o) => (&o.created_at, &o.updated_at),
            Record::Membership(m) => (&m.created_at, &m.updated_at),
        };
        let mut out = vec![("created_at", created.as_deref()), ("updated_at", updated.as_deref())];
        if let Record::User(u) = self {
            out.push(("last_sign_in_at", u.last_sign_in_at.as_deref()));
        }
        out
    }

    /// The record's `updated_at` in unix ms, if it has one.
    pub fn updated_at_ms(&self) -> Option<i64> {
        self.timestamps()[1].1.and_then(clock::parse_rfc3339_ms)
    }
}

/// A WorkOS user object (`data` of `user.*` events). Every documented field;
/// The store keeps the whole object too, including fields added after this was written.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
    pub profile_picture_url: Option<String>,
    pub last_sign_in_at: Option<String>,
    pub locale: Option<String>,
    pub external_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// A WorkOS organization object (`organization.*` events).
#[derive(Debug, Clone, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: Option<String>,
    pub allow_profiles_outside_organization: Option<bool>,
    pub domains: Option<Vec<Value>>,
    pub external_id: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// A role reference as memberships carry it.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleRef {
    pub slug: String,
}

/// A WorkOS organization membership object (`organization_membership.*` events).
#[derive(Debug, Clone, Deserialize)]
pub struct Membership {
    pub id: String,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub organization_name: Option<String>,
    pub status: Option<String>,
    pub role: Option<RoleRef>,
    pub roles: Option<Vec<RoleRef>>,
    pub directory_managed: Option<bool>,
    pub custom_attributes: Option<Map<String, Value>>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER_FIXTURE: &str = include_str!("../../../tests/fixtures/user.json");

    fn envelope(event: &str, data: &str) -> Vec<u8> {
        format!(r#"{{"object":"event","id":"event_1","event":"{event}","data":{data},"created_at":"2025-01-01T00:00:00.000Z","extra":1}}"#)
            .into_bytes()
    }

    #[test]
    fn a_user_created_event_decodes_every_documented_field() {
        let event = Event::parse(&envelope("user.created", USER_FIXTURE)).unwrap();
        assert_eq!(event.created_at_ms, Some(1_735_689_600_000));
        let SyncAction::Upsert(record) = event.sync_action() else { panic!() };
        let Record::User(user) = &**record else { panic!() };
        assert_eq!(user.email.as_deref(), Some("test01@example.com"));
        assert_eq!(user.email_verified, Some(true));
        assert_eq!(user.locale.as_deref(), Some("en-US"));
        assert_eq!(user.metadata.as_ref().unwrap()["key"], "value");
        assert_eq!(event.subject, "user:user_01H5JQDV7R7ATEYZDEG0W5PRYS");
    }

    #[test]
    fn bodies_that_are_not_events_are_refused() {
        let cases: &[&[u8]] = &[
            b"not json",
            b"[1,2]",
            br#"{"event":"user.created","data":{}}"#,
            br#"{"id":"e","data":{}}"#,
            br#"{"id":7,"event":"user.created","data":{}}"#,
            br#"{"id":"e","event":"x.y"}"#,
            br#"{"id":"e","event":"x.y","data":[]}"#,
            br#"{"id":"","event":"x.y","data":{}}"#,
            br#"{"id":"e","event":"x.y","data":{},"created_at":"yesterday"}"#,
        ];
        for body in cases {
            assert!(Event::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn directory_events_need_a_decodable_record() {
        assert!(Event::parse(&envelope("user.updated", r#"{"email":"a@b.c"}"#)).is_err());
        assert!(Event::parse(&envelope("user.updated", r#"{"id":"u","email_verified":"yes"}"#)).is_err());
        assert!(Event::parse(&envelope("user.updated", r#"{"id":"u","updated_at":"soon"}"#)).is_err());
        // A trimmed delete with only the id is fine.
        let deleted = Event::parse(&envelope("user.deleted", r#"{"id":"u"}"#)).unwrap();
        assert!(matches!(deleted.sync_action(), SyncAction::Delete { kind: RecordKind::User, .. }));
        // Other event types are accepted whatever their data.
        let other = Event::parse(&envelope("dsync.user.created", r#"{"whatever":[1]}"#)).unwrap();
        assert!(matches!(other.sync_action(), SyncAction::None));
    }

    #[test]
    fn subjects_group_events_about_the_same_user() {
        let subject = |event: &str, data: &str| Event::parse(&envelope(event, data)).unwrap().subject;
        assert_eq!(subject("user.deleted", r#"{"id":"u1"}"#), "user:u1");
        assert_eq!(subject("user.updated", r#"{"id":"u\u00311","email":"a@b.c"}"#), "user:u11");
        // A stray field of another type does not take a user event out of its user's order.
        assert_eq!(subject("user.created", r#"{"id":"u1","user_id":5}"#), "user:u1");
        assert_eq!(subject("organization_membership.created", r#"{"id":"om","user_id":"u1"}"#), "user:u1");
        assert_eq!(subject("session.created", r#"{"id":"s","user_id":"u1"}"#), "user:u1");
        assert_eq!(subject("organization.updated", r#"{"id":"o1"}"#), "organization:o1");
        assert_eq!(subject("email_verification.created", r#"{"id":"x"}"#), "event:event_1");
    }
}
