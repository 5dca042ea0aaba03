//! The public data types of the store: options, queue attributes, subscriptions, requests and
//! the messages handed back. Field names are those of docs/message-service.md, because
//! the API layer serialises these types as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::clock::{Clock, SystemClock};
use super::error::StoreError;
use crate::ids::MessageId;

/// Most messages in one `send_batch`, `receive`, `peek` or `delete_batch` (the batch limit
/// of MNS).
pub const MAX_BATCH: usize = 16;
/// Most outputs in one `publish_batch` unit: bounds one transaction's size.
pub const MAX_PUBLISH_UNIT: usize = 1024;
/// Longest long-poll wait, seconds (`wait_seconds` 0–30, as in MNS).
pub const MAX_WAIT_SECONDS: u64 = 30;
/// Longest tag, characters (as in MNS).
pub const MAX_TAG_CHARS: usize = 16;
/// Most attributes on one message: "a small string map".
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key, bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 128;
/// Longest attribute value, bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;
/// Highest `maximum_message_size` a server may allow (MNS stops at 64 KiB; sluice allows up to
/// 1 MiB).
pub const MAX_MESSAGE_SIZE_CAP: u32 = 1 << 20;
/// Default per-message priority (1–16, 1 highest, default 8, as in MNS).
pub const DEFAULT_PRIORITY: u8 = 8;

/// How hard SQLite syncs each commit (also `sluice serve --synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Synchronous {
    /// `synchronous=FULL`: nothing acknowledged is lost even on power loss (the default).
    #[default]
    Full,
    /// `synchronous=NORMAL`: survives a process crash, may lose the last commits on power loss;
    /// faster for one-row commits, the same with group commit.
    Normal,
}

/// Options of [`Store::open`](super::Store::open).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Node id stamped into every message id, so stores of several processes never collide.
    pub node_id: u16,
    /// Sync level of commits.
    pub synchronous: Synchronous,
    /// The clock of every time decision ([`SystemClock`] unless a test injects another).
    pub clock: Arc<dyn Clock>,
    /// Run `PRAGMA quick_check` at open and refuse a damaged file (default true).
    pub quick_check: bool,
    /// Highest `maximum_message_size` a queue may set, and the body limit of topic publishes
    /// (default 65536, at most [`MAX_MESSAGE_SIZE_CAP`]).
    pub message_size_cap: u32,
    /// How long a statement waits for a lock held by another connection before failing with
    /// [`StoreError::Busy`].
    pub busy_timeout: std::time::Duration,
    /// Most requests merged into one commit.
    pub max_batch_requests: usize,
    /// Refuse writes ([`StoreError::StorageFull`]) once the database file would pass this size
    /// (SQLite `max_page_count`), so a runaway backlog cannot fill the disk; `None` = no limit.
    /// Space freed by deletes is reused, so the store recovers without a restart.
    pub max_db_bytes: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            node_id: 0,
            synchronous: Synchronous::Full,
            clock: Arc::new(SystemClock::new()),
            quick_check: true,
            message_size_cap: 65536,
            busy_timeout: std::time::Duration::from_secs(5),
            max_batch_requests: 1024,
            max_db_bytes: None,
        }
    }
}

/// The attributes of a queue, spelled as in docs/message-service.md (JSON, TOML and errors alike).
///
/// Missing fields take their defaults when deserialised, so a partial JSON object is a valid
/// request; [`QueueAttributes::validate`] checks the ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueAttributes {
    /// Seconds a sent message stays invisible before its first delivery (0–604800, default 0).
    pub delay_seconds: u32,
    /// Largest body in bytes (1024–65536 or the server cap, default 65536).
    pub maximum_message_size: u32,
    /// Seconds a message is kept before it is removed and counted (60–604800, default 345600).
    pub message_retention_period: u32,
    /// Seconds a received message stays invisible (1–43200, default 30).
    pub visibility_timeout: u32,
    /// Default long-poll wait of a receive, seconds (0–30, default 0).
    pub polling_wait_seconds: u32,
    /// Queue that receives messages whose dequeue count would pass `max_receive_count`.
    pub dead_letter_queue: Option<String>,
    /// Receives allowed before the move to `dead_letter_queue` (1–1000); set with it.
    pub max_receive_count: Option<u32>,
}

