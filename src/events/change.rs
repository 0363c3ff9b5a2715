//! The one write path for every change that emits events: open a transaction, write, append the
//! events, commit, then wake the hub. A [`Change`] does the last three steps itself, in that
//! order, so a forgotten wake or an event committed apart from its change cannot be written.

use std::sync::{Arc, Mutex, PoisonError};

use sqlx::AnyConnection;

use super::Event;
use super::catalogue::entries;
use super::hub::Hub;
use crate::scope::Scope;
use crate::store::script::Script;
use crate::store::{self, Backend, Db};

tokio::task_local! {
    static HOLD: Hold;
}

/// Where a request keeps its last change uncommitted until its answer is written into the same
/// transaction (an idempotency record, spec §1.8). Inside [`Hold::around`], [`Change::commit`]
/// parks the change here instead of committing it, and a change that begins while another is
/// parked commits the parked one first: at most one change is open, the last one stays here, and
/// every earlier one is committed in order. Work spawned from inside is not affected.
#[derive(Clone, Default)]
pub struct Hold(Arc<Mutex<Option<Change>>>);

impl Hold {
    /// The hold the current request runs in, to hand to work it spawns and waits for.
    pub fn current() -> Option<Self> {
        HOLD.try_with(Self::clone).ok()
    }

    /// Runs `work` with its commits held here.
    pub async fn around<F: Future>(&self, work: F) -> F::Output {
        HOLD.scope(self.clone(), work).await
    }

    /// The parked change, if any: committing it (outside [`Hold::around`]) commits for real, and
    /// dropping it rolls it back.
    pub fn take(&self) -> Option<Change> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn park(&self, change: Change) -> Option<Change> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).replace(change)
    }
}

/// The change parked by the current request, if it runs inside [`Hold::around`].
fn parked() -> Option<Change> {
    HOLD.try_with(Hold::take).ok().flatten()
}

/// An open change of one scope. Dropping it without [`Change::commit`] rolls everything back.
pub struct Change {
    tx: store::Tx,
    hub: Arc<Hub>,
    backend: Backend,
    /// Whose log the events go to; set before commit when the change began without it.
    scope: Option<Scope>,
    at: i64,
    events: Vec<Event>,
}

impl Change {
    pub async fn begin(db: &Db, hub: &Arc<Hub>, scope: &Scope) -> Result<Self, sqlx::Error> {
        let mut change = Self::begin_unscoped(db, hub).await?;
        change.scope = Some(scope.clone());
        Ok(change)
    }

    /// A change whose scope is learnt from what it reads first (the task runner claims a task
    /// of any scope); [`Change::set_scope`] must be called before events are committed.
    pub async fn begin_unscoped(db: &Db, hub: &Arc<Hub>) -> Result<Self, sqlx::Error> {
        if let Some(earlier) = parked() {
            earlier.finish().await?;
        }
        Ok(Self {
            tx: db.begin().await?,
            hub: Arc::clone(hub),
            backend: db.backend,
            scope: None,
            at: crate::clock::now_ms(),
            events: Vec::new(),
        })
    }

    pub fn set_scope(&mut self, scope: &Scope) {
        self.scope = Some(scope.clone());
    }

    /// The change's time in milliseconds: rows and events of one change carry the same instant.
    pub fn at(&self) -> i64 {
        self.at
    }

    /// Which database the change runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The transaction's connection, for `store` functions.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Records an event, appended to the log at commit.
    pub fn emit(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Appends the events, commits, then wakes this instance's feeds; inside [`Hold::around`],
    /// parks the change there instead.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match HOLD.try_with(Hold::clone) {
            Ok(hold) => match hold.park(self) {
                Some(earlier) => earlier.finish().await,
                None => Ok(()),
            },
            Err(_) => self.finish().await,
        }
    }

    async fn finish(mut self) -> Result<(), sqlx::Error> {
        if let Some(scope) = &self.scope {
            let mut script = Script::default();
            append(&mut script, scope, self.at, &self.events);
            script.run(&mut self.tx).await?;
        } else if !self.events.is_empty() {
            return Err(sqlx::Error::Protocol(
                "events emitted in a change without a scope".into(),
            ));
        }
        self.tx.commit().await?;
        if let Some(scope) = &self.scope {
            committed(&self.hub, self.backend, scope, &self.events);
        }
        Ok(())
    }
}

/// After a commit of `events` in `scope`: wakes this instance's feeds, tells the other
/// instances, and wakes the task runner or the mission driver when the events can make work for
/// them (chat turns and the rest do not wake them).
pub(super) fn committed(hub: &Hub, backend: Backend, scope: &Scope, events: &[Event]) {
    if events.is_empty() {
        return;
    }
    hub.wake(scope);
    if backend == Backend::Postgres {
        hub.announce(scope);
    }
    // A run's task changing status can move its run on.
    let mut runnable = false;
    let mut missions = false;
    for event in events {
        match event {
            Event::TaskCreated { .. } => runnable = true,
            Event::TaskTransition { task, .. } => {
                runnable = true;
                missions |= !task["runId"].is_null();
            }
            Event::QualityGatePassed { .. }
            | Event::CheckpointResumed { .. }
            | Event::DelayExpired { .. }
            | Event::MissionResumed { .. } => runnable = true,
            _ => {}
        }
    }
    if runnable {
        hub.runnable.notify_one();
    }
    if missions {
        hub.missions.notify_one();
    }
}

/// The statements appending events to the scope's log, numbered from the scope's counter row
/// (spec §7.3: the row lock orders commits, so no smaller number can commit after a larger one is
/// visible). Other instances learn of the commit from a NOTIFY sent after it (see
/// `Hub::announce`), never from inside the transaction: a NOTIFY there would hold the counter row
/// through Postgres's commit-time notification lock.
pub(super) fn append(script: &mut Script, scope: &Scope, at_ms: i64, events: &[Event]) {
    store::events::append(script, scope, entries(events, &crate::clock::format_ms(at_ms)), at_ms);
}
