//! The event log as clients read it (spec §7.4–§7.6): where a reader that resumes starts, what
//! retention already deleted, the backlog in batches, and history pages.

use super::Runtime;
use crate::error::ApiError;
use crate::events::filter::Filter;
use crate::events::hub::{StoredEvent, Subscription};
use crate::scope::Scope;
use crate::store::{self, Db};

/// How many events one read of the log takes.
pub const BATCH: i64 = 500;

/// A live reader: events after `start` come from the backlog, then from `subscription`.
pub struct Opening {
    pub start: i64,
    /// The oldest retained event, when events after the resume point were already deleted.
    pub reset: Option<i64>,
    pub subscription: Subscription,
}

/// Where a reader resuming after `after` must start, and the oldest retained event when events
/// after `after` were already deleted by retention (spec §7.4 rule 3).
async fn resume_point(db: &Db, scope: &Scope, after: i64, latest: i64) -> Result<(i64, Option<i64>), ApiError> {
    if after >= latest {
        return Ok((after, None));
    }
    let oldest = store::events::oldest(&db.pool, scope).await?.unwrap_or(latest + 1);
    if oldest > after + 1 {
        Ok((oldest - 1, Some(oldest)))
    } else {
        Ok((after, None))
    }
}

/// Opens a live reader of `scope`, from now or after the event `resume` (spec §7.4), which
/// must be an id of this scope's log.
pub async fn open(rt: &Runtime, scope: &Scope, resume: Option<&str>) -> Result<Opening, ApiError> {
    let latest = store::events::latest(&rt.db.pool, scope).await?;
    let resume = match resume {
        None => None,
        Some(text) => match text.trim().parse::<i64>() {
            Ok(n) if (0..=latest).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::invalid_field(
                    "Last-Event-ID",
                    format!("must be an event id from 0 to {latest} (the latest of this project and environment)"),
                ));
            }
        },
    };
    let (start, reset) = match resume {
        Some(n) => resume_point(&rt.db, scope, n, latest).await?,
        None => (latest, None),
    };
    // Subscribe before the backlog is read: nothing committed in between is missed, and
    // duplicates are dropped by sequence number.
    let subscription = rt.hub.subscribe(scope).await?;
    Ok(Opening {
        start,
        reset,
        subscription,
    })
}

/// Up to [`BATCH`] events after `after`, oldest first.
pub async fn batch(db: &Db, scope: &Scope, after: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
    store::events::list_after(&db.pool, scope, after, BATCH).await
}

/// True when a batch was full, so more may follow.
pub fn is_full(batch: &[StoredEvent]) -> bool {
    batch.len() == usize::try_from(BATCH).unwrap_or(usize::MAX)
}

/// A page of history (spec §7.6).
pub struct History {
    pub events: Vec<StoredEvent>,
    /// The last id of the page when more matching events exist.
    pub next: Option<i64>,
    /// Events after `after` were already deleted by retention.
    pub reset: bool,
}

/// Up to `limit` events after `after` that match `filter`.
pub async fn history(db: &Db, scope: &Scope, filter: &Filter, after: i64, limit: usize) -> Result<History, ApiError> {
    let latest = store::events::latest(&db.pool, scope).await?;
    let (mut cursor, reset) = resume_point(db, scope, after, latest).await?;
    let mut events = Vec::new();
    'scan: loop {
        let found = batch(db, scope, cursor).await?;
        let full = is_full(&found);
        for event in found {
            cursor = event.seq;
            if filter.matches(&event.name) {
                events.push(event);
                if events.len() > limit {
                    break 'scan;
                }
            }
        }
        if !full {
            break;
        }
    }
    let more = events.len() > limit;
    events.truncate(limit);
    let next = if more { events.last().map(|e| e.seq) } else { None };
    Ok(History {
        events,
        next,
        reset: reset.is_some(),
    })
}