impl Default for QueueAttributes {
    fn default() -> Self {
        QueueAttributes {
            delay_seconds: 0,
            maximum_message_size: 65536,
            message_retention_period: 345_600,
            visibility_timeout: 30,
            polling_wait_seconds: 0,
            dead_letter_queue: None,
            max_receive_count: None,
        }
    }
}

/// Checks `value` against `lo..=hi`, naming the attribute and its range when it is outside.
pub(crate) fn check_range(
    field: &'static str,
    value: u64,
    lo: u64,
    hi: u64,
) -> Result<(), StoreError> {
    if value < lo || value > hi {
        return Err(StoreError::invalid(
            field,
            format!("{value} is out of range: {field} must be between {lo} and {hi}"),
        ));
    }
    Ok(())
}

impl QueueAttributes {
    /// Checks every attribute against its range (with the server's `message_size_cap`),
    /// returning the first one out of range, by its name.
    pub fn validate(&self, message_size_cap: u32) -> Result<(), StoreError> {
        check_range("delay_seconds", self.delay_seconds.into(), 0, 604_800)?;
        check_range(
            "maximum_message_size",
            self.maximum_message_size.into(),
            1024,
            message_size_cap.clamp(1024, MAX_MESSAGE_SIZE_CAP).into(),
        )?;
        check_range(
            "message_retention_period",
            self.message_retention_period.into(),
            60,
            604_800,
        )?;
        check_range(
            "visibility_timeout",
            self.visibility_timeout.into(),
            1,
            43_200,
        )?;
        check_range(
            "polling_wait_seconds",
            self.polling_wait_seconds.into(),
            0,
            MAX_WAIT_SECONDS,
        )?;
        match (&self.dead_letter_queue, self.max_receive_count) {
            (None, None) => {}
            (Some(q), Some(n)) => {
                validate_name("dead_letter_queue", q)?;
                check_range("max_receive_count", n.into(), 1, 1000)?;
            }
            (Some(_), None) => {
                return Err(StoreError::invalid(
                    "max_receive_count",
                    "max_receive_count (1-1000) is required with dead_letter_queue",
                ))
            }
            (None, Some(_)) => {
                return Err(StoreError::invalid(
                    "dead_letter_queue",
                    "dead_letter_queue is required with max_receive_count",
                ))
            }
        }
        Ok(())
    }
}

/// A change to a queue's attributes: the ones given are set, the others keep their value (or
/// take their defaults, for a new queue). One type for every face that creates a queue or sets
/// its attributes: the `/v1` API's JSON body (`PUT`/`PATCH /v1/queues/{queue}`), the MNS
/// `<Queue>` document (converted by the MNS face, whose elements are text), the `[[queue]]`
/// tables of `sluice.toml`, and the flags of `sluice queue create` and `queue set`.
///
/// In JSON, `"dead_letter_queue": null` clears dead-lettering; an absent field is unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct QueueAttributesPatch {
    /// Seconds before a new message becomes visible (0–604800).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<u32>,
    /// Largest body in bytes (1024–65536, or up to the server's cap).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_message_size: Option<u32>,
    /// Seconds a message is kept (60–604800).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_retention_period: Option<u32>,
    /// Seconds a received message stays invisible (1–43200).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout: Option<u32>,
    /// Default long-poll wait in seconds (0–30).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_wait_seconds: Option<u32>,
    /// Queue that gets messages received more than --max-receive-count times.
    #[arg(long, num_args = 1, requires = "max_receive_count")]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_letter_queue: Option<Option<String>>,
    /// Receives allowed before a message moves to the dead-letter queue (1–1000).
    #[arg(long, num_args = 1)]
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_receive_count: Option<Option<u32>>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl QueueAttributesPatch {
    /// The given attributes over `base` (the defaults for a new queue, the current attributes
    /// for a change). Clearing `dead_letter_queue` also clears `max_receive_count` unless the
    /// patch names one (which validation then refuses).
    pub fn apply(self, mut a: QueueAttributes) -> QueueAttributes {
        if let Some(v) = self.delay_seconds {
            a.delay_seconds = v;
        }
        if let Some(v) = self.maximum_message_size {
            a.maximum_message_size = v;
        }
        if let Some(v) = self.message_retention_period {
            a.message_retention_period = v;
        }
        if let Some(v) = self.visibility_timeout {
            a.visibility_timeout = v;
        }
        if let Some(v) = self.polling_wait_seconds {
            a.polling_wait_seconds = v;
        }
        if let Some(v) = self.dead_letter_queue {
            if v.is_none() && self.max_receive_count.is_none() {
                a.max_receive_count = None;
            }
            a.dead_letter_queue = v;
        }
        if let Some(v) = self.max_receive_count {
            a.max_receive_count = v;
        }
        a
    }

    /// The attributes of a new queue: the given ones over the defaults.
    pub fn attributes(self) -> QueueAttributes {
        self.apply(QueueAttributes::default())
    }

    /// True when no attribute is given.
    pub fn is_empty(&self) -> bool {
        *self == QueueAttributesPatch::default()
    }
}

