//! The retention sweep: messages older than their queue's `message_retention_period` are
//! removed and counted, never silently.

use rusqlite::params;

use super::*;

impl Writer {
    // ----- retention -----

    /// Removes messages older than their queue's retention period, counting them; returns how
    /// many.
    pub(super) fn sweep_due(&mut self) -> Result<u64> {
        let now = self.clock.now_ms();
        let due: Vec<i64> = self
            .cat
            .queues
            .values()
            .filter(|q| q.next_sweep_ms <= now)
            .map(|q| q.id)
            .collect();
        let mut total = 0;
        for id in due {
            total += self.with_queue(id, |w, q| w.sweep_queue(q, now))?;
        }
        Ok(total)
    }

    pub(super) fn sweep_queue(&mut self, q: &mut QueueState, now: u64) -> Result<u64> {
        let retention = ms(q.attrs.message_retention_period);
        let rows: Vec<(u64, u64, u64, u8, Option<i64>)> = {
            let mut stmt = self.conn.prepare_cached(&q.sql.sweep)?;
            let rows = stmt.query_map([SWEEP_ROWS], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u8,
                    r.get(4)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        // Rows are in enqueue order; stop at the first one still within retention.
        let mut next_sweep = u64::MAX;
        let mut expired = 0u64;
        let full_page = rows.len() as i64 == SWEEP_ROWS;
        for (seq, enqueued, at, priority, body_ref) in rows {
            let expires = enqueued.saturating_add(retention);
            if expires > now {
                next_sweep = expires;
                break;
            }
            self.conn
                .prepare_cached(&q.sql.delete)?
                .execute([seq as i64])?;
            if let Some(body) = body_ref {
                self.release_body(body, 1)?;
            }
            self.journal().remove_any(q, at, pack(priority, seq));
            expired += 1;
        }
        if next_sweep == u64::MAX && full_page {
            next_sweep = now; // more to look at in the next batch
        }
        q.next_sweep_ms = next_sweep;
        if expired > 0 {
            self.conn
                .prepare_cached(
                    "UPDATE queues SET expired_total = expired_total + ?2 WHERE id = ?1",
                )?
                .execute(params![q.id, expired as i64])?;
            q.expired_total += expired;
            self.undo.push(Undo::Counters {
                queue: q.id,
                expired,
                dead_lettered: 0,
            });
            tracing::warn!(queue = %q.name, expired, retention_seconds = q.attrs.message_retention_period,
                "messages removed at the end of their retention period");
        }
        Ok(expired)
    }
}
