//! Dead letters: orders whose tries ran out and payloads that can never be orders. Each is an
//! entry in a hash by id (the order id, or a new id for a payload without one) and a member of
//! an index sorted by when it failed, so one is found, retried or deleted by id without a scan,
//! and the list is paged by a cursor at any size.

use super::script::Lua;
use super::{Queue, QueueError};
use crate::order::Job;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

static REVIVE: Lua = Lua::new(include_str!("revive.lua"));
static REMOVE: Lua = Lua::new(include_str!("remove_dead_letter.lua"));
static PAGE: Lua = Lua::new(include_str!("dead_letters_page.lua"));
static ADOPT: Lua = Lua::new(include_str!("adopt_listed_dead_letters.lua"));
static PURGE: Lua = Lua::new(include_str!("purge_dead_letters.lua"));

/// Dead letters one filtered page looks at, at most: a filter that matches little answers a
/// short page with a cursor rather than walking the whole index in one call.
pub const DEAD_LETTER_SCAN: usize = 2_000;

/// Index entries read per script call.
const SCAN_CHUNK: usize = 500;

/// One dead letter as stored and as `GET /dead-letters` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The order id, or a new id when the payload has none.
    pub id: String,
    pub order_id: Option<Uuid>,
    pub customer_id: Option<String>,
    pub total: Option<serde_json::Value>,
    /// The error of each failed try, oldest first.
    pub errors: Vec<String>,
    pub failed_at: String,
    /// The payload as it was queued.
    pub payload: String,
    /// Its member in the index: when it failed (Unix ms, 15 digits) and its id.
    #[serde(skip_serializing)]
    pub key: String,
}

impl DeadLetter {
    /// The dead letter of `payload`, failed now with these errors.
    pub fn new(payload: &[u8], order_id: Option<Uuid>, errors: &[String]) -> DeadLetter {
        DeadLetter::at(
            payload,
            order_id,
            errors.to_vec(),
            OffsetDateTime::now_utc(),
        )
    }

    fn at(
        payload: &[u8],
        order_id: Option<Uuid>,
        errors: Vec<String>,
        failed_at: OffsetDateTime,
    ) -> DeadLetter {
        let id = order_id.unwrap_or_else(Uuid::new_v4).to_string();
        let parsed: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
        let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).cloned();
        let ms = (failed_at.unix_timestamp_nanos() / 1_000_000).max(0);
        DeadLetter {
            key: format!("{ms:015}:{id}"),
            id,
            order_id,
            customer_id: field("customer_id").and_then(|v| v.as_str().map(str::to_string)),
            total: field("total"),
            errors,
            failed_at: failed_at.format(&Rfc3339).unwrap_or_default(),
            payload: String::from_utf8_lossy(payload).into_owned(),
        }
    }

    /// As stored: the JSON of all its fields, `key` included.
    pub fn to_stored(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["key"] = self.key.clone().into();
        v.to_string()
    }

    fn from_stored(entry: &str) -> Option<DeadLetter> {
        serde_json::from_str(entry).ok()
    }

    /// Whether it matches a filter: the customer exactly, the text in any of its errors
    /// (ignoring case).
    pub fn matches(&self, filter: &DeadLetterFilter) -> bool {
        let customer = filter
            .customer_id
            .as_deref()
            .is_none_or(|c| self.customer_id.as_deref() == Some(c));
        let error = filter.error.as_deref().is_none_or(|text| {
            let text = text.to_lowercase();
            self.errors.iter().any(|e| e.to_lowercase().contains(&text))
        });
        customer && error
    }
}

/// Which dead letters a page or a bulk retry takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    pub customer_id: Option<String>,
    pub error: Option<String>,
}

impl DeadLetterFilter {
    fn is_empty(&self) -> bool {
        self.customer_id.is_none() && self.error.is_none()
    }
}

/// A page of dead letters and where the next one starts (`None`: none left).
#[derive(Debug, Default)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    pub next: Option<String>,
}

/// The entry of the list earlier versions kept.
#[derive(Deserialize)]
struct Listed {
    order_id: Option<Uuid>,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    errors: Vec<String>,
    failed_at: Option<String>,
}

