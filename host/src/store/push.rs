//! HTTP push subscriptions: what a subscription is (URL, timeout, retry strategy, signing),
//! what the delivery workers claim and report, and the wakers between the store and them. The
//! store pushes every message to every HTTP subscription at least once, on its retry schedule,
//! across restarts; how each backend keeps that state is described with it
//! ([`super::sqlite::push_state`], `jetstream::push`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::error::StoreError;
use super::types::{validate_name, Message};
use super::{Backend, Result, Store};

/// Longest push timeout a subscription may set, seconds.
pub const MAX_PUSH_TIMEOUT_SECONDS: u32 = 60;
/// Push timeout when the subscription does not set one, seconds.
pub const DEFAULT_PUSH_TIMEOUT_SECONDS: u32 = 5;
/// Most requests in flight to one subscription when it does not set `max_concurrency`: enough
/// to keep a healthy local endpoint busy over keep-alive connections, few enough that a dead
/// endpoint ties up little.
pub const DEFAULT_PUSH_CONCURRENCY: u32 = 32;
/// Highest `max_concurrency` a subscription may set.
pub const MAX_PUSH_CONCURRENCY: u32 = 256;
/// Spacing of overdue retries at open (released one by one, not all at once).
pub const OVERDUE_SPACING_MS: u64 = 100;
/// Overdue retries of one subscription are spread over at most this window at open.
pub const OVERDUE_WINDOW_MS: u64 = 60_000;
/// Default grace period of a secret rotation: the old secret keeps signing for a day, so
/// receivers can roll their configuration.
pub const DEFAULT_ROTATION_GRACE_SECONDS: u32 = 86_400;
/// Most dead letters one list or redrive call handles.
pub const MAX_DEAD_LETTER_PAGE: usize = 1000;

/// How the body of a push is shaped (docs/message-service.md, "HTTP push").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContentFormat {
    /// The message body as is; id and tag in `x-mns-message-id` / `x-mns-message-tag`.
    Simplified,
    /// An MNS JSON notification object.
    Json,
    /// An MNS `<Notification>` XML document (MNS's default, so it is ours).
    #[default]
    Xml,
}

/// When failed pushes are retried (docs/message-service.md, "Retry strategies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotifyStrategy {
    /// Up to 3 retries, each after a random 10–20 s (MNS's default, so it is ours).
    #[default]
    BackoffRetry,
    /// Up to 176 retries: 1, 2, 4, ..., 256 s, then 512 s (about one day in all).
    ExponentialDecayRetry,
}

/// How each push of a subscription is signed (docs/message-service.md, "Signing").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SigningMode {
    /// Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`),
    /// HMAC-SHA256 with the subscription's secret. The default, and what a subscription stored
    /// without a mode has.
    #[default]
    StandardWebhooks,
    /// Alibaba Cloud MNS's push signature: `Authorization` holds base64 RSA-SHA1 over the MNS
    /// string-to-sign, `x-mns-signing-cert-url` the base64 URL of sluice's signing certificate.
    Mns,
    /// Both header sets on every push.
    Both,
}

impl SigningMode {
    /// Its name in the API, the CLI and the stored spec.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningMode::StandardWebhooks => "standard-webhooks",
            SigningMode::Mns => "mns",
            SigningMode::Both => "both",
        }
    }

    /// Parses `standard-webhooks`, `mns` or `both` (any case; `_` for `-`).
    pub fn parse(s: &str) -> Option<SigningMode> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "standard-webhooks" => Some(SigningMode::StandardWebhooks),
            "mns" => Some(SigningMode::Mns),
            "both" => Some(SigningMode::Both),
            _ => None,
        }
    }

    /// Whether pushes carry the Standard Webhooks headers.
    pub fn standard_webhooks(self) -> bool {
        matches!(self, SigningMode::StandardWebhooks | SigningMode::Both)
    }

    /// Whether pushes carry the MNS signature.
    pub fn mns(self) -> bool {
        matches!(self, SigningMode::Mns | SigningMode::Both)
    }
}

