//! Catalog requests: topics, queues, subscriptions and queue info.

use rusqlite::{params, OptionalExtension};

use super::*;

impl Writer {
    // ----- catalog -----

    pub(crate) fn snapshot_topics(&mut self) {
        self.undo.push(Undo::Topics(self.cat.topics.clone()));
    }

    pub(crate) fn create_topic(&mut self, name: &str, now: u64) -> Result<bool> {
        if self.cat.topics.contains_key(name) {
            return Ok(false);
        }
        self.conn
            .prepare_cached("INSERT INTO topics (name, create_time_ms) VALUES (?1, ?2)")?
            .execute(params![name, now as i64])?;
        let id = self.conn.last_insert_rowid();
        self.snapshot_topics();
        self.cat.topics.insert(
            name.to_owned(),
            TopicState {
                id,
                subs: BTreeMap::new(),
            },
        );
        Ok(true)
    }

    pub(crate) fn delete_topic(&mut self, name: &str) -> Result<bool> {
        let Some(t) = self.cat.topics.get(name) else {
            return Ok(false);
        };
        let id = t.id;
        let push_subs: Vec<i64> = t.subs.values().map(|s| s.id).collect();
        for sub in push_subs {
            self.push_forget(sub)?;
        }
        self.conn
            .prepare_cached("DELETE FROM subscriptions WHERE topic_id = ?1")?
            .execute([id])?;
        self.conn
            .prepare_cached("DELETE FROM topics WHERE id = ?1")?
            .execute([id])?;
        self.snapshot_topics();
        self.cat.topics.remove(name);
        Ok(true)
    }