/// The longest topic, queue or subscription name.
pub const MAX_NAME_LEN: usize = 120;

/// Checks a topic, queue or subscription name: 1–120 characters, ASCII letters, digits and `-`,
/// starting with a letter or digit (as in MNS). `field` names the argument in the error.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), StoreError> {
    let ok_len = (1..=MAX_NAME_LEN).contains(&name.len());
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_first {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            format!(
                "`{}` is not a valid name: 1-120 characters, letters, digits and `-`, starting \
                 with a letter or digit",
                name.escape_debug()
            ),
        ))
    }
}

/// Checks a tag (≤ 16 characters) and an attribute map (small; no CR, LF or NUL anywhere, since
/// tags and attributes end up in HTTP headers of pushes, where they could inject headers).
pub(crate) fn validate_tag_and_attributes(
    tag: Option<&str>,
    attributes: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    if let Some(tag) = tag {
        if tag.chars().count() > MAX_TAG_CHARS || tag.is_empty() {
            return Err(StoreError::invalid(
                "tag",
                format!("a tag has 1 to {MAX_TAG_CHARS} characters"),
            ));
        }
        if has_cr_lf_or_nul(tag) {
            return Err(StoreError::invalid("tag", "CR, LF and NUL are not allowed"));
        }
        if !tag.chars().all(crate::mns_xml::xml_char) {
            return Err(StoreError::invalid(
                "tag",
                "control characters are not allowed (the MNS face and XML pushes carry the tag \
                 as XML text, which cannot hold them)",
            ));
        }
    }
    validate_attributes(attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// CR, LF and NUL would end a header line of a push, or the header block.
fn has_cr_lf_or_nul(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Checks attributes given as (key, value) pairs: at most [`MAX_ATTRIBUTES`], keys of 1 to
/// [`MAX_ATTRIBUTE_KEY_BYTES`] bytes, values of at most [`MAX_ATTRIBUTE_VALUE_BYTES`], and no
/// CR, LF or NUL anywhere.
fn validate_attributes<'a>(
    pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), StoreError> {
    if pairs.len() > MAX_ATTRIBUTES {
        return Err(StoreError::invalid(
            "attributes",
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    for (k, v) in pairs {
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES || v.len() > MAX_ATTRIBUTE_VALUE_BYTES
        {
            return Err(StoreError::invalid(
                "attributes",
                format!(
                    "attribute keys have 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes, values at most \
                     {MAX_ATTRIBUTE_VALUE_BYTES}"
                ),
            ));
        }
        if has_cr_lf_or_nul(k) || has_cr_lf_or_nul(v) {
            return Err(StoreError::invalid(
                "attributes",
                "CR, LF and NUL are not allowed in attributes",
            ));
        }
        if !k.chars().all(crate::mns_xml::xml_char) {
            return Err(StoreError::invalid(
                "attributes",
                "control characters are not allowed in attribute keys (the MNS face carries \
                 them as XML names of properties); values may hold them",
            ));
        }
    }
    Ok(())
}

/// Where a subscription delivers.
///
/// HTTP subscriptions keep their per-message delivery state in their own table referencing the
/// shared body rows (`store::push`), so they change no queue row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Endpoint {
    /// A sluice queue, by name; it must exist when the subscription is created.
    Queue(String),
    /// An HTTP(S) endpoint pushed to by the `deliver` stage.
    Http(super::push::HttpPush),
}

/// What a subscription is: its endpoint and filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Where matching messages go.
    pub endpoint: Endpoint,
    /// Only messages with exactly this tag match; `None` matches all.
    #[serde(default)]
    pub filter_tag: Option<String>,
    /// Deliver the body as base64 text, for MNS SDK consumers that keep their default decoding
    /// (docs/message-service.md, "A message").
    #[serde(default)]
    pub base64_body: bool,
}

impl SubscriptionSpec {
    /// A subscription delivering every message to `queue`.
    pub fn queue(queue: impl Into<String>) -> SubscriptionSpec {
        SubscriptionSpec {
            endpoint: Endpoint::Queue(queue.into()),
            filter_tag: None,
            base64_body: false,
        }
    }
}

/// A message published to a topic.
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    /// The body, stored and delivered exactly as given.
    pub body: Bytes,
    /// Optional tag (≤ 16 characters), matched by subscription filter tags.
    pub tag: Option<String>,
    /// Small string map (source topic, device, rule, ingest time, ...).
    pub attributes: BTreeMap<String, String>,
}

/// The acknowledgement of a committed publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The message id (the same in every queue it reached).
    #[serde(serialize_with = "ser_id")]
    pub id: MessageId,
    /// MD5 of the body, 32 uppercase hex characters.
    pub body_md5: String,
    /// Commit-time clock reading, ms.
    pub enqueue_time_ms: u64,
    /// How many queue subscriptions received it.
    pub queues: u32,
    /// How many HTTP subscriptions will push it (their pending rows are in the same commit).
    pub pushes: u32,
}

/// A message sent straight to a queue.
#[derive(Debug, Clone, Default)]
pub struct SendRequest {
    /// The body, stored and returned exactly as given.
    pub body: Bytes,
    /// Overrides the queue's `delay_seconds` (0–604800).
    pub delay_seconds: Option<u32>,
    /// 1–16, 1 highest; default 8.
    pub priority: Option<u8>,
    /// Optional tag (≤ 16 characters).
    pub tag: Option<String>,
    /// Small string map.
    pub attributes: BTreeMap<String, String>,
}

/// The acknowledgement of a committed send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sent {
    /// The message id.
    #[serde(serialize_with = "ser_id")]
    pub id: MessageId,
    /// MD5 of the body, 32 uppercase hex characters.
    pub body_md5: String,
    /// Commit-time clock reading, ms.
    pub enqueue_time_ms: u64,
    /// When it first becomes visible (enqueue time plus delay), ms.
    pub next_visible_time_ms: u64,
}