/// The endpoint of an HTTP subscription and how it is pushed to.
///
/// Stored in the subscription's spec (shown by `show`/`list`); the signing secret is not part of
/// it, so it is never shown there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPush {
    /// `http://` or `https://` URL the messages are POSTed to.
    pub url: String,
    /// The retry schedule.
    #[serde(default)]
    pub strategy: NotifyStrategy,
    /// The body format.
    #[serde(default)]
    pub format: ContentFormat,
    /// An attempt that has not answered 2xx within this many seconds failed (1–60, default 5).
    #[serde(default = "default_push_timeout")]
    pub push_timeout_seconds: u32,
    /// Queue that receives messages whose schedule ran out; without it they are dropped,
    /// counted and logged.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// Most requests in flight to this endpoint (1–256, default 32).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// How pushes are signed; absent in specs stored before modes existed, which keep
    /// Standard Webhooks.
    #[serde(default)]
    pub signing: SigningMode,
}

fn default_push_timeout() -> u32 {
    DEFAULT_PUSH_TIMEOUT_SECONDS
}

fn default_concurrency() -> u32 {
    DEFAULT_PUSH_CONCURRENCY
}

impl HttpPush {
    /// An endpoint with the defaults (BACKOFF_RETRY, XML, 5 s, Standard Webhooks signing).
    pub fn new(url: impl Into<String>) -> HttpPush {
        HttpPush {
            url: url.into(),
            strategy: NotifyStrategy::default(),
            format: ContentFormat::default(),
            push_timeout_seconds: DEFAULT_PUSH_TIMEOUT_SECONDS,
            dead_letter_queue: None,
            max_concurrency: DEFAULT_PUSH_CONCURRENCY,
            signing: SigningMode::default(),
        }
    }

    /// Checks the URL and the ranges, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| {
            StoreError::invalid("http", format!("`{}` is not a URL: {e}", self.url))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(StoreError::invalid(
                "http",
                "the endpoint must be an http:// or https:// URL with a host",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(StoreError::invalid(
                "http",
                "credentials in the URL are not allowed (they would be shown by `sub show`)",
            ));
        }
        super::types::check_range(
            "push_timeout_seconds",
            self.push_timeout_seconds.into(),
            1,
            MAX_PUSH_TIMEOUT_SECONDS.into(),
        )?;
        super::types::check_range(
            "max_concurrency",
            self.max_concurrency.into(),
            1,
            MAX_PUSH_CONCURRENCY.into(),
        )?;
        if let Some(q) = &self.dead_letter_queue {
            validate_name("dead_letter_queue", q)?;
        }
        Ok(())
    }
}

/// The answer to creating an HTTP subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCreated {
    /// `false` when the same subscription already existed.
    pub created: bool,
    /// The signing secret (`whsec_...`), only when it was just created: it is shown once.
    pub secret: Option<String>,
}

/// An HTTP subscription as the delivery workers need it (with its secrets: never serialise it
/// to a user).
#[derive(Clone, PartialEq, Eq)]
pub struct PushSubscription {
    /// Internal id (stable for the subscription's life).
    pub id: i64,
    /// The topic.
    pub topic: String,
    /// The subscription name.
    pub name: String,
    /// Endpoint and settings.
    pub push: HttpPush,
    /// Disabled subscriptions keep their pending messages but are not pushed to.
    pub enabled: bool,
    /// Current secret.
    pub secret: String,
    /// The previous secret while its grace period runs: `(secret, until_ms)`.
    pub old_secret: Option<(String, u64)>,
}

impl std::fmt::Debug for PushSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSubscription")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("name", &self.name)
            .field("push", &self.push)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// One claimed push: the message and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDelivery {
    /// The row (report outcomes by it).
    pub seq: u64,
    /// Message id: the same on every attempt (`webhook-id`).
    pub message_id: String,
    /// The body as published.
    pub body: Bytes,
    /// MD5 of the body, 32 uppercase hex characters.
    pub body_md5: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// When it was published, ms.
    pub publish_time_ms: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When this attempt was due, ms (for latency figures).
    pub due_ms: u64,
}

