//! WorkOS Actions: the two request kinds, and the signed response.
//!
//! Owns: parsing an Actions request body into a typed [`ActionRequest`]
//! (unknown fields tolerated), and building the response body exactly as
//! WorkOS verifies it: key order `object`, `payload`, `signature`; payload key
//! order `timestamp`, `verdict`, `error_message`; compact JSON without escaping
//! non-ASCII; the signature over `"<timestamp>." + <payload bytes>`.
//! Must not: touch the database, HTTP servers or wasm.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::event::{Membership, Organization, User};
use super::signature::{Secret, sign};

/// Longest `error_message` WorkOS accepts, in characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// Which kind of decision WorkOS asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Authentication,
    UserRegistration,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Authentication => "authentication",
            ActionKind::UserRegistration => "user_registration",
        }
    }

    fn response_object(self) -> &'static str {
        match self {
            ActionKind::Authentication => "authentication_action_response",
            ActionKind::UserRegistration => "user_registration_action_response",
        }
    }
}

/// `user_data` of a registration.
#[derive(Debug, Clone, Deserialize)]
pub struct UserData {
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
}

/// The fields both kinds share.
#[derive(Debug, Clone, Deserialize)]
pub struct Client {
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub device_fingerprint: Option<String>,
    pub authentication_method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthenticationContext {
    pub id: String,
    pub user: User,
    pub organization: Option<Organization>,
    pub organization_membership: Option<Membership>,
    #[serde(flatten)]
    pub client: Client,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InvitationRef {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegistrationContext {
    pub id: String,
    pub user_data: UserData,
    pub invitation: Option<InvitationRef>,
    #[serde(flatten)]
    pub client: Client,
}

/// A verified Actions request, typed, with the body it came in.
#[derive(Debug, Clone)]
pub enum ActionRequest {
    Authentication(Box<AuthenticationContext>, String),
    UserRegistration(Box<RegistrationContext>, String),
}

/// Why a (correctly signed) body is not an Actions request.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("the body is valid JSON but not an object, so not an Actions request")]
    NotAnObject,
    #[error(
        "the body is neither an authentication_action_context nor a user_registration_action_context (`object` is {0})"
    )]
    UnknownKind(String),
    #[error("the {kind} is missing a field or has one of the wrong type: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

impl ActionRequest {
    pub fn parse(body: &[u8]) -> Result<ActionRequest, ActionError> {
        #[derive(Deserialize)]
        struct Object<'a> {
            #[serde(borrow)]
            object: Option<&'a RawValue>,
        }
        let text = std::str::from_utf8(body).map_err(|_| ActionError::UnknownKind("not UTF-8 text".into()))?;
        let object = serde_json::from_str::<Object>(text)
            .map_err(|e| match e.classify() {
                // JSON, but an array, a string, a number... (`Object` takes any object).
                serde_json::error::Category::Data => ActionError::NotAnObject,
                _ => ActionError::InvalidJson(e),
            })?
            .object;
        let invalid =
            |kind: &'static str| move |e: serde_json::Error| ActionError::Invalid { kind, reason: e.to_string() };
        match object.map(RawValue::get) {
            Some("\"authentication_action_context\"") => {
                let ctx = serde_json::from_str(text).map_err(invalid("authentication_action_context"))?;
                Ok(ActionRequest::Authentication(Box::new(ctx), text.to_string()))
            }
            Some("\"user_registration_action_context\"") => {
                let ctx = serde_json::from_str(text).map_err(invalid("user_registration_action_context"))?;
                Ok(ActionRequest::UserRegistration(Box::new(ctx), text.to_string()))
            }
            Some(other) => Err(ActionError::UnknownKind(other.chars().take(100).collect())),
            None => Err(ActionError::UnknownKind("missing".into())),
        }
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            ActionRequest::Authentication(..) => ActionKind::Authentication,
            ActionRequest::UserRegistration(..) => ActionKind::UserRegistration,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            ActionRequest::Authentication(ctx, _) => &ctx.id,
            ActionRequest::UserRegistration(ctx, _) => &ctx.id,
        }
    }
}