/// Where a dead-lettered message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterOrigin {
    /// The queue it was moved out of (for a push that ran out of retries: the topic).
    pub source_queue: String,
    /// For a push that ran out of retries: the HTTP subscription of `source_queue` (the topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subscription: Option<String>,
    /// Its id there (the id is kept in the dead-letter queue too).
    pub original_id: String,
    /// Its dequeue count when moved.
    pub dequeue_count: u32,
    /// When it was first enqueued in the source queue, ms.
    pub original_enqueue_time_ms: u64,
    /// The last delivery error, when one is known (push deliveries).
    pub last_error: Option<String>,
}

/// A message's attributes, kept as the JSON object text they are stored as: a receive hands
/// them on to its answer as they are, instead of building and freeing a map per message (parsing
/// them was ~7 % of the store writer's time while draining a queue), and a rule's output is
/// written as that text at once (building a map per output was ~15 % of a rule thread's time).
///
/// Every `Attributes` holds checked attributes: built by [`Attributes::from_pairs`], which
/// checks them as a send's map is checked, or read back from the store, which stored only
/// checked ones.
#[derive(Debug, Clone, Default)]
pub struct Attributes(Option<Box<serde_json::value::RawValue>>);

impl Attributes {
    /// From (key, value) pairs with distinct keys, checked like a send's attribute map (size,
    /// no CR, LF or NUL: they would end a push header). No pairs make no attributes.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Attributes, StoreError> {
        validate_attributes(pairs.iter().copied())?;
        if pairs.is_empty() {
            return Ok(Attributes(None));
        }
        if let Some((key, _)) = pairs
            .iter()
            .enumerate()
            .find_map(|(i, (k, _))| pairs[..i].iter().find(|(seen, _)| seen == k))
        {
            return Err(StoreError::invalid(
                "attributes",
                format!("attribute `{}` is given twice", key.escape_debug()),
            ));
        }
        /// Serialises the pairs as one JSON object, with no map in between.
        struct Object<'a>(&'a [(&'a str, &'a str)]);
        impl Serialize for Object<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        serde_json::value::to_raw_value(&Object(pairs))
            .map(|raw| Attributes(Some(raw)))
            .map_err(|e| StoreError::Internal(e.to_string()))
    }

    /// The stored JSON text, `None` when there are no attributes.
    pub(crate) fn json(&self) -> Option<&str> {
        self.0.as_ref().map(|raw| raw.get())
    }

    /// From stored JSON text; checked to be JSON (not parsed into a map).
    pub fn from_json(text: String) -> Result<Attributes, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(|raw| Attributes(Some(raw)))
    }

    /// The attributes as a map, for the few that need one (MNS user properties, push headers).
    /// Stored attributes that are not a string map (never written by sluice) read as empty.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0
            .as_ref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default()
    }

    /// One attribute's value.
    pub fn get(&self, name: &str) -> Option<String> {
        self.to_map().remove(name)
    }
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Attributes) -> bool {
        self.to_map() == other.to_map()
    }
}