    pub(crate) fn check_dead_letter_queue(
        &self,
        queue: &str,
        attrs: &QueueAttributes,
    ) -> Result<()> {
        if let Some(dlq) = &attrs.dead_letter_queue {
            if dlq == queue {
                return Err(StoreError::invalid(
                    "dead_letter_queue",
                    "a queue cannot be its own dead-letter queue",
                ));
            }
            if !self.cat.queue_ids.contains_key(dlq) {
                return Err(StoreError::invalid(
                    "dead_letter_queue",
                    format!("queue `{dlq}` does not exist"),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn create_queue(
        &mut self,
        name: &str,
        attrs: QueueAttributes,
        now: u64,
    ) -> Result<bool> {
        if let Some(&id) = self.cat.queue_ids.get(name) {
            return if self.cat.queues.get(&id).is_some_and(|q| q.attrs == attrs) {
                Ok(false)
            } else {
                Err(StoreError::QueueAlreadyExist {
                    name: name.to_owned(),
                })
            };
        }
        self.check_dead_letter_queue(name, &attrs)?;
        let json =
            serde_json::to_string(&attrs).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO queues (name, create_time_ms, attributes) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, now as i64, json])?;
        let id = self.conn.last_insert_rowid();
        self.conn.execute_batch(&queue_table_ddl(id))?;
        self.cat.queue_ids.insert(name.to_owned(), id);
        self.cat.queues.insert(
            id,
            QueueState {
                id,
                name: name.to_owned(),
                attrs,
                create_time_ms: now,
                idx: QueueIndex::default(),
                next_seq: 1,
                next_sweep_ms: u64::MAX,
                expired_total: 0,
                dead_lettered_total: 0,
                tombstones: Tombstones::default(),
                sql: QueueSql::new(id),
            },
        );
        self.undo.push(Undo::QueueAdded(id));
        Ok(true)
    }

    pub(crate) fn set_queue_attributes(
        &mut self,
        name: &str,
        attrs: QueueAttributes,
        now: u64,
    ) -> Result<()> {
        let id = self.queue_id(name)?;
        self.check_dead_letter_queue(name, &attrs)?;
        let json =
            serde_json::to_string(&attrs).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.conn
            .prepare_cached("UPDATE queues SET attributes = ?1 WHERE id = ?2")?
            .execute(params![json, id])?;
        if let Some(q) = self.cat.queues.get_mut(&id) {
            let old = std::mem::replace(&mut q.attrs, attrs);
            q.next_sweep_ms = now;
            self.undo.push(Undo::QueueAttrs(id, old));
        }
        Ok(())
    }

    pub(crate) fn delete_queue(&mut self, name: &str) -> Result<bool> {
        let Some(&id) = self.cat.queue_ids.get(name) else {
            return Ok(false);
        };
        // Subscriptions that deliver to it go with it.
        let mut sub_ids = Vec::new();
        for t in self.cat.topics.values() {
            for s in t.subs.values() {
                if matches!(&s.spec.endpoint, Endpoint::Queue(q) if q == name) {
                    sub_ids.push(s.id);
                }
            }
        }
        if !sub_ids.is_empty() {
            for sid in &sub_ids {
                self.conn
                    .prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?
                    .execute([sid])?;
            }
            self.snapshot_topics();
            for t in self.cat.topics.values_mut() {
                t.subs.retain(|_, s| !sub_ids.contains(&s.id));
            }
            tracing::info!(
                queue = name,
                subscriptions = sub_ids.len(),
                "subscriptions removed with their queue"
            );
        }
        // Shared bodies lose this queue's references.
        let refs: Vec<(i64, i64)> = {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT body_ref, COUNT(*) FROM {} WHERE body_ref IS NOT NULL GROUP BY body_ref",
                queue_table(id)
            ))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (body, n) in refs {
            self.release_body(body, n)?;
        }
        self.conn
            .execute_batch(&format!("DROP TABLE {}", queue_table(id)))?;
        self.conn
            .prepare_cached("DELETE FROM queues WHERE id = ?1")?
            .execute([id])?;
        if let Some(q) = self.cat.queues.remove(&id) {
            self.cat.queue_ids.remove(&q.name);
            self.undo.push(Undo::QueueRemoved(Box::new(q)));
        }
        self.wake_names.push(name.to_owned());
        Ok(true)
    }

    /// The topic's id for a new subscription `name`, or `None` when an identical one exists
    /// (create is idempotent); a different subscription of that name is refused. Shared by
    /// queue and HTTP subscriptions.
    pub(crate) fn topic_for_new_subscription(
        &self,
        topic: &str,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<Option<i64>> {
        let Some(t) = self.cat.topics.get(topic) else {
            return Err(StoreError::TopicNotExist {
                name: topic.to_owned(),
            });
        };
        match t.subs.get(name) {
            None => Ok(Some(t.id)),
            Some(existing) if existing.spec == *spec => Ok(None),
            Some(_) => Err(StoreError::SubscriptionAlreadyExist {
                topic: topic.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    pub(crate) fn create_subscription(
        &mut self,
        topic: &str,
        name: &str,
        spec: SubscriptionSpec,
        now: u64,
    ) -> Result<bool> {
        let Some(topic_id) = self.topic_for_new_subscription(topic, name, &spec)? else {
            return Ok(false);
        };
        match &spec.endpoint {
            Endpoint::Queue(queue) => {
                if !self.cat.queue_ids.contains_key(queue) {
                    return Err(StoreError::QueueNotExist {
                        name: queue.clone(),
                    });
                }
            }
            // Created through `push_create`, which adds the secret and the push state.
            Endpoint::Http(_) => {
                return Err(StoreError::invalid(
                    "http",
                    "HTTP subscriptions are created with Store::create_push_subscription",
                ))
            }
        }
        let json = serde_json::to_string(&spec).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO subscriptions (topic_id, name, spec, create_time_ms) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![topic_id, name, json, now as i64])?;
        let id = self.conn.last_insert_rowid();
        self.snapshot_topics();
        if let Some(t) = self.cat.topics.get_mut(topic) {
            t.subs.insert(name.to_owned(), SubState { id, spec });
        }
        Ok(true)
    }

    pub(crate) fn delete_subscription(&mut self, topic: &str, name: &str) -> Result<bool> {
        let Some(t) = self.cat.topics.get(topic) else {
            return Err(StoreError::TopicNotExist {
                name: topic.to_owned(),
            });
        };
        let Some(s) = t.subs.get(name) else {
            return Ok(false);
        };
        let id = s.id;
        self.push_forget(id)?;
        self.conn
            .prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?
            .execute([id])?;
        self.snapshot_topics();
        if let Some(t) = self.cat.topics.get_mut(topic) {
            t.subs.remove(name);
        }
        Ok(true)
    }

    pub(crate) fn queue_info(&mut self, id: i64) -> Result<QueueInfo> {
        let now = self.clock.now_ms();
        self.with_queue(id, |w, q| {
            w.journal().promote(q, now);
            let oldest: Option<i64> = w
                .conn
                .prepare_cached(&q.sql.oldest)?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(QueueInfo {
                name: q.name.clone(),
                attributes: q.attrs.clone(),
                create_time_ms: q.create_time_ms,
                active_messages: q.idx.visible.len() as u64,
                inactive_messages: q.idx.inflight.len() as u64,
                delayed_messages: q.idx.delayed.len() as u64,
                oldest_message_age_ms: oldest.map(|t| now.saturating_sub(t as u64)),
                expired_total: q.expired_total,
                dead_lettered_total: q.dead_lettered_total,
            })
        })
    }
}
