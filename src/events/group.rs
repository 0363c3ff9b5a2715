//! Group commit: small changes of many requests written in one transaction. A change handed to
//! [`GroupCommit::write`] is written at once by its caller when no writer is busy; otherwise it
//! waits in a queue, and one writer task, once it has let the runtime run what is ready, takes
//! everything queued (up to [`MAX_BATCH`] changes), applies each change's rows, appends the
//! events of each scope in one numbering step, commits, wakes the hub, and only then answers
//! every waiting change. Under load the queue fills while a transaction runs, so one transaction
//! (and its statements for the event log) serves many changes; alone, a change is committed at
//! once, as by [`super::Change`].
//!
//! The guarantees are those of [`super::Change`]: a change's rows and events commit together, and
//! its caller resumes only after the commit. A transaction the database refuses a statement of is
//! retried with each change alone, so one bad change cannot fail others.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::AnyConnection;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::Event;
use super::change::{append, committed};
use super::hub::Hub;
use crate::metrics::{self, Metrics};
use crate::scope::Scope;
use crate::store::script::Script;
use crate::store::{self, Db};

/// Changes one transaction takes at most.
pub const MAX_BATCH: usize = 64;

/// Times the writer task yields to the runtime before it takes a batch. At saturation this
/// doubles the changes per transaction (about 3 to about 6 with 32 turns at once), for less
/// processor time per turn and a shorter tail (bench/RESULTS.md); a change that finds no writer
/// busy is still written at once by its caller, and a queue of [`GATHERED`] is taken at once.
const GATHER_YIELDS: usize = 2;

/// Changes queued that make a batch worth taking without yielding first.
const GATHERED: usize = 8;

/// A change of one scope that can be written inside someone else's transaction.
pub trait GroupWrite: Send + Sync + 'static {
    fn scope(&self) -> &Scope;

    /// The change's statements, its rows stamped `at` (milliseconds, the transaction's instant),
    /// and the events to append once they are written.
    fn plan(&self, at: i64) -> Plan;
}

/// What a [`GroupWrite`] writes: statements, and the events appended when the script's guards
/// held (when one did not, the change found nothing to act on and writes nothing).
#[derive(Default)]
pub struct Plan {
    pub script: Script,
    pub events: Vec<Event>,
}

impl Plan {
    /// Runs the statements inside the caller's transaction: the events to append, or `None` when
    /// a guard did not hold and nothing was written.
    pub async fn run(self, conn: &mut AnyConnection) -> Result<Option<Vec<Event>>, sqlx::Error> {
        Ok(self.script.run(conn).await?.then_some(self.events))
    }
}

/// Admitted work: counted in the backlog until dropped.
pub struct Admission(Arc<GroupCommit>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.coming.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A writer that ends without emptying the queue (it panicked, or the runtime is going away)
/// answers every queued change with an error and lets the next change start a new writer, so
/// that no caller waits for a writer that is gone.
struct Abandon<'a> {
    group: &'a GroupCommit,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut queue = self.group.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.writing = false;
            queue.jobs.clear();
        }
    }
}

struct Job {
    write: Box<dyn GroupWrite>,
    done: oneshot::Sender<Result<bool, sqlx::Error>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Whether a writer task is running; it ends when it finds the queue empty.
    writing: bool,
}

impl Queue {
    /// The oldest changes, as many as one transaction takes.
    fn batch(&mut self) -> Vec<Job> {
        let n = self.jobs.len().min(MAX_BATCH);
        self.jobs.drain(..n).collect()
    }
}

pub struct GroupCommit {
    /// Work on its way here: chat turns reading what they need before they write.
    coming: AtomicUsize,
    db: Db,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    queue: Mutex<Queue>,
}