impl Eq for Attributes {}

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(s),
            None => BTreeMap::<String, String>::new().serialize(s),
        }
    }
}

/// A message as received or peeked from a queue.
///
/// Serialises with the field names of docs/message-service.md, "A message"; the body becomes
/// `body` when it is UTF-8 and `body_base64` otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message id.
    pub id: MessageId,
    /// The body exactly as sent or published.
    pub body: Bytes,
    /// MD5 of the body, 32 uppercase hex characters.
    pub body_md5: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Attributes.
    pub attributes: Attributes,
    /// 1–16, 1 highest.
    pub priority: u8,
    /// When it entered this queue, ms.
    pub enqueue_time_ms: u64,
    /// When it was first received from this queue, ms.
    pub first_dequeue_time_ms: Option<u64>,
    /// When it becomes (or became) visible again, ms.
    pub next_visible_time_ms: u64,
    /// How many times it was received from this queue.
    pub dequeue_count: u32,
    /// The handle for delete / change visibility; `None` for peeked messages.
    pub receipt_handle: Option<String>,
    /// Set when the message was moved here as a dead letter.
    pub dead_letter: Option<DeadLetterOrigin>,
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id.to_string())?;
        match std::str::from_utf8(&self.body) {
            Ok(text) => m.serialize_entry("body", text)?,
            Err(_) => {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.body);
                m.serialize_entry("body_base64", &b64)?
            }
        }
        m.serialize_entry("body_md5", &self.body_md5)?;
        m.serialize_entry("tag", &self.tag)?;
        m.serialize_entry("attributes", &self.attributes)?;
        m.serialize_entry("priority", &self.priority)?;
        m.serialize_entry("enqueue_time_ms", &self.enqueue_time_ms)?;
        m.serialize_entry("first_dequeue_time_ms", &self.first_dequeue_time_ms)?;
        m.serialize_entry("next_visible_time_ms", &self.next_visible_time_ms)?;
        m.serialize_entry("dequeue_count", &self.dequeue_count)?;
        m.serialize_entry("receipt_handle", &self.receipt_handle)?;
        if let Some(origin) = &self.dead_letter {
            m.serialize_entry("dead_letter", origin)?;
        }
        m.end()
    }
}

