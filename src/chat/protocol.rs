//! The wire schema of protocol v1: requests as typed values, replies and events as JSON text.
//!
//! A request is one JSON object in one text frame: `{"type": "...", "id": ..., ...arguments}`.
//! It is parsed in two steps so that a request with bad arguments still gets an error reply
//! that carries its `id`: first into a JSON value (from which the `id` is taken), then into the
//! typed [`Command`].

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Every command of protocol v1 that this server implements.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    /// Create an account.
    #[serde(rename = "register")]
    Register {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// Log in with a password; returns a session token.
    #[serde(rename = "login")]
    Login {
        /// User name.
        user: String,
        /// Password.
        password: String,
        /// Replay messages after this `msg_id`.
        since: Option<i64>,
    },
    /// Authenticate with a session token or a JWT.
    #[serde(rename = "auth")]
    Auth {
        /// The token.
        token: String,
        /// Replay messages after this `msg_id`.
        since: Option<i64>,
    },
    /// Revoke the session token and unauthenticate the connection.
    #[serde(rename = "logout")]
    Logout,
    /// Who am I, and in which groups.
    #[serde(rename = "whoami")]
    Whoami,
    /// Create a group; the creator owns it.
    #[serde(rename = "group.create")]
    GroupCreate {
        /// Group name.
        group: String,
        /// Invitation only.
        #[serde(default)]
        private: bool,
    },
    /// Join a group.
    #[serde(rename = "group.join")]
    GroupJoin {
        /// Group name.
        group: String,
    },
    /// Leave a group.
    #[serde(rename = "group.leave")]
    GroupLeave {
        /// Group name.
        group: String,
    },
    /// Invite a user (clears a ban).
    #[serde(rename = "group.invite")]
    GroupInvite {
        /// Group name.
        group: String,
        /// Who.
        user: String,
    },
    /// Remove a member, optionally banning them.
    #[serde(rename = "group.kick")]
    GroupKick {
        /// Group name.
        group: String,
        /// Who.
        user: String,
        /// Also bar them from rejoining.
        #[serde(default)]
        ban: bool,
    },
    /// Change a member's role; `owner` hands ownership over.
    #[serde(rename = "group.role")]
    GroupRole {
        /// Group name.
        group: String,
        /// Who.
        user: String,
        /// `member`, `admin` or `owner`.
        role: String,
    },
    /// Delete a group with its memberships and history.
    #[serde(rename = "group.delete")]
    GroupDelete {
        /// Group name.
        group: String,
    },
    /// List a group's members.
    #[serde(rename = "group.members")]
    GroupMembers {
        /// Group name.
        group: String,
    },
    /// A page of the public groups and the caller's groups, by name.
    #[serde(rename = "group.list")]
    GroupList {
        /// Page size (default and most: [`GROUP_PAGE`]).
        limit: Option<i64>,
        /// Only groups whose name sorts after this one (the `next` of the previous page).
        after: Option<String>,
    },
    /// Send a message to `@user` or `#group`.
    #[serde(rename = "send")]
    Send {
        /// `@user` or `#group`.
        to: String,
        /// The text.
        text: String,
        /// The sender's key for deduplication of retries.
        client_id: Option<String>,
    },
    /// Tell a conversation that the user is typing; not stored.
    #[serde(rename = "typing")]
    Typing {
        /// `@user` or `#group`.
        to: String,
    },
    /// A page of a conversation's history.
    #[serde(rename = "history")]
    History {
        /// `@user` or `#group`.
        with: String,
        /// Only messages with a smaller msg_id.
        before: Option<i64>,
        /// Page size (default 50, at most 100).
        limit: Option<i64>,
    },
    /// Start an upload: the next `size` bytes of binary frames are the file.
    #[serde(rename = "file.upload")]
    FileUpload {
        /// `@user` or `#group`.
        to: String,
        /// The file's name (metadata only).
        name: String,
        /// Exact size in bytes.
        size: u64,
        /// Media type.
        mime: Option<String>,
    },
    /// Drop the upload in progress.
    #[serde(rename = "file.cancel")]
    FileCancel,
    /// A short-lived signed link to download a file, instead of a token in the URL.
    #[serde(rename = "file.link")]
    FileLink {
        /// The file's id.
        file_id: String,
    },
    /// Replay what was missed since a msg_id, as at login.
    #[serde(rename = "sync")]
    Sync {
        /// The last msg_id the client has.
        since: i64,
    },
}

/// The most groups one `group.list` reply holds, and its page size when none is asked for.
pub const GROUP_PAGE: usize = 100;

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's id, echoed as `re` in the reply.
    pub id: Option<Value>,
    /// What it asks.
    pub command: Command,
}

/// Error codes of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON, unknown type, missing or invalid field.
    BadRequest,
    /// Not logged in, or bad credentials.
    Unauthenticated,
    /// Not allowed.
    Forbidden,
    /// No such user or group.
    NotFound,
    /// Already exists.
    Conflict,
    /// Over a rate limit.
    RateLimited,
    /// Over a size limit.
    TooLarge,
    /// Storage or disk failure.
    Unavailable,
    /// A bug.
    Internal,
}

