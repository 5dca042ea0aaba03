//! Message requests: publish, send, receive, peek, delete, visibility, dead letters.

use rusqlite::{params, OptionalExtension};

use super::*;

impl Writer {
    // ----- writing messages -----

    /// Inserts one row into queue `q` and indexes it; returns when it becomes visible. Nothing
    /// fallible runs after the INSERT: a one-write publish runs without a savepoint.
    pub(super) fn insert_row(
        &mut self,
        q: &mut QueueState,
        row: &NewRow<'_>,
        now: u64,
    ) -> Result<u64> {
        let seq = q.next_seq;
        q.next_seq += 1;
        let at = now + ms(row.delay_s);
        let (body_ref, body) = match row.body {
            BodyRef::Inline(b) => (None, Some(b)),
            BodyRef::Shared(id) => (Some(id), None),
        };
        self.conn.prepare_cached(&q.sql.insert)?.execute(params![
            seq as i64,
            at as i64,
            row.priority,
            now as i64,
            row.message_id,
            row.md5,
            row.tag,
            row.attributes,
            Option::<&str>::None,
            body_ref,
            body,
        ])?;
        let key = pack(row.priority, seq);
        if row.delay_s == 0 {
            self.journal().add_visible(q, key);
        } else {
            self.journal().add_delayed(q, at, key);
        }
        q.next_sweep_ms = q
            .next_sweep_ms
            .min(now + ms(q.attrs.message_retention_period));
        self.op_counts.queue(q.id).enqueued += 1;
        Ok(at)
    }

    /// Publishes one unit atomically. Most units are one output for one queue: a single INSERT,
    /// which SQLite undoes by itself if it fails, so those run without the savepoint that
    /// costs every other request two statements and a copy of each page it touches.
    /// `published` collects the answers of an API publish; rule outputs need only success or
    /// failure.
    pub(crate) fn publish(
        &mut self,
        items: Vec<(String, PublishRequest, Digest)>,
        now: u64,
        published: Option<&mut Vec<Published>>,
    ) -> Result<()> {
        let targets = self.publish_targets(&items)?;
        let writes: usize = targets
            .iter()
            .map(|(subs, pushes)| {
                let raw = subs.iter().filter(|(_, b64)| !b64).count() + pushes.len();
                subs.len() + pushes.len() + usize::from(raw >= 2)
            })
            .sum();
        if writes > 1 {
            return self.in_savepoint(|w| w.publish_to(items, targets, now, published));
        }
        let mark = self.undo.len();
        self.publish_to(items, targets, now, published)
            .inspect_err(|_| {
                let mut undo = std::mem::take(&mut self.undo);
                self.cat.rollback(&mut undo, mark);
                self.undo = undo;
            })
    }

    /// Publishes each unit of rule outputs atomically on its own: a unit that fails (an unknown
    /// topic, a full store) is rolled back alone and answered with its error, and the rest go
    /// on, unless SQLite ended the whole transaction, which fails the request as a whole.
    pub(crate) fn publish_units(
        &mut self,
        units: Vec<Vec<(String, PublishRequest, Digest)>>,
    ) -> Result<Vec<Result<()>>> {
        let now = self.clock.now_ms();
        let mut results = Vec::with_capacity(units.len());
        // Counts of the units that committed only (`apply_ops` keeps a request's counts when it
        // succeeds, and this one succeeds whatever its units do).
        let mut kept = Counts::default();
        for items in units {
            self.op_counts.clear();
            match self.publish(items, now, None) {
                Ok(()) => {
                    kept.absorb(&mut self.op_counts);
                    results.push(Ok(()));
                }
                Err(e) => {
                    let e = self.classify(e);
                    if self.conn.is_autocommit() {
                        return Err(e);
                    }
                    results.push(Err(e));
                }
            }
        }
        self.op_counts = kept;
        Ok(results)
    }