/// The answer to a visibility change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VisibilityChanged {
    /// The new handle; the old one stops working.
    pub receipt_handle: String,
    /// When the message becomes visible again, ms.
    pub next_visible_time_ms: u64,
}

/// A queue with its attributes, counts and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Its attributes.
    pub attributes: QueueAttributes,
    /// Creation time, ms.
    pub create_time_ms: u64,
    /// Visible messages (receivable now).
    pub active_messages: u64,
    /// Received messages whose visibility timeout has not ended (in flight).
    pub inactive_messages: u64,
    /// Messages sent with a delay that have never been visible yet.
    pub delayed_messages: u64,
    /// Age of the oldest message in the queue, ms; `None` when empty.
    pub oldest_message_age_ms: Option<u64>,
    /// Messages removed because they outlived `message_retention_period` (since creation).
    pub expired_total: u64,
    /// Messages moved out to the dead-letter queue (since creation).
    pub dead_lettered_total: u64,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Creation time, ms.
    pub create_time_ms: u64,
    /// Number of subscriptions.
    pub subscriptions: u32,
}

/// A subscription of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionInfo {
    /// The topic.
    pub topic: String,
    /// Subscription name.
    pub name: String,
    /// Endpoint, filter and format.
    #[serde(flatten)]
    pub spec: SubscriptionSpec,
    /// Creation time, ms.
    pub create_time_ms: u64,
}

fn ser_id<S: serde::Serializer>(id: &MessageId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Where [`Store::open`](super::Store::open) keeps its files.
#[derive(Debug, Clone)]
pub(crate) struct StorePaths {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub lock: PathBuf,
}

impl StorePaths {
    pub fn new(dir: &std::path::Path) -> StorePaths {
        StorePaths {
            dir: dir.to_path_buf(),
            db: dir.join("sluice.db"),
            lock: dir.join("sluice.lock"),
        }
    }
}

/// The MD5 of a body, as MNS reports it.
pub(crate) fn md5_of(body: &[u8]) -> [u8; 16] {
    <md5::Md5 as md5::Digest>::digest(body).into()
}

/// Upper-case hex, as MNS answers a body's MD5. Written out here because `hex::encode_upper`
/// goes through a char iterator, which cost the writer 5 % of its time at full load.
pub(crate) fn md5_hex(md5: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(md5.len() * 2);
    for b in md5 {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_from_pairs_are_one_json_object_checked_like_a_map() {
        let a = Attributes::from_pairs(&[("rule", "r\"1"), ("device_name", "dév")]).unwrap();
        assert_eq!(a.json(), Some(r#"{"rule":"r\"1","device_name":"dév"}"#));
        assert_eq!(
            a.to_map(),
            BTreeMap::from([
                ("device_name".to_string(), "dév".to_string()),
                ("rule".to_string(), "r\"1".to_string()),
            ])
        );
        assert_eq!(Attributes::from_pairs(&[]).unwrap().json(), None);
        let refused = |pairs: &[(&str, &str)]| {
            let e = Attributes::from_pairs(pairs).unwrap_err();
            assert_eq!(e.field(), Some("attributes"), "{e}");
            e.to_string()
        };
        assert!(refused(&[("k", "v\r\nX-Evil: 1")]).contains("CR, LF"));
        assert!(refused(&[("", "v")]).contains("keys have 1 to"));
        let long = "x".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1);
        assert!(refused(&[("k", &long)]).contains("values at most"));
        assert!(refused(&[("k", "1"), ("j", "2"), ("k", "3")]).contains("`k` is given twice"));
        let keys: Vec<String> = (0..=MAX_ATTRIBUTES).map(|i| format!("k{i}")).collect();
        let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert!(refused(&many).contains("at most"));
    }
}