impl GroupCommit {
    pub fn new(db: Db, hub: Arc<Hub>, metrics: Arc<Metrics>, tasks: TaskTracker) -> Self {
        Self {
            coming: AtomicUsize::new(0),
            db,
            hub,
            metrics,
            tasks,
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Admits one more piece of work on its way to this writer while the backlog (changes
    /// queued and work admitted before them) is under `limit`; the backlog counts the work
    /// until the returned guard is dropped.
    pub fn admit(self: &Arc<Self>, limit: usize) -> Option<Admission> {
        let queued = self.queue.lock().unwrap_or_else(PoisonError::into_inner).jobs.len();
        let coming = self.coming.fetch_add(1, Ordering::AcqRel);
        if queued + coming >= limit {
            self.coming.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admission(Arc::clone(self)))
    }

    /// Writes `write` in the next transaction and waits for its commit: `true` once committed,
    /// `false` when it found nothing to act on. Not to be awaited while holding an open
    /// [`super::Change`] (or inside a [`super::Hold`] with one parked): on SQLite's single
    /// connection the writer would wait for that change, and that change for the writer.
    pub async fn write(self: &Arc<Self>, write: Box<dyn GroupWrite>) -> Result<bool, sqlx::Error> {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.jobs.push_back(Job { write, done });
            !std::mem::replace(&mut queue.writing, true)
        };
        if lead {
            // No writer is running, so the queue held nothing else: this caller writes its own
            // change at once, without handing it to another task. Changes queued meanwhile go
            // to a writer task, so that this caller is not kept writing for others.
            let mut abandon = Abandon {
                group: self,
                armed: true,
            };
            let jobs = self.queue.lock().unwrap_or_else(PoisonError::into_inner).batch();
            self.run(jobs).await;
            let more = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                queue.writing = !queue.jobs.is_empty();
                queue.writing
            };
            abandon.armed = false;
            if more {
                let writer = Arc::clone(self);
                self.tasks.spawn(async move { writer.drain().await });
            }
        }
        // The writer answers every job it takes; a dropped answer means the process is ending.
        answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }

    async fn drain(self: Arc<Self>) {
        let mut abandon = Abandon {
            group: &self,
            armed: true,
        };
        loop {
            // Before it takes a short batch, the writer lets the runtime run what is ready (the
            // turns whose answers have just arrived among them) twice over, so that they join
            // this batch rather than wait for the next transaction. A long queue is taken at
            // once: under overload the runtime's queue is long too, and a writer waiting behind
            // it would hold every admitted turn.
            for _ in 0..GATHER_YIELDS {
                if self.queue.lock().unwrap_or_else(PoisonError::into_inner).jobs.len() >= GATHERED {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let jobs: Vec<Job> = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.jobs.is_empty() {
                    queue.writing = false;
                    abandon.armed = false;
                    return;
                }
                queue.batch()
            };
            self.run(jobs).await;
        }
    }

    async fn run(&self, mut jobs: Vec<Job>) {
        let writes: Vec<&dyn GroupWrite> = jobs.iter().map(|job| job.write.as_ref()).collect();
        let error = match self.commit(&writes).await {
            Ok(outcomes) => {
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.done.send(Ok(outcome));
                }
                return;
            }
            Err(error) => error,
        };
        let unreachable = store::unreachable(&error);
        if unreachable {
            // The changes queued meanwhile would meet the same outage one wait later: they are
            // answered now, so that none waits for the database longer than once.
            jobs.extend(self.queue.lock().unwrap_or_else(PoisonError::into_inner).jobs.drain(..));
        }
        if jobs.len() == 1 {
            if let Some(job) = jobs.pop() {
                let _ = job.done.send(Err(error));
            }
        } else if unreachable || !matches!(error, sqlx::Error::Database(_)) {
            // Only a statement the database refused can be one write's fault; a connection or
            // protocol failure would fail each write again, one wait after another.
            let message = error.to_string();
            for job in jobs {
                let copy = if unreachable {
                    sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        message.clone(),
                    ))
                } else {
                    sqlx::Error::Protocol(message.clone())
                };
                let _ = job.done.send(Err(copy));
            }
        } else {
            for job in jobs {
                let outcome = self.commit(&[job.write.as_ref()]).await;
                let _ = job
                    .done
                    .send(outcome.map(|outcomes| outcomes.first().copied().unwrap_or(false)));
            }
        }
    }

    /// One transaction for `writes`: their rows in order, then each scope's events, numbered
    /// in the order of the writes. Scopes are appended in a fixed order, so that two writers
    /// locking several counter rows cannot deadlock. A SQLite file is written through its direct
    /// connection, on this thread.
    async fn commit(&self, writes: &[&dyn GroupWrite]) -> Result<Vec<bool>, sqlx::Error> {
        let at = crate::clock::now_ms();
        let mut plans: Vec<Plan> = writes.iter().map(|write| write.plan(at)).collect();
        if let Some(direct) = &self.db.direct {
            let (outcomes, logs) = direct
                .transaction(|tx, slots| {
                    let mut outcomes = Vec::with_capacity(writes.len());
                    for plan in &plans {
                        outcomes.push(plan.script.run_direct(tx, slots)?);
                    }
                    let logs = logs(writes, &mut plans, &outcomes);
                    appends(&logs, at).run_direct(tx, slots)?;
                    Ok((outcomes, logs))
                })
                .await?;
            self.committed(writes.len(), &logs);
            return Ok(outcomes);
        }
        let mut tx = self.db.begin().await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for plan in &plans {
            outcomes.push(plan.script.run(&mut tx).await?);
        }
        let logs = logs(writes, &mut plans, &outcomes);
        appends(&logs, at).run(&mut tx).await?;
        tx.commit().await?;
        self.committed(writes.len(), &logs);
        Ok(outcomes)
    }

    fn committed(&self, writes: usize, logs: &Logs) {
        self.metrics.add(metrics::GROUP_COMMITS, &[], 1.0);
        self.metrics.add(metrics::GROUP_COMMIT_CHANGES, &[], writes as f64);
        for (scope, events) in logs.values() {
            committed(&self.hub, self.db.backend, scope, events);
        }
    }
}

/// Each scope's events, in the order of the writes that were done.
type Logs = BTreeMap<(String, &'static str), (Scope, Vec<Event>)>;

fn logs(writes: &[&dyn GroupWrite], plans: &mut [Plan], done: &[bool]) -> Logs {
    let mut logs = Logs::new();
    for ((write, plan), done) in writes.iter().zip(plans.iter_mut()).zip(done) {
        if !*done || plan.events.is_empty() {
            continue;
        }
        let scope = write.scope();
        logs.entry((scope.project.clone(), scope.environment.as_str()))
            .or_insert_with(|| (scope.clone(), Vec::new()))
            .1
            .append(&mut plan.events);
    }
    logs
}

/// The statements appending each scope's events, stamped `at`.
fn appends(logs: &Logs, at: i64) -> Script {
    let mut script = Script::default();
    for (scope, events) in logs.values() {
        append(&mut script, scope, at, events);
    }
    script
}