    /// Each item's queue subscriptions (queue id, base64 body) and HTTP subscriptions. An unknown
    /// topic fails the unit here, before anything is written.
    #[allow(clippy::type_complexity)]
    fn publish_targets(
        &self,
        items: &[(String, PublishRequest, Digest)],
    ) -> Result<Vec<(Vec<(i64, bool)>, Vec<i64>)>> {
        self.check_space()?;
        // Resolve every topic first: an unknown topic fails the unit before anything is written.
        let mut targets = Vec::with_capacity(items.len());
        for (topic, req, _) in items {
            let t = self
                .cat
                .topics
                .get(topic)
                .ok_or_else(|| StoreError::TopicNotExist {
                    name: topic.clone(),
                })?;
            let matching = t.subs.values().filter(|s| match &s.spec.filter_tag {
                None => true,
                Some(f) => req.tag.as_deref() == Some(f.as_str()),
            });
            let mut subs: Vec<(i64, bool)> = Vec::new();
            let mut pushes: Vec<i64> = Vec::new();
            for s in matching {
                match &s.spec.endpoint {
                    Endpoint::Queue(q) => {
                        if let Some(&id) = self.cat.queue_ids.get(q) {
                            subs.push((id, s.spec.base64_body));
                        }
                    }
                    Endpoint::Http(_) => pushes.push(s.id),
                }
            }
            targets.push((subs, pushes));
        }
        Ok(targets)
    }

