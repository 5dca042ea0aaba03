//! Push requests in the writer: HTTP subscriptions, the fan-out rows of a publish, claims and
//! outcomes of delivery workers, dead letters (see `store::push` for the design).

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::super::push_state::{overdue_spacing, PushCounters, PushMeta, PushSubState, PushUndo};
use super::*;
use crate::store::push::{
    HttpPush, NotifyStrategy, PushCycle, PushDelivery, PushOutcome, PushResult, PushStatus,
    PushSubscription,
};
use crate::store::sqlite::index::ROW_COLS;

const SELECT_PENDING: &str = "SELECT message_id, body_md5, tag, attributes, publish_ms, \
    attempts, body_ref, body FROM push_pending WHERE seq = ?1";

impl Writer {
    fn push_undo(&mut self, u: PushUndo) {
        self.undo.push(Undo::Push(u));
    }

    // ----- loading -----

    /// Rebuilds the push index from disk (after the catalog): every pending row is due at its
    /// stored time, except overdue retries, which are spread out.
    pub(crate) fn push_load(&mut self, now: u64) -> Result<()> {
        let mut https: HashMap<i64, (String, String, HttpPush)> = HashMap::new();
        for (topic, t) in &self.cat.topics {
            for (name, s) in &t.subs {
                if let Endpoint::Http(h) = &s.spec.endpoint {
                    https.insert(s.id, (topic.clone(), name.clone(), h.clone()));
                }
            }
        }
        let mut rows = Vec::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT sub_id, enabled, disabled_reason, secret, old_secret, \
                 old_secret_until_ms, delivered_total, failed_attempts_total, dropped_total, \
                 dead_lettered_total, last_error, last_error_ms FROM push_subs",
            )?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let id: i64 = r.get(0)?;
                let old: Option<String> = r.get(4)?;
                let old_until: Option<i64> = r.get(5)?;
                let last_error: Option<String> = r.get(10)?;
                let last_error_ms: Option<i64> = r.get(11)?;
                rows.push((
                    id,
                    r.get::<_, bool>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    old.zip(old_until.map(|t| t as u64)),
                    PushCounters {
                        delivered: r.get::<_, i64>(6)? as u64,
                        failed: r.get::<_, i64>(7)? as u64,
                        dropped: r.get::<_, i64>(8)? as u64,
                        dead_lettered: r.get::<_, i64>(9)? as u64,
                        last_error: last_error.map(|e| (e, last_error_ms.unwrap_or(0) as u64)),
                    },
                ));
            }
        }
        for (id, enabled, disabled_reason, secret, old_secret, counters) in rows {
            let Some((topic, name, push)) = https.remove(&id) else {
                tracing::warn!(
                    subscription_id = id,
                    "push state without a subscription; ignored"
                );
                continue;
            };
            self.cat.push.subs.insert(
                id,
                PushSubState {
                    id,
                    meta: PushMeta {
                        topic,
                        name,
                        push,
                        enabled,
                        disabled_reason,
                        secret,
                        old_secret,
                    },
                    counters,
                    due: Default::default(),
                    leased: Default::default(),
                    overdue: Default::default(),
                    overdue_next_ms: 0,
                    overdue_spacing_ms: 0,
                },
            );
        }
        for (id, (topic, name, _)) in https {
            tracing::error!(topic = %topic, subscription = %name, subscription_id = id,
                "HTTP subscription without push state; it is not pushed until recreated");
        }
        let mut pending: HashMap<i64, Vec<(u64, u64, u32)>> = HashMap::new();
        let mut max_seq = 0u64;
        {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, sub_id, due_ms, attempts FROM push_pending")?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let seq = r.get::<_, i64>(0)? as u64;
                max_seq = max_seq.max(seq);
                pending.entry(r.get(1)?).or_default().push((
                    r.get::<_, i64>(2)? as u64,
                    seq,
                    r.get::<_, i64>(3)? as u32,
                ));
            }
        }
        self.cat.push.next_seq = max_seq + 1;
        for (sub, mut rows) in pending {
            let Some(s) = self.cat.push.subs.get_mut(&sub) else {
                tracing::warn!(
                    subscription_id = sub,
                    rows = rows.len(),
                    "pending pushes of a missing subscription; ignored"
                );
                continue;
            };
            rows.sort_unstable();
            for &(due, seq, attempts) in &rows {
                if due <= now && attempts > 0 {
                    s.overdue.push_back((due, seq));
                } else {
                    s.due.insert((due, seq));
                }
            }
            let retries = s.overdue.len();
            s.overdue_spacing_ms = overdue_spacing(retries);
            tracing::debug!(topic = %s.meta.topic, subscription = %s.meta.name,
                pending = s.due.len(), overdue_retries = retries, "push index rebuilt");
        }
        Ok(())
    }

    // ----- fan-out -----

    /// Inserts the pending push of one published message for HTTP subscription `sub` (called by
    /// `publish` inside its transaction).
    pub(super) fn push_insert(&mut self, sub: i64, row: &NewRow<'_>, now: u64) -> Result<()> {
        // Checked before the INSERT: a publish with one write runs without a savepoint, so
        // nothing may fail once the row is written.
        if !self.cat.push.subs.contains_key(&sub) {
            return Err(StoreError::Internal(format!(
                "HTTP subscription {sub} has no push state"
            )));
        }
        let seq = self.cat.push.next_seq;
        self.cat.push.next_seq += 1;
        let (body_ref, body) = match row.body {
            BodyRef::Inline(b) => (None, Some(b)),
            BodyRef::Shared(id) => (Some(id), None),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO push_pending (seq, sub_id, due_ms, attempts, publish_ms, \
                 message_id, body_md5, tag, attributes, last_error, body_ref, body) \
                 VALUES (?1, ?2, ?3, 0, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9)",
            )?
            .execute(params![
                seq as i64,
                sub,
                now as i64,
                row.message_id,
                row.md5,
                row.tag,
                row.attributes,
                body_ref,
                body,
            ])?;
        if let Some(s) = self.cat.push.subs.get_mut(&sub) {
            s.due.insert((now, seq));
            if s.meta.enabled {
                self.cat.push.wake.insert(sub);
            }
        }
        self.push_undo(PushUndo::DueAdded(sub, (now, seq)));
        Ok(())
    }

    /// Removes an HTTP subscription's push state and pending rows (with its subscription row
    /// by the caller). A no-op for queue subscriptions.
    pub(crate) fn push_forget(&mut self, sub: i64) -> Result<()> {
        let Some(s) = self.cat.push.subs.remove(&sub) else {
            return Ok(());
        };
        let seqs: Vec<u64> = s
            .due
            .iter()
            .map(|e| e.1)
            .chain(s.leased.keys().copied())
            .chain(s.overdue.iter().map(|e| e.1))
            .collect();
        let dropped = seqs.len();
        let (topic, name) = (s.meta.topic.clone(), s.meta.name.clone());
        self.push_undo(PushUndo::SubRemoved(Box::new(s)));
        self.cat.push.catalog_changed = true;
        for seq in seqs {
            self.push_delete_row(seq)?;
        }
        self.conn
            .prepare_cached("DELETE FROM push_subs WHERE sub_id = ?1")?
            .execute([sub])?;
        if dropped > 0 {
            tracing::warn!(topic = %topic, subscription = %name, pending = dropped,
                "HTTP subscription deleted with pushes still pending; they are dropped");
        }
        Ok(())
    }

    /// Deletes a pending row and its body reference.
    fn push_delete_row(&mut self, seq: u64) -> Result<()> {
        let body_ref: Option<Option<i64>> = self
            .conn
            .prepare_cached("DELETE FROM push_pending WHERE seq = ?1 RETURNING body_ref")?
            .query_row([seq as i64], |r| r.get(0))
            .optional()?;
        if let Some(Some(b)) = body_ref {
            self.release_body(b, 1)?;
        }
        Ok(())
    }

    // ----- requests -----

    /// Turns an HTTP subscription's pushes on or off.
    pub(crate) fn push_set_enabled_by_name(
        &mut self,
        topic: &str,
        name: &str,
        enabled: bool,
    ) -> Result<()> {
        let id = self.push_sub_id(topic, name)?;
        self.push_set_enabled(id, enabled, None)
    }

    /// Replaces the signing secret; the old one keeps signing until `now + grace_ms`.
    pub(crate) fn push_rotate(
        &mut self,
        topic: &str,
        name: &str,
        secret: String,
        grace_ms: u64,
        now: u64,
    ) -> Result<()> {
        let id = self.push_sub_id(topic, name)?;
        let s = self.push_state(id)?;
        let old = s.meta.clone();
        let mut meta = s.meta.clone();
        meta.old_secret = Some((std::mem::replace(&mut meta.secret, secret), now + grace_ms));
        self.conn
            .prepare_cached(
                "UPDATE push_subs SET secret = ?1, old_secret = ?2, \
                 old_secret_until_ms = ?3 WHERE sub_id = ?4",
            )?
            .execute(params![
                meta.secret,
                meta.old_secret.as_ref().map(|o| o.0.as_str()),
                meta.old_secret.as_ref().map(|o| o.1 as i64),
                id
            ])?;
        self.push_state(id)?.meta = meta;
        self.push_undo(PushUndo::Meta(id, Box::new(old)));
        self.cat.push.catalog_changed = true;
        tracing::info!(topic = %topic, subscription = %name, grace_ms, "push secret rotated");
        Ok(())
    }

    /// Delivery counters and state of an HTTP subscription.
    pub(crate) fn push_status(&self, topic: &str, name: &str) -> Result<PushStatus> {
        let id = self.push_sub_id(topic, name)?;
        self.cat
            .push
            .status(id)
            .ok_or_else(|| StoreError::Internal("push state vanished".into()))
    }

    /// The strategy lives in two places that must agree: the subscription's stored spec (what
    /// reads and restarts see) and the push state (what the worker's next retry uses).
    pub(crate) fn push_set_strategy(
        &mut self,
        topic: &str,
        name: &str,
        strategy: NotifyStrategy,
    ) -> Result<()> {
        let id = self.push_sub_id(topic, name)?;
        let s = self.push_state(id)?;
        if s.meta.push.strategy == strategy {
            return Ok(());
        }
        let old = s.meta.clone();
        let mut meta = old.clone();
        meta.push.strategy = strategy;
        self.snapshot_topics();
        let sub = self
            .cat
            .topics
            .get_mut(topic)
            .and_then(|t| t.subs.get_mut(name))
            .ok_or_else(|| StoreError::Internal("subscription vanished".into()))?;
        if let Endpoint::Http(p) = &mut sub.spec.endpoint {
            p.strategy = strategy;
        }
        let json =
            serde_json::to_string(&sub.spec).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.conn
            .prepare_cached("UPDATE subscriptions SET spec = ?1 WHERE id = ?2")?
            .execute(params![json, id])?;
        self.push_state(id)?.meta = meta;
        self.push_undo(PushUndo::Meta(id, Box::new(old)));
        self.cat.push.catalog_changed = true;
        tracing::info!(topic = %topic, subscription = %name, ?strategy, "push strategy changed");
        Ok(())
    }

    fn push_state(&mut self, id: i64) -> Result<&mut PushSubState> {
        self.cat
            .push
            .subs
            .get_mut(&id)
            .ok_or_else(|| StoreError::Internal(format!("HTTP subscription {id} has no state")))
    }

    /// The id of HTTP subscription `name` of `topic`, with the errors a user should see.
    fn push_sub_id(&self, topic: &str, name: &str) -> Result<i64> {
        let t = self
            .cat
            .topics
            .get(topic)
            .ok_or_else(|| StoreError::TopicNotExist {
                name: topic.to_owned(),
            })?;
        let s = t
            .subs
            .get(name)
            .ok_or_else(|| StoreError::SubscriptionNotExist {
                topic: topic.to_owned(),
                name: name.to_owned(),
            })?;
        match s.spec.endpoint {
            Endpoint::Http(_) if self.cat.push.subs.contains_key(&s.id) => Ok(s.id),
            _ => Err(StoreError::invalid(
                "subscription_name",
                format!("subscription `{name}` of topic `{topic}` is not an HTTP subscription"),
            )),
        }
    }

    pub(crate) fn push_create(
        &mut self,
        topic: &str,
        name: &str,
        spec: SubscriptionSpec,
        secret: String,
        now: u64,
    ) -> Result<bool> {
        let Some(topic_id) = self.topic_for_new_subscription(topic, name, &spec)? else {
            return Ok(false);
        };
        let Endpoint::Http(push) = &spec.endpoint else {
            return Err(StoreError::invalid("http", "not an HTTP subscription"));
        };
        if let Some(dlq) = &push.dead_letter_queue {
            if !self.cat.queue_ids.contains_key(dlq) {
                return Err(StoreError::invalid(
                    "dead_letter_queue",
                    format!("queue `{dlq}` does not exist"),
                ));
            }
        }
        let push = push.clone();
        let json = serde_json::to_string(&spec).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO subscriptions (topic_id, name, spec, create_time_ms) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![topic_id, name, json, now as i64])?;
        let id = self.conn.last_insert_rowid();
        self.conn
            .prepare_cached("INSERT INTO push_subs (sub_id, enabled, secret) VALUES (?1, 1, ?2)")?
            .execute(params![id, secret])?;
        self.snapshot_topics();
        if let Some(t) = self.cat.topics.get_mut(topic) {
            t.subs.insert(name.to_owned(), SubState { id, spec });
        }
        self.cat.push.subs.insert(
            id,
            PushSubState {
                id,
                meta: PushMeta {
                    topic: topic.to_owned(),
                    name: name.to_owned(),
                    push,
                    enabled: true,
                    disabled_reason: None,
                    secret,
                    old_secret: None,
                },
                counters: PushCounters::default(),
                due: Default::default(),
                leased: Default::default(),
                overdue: Default::default(),
                overdue_next_ms: 0,
                overdue_spacing_ms: 0,
            },
        );
        self.push_undo(PushUndo::SubAdded(id));
        self.cat.push.catalog_changed = true;
        Ok(true)
    }

    pub(crate) fn push_list(&self, now: u64) -> Vec<PushSubscription> {
        let mut out: Vec<PushSubscription> = self
            .cat
            .push
            .subs
            .values()
            .map(|s| PushSubscription {
                id: s.id,
                topic: s.meta.topic.clone(),
                name: s.meta.name.clone(),
                push: s.meta.push.clone(),
                enabled: s.meta.enabled,
                secret: s.meta.secret.clone(),
                old_secret: s.meta.old_secret.clone().filter(|o| o.1 > now),
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    fn push_set_enabled(&mut self, id: i64, enabled: bool, reason: Option<String>) -> Result<()> {
        let s = self.push_state(id)?;
        if s.meta.enabled == enabled && reason.is_none() {
            return Ok(());
        }
        let old = s.meta.clone();
        s.meta.enabled = enabled;
        s.meta.disabled_reason = if enabled { None } else { reason };
        let has_work = !s.due.is_empty();
        let reason = s.meta.disabled_reason.clone();
        self.conn
            .prepare_cached(
                "UPDATE push_subs SET enabled = ?1, disabled_reason = ?2 WHERE sub_id = ?3",
            )?
            .execute(params![enabled, reason, id])?;
        self.push_undo(PushUndo::Meta(id, Box::new(old)));
        self.cat.push.catalog_changed = true;
        if enabled && has_work {
            self.cat.push.wake.insert(id);
        }
        Ok(())
    }

    pub(crate) fn push_cycle(
        &mut self,
        sub: i64,
        outcomes: Vec<PushOutcome>,
        claim: usize,
        now: u64,
    ) -> Result<PushCycle> {
        let Some(s) = self.cat.push.subs.get(&sub) else {
            return Ok(PushCycle {
                gone: true,
                ..PushCycle::default()
            });
        };
        let before = s.counters.clone();
        for o in outcomes {
            self.push_outcome(sub, o, now)?;
        }
        let s = self.push_state(sub)?;
        if s.counters != before {
            let c = s.counters.clone();
            self.conn
                .prepare_cached(
                    "UPDATE push_subs SET delivered_total = ?1, failed_attempts_total = ?2, \
                     dropped_total = ?3, dead_lettered_total = ?4, last_error = ?5, \
                     last_error_ms = ?6 WHERE sub_id = ?7",
                )?
                .execute(params![
                    c.delivered as i64,
                    c.failed as i64,
                    c.dropped as i64,
                    c.dead_lettered as i64,
                    c.last_error.as_ref().map(|e| e.0.as_str()),
                    c.last_error.as_ref().map(|e| e.1 as i64),
                    sub
                ])?;
            self.push_undo(PushUndo::Counters(sub, before));
        }
        let mut deliveries = Vec::new();
        let enabled = self.push_state(sub)?.meta.enabled;
        if enabled && claim > 0 {
            let s = self.cat.push.subs.get_mut(&sub);
            if let Some(s) = s {
                s.release_overdue(now, &mut self.undo);
            }
        }
        while enabled && deliveries.len() < claim {
            let s = self.push_state(sub)?;
            let Some(&(due, seq)) = s.due.first() else {
                break;
            };
            if due > now {
                break;
            }
            s.due.pop_first();
            self.push_undo(PushUndo::DueRemoved(sub, (due, seq)));
            let row = select_pending(&self.conn, seq)?;
            let Some((message_id, md5, tag, attributes, publish_ms, attempts, body_ref, body)) =
                row
            else {
                tracing::error!(
                    subscription_id = sub,
                    seq,
                    "indexed push has no row; dropped from the index"
                );
                continue;
            };
            let body = match (body, body_ref) {
                (Some(b), _) => Bytes::from(b),
                (None, Some(id)) => Bytes::from(
                    self.conn
                        .prepare_cached("SELECT body FROM bodies WHERE id = ?1")?
                        .query_row([id], |r| r.get::<_, Vec<u8>>(0))?,
                ),
                (None, None) => Bytes::new(),
            };
            let attributes = match attributes {
                Some(a) => serde_json::from_str(&a)
                    .map_err(|e| StoreError::Internal(format!("message attributes: {e}")))?,
                None => BTreeMap::new(),
            };
            self.push_state(sub)?.leased.insert(seq, due);
            self.push_undo(PushUndo::LeaseAdded(sub, seq));
            deliveries.push(PushDelivery {
                seq,
                message_id,
                body,
                body_md5: md5_hex(&md5),
                tag,
                attributes,
                publish_time_ms: publish_ms as u64,
                attempts: attempts as u32,
                due_ms: due,
            });
        }
        let s = self.push_state(sub)?;
        Ok(PushCycle {
            deliveries,
            next_due_ms: s.next_due(),
            enabled: s.meta.enabled,
            gone: false,
        })
    }

    fn push_outcome(&mut self, sub: i64, o: PushOutcome, now: u64) -> Result<()> {
        let s = self.push_state(sub)?;
        let Some(due) = s.leased.remove(&o.seq) else {
            tracing::debug!(
                subscription_id = sub,
                seq = o.seq,
                "outcome of a push that is not leased; ignored"
            );
            return Ok(());
        };
        self.push_undo(PushUndo::LeaseRemoved(sub, o.seq, due));
        let seq = o.seq;
        let fail = |s: &mut PushSubState, error: &str| {
            s.counters.failed += 1;
            s.counters.last_error = Some((error.to_owned(), now));
        };
        match o.result {
            PushResult::Delivered => {
                self.push_state(sub)?.counters.delivered += 1;
                self.push_delete_row(seq)?;
            }
            PushResult::Retry { due_ms, error } => {
                self.conn
                    .prepare_cached(
                        "UPDATE push_pending SET due_ms = ?1, attempts = attempts + 1, \
                         last_error = ?2 WHERE seq = ?3",
                    )?
                    .execute(params![due_ms as i64, error, seq as i64])?;
                let s = self.push_state(sub)?;
                fail(s, &error);
                s.due.insert((due_ms, seq));
                self.push_undo(PushUndo::DueAdded(sub, (due_ms, seq)));
            }
            PushResult::Disable { error } => {
                self.conn
                    .prepare_cached("UPDATE push_pending SET last_error = ?1 WHERE seq = ?2")?
                    .execute(params![error, seq as i64])?;
                let s = self.push_state(sub)?;
                fail(s, &error);
                s.due.insert((now, seq));
                let (topic, name) = (s.meta.topic.clone(), s.meta.name.clone());
                self.push_undo(PushUndo::DueAdded(sub, (now, seq)));
                self.push_set_enabled(sub, false, Some(error.clone()))?;
                tracing::warn!(topic = %topic, subscription = %name, error = %error,
                    "HTTP subscription disabled by its endpoint; pending messages are kept");
            }
            PushResult::GiveUp { error } => {
                fail(self.push_state(sub)?, &error);
                self.push_give_up(sub, seq, &error, now)?;
            }
            PushResult::Release => {
                self.push_state(sub)?.due.insert((due, seq));
                self.push_undo(PushUndo::DueAdded(sub, (due, seq)));
            }
        }
        Ok(())
    }

    /// The last attempt failed: move the message to the subscription's dead-letter queue, or
    /// drop it, counted and logged with its id.
    fn push_give_up(&mut self, sub: i64, seq: u64, error: &str, now: u64) -> Result<()> {
        let meta = self.push_state(sub)?.meta.clone();
        let dlq = meta
            .push
            .dead_letter_queue
            .as_ref()
            .and_then(|q| self.cat.queue_ids.get(q).copied());
        let row = select_pending(&self.conn, seq)?;
        let Some((message_id, md5, tag, attributes, publish_ms, attempts, body_ref, body)) = row
        else {
            return Ok(());
        };
        match dlq {
            Some(dlq_id) => {
                let origin = DeadLetterOrigin {
                    source_queue: meta.topic.clone(),
                    source_subscription: Some(meta.name.clone()),
                    original_id: message_id.clone(),
                    dequeue_count: attempts as u32 + 1,
                    original_enqueue_time_ms: publish_ms as u64,
                    last_error: Some(error.to_owned()),
                };
                let origin = serde_json::to_string(&origin)
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                let body = match (&body, body_ref) {
                    (Some(b), _) => BodyRef::Inline(b),
                    (None, Some(id)) => BodyRef::Shared(id),
                    (None, None) => BodyRef::Inline(&[]),
                };
                let row = NewRow {
                    message_id: &message_id,
                    md5: &md5,
                    tag: tag.as_deref(),
                    attributes: attributes.as_deref(),
                    priority: DEFAULT_PRIORITY,
                    delay_s: 0,
                    body,
                };
                self.with_queue(dlq_id, |w, q| {
                    w.insert_row(q, &row, now)?;
                    let dseq = q.next_seq - 1;
                    w.conn
                        .execute(
                            &format!(
                                "UPDATE {} SET origin = ?1 WHERE seq = ?2",
                                queue_table(q.id)
                            ),
                            params![origin, dseq as i64],
                        )
                        .map(|_| ())
                        .map_err(StoreError::from)
                })?;
                // The body reference (if shared) moved to the dead-letter row.
                self.conn
                    .prepare_cached("DELETE FROM push_pending WHERE seq = ?1")?
                    .execute([seq as i64])?;
                self.push_state(sub)?.counters.dead_lettered += 1;
                tracing::info!(topic = %meta.topic, subscription = %meta.name,
                    message_id = %message_id, error, "push moved to the dead-letter queue");
            }
            None => {
                self.push_delete_row(seq)?;
                self.push_state(sub)?.counters.dropped += 1;
                if let Some(q) = &meta.push.dead_letter_queue {
                    tracing::warn!(topic = %meta.topic, subscription = %meta.name,
                        message_id = %message_id, dead_letter_queue = %q, error,
                        "push dropped after its last retry: the dead-letter queue does not exist");
                } else {
                    tracing::warn!(topic = %meta.topic, subscription = %meta.name,
                        message_id = %message_id, error,
                        "push dropped after its last retry (no dead-letter queue)");
                }
            }
        }
        Ok(())
    }

    /// The subscription's visible messages in its dead-letter queue, oldest first.
    pub(crate) fn push_dead_letters(
        &mut self,
        topic: &str,
        name: &str,
        max: usize,
        now: u64,
    ) -> Result<Vec<Message>> {
        let (_, _, found) = self.find_dead_letters(topic, name, max, now)?;
        found
            .into_iter()
            .map(|(_, raw)| self.to_message(raw, None))
            .collect()
    }

    /// Moves the subscription's visible dead letters back to pending pushes; returns how many.
    pub(crate) fn push_redrive(
        &mut self,
        topic: &str,
        name: &str,
        max: usize,
        now: u64,
    ) -> Result<u64> {
        let (sub, dlq, found) = self.find_dead_letters(topic, name, max, now)?;
        let n = found.len() as u64;
        self.with_queue(dlq, |w, q| {
            w.journal().promote(q, now);
            for (dseq, raw) in &found {
                let publish_ms = raw
                    .origin
                    .as_deref()
                    .and_then(|o| serde_json::from_str::<DeadLetterOrigin>(o).ok())
                    .map_or(raw.enqueue_ms, |o| o.original_enqueue_time_ms);
                let seq = w.cat.push.next_seq;
                w.cat.push.next_seq += 1;
                // The body (inline or its shared reference) moves with the row.
                w.conn
                    .prepare_cached(
                        "INSERT INTO push_pending (seq, sub_id, due_ms, attempts, publish_ms, \
                         message_id, body_md5, tag, attributes, last_error, body_ref, body) \
                         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, NULL, ?9, ?10)",
                    )?
                    .execute(params![
                        seq as i64,
                        sub,
                        now as i64,
                        publish_ms as i64,
                        raw.message_id,
                        raw.body_md5,
                        raw.tag,
                        raw.attributes,
                        raw.body_ref,
                        raw.body,
                    ])?;
                w.conn
                    .prepare_cached(&q.sql.delete)?
                    .execute([*dseq as i64])?;
                w.journal()
                    .remove_any(q, raw.next_visible_ms, pack(raw.priority, *dseq));
                let s = w.push_state(sub)?;
                s.due.insert((now, seq));
                w.push_undo(PushUndo::DueAdded(sub, (now, seq)));
            }
            Ok(())
        })?;
        if n > 0 {
            self.cat.push.wake.insert(sub);
            tracing::info!(
                topic,
                subscription = name,
                messages = n,
                "dead letters redriven to pending pushes"
            );
        }
        Ok(n)
    }

    /// The subscription's id, its dead-letter queue's id and the visible rows there that came
    /// from it (seq and row), oldest first, at most `max`.
    #[allow(clippy::type_complexity)]
    fn find_dead_letters(
        &mut self,
        topic: &str,
        name: &str,
        max: usize,
        now: u64,
    ) -> Result<(i64, i64, Vec<(u64, RawRow)>)> {
        let sub = self.push_sub_id(topic, name)?;
        let meta = self.push_state(sub)?.meta.clone();
        let dlq_name = meta.push.dead_letter_queue.clone().ok_or_else(|| {
            StoreError::invalid(
                "dead_letter_queue",
                format!("subscription `{name}` has no dead-letter queue"),
            )
        })?;
        let dlq = self.queue_id(&dlq_name)?;
        let mut found: Vec<(u64, RawRow)> = Vec::new();
        {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {ROW_COLS} FROM {} ORDER BY seq",
                queue_table(dlq)
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let raw = RawRow::read(r)?;
                if raw.next_visible_ms > now {
                    continue; // received by someone, or delayed: not ours to move
                }
                let Some(origin) = raw.origin.as_deref() else {
                    continue;
                };
                let Ok(origin) = serde_json::from_str::<DeadLetterOrigin>(origin) else {
                    continue;
                };
                if origin.source_queue == topic
                    && origin.source_subscription.as_deref() == Some(name)
                {
                    found.push((r.get::<_, i64>(0)? as u64, raw));
                    if found.len() >= max {
                        break;
                    }
                }
            }
        }
        Ok((sub, dlq, found))
    }
}

/// One pending push row: message id, md5, tag, attributes, publish time, attempts, and the body
/// (by reference or inline).
type PendingRow = (
    String,
    Vec<u8>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    Option<Vec<u8>>,
);

/// Reads the pending push `seq` (the claim and the dead-letter paths both need it).
fn select_pending(conn: &rusqlite::Connection, seq: u64) -> rusqlite::Result<Option<PendingRow>> {
    conn.prepare_cached(SELECT_PENDING)?
        .query_row([seq as i64], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .optional()
}