/// What became of one claimed push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// A 2xx within the timeout: the row goes.
    Delivered,
    /// A failed attempt; try again at `due_ms`.
    Retry {
        /// Next attempt, ms.
        due_ms: u64,
        /// Why this attempt failed (kept as the last error).
        error: String,
    },
    /// `410 Gone`: the subscription is disabled; the message stays pending for a re-enable.
    Disable {
        /// Why.
        error: String,
    },
    /// The schedule ran out (or the push can never succeed): dead-letter queue or drop.
    GiveUp {
        /// The last error.
        error: String,
    },
    /// Not attempted (shutdown): due again at once, no attempt counted.
    Release,
}

/// The outcome of one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The claimed row.
    pub seq: u64,
    /// What happened.
    pub result: PushResult,
}

/// What a [`Store::push_cycle`] hands back.
#[derive(Debug, Clone, Default)]
pub struct PushCycle {
    /// Claimed rows (now leased to the caller until it reports them).
    pub deliveries: Vec<PushDelivery>,
    /// Earliest due time of the rows left unclaimed, ms (when to come back).
    pub next_due_ms: Option<u64>,
    /// The subscription is enabled (nothing is claimed while it is not).
    pub enabled: bool,
    /// The subscription no longer exists.
    pub gone: bool,
}

/// Delivery counters and state of an HTTP subscription (shown by `sub show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PushStatus {
    /// Pushing or not.
    pub enabled: bool,
    /// Why it was disabled, when the store did it (`410 Gone`).
    pub disabled_reason: Option<String>,
    /// Successful pushes (since creation).
    pub delivered_total: u64,
    /// Failed attempts, including ones later retried successfully.
    pub failed_attempts_total: u64,
    /// Messages dropped after their last retry (no dead-letter queue).
    pub dropped_total: u64,
    /// Messages moved to the dead-letter queue after their last retry.
    pub dead_lettered_total: u64,
    /// Messages waiting for a push (including those in flight).
    pub backlog: u64,
    /// Of those, being pushed right now.
    pub in_flight: u64,
    /// When the next waiting attempt is due, ms.
    pub next_attempt_time_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it happened, ms.
    pub last_error_time_ms: Option<u64>,
    /// While a rotated-out secret still signs: until when, ms.
    pub previous_secret_valid_until_ms: Option<u64>,
}

/// Wakers shared by the writer and the delivery workers.
#[derive(Debug)]
pub struct PushSignals {
    subs: Mutex<HashMap<i64, Arc<Notify>>>,
    catalog: watch::Sender<u64>,
}

impl Default for PushSignals {
    fn default() -> Self {
        PushSignals {
            subs: Mutex::default(),
            catalog: watch::channel(0).0,
        }
    }
}

impl PushSignals {
    /// The waker of one subscription: notified after a commit that gave it new due work
    /// (a publish, a redrive, an enable).
    pub fn sub(&self, id: i64) -> Arc<Notify> {
        let mut map = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id).or_default().clone()
    }

    /// Bumped after a commit that created, deleted, enabled, disabled or re-keyed an HTTP
    /// subscription (the supervisor then re-reads the list).
    pub fn catalog(&self) -> watch::Receiver<u64> {
        self.catalog.subscribe()
    }

    /// Tells the supervisor to re-read the subscriptions (JetStream: the catalog bucket
    /// changed, maybe through another process).
    pub(crate) fn catalog_changed(&self) {
        self.catalog.send_modify(|n| *n += 1);
    }

    pub(crate) fn wake(&self, ids: &HashSet<i64>) {
        let map = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if let Some(n) = map.get(id) {
                // notify_one stores a permit, so a worker between two waits does not miss it.
                n.notify_one();
            }
        }
    }
}

/// A fresh signing secret: `whsec_` + base64 of 32 random bytes (Standard Webhooks).
pub(crate) fn new_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

// ----- the handle -----