impl Queue {
    /// How many dead letters there are.
    pub async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        Ok(self.conn().hlen(self.keys.dead_entries()).await?)
    }

    /// The dead letters after `after` (an index key a page ended on; `None` from the newest),
    /// newest first: up to `limit` that match `filter`, looking at no more than
    /// [`DEAD_LETTER_SCAN`] when filtering. `next` is where to go on from, when anything is left.
    pub async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &DeadLetterFilter,
    ) -> Result<DeadLetterPage, QueueError> {
        let mut start = after.map_or_else(|| "+".to_string(), |k| format!("({k}"));
        let mut page = DeadLetterPage::default();
        let mut scanned = 0;
        loop {
            let chunk = if filter.is_empty() {
                limit - page.dead_letters.len()
            } else {
                SCAN_CHUNK.min(DEAD_LETTER_SCAN - scanned)
            };
            let reply: Vec<String> = PAGE
                .call(&[self.keys.dead_index(), self.keys.dead_entries()])
                .arg(&start)
                .arg(chunk)
                .run(&mut self.conn())
                .await?;
            for pair in reply.chunks_exact(2) {
                let (key, entry) = (&pair[0], &pair[1]);
                scanned += 1;
                match DeadLetter::from_stored(entry) {
                    Some(mut letter) if letter.matches(filter) => {
                        letter.key = key.clone();
                        page.dead_letters.push(letter);
                    }
                    _ => {}
                }
                if page.dead_letters.len() == limit {
                    page.next = Some(key.clone());
                    return Ok(page);
                }
            }
            let last = reply.len().checked_sub(2).map(|i| reply[i].clone());
            match last {
                // Fewer than asked: the end of the index.
                _ if reply.len() / 2 < chunk => return Ok(page),
                Some(last) if scanned >= DEAD_LETTER_SCAN => {
                    page.next = Some(last);
                    return Ok(page);
                }
                Some(last) => start = format!("({last}"),
                None => return Ok(page),
            }
        }
    }

    /// The dead letters of these ids that exist.
    pub async fn dead_letters_by_id(&self, ids: &[String]) -> Result<Vec<DeadLetter>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.dead_entries())
            .arg(ids)
            .query_async(&mut self.conn())
            .await?;
        Ok(entries
            .iter()
            .flatten()
            .filter_map(|e| DeadLetter::from_stored(e))
            .collect())
    }

    /// Puts dead letters back on the queue as these jobs; the ids of those still there.
    pub async fn revive(&self, letters: &[(&DeadLetter, Job)]) -> Result<Vec<String>, QueueError> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.keys;
        let mut call = REVIVE.call(&[
            keys.dead_entries(),
            keys.dead_index(),
            keys.pending(),
            keys.queue(),
        ]);
        for (letter, job) in letters {
            call.arg(&letter.id)
                .arg(&letter.key)
                .arg(job.order_id.to_string())
                .arg(job.to_payload());
        }
        Ok(call.run(&mut self.conn()).await?)
    }

    /// Deletes one dead letter; false when there is none of this id.
    pub async fn remove_dead_letter(&self, id: &str) -> Result<bool, QueueError> {
        let removed: i64 = REMOVE
            .call(&[self.keys.dead_entries(), self.keys.dead_index()])
            .arg(id)
            .run(&mut self.conn())
            .await?;
        Ok(removed == 1)
    }

    /// Deletes every dead letter; how many there were.
    pub async fn purge_dead_letters(&self) -> Result<u64, QueueError> {
        let keys = &self.keys;
        Ok(PURGE
            .call(&[keys.dead_entries(), keys.dead_index(), keys.dead()])
            .run(&mut self.conn())
            .await?)
    }

    /// Moves the dead letters that earlier versions kept in a list into the hash and the index;
    /// how many. Safe to run from several processes at once.
    pub async fn adopt_listed_dead_letters(&self) -> Result<u64, QueueError> {
        let keys = &self.keys;
        let mut moved = 0;
        loop {
            let listed: Vec<String> = self.conn().lrange(keys.dead(), -500, -1).await?;
            if listed.is_empty() {
                return Ok(moved);
            }
            let mut call = ADOPT.call(&[keys.dead(), keys.dead_entries(), keys.dead_index()]);
            for entry in &listed {
                let old: Option<Listed> = serde_json::from_str(entry).ok();
                let letter = match old {
                    Some(old) => {
                        let failed_at = old
                            .failed_at
                            .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
                            .unwrap_or_else(OffsetDateTime::now_utc);
                        DeadLetter::at(old.payload.as_bytes(), old.order_id, old.errors, failed_at)
                    }
                    None => DeadLetter::new(entry.as_bytes(), None, &[]),
                };
                call.arg(entry)
                    .arg(&letter.id)
                    .arg(letter.to_stored())
                    .arg(&letter.key);
            }
            let n: u64 = call.run(&mut self.conn()).await?;
            moved += n;
            if n == 0 {
                // Another process is moving the same entries; it finishes them.
                return Ok(moved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_failure_time() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = DeadLetter::at(b"{}", None, vec![], t);
        let b = DeadLetter::at(b"{}", None, vec![], t + time::Duration::milliseconds(1));
        assert!(a.key < b.key);
        assert_eq!(a.key.len(), 15 + 1 + 36);
        let stored = DeadLetter::from_stored(&a.to_stored()).unwrap();
        assert_eq!(stored.key, a.key);
    }

    #[test]
    fn filters_match_customer_and_error_text() {
        let payload = br#"{"order_id":"0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a","customer_id":"c-1"}"#;
        let letter = DeadLetter::new(payload, None, &["Database Timeout".into()]);
        let f = |c: Option<&str>, e: Option<&str>| DeadLetterFilter {
            customer_id: c.map(str::to_string),
            error: e.map(str::to_string),
        };
        assert!(letter.matches(&f(None, None)));
        assert!(letter.matches(&f(Some("c-1"), Some("timeout"))));
        assert!(!letter.matches(&f(Some("c-2"), None)));
        assert!(!letter.matches(&f(None, Some("refused"))));
    }
}