    #[allow(clippy::type_complexity)]
    fn publish_to(
        &mut self,
        items: Vec<(String, PublishRequest, Digest)>,
        targets: Vec<(Vec<(i64, bool)>, Vec<i64>)>,
        now: u64,
        mut published: Option<&mut Vec<Published>>,
    ) -> Result<()> {
        for ((topic, req, digest), (subs, pushes)) in items.iter().zip(targets) {
            self.op_counts.published(topic);
            let id = self.ids.next_at(now);
            let id_text = id.to_string();
            let md5 = digest.md5;
            let attributes = &digest.attributes;
            let raw_targets = subs.iter().filter(|(_, b64)| !b64).count() + pushes.len();
            let shared = if raw_targets >= 2 {
                self.conn
                    .prepare_cached("INSERT INTO bodies (refs, body) VALUES (?1, ?2)")?
                    .execute(params![raw_targets as i64, &req.body[..]])?;
                Some(self.conn.last_insert_rowid())
            } else {
                None
            };
            for &(qid, b64) in &subs {
                let encoded;
                let (body, md5_here) = if b64 {
                    use base64::Engine;
                    encoded = base64::engine::general_purpose::STANDARD.encode(&req.body);
                    (
                        BodyRef::Inline(encoded.as_bytes()),
                        md5_of(encoded.as_bytes()),
                    )
                } else if let Some(b) = shared {
                    (BodyRef::Shared(b), md5)
                } else {
                    (BodyRef::Inline(&req.body[..]), md5)
                };
                self.with_queue(qid, |w, q| {
                    let row = NewRow {
                        message_id: &id_text,
                        md5: &md5_here,
                        tag: req.tag.as_deref(),
                        attributes: attributes.as_deref(),
                        priority: DEFAULT_PRIORITY,
                        delay_s: q.attrs.delay_seconds,
                        body,
                    };
                    w.insert_row(q, &row, now)
                })?;
            }
            for &sub in &pushes {
                let body = match shared {
                    Some(b) => BodyRef::Shared(b),
                    None => BodyRef::Inline(&req.body[..]),
                };
                let row = NewRow {
                    message_id: &id_text,
                    md5: &md5,
                    tag: req.tag.as_deref(),
                    attributes: attributes.as_deref(),
                    priority: DEFAULT_PRIORITY,
                    delay_s: 0,
                    body,
                };
                self.push_insert(sub, &row, now)?;
            }
            if let Some(out) = published.as_deref_mut() {
                out.push(Published {
                    id,
                    body_md5: md5_hex(&md5),
                    enqueue_time_ms: now,
                    queues: subs.len() as u32,
                    pushes: pushes.len() as u32,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn send(
        &mut self,
        queue: &str,
        reqs: Vec<(SendRequest, Digest)>,
        now: u64,
    ) -> Result<Vec<Sent>> {
        let id = self.queue_id(queue)?;
        self.check_space()?;
        self.with_queue(id, |w, q| {
            let limit = q.attrs.maximum_message_size;
            if let Some((big, _)) = reqs.iter().find(|(r, _)| r.body.len() > limit as usize) {
                return Err(StoreError::MessageTooLarge {
                    size: big.body.len(),
                    limit,
                });
            }
            let mut out = Vec::with_capacity(reqs.len());
            for (req, digest) in &reqs {
                let id = w.ids.next_at(now);
                let id_text = id.to_string();
                let attributes = &digest.attributes;
                let row = NewRow {
                    message_id: &id_text,
                    md5: &digest.md5,
                    tag: req.tag.as_deref(),
                    attributes: attributes.as_deref(),
                    priority: req.priority.unwrap_or(DEFAULT_PRIORITY),
                    delay_s: req.delay_seconds.unwrap_or(q.attrs.delay_seconds),
                    body: BodyRef::Inline(&req.body[..]),
                };
                let at = w.insert_row(q, &row, now)?;
                out.push(Sent {
                    id,
                    body_md5: md5_hex(&digest.md5),
                    enqueue_time_ms: now,
                    next_visible_time_ms: at,
                });
            }
            Ok(out)
        })
    }

    /// Drops `n` references to a shared body, deleting it at zero.
    pub(crate) fn release_body(&mut self, body: i64, n: i64) -> Result<()> {
        let left: Option<i64> = self
            .conn
            .prepare_cached("UPDATE bodies SET refs = refs - ?2 WHERE id = ?1 RETURNING refs")?
            .query_row(params![body, n], |r| r.get(0))
            .optional()?;
        if left.is_some_and(|l| l <= 0) {
            self.conn
                .prepare_cached("DELETE FROM bodies WHERE id = ?1")?
                .execute([body])?;
        }
        Ok(())
    }

    /// Turns a row into a message, loading a shared body.
    pub(super) fn to_message(
        &self,
        row: RawRow,
        receipt_handle: Option<String>,
    ) -> Result<Message> {
        let body = match (row.body, row.body_ref) {
            (Some(b), _) => Bytes::from(b),
            (None, Some(id)) => {
                let b: Vec<u8> = self
                    .conn
                    .prepare_cached("SELECT body FROM bodies WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))?;
                Bytes::from(b)
            }
            (None, None) => Bytes::new(),
        };
        let attributes = match row.attributes {
            Some(a) => Attributes::from_json(a)
                .map_err(|e| StoreError::Internal(format!("message attributes: {e}")))?,
            None => Attributes::default(),
        };
        let dead_letter = match row.origin {
            Some(o) => Some(
                serde_json::from_str(&o)
                    .map_err(|e| StoreError::Internal(format!("dead-letter origin: {e}")))?,
            ),
            None => None,
        };
        Ok(Message {
            id: MessageId::parse(&row.message_id)
                .ok_or_else(|| StoreError::Internal("stored message id is malformed".into()))?,
            body,
            body_md5: md5_hex(&row.body_md5),
            tag: row.tag,
            attributes,
            priority: row.priority,
            enqueue_time_ms: row.enqueue_ms,
            first_dequeue_time_ms: row.first_dequeue_ms,
            next_visible_time_ms: row.next_visible_ms,
            dequeue_count: row.dequeue_count,
            receipt_handle,
            dead_letter,
        })
    }

    // ----- receiving -----

    pub(crate) fn receive(&mut self, queue: &str, max: usize) -> Result<Received> {
        let id = self.queue_id(queue)?;
        let now = self.clock.now_ms();
        let mut missing_dlq = None;
        let dlq = self.cat.queues.get(&id).and_then(|q| {
            let name = q.attrs.dead_letter_queue.as_ref()?;
            let limit = q.attrs.max_receive_count?;
            match self.cat.queue_ids.get(name) {
                Some(&dlq_id) => Some((dlq_id, limit)),
                None => {
                    missing_dlq = Some(name.clone());
                    None
                }
            }
        });
        if let Some(name) = missing_dlq {
            // Nothing is lost (messages keep being delivered); say it once per queue.
            if self.missing_dlq_warned.insert(id) {
                tracing::warn!(queue, dead_letter_queue = %name,
                    "dead-letter queue does not exist; delivering past max_receive_count");
            }
        }
        // No savepoint around the request: each claim is one UPDATE, which SQLite applies
        // whole or not at all, and the index follows each claim right after it. Whatever fails,
        // the database and the index agree on what was claimed; the messages claimed for an
        // answer that is not given are handed back in the next batch, as for a receiver gone.
        // (A savepoint would cost every receive two statements and a copy of each page it
        // touched.)
        let mut messages = Vec::with_capacity(max);
        let claimed = loop {
            let next = self.with_queue(id, |w, q| w.claim_visible(q, &mut messages, max, dlq, now));
            match next {
                // Received as often as allowed: moved, in several writes, all or none.
                Ok(Some((dlq_id, key))) => {
                    let moved = self.in_savepoint(|w| {
                        w.with_queue(id, |w, q| w.move_to_dead_letter(q, dlq_id, key, now))
                    });
                    if let Err(e) = moved {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = claimed {
            // Unless SQLite rolled the transaction back: the claims are undone with it.
            if !self.conn.is_autocommit() {
                self.give_back(queue, messages);
            }
            return Err(e);
        }
        let q = self
            .cat
            .queues
            .get(&id)
            .ok_or_else(|| StoreError::Internal(format!("queue id {id} not in the catalog")))?;
        Ok(Received {
            messages,
            polling_wait_seconds: q.attrs.polling_wait_seconds,
            next_visible_ms: q.idx.earliest_invisible(),
        })
    }

    /// Claims visible messages of `q` into `messages` until it holds `max` or none is left.
    /// Stops early at a message received as often as its dead-letter queue allows, and returns
    /// it (the dead-letter queue's id and the message's key) to be moved.
    fn claim_visible(
        &mut self,
        q: &mut QueueState,
        messages: &mut Vec<Message>,
        max: usize,
        dlq: Option<(i64, u32)>,
        now: u64,
    ) -> Result<Option<(i64, u64)>> {
        self.journal().promote(q, now);
        let vt = ms(q.attrs.visibility_timeout);
        // One lookup in the statement cache per pass, not two per message.
        let mut read = self.conn.prepare_cached(&q.sql.row)?;
        let mut claim = self.conn.prepare_cached(&q.sql.claim)?;
        while messages.len() < max {
            let Some(&key) = q.idx.visible.first() else {
                break;
            };
            let (_, seq) = unpack(key);
            let row = read.query_row([seq as i64], RawRow::read).optional()?;
            let mut journal = Journal {
                undo: &mut self.undo,
                wake: &mut self.wake,
            };
            match (row, dlq) {
                (Some(row), Some((dlq_id, limit))) if row.dequeue_count >= limit => {
                    return Ok(Some((dlq_id, key)));
                }
                (Some(mut row), _) => {
                    let gen = Receipt::new_gen();
                    let at = now + vt;
                    claim.execute(params![at as i64, gen, now as i64, seq as i64])?;
                    row.next_visible_ms = at;
                    row.dequeue_count += 1;
                    row.first_dequeue_ms.get_or_insert(now);
                    journal.remove_visible(q, key);
                    journal.add_inflight(q, at, key);
                    let handle = Receipt { seq, gen }.encode();
                    self.op_counts.queue(q.id).received += 1;
                    messages.push(self.to_message(row, Some(handle))?);
                }
                (None, _) => {
                    tracing::error!(queue = %q.name, seq, "indexed message has no row; dropped from the index");
                    journal.remove_visible(q, key);
                }
            }
        }
        Ok(None)
    }

    /// Moves a visible message to the dead-letter queue in the current transaction: inserted
    /// there with its origin, deleted here (never in both, never in neither).
    pub(crate) fn move_to_dead_letter(
        &mut self,
        q: &mut QueueState,
        dlq_id: i64,
        key: u64,
        now: u64,
    ) -> Result<()> {
        let (priority, seq) = unpack(key);
        let (message_id, count, enqueued): (String, i64, i64) = self
            .conn
            .prepare_cached(&q.sql.origin_src)?
            .query_row([seq as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let origin = DeadLetterOrigin {
            source_queue: q.name.clone(),
            source_subscription: None,
            original_id: message_id.clone(),
            dequeue_count: count as u32,
            original_enqueue_time_ms: enqueued as u64,
            last_error: None,
        };
        let origin =
            serde_json::to_string(&origin).map_err(|e| StoreError::Internal(e.to_string()))?;
        let dlq = self
            .cat
            .queues
            .get_mut(&dlq_id)
            .ok_or_else(|| StoreError::Internal("dead-letter queue vanished".into()))?;
        let dseq = dlq.next_seq;
        dlq.next_seq += 1;
        let copied = self.conn.execute(
            &format!(
                "INSERT INTO {} (seq, next_visible_ms, receipt_gen, dequeue_count, \
                 first_dequeue_ms, priority, enqueue_ms, message_id, body_md5, tag, attributes, \
                 origin, body_ref, body) SELECT ?1, ?2, 0, 0, NULL, priority, ?2, message_id, \
                 body_md5, tag, attributes, ?3, body_ref, body FROM {} WHERE seq = ?4",
                queue_table(dlq_id),
                queue_table(q.id)
            ),
            params![dseq as i64, now as i64, origin, seq as i64],
        )?;
        if copied != 1 {
            return Err(StoreError::Internal(format!(
                "dead-letter copy of seq {seq} wrote {copied} rows"
            )));
        }
        self.conn
            .prepare_cached(&q.sql.delete)?
            .execute([seq as i64])?;
        let mut j = Journal {
            undo: &mut self.undo,
            wake: &mut self.wake,
        };
        j.add_visible(dlq, pack(priority, dseq));
        dlq.next_sweep_ms = dlq
            .next_sweep_ms
            .min(now + ms(dlq.attrs.message_retention_period));
        j.remove_visible(q, key);
        self.conn
            .prepare_cached(
                "UPDATE queues SET dead_lettered_total = dead_lettered_total + 1 WHERE id = ?1",
            )?
            .execute([q.id])?;
        q.dead_lettered_total += 1;
        self.undo.push(Undo::Counters {
            queue: q.id,
            expired: 0,
            dead_lettered: 1,
        });
        tracing::info!(queue = %q.name, message_id = %message_id, dequeue_count = count,
            "message moved to the dead-letter queue");
        Ok(())
    }

    pub(crate) fn peek(&mut self, queue: &str, max: usize) -> Result<Vec<Message>> {
        let id = self.queue_id(queue)?;
        let now = self.clock.now_ms();
        self.with_queue(id, |w, q| {
            w.journal().promote(q, now);
            let keys: Vec<u64> = q.idx.visible.iter().take(max).copied().collect();
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let (_, seq) = unpack(key);
                let row = w
                    .conn
                    .prepare_cached(&q.sql.row)?
                    .query_row([seq as i64], RawRow::read)
                    .optional()?;
                if let Some(row) = row {
                    out.push(w.to_message(row, None)?);
                }
            }
            Ok(out)
        })
    }

    // ----- handles -----

    pub(super) fn row_state(&self, q: &QueueState, seq: u64) -> Result<Option<RowState>> {
        let mut stmt = self.conn.prepare_cached(&q.sql.state)?;
        read_state(&mut stmt, seq)
    }

    /// Where `receipt` stands with its row (reads only, so a refusal changes nothing).
    pub(super) fn lease(&self, q: &QueueState, receipt: Receipt, now: u64) -> Result<Lease> {
        Ok(lease_of(self.row_state(q, receipt.seq)?, receipt, now))
    }

    /// Deletes by handles, one result per handle in order. The outer error is a database failure
    /// (fails the whole request); an inner one is that handle's refusal, decided before anything
    /// is written.
    ///
    /// Without a savepoint around the request: a row whose body is its own is deleted by one
    /// DELETE, which SQLite applies whole or not at all, and the index and tombstone follow each
    /// delete right after it. So if a later delete fails, the database and the index agree on
    /// what was deleted, and the same handles sent again answer "deleted" for those. Rows
    /// sharing a body go with their share of it: those deletes run in one savepoint.
    pub(crate) fn delete_batch(
        &mut self,
        q: &mut QueueState,
        handles: &[String],
    ) -> Result<Vec<Result<()>>> {
        let now = self.clock.now_ms();
        let mut results = Vec::with_capacity(handles.len());
        // First decided, reading only: which handles hold their message.
        let mut doomed: Vec<(Receipt, RowState)> = Vec::with_capacity(handles.len());
        {
            let mut state = self.conn.prepare_cached(&q.sql.state)?;
            for handle in handles {
                let receipt = match Receipt::decode(handle) {
                    Ok(r) => r,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
                // The same handle twice in one request: deleted once, answered twice.
                if doomed
                    .iter()
                    .any(|(r, _)| r.seq == receipt.seq && r.gen == receipt.gen)
                {
                    results.push(Ok(()));
                    continue;
                }
                match lease_of(read_state(&mut state, receipt.seq)?, receipt, now) {
                    Lease::Held(st) => {
                        doomed.push((receipt, st));
                        results.push(Ok(()));
                    }
                    Lease::Stale(reason) => {
                        results.push(Err(StoreError::ReceiptHandleStale { reason }));
                    }
                    Lease::Gone if q.tombstones.matches(receipt.seq, receipt.gen, now) => {
                        results.push(Ok(())); // deleted before with this very handle
                    }
                    Lease::Gone => results.push(Err(StoreError::MessageNotExist {
                        queue: q.name.clone(),
                    })),
                }
            }
        }
        if doomed.iter().any(|(_, st)| st.body_ref.is_some()) {
            // Only SQL inside: the index follows once the savepoint is released.
            self.in_savepoint(|w| {
                let mut delete = w.conn.prepare_cached(&q.sql.delete)?;
                for (receipt, _) in &doomed {
                    delete.execute([receipt.seq as i64])?;
                }
                drop(delete);
                for body in doomed.iter().filter_map(|(_, st)| st.body_ref) {
                    w.release_body(body, 1)?;
                }
                Ok(())
            })?;
            let mut j = Journal {
                undo: &mut self.undo,
                wake: &mut self.wake,
            };
            for (receipt, st) in &doomed {
                forget_deleted(&mut j, &mut self.op_counts, q, *receipt, st, now);
            }
        } else {
            let mut delete = self.conn.prepare_cached(&q.sql.delete)?;
            let mut j = Journal {
                undo: &mut self.undo,
                wake: &mut self.wake,
            };
            for (receipt, st) in &doomed {
                delete.execute([receipt.seq as i64])?;
                forget_deleted(&mut j, &mut self.op_counts, q, *receipt, st, now);
            }
        }
        Ok(results)
    }

    pub(crate) fn change_visibility(
        &mut self,
        queue: &str,
        handle: &str,
        secs: u32,
        now: u64,
    ) -> Result<VisibilityChanged> {
        // The queue first, as for delete: an unknown queue is `QueueNotExist` whatever the handle.
        let id = self.queue_id(queue)?;
        let receipt = Receipt::decode(handle)?;
        self.with_queue(id, |w, q| {
            let st = match w.lease(q, receipt, now)? {
                Lease::Held(st) => st,
                Lease::Stale(reason) => return Err(StoreError::ReceiptHandleStale { reason }),
                Lease::Gone => {
                    return Err(StoreError::MessageNotExist {
                        queue: q.name.clone(),
                    })
                }
            };
            let gen = Receipt::new_gen();
            let at = now + ms(secs);
            w.conn
                .prepare_cached(&q.sql.set_visibility)?
                .execute(params![at as i64, gen, receipt.seq as i64])?;
            let key = pack(st.priority, receipt.seq);
            let mut j = w.journal();
            j.remove_any(q, st.next_visible_ms, key);
            j.add_inflight(q, at, key);
            Ok(VisibilityChanged {
                receipt_handle: Receipt {
                    seq: receipt.seq,
                    gen,
                }
                .encode(),
                next_visible_time_ms: at,
            })
        })
    }

    /// Gives back a claim whose requester went away: visible now, dequeue count restored, the
    /// unanswered handle invalidated.
    pub(crate) fn release(&mut self, queue: &str, receipt: Receipt) -> Result<()> {
        let Ok(id) = self.queue_id(queue) else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        self.with_queue(id, |w, q| {
            let Lease::Held(st) = w.lease(q, receipt, now)? else {
                return Ok(()); // deleted, expired or re-leased meanwhile: nothing to give back
            };
            w.conn.prepare_cached(&q.sql.release)?.execute(params![
                now as i64,
                Receipt::new_gen(),
                receipt.seq as i64
            ])?;
            let key = pack(st.priority, receipt.seq);
            let mut j = w.journal();
            j.remove_any(q, st.next_visible_ms, key);
            j.add_visible(q, key);
            Ok(())
        })
    }
}

/// The index after the row of `receipt` was deleted: out of the index, its handle kept as a
/// tombstone (a repeated delete with it succeeds), counted.
fn forget_deleted(
    j: &mut Journal<'_>,
    counts: &mut Counts,
    q: &mut QueueState,
    receipt: Receipt,
    st: &RowState,
    now: u64,
) {
    let key = pack(st.priority, receipt.seq);
    if !j.remove_any(q, st.next_visible_ms, key) {
        tracing::error!(queue = %q.name, seq = receipt.seq, "deleted message was not indexed");
    }
    j.add_tombstone(q, receipt.seq, receipt.gen, st.next_visible_ms, now);
    counts.queue(q.id).deleted += 1;
}

/// A row's lease state, read with the queue's `state` statement.
fn read_state(stmt: &mut rusqlite::Statement<'_>, seq: u64) -> Result<Option<RowState>> {
    Ok(stmt
        .query_row([seq as i64], |r| {
            Ok(RowState {
                gen: r.get(0)?,
                next_visible_ms: r.get::<_, i64>(1)? as u64,
                priority: r.get::<_, i64>(2)? as u8,
                body_ref: r.get(3)?,
            })
        })
        .optional()?)
}

/// Where `receipt` stands with the row state read for it.
fn lease_of(state: Option<RowState>, receipt: Receipt, now: u64) -> Lease {
    match state {
        Some(st) if st.gen == receipt.gen && st.next_visible_ms > now => Lease::Held(st),
        Some(st) if st.gen == receipt.gen => Lease::Stale("its visibility timeout has ended"),
        Some(_) => Lease::Stale("a later receive or visibility change replaced it"),
        None => Lease::Gone,
    }
}