impl Store {
    /// Creates an HTTP subscription with a fresh signing secret, returned only when the
    /// subscription is new (the secret is shown once). The dead-letter queue, when given, must
    /// exist.
    pub async fn create_push_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: super::types::SubscriptionSpec,
    ) -> Result<PushCreated> {
        validate_name("subscription_name", name)?;
        let super::types::Endpoint::Http(push) = &spec.endpoint else {
            return Err(StoreError::invalid("http", "not an HTTP subscription"));
        };
        push.validate()?;
        super::check_filter_tag(&spec)?;
        on_backend!(self, b => b.create_push_subscription(topic, name, spec).await)
    }

    /// Every HTTP subscription with its secrets, for the delivery workers.
    pub async fn push_subscriptions(&self) -> Result<Vec<PushSubscription>> {
        match &self.inner.backend {
            Backend::Sqlite(s) => s.push_subscriptions().await,
            Backend::JetStream { js, .. } => Ok(js.push_subscriptions()),
        }
    }

    /// Records the outcomes of finished pushes of subscription `sub` and claims up to `claim`
    /// rows that are due now, in one commit. Claimed rows are leased to the caller until it
    /// reports them (or the process ends).
    pub async fn push_cycle(
        &self,
        sub: i64,
        outcomes: Vec<PushOutcome>,
        claim: usize,
    ) -> Result<PushCycle> {
        on_backend!(self, b => b.push_cycle(sub, outcomes, claim).await)
    }

    /// Enables or disables an HTTP subscription (a disabled one keeps its pending messages).
    pub async fn set_push_enabled(&self, topic: &str, name: &str, enabled: bool) -> Result<()> {
        on_backend!(self, b => b.set_push_enabled(topic, name, enabled).await)
    }

    /// Changes an HTTP subscription's retry strategy (MNS SetSubscriptionAttributes). Pending
    /// messages keep the attempts they have made; their next retry follows the new strategy.
    pub async fn set_push_strategy(
        &self,
        topic: &str,
        name: &str,
        strategy: NotifyStrategy,
    ) -> Result<()> {
        on_backend!(self, b => b.set_push_strategy(topic, name, strategy).await)
    }

    /// Replaces the signing secret; the old one keeps signing beside it for `grace` (both
    /// signatures are sent). Returns the new secret (shown once).
    pub async fn rotate_push_secret(
        &self,
        topic: &str,
        name: &str,
        grace: Duration,
    ) -> Result<String> {
        on_backend!(self, b => b.rotate_push_secret(topic, name, grace).await)
    }

    /// Delivery counters and state of an HTTP subscription.
    pub async fn push_status(&self, topic: &str, name: &str) -> Result<PushStatus> {
        on_backend!(self, b => b.push_status(topic, name).await)
    }

    /// The subscription's messages in its dead-letter queue (visible ones, oldest first, at
    /// most `max`), without changing anything.
    pub async fn push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<Vec<Message>> {
        let max = max.clamp(1, MAX_DEAD_LETTER_PAGE);
        on_backend!(self, b => b.push_dead_letters(topic, name, max).await)
    }

    /// Moves up to `max` of the subscription's visible dead letters back to pending pushes (a
    /// fresh schedule, same message id), in one commit. Returns how many moved.
    pub async fn redrive_push_dead_letters(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<u64> {
        let max = max.clamp(1, MAX_DEAD_LETTER_PAGE);
        on_backend!(self, b => b.redrive_push_dead_letters(topic, name, max).await)
    }

    /// Wakers of the delivery workers.
    pub fn push_signals(&self) -> Arc<PushSignals> {
        self.inner.push_signals.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_standard_webhooks_shaped_and_fresh() {
        use base64::Engine;
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        let raw = a.strip_prefix("whsec_").unwrap();
        let key = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .unwrap();
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn http_push_validation_names_the_field() {
        let mut p = HttpPush::new("ftp://x");
        assert_eq!(p.validate().unwrap_err().field(), Some("http"));
        p.url = "http://user:pw@example.com/".into();
        assert_eq!(p.validate().unwrap_err().field(), Some("http"));
        p.url = "http://127.0.0.1:9/hook".into();
        p.validate().unwrap();
        p.push_timeout_seconds = 61;
        assert_eq!(
            p.validate().unwrap_err().field(),
            Some("push_timeout_seconds")
        );
    }
}