impl ErrorCode {
    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A refusal: the code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
    /// The upload this error ends, for errors that come after the upload's `ok` (they carry no
    /// `re`: the request already had its one reply).
    pub file_id: Option<String>,
}

impl Failure {
    /// A refusal with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            file_id: None,
        }
    }

    /// The same refusal, naming the upload it ends.
    pub fn for_file(mut self, file_id: &str) -> Failure {
        self.file_id = Some(file_id.to_string());
        self
    }
}

/// Parses a text frame. On failure, the `id` (when one could be read) and the refusal.
pub fn parse(text: &[u8]) -> Result<Request, (Option<Value>, Failure)> {
    let value: Value = serde_json::from_slice(text).map_err(|e| {
        (
            None,
            Failure::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")),
        )
    })?;
    let Value::Object(map) = value else {
        return Err((
            None,
            Failure::new(ErrorCode::BadRequest, "a request is a JSON object"),
        ));
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(v @ Value::String(_)) => Some(v.clone()),
        Some(v @ Value::Number(n)) if n.is_i64() || n.is_u64() => Some(v.clone()),
        Some(_) => {
            return Err((
                None,
                Failure::new(ErrorCode::BadRequest, "id must be a string or an integer"),
            ))
        }
    };
    if !matches!(map.get("type"), Some(Value::String(_))) {
        return Err((id, Failure::new(ErrorCode::BadRequest, "missing \"type\"")));
    }
    match serde_json::from_value::<Command>(Value::Object(map)) {
        Ok(command) => Ok(Request { id, command }),
        Err(e) => Err((id, Failure::new(ErrorCode::BadRequest, e.to_string()))),
    }
}

/// `{"type": "ok", "re": id, ...fields}`.
pub fn ok(id: &Option<Value>, fields: Value) -> String {
    let mut map = match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    map.insert("type".into(), json!("ok"));
    if let Some(id) = id {
        map.insert("re".into(), id.clone());
    }
    Value::Object(map).to_string()
}

/// `{"type": "error", "re": id, "code": ..., "message": ...}`.
pub fn error(id: &Option<Value>, failure: &Failure) -> String {
    let mut map = Map::new();
    map.insert("type".into(), json!("error"));
    if let Some(id) = id {
        map.insert("re".into(), id.clone());
    }
    map.insert("code".into(), json!(failure.code.as_str()));
    map.insert("message".into(), json!(failure.message));
    if let Some(file_id) = &failure.file_id {
        map.insert("file_id".into(), json!(file_id));
    }
    Value::Object(map).to_string()
}

/// An event: `{"type": kind, ...fields}`.
pub fn event(kind: &str, fields: Value) -> String {
    let mut map = match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    map.insert("type".into(), json!(kind));
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_with_ids() {
        let r = parse(br#"{"type":"login","id":7,"user":"a","password":"secret123"}"#).unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(
            r.command,
            Command::Login {
                user: "a".into(),
                password: "secret123".into(),
                since: None
            }
        );
        let r = parse(br#"{"type":"group.create","id":"x","group":"g"}"#).unwrap();
        assert_eq!(
            r.command,
            Command::GroupCreate {
                group: "g".into(),
                private: false
            }
        );
        assert_eq!(parse(br#"{"type":"whoami"}"#).unwrap().id, None);
    }

    #[test]
    fn bad_requests_keep_the_id_when_they_can() {
        let (id, f) = parse(br#"{"type":"login","id":"q1","user":"a"}"#).unwrap_err();
        assert_eq!(id, Some(json!("q1")));
        assert_eq!(f.code, ErrorCode::BadRequest);
        assert!(f.message.contains("password"), "{}", f.message);
        let (id, f) = parse(br#"{"type":"fly","id":3}"#).unwrap_err();
        assert_eq!((id, f.code), (Some(json!(3)), ErrorCode::BadRequest));
        let (id, _) = parse(b"not json").unwrap_err();
        assert_eq!(id, None);
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(br#"{"id":1}"#).is_err());
        assert!(parse(br#"{"type":"whoami","id":{"x":1}}"#).is_err());
        assert!(parse(br#"{"type":"whoami","id":1.5}"#).is_err());
        assert!(parse(br#"{"type":"register","user":5,"password":"x"}"#).is_err());
    }

    #[test]
    fn replies_and_events() {
        let v: Value = serde_json::from_str(&ok(&Some(json!(1)), json!({"user": "a"}))).unwrap();
        assert_eq!(v, json!({"type": "ok", "re": 1, "user": "a"}));
        let v: Value = serde_json::from_str(&ok(&None, Value::Null)).unwrap();
        assert_eq!(v, json!({"type": "ok"}));
        let f = Failure::new(ErrorCode::Forbidden, "no");
        let v: Value = serde_json::from_str(&error(&Some(json!("a")), &f)).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "re": "a", "code": "forbidden", "message": "no"})
        );
        let v: Value =
            serde_json::from_str(&event("group.joined", json!({"group": "g", "user": "u"})))
                .unwrap();
        assert_eq!(v["type"], "group.joined");
    }
}