/// Allow, or deny with a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Allow => "Allow",
            Verdict::Deny(_) => "Deny",
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny(m) => Some(m),
        }
    }
}

/// `s` cut to at most `max` characters (never inside a character).
pub fn cut_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The response body WorkOS verifies, signed at `timestamp_ms`.
pub fn response_body(kind: ActionKind, verdict: &Verdict, timestamp_ms: i64, secret: &Secret) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a> {
        timestamp: i64,
        verdict: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error_message: Option<&'a str>,
    }
    let payload = Payload {
        timestamp: timestamp_ms,
        verdict: verdict.as_str(),
        error_message: verdict.message().map(|m| cut_chars(m, MAX_ERROR_MESSAGE_CHARS)),
    };
    let payload = serde_json::to_string(&payload).expect("a payload always serializes");
    let signature = sign(secret, timestamp_ms, payload.as_bytes());
    // Written by hand so the payload's exact bytes are the ones signed.
    let object = serde_json::to_string(kind.response_object()).expect("a string serializes");
    format!(r#"{{"object":{object},"payload":{payload},"signature":"{signature}"}}"#).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = include_str!("../../../tests/fixtures/authentication-action-context.json");
    const REG: &str = include_str!("../../../tests/fixtures/user-registration-action-context.json");

    #[test]
    fn both_kinds_parse_from_real_bodies() {
        let ActionRequest::Authentication(ctx, raw) = ActionRequest::parse(AUTH.as_bytes()).unwrap() else { panic!() };
        assert_eq!(ctx.user.email.as_deref(), Some("jane@foocorp.com"));
        assert_eq!(ctx.organization.unwrap().name.as_deref(), Some("Foo Corp"));
        assert_eq!(ctx.organization_membership.unwrap().role.unwrap().slug, "member");
        assert_eq!(ctx.client.ip_address.as_deref(), Some("50.141.123.10"));
        assert_eq!(raw, AUTH);
        let ActionRequest::UserRegistration(ctx, _) = ActionRequest::parse(REG.as_bytes()).unwrap() else { panic!() };
        assert_eq!(ctx.user_data.email, "jane@foocorp.com");
        assert_eq!(ctx.invitation.unwrap().id, "01JBVZWH8HJ855YZ5BWHG1WNZN");
    }

    #[test]
    fn other_bodies_are_refused() {
        for body in
            [&b"nope"[..], br#"{"object":"event"}"#, br#"{"id":"x"}"#, br#"{"object":"authentication_action_context"}"#]
        {
            assert!(ActionRequest::parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_response_has_the_exact_shape_and_signature() {
        let secret = Secret::new("sk_action").unwrap();
        let body = response_body(
            ActionKind::UserRegistration,
            &Verdict::Deny("Nein, danke: ß ✓".into()),
            1_735_689_600_000,
            &secret,
        );
        let text = String::from_utf8(body).unwrap();
        let payload = r#"{"timestamp":1735689600000,"verdict":"Deny","error_message":"Nein, danke: ß ✓"}"#;
        let expected_sig = sign(&secret, 1_735_689_600_000, payload.as_bytes());
        assert_eq!(
            text,
            format!(
                r#"{{"object":"user_registration_action_response","payload":{payload},"signature":"{expected_sig}"}}"#
            )
        );
        let allow = String::from_utf8(response_body(ActionKind::Authentication, &Verdict::Allow, 5, &secret)).unwrap();
        assert!(allow.starts_with(
            r#"{"object":"authentication_action_response","payload":{"timestamp":5,"verdict":"Allow"},"signature":""#
        ));
    }

    #[test]
    fn long_messages_are_cut_at_500_characters() {
        let long = "é".repeat(600);
        assert_eq!(cut_chars(&long, 500).chars().count(), 500);
        assert_eq!(cut_chars("short", 500), "short");
    }
}
