//! The task runner of one instance (spec §5.7 step 1, §5.8): claims runnable tasks under
//! leases, up to `workers.max_concurrent_tasks`, runs each as a tracked task, keeps its lease
//! alive, notices when it loses it (an action such as pause or kill, or another instance
//! reclaiming it), and reclaims tasks whose worker died. Timers live in the database.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::attempt::{self, Claim, NextInput};
use super::model::{Task, TaskError};
use super::status::{Reason, Status};
use super::store_rows;
use crate::error::ApiError;
use crate::events::Event;
use crate::ids;
use crate::runtime::Runtime;
use crate::scope::Scope;
use crate::store::{self, tasks::ClaimedRow};

/// The backstop when no wake-up comes: polling at about this interval, jittered so that
/// instances do not poll in step.
const TICK: Duration = Duration::from_millis(1000);
/// Rows the timers handle per round.
const TIMER_BATCH: i64 = 100;

fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let spread = if getrandom::fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 255.0
    } else {
        0.5
    };
    base.mul_f64(0.5 + spread)
}

/// Runs until shutdown.
pub async fn run(rt: Runtime) {
    let owner = ids::new_id("wrk_");
    let slots = Arc::new(Semaphore::new(rt.config.workers.max_concurrent_tasks.max(1)));
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => return,
            () = rt.hub.runnable.notified() => {}
            () = tokio::time::sleep(jittered(TICK)) => {}
        }
        // `select!` picks among ready branches at random: a wake-up may win over the shutdown.
        if rt.shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = timers(&rt).await {
            tracing::warn!(error = %e, "task timers failed; retrying");
        }
        loop {
            // Stop claiming as soon as the server drains (spec §10.5 step 3).
            if rt.shutdown.is_cancelled() {
                return;
            }
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                break;
            };
            let claimed = match claim(&rt, &owner).await {
                Ok(Some(claimed)) => claimed,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "task claim failed; retrying");
                    break;
                }
            };
            let worker = rt.clone();
            rt.spawn(async move {
                let _slot = permit;
                work(worker, claimed).await;
            });
        }
    }
}

/// Claims one task and records `pending → assigned`.
async fn claim(rt: &Runtime, owner: &str) -> Result<Option<Claim>, ApiError> {
    let now = crate::clock::now_ms();
    let lease_until = now + crate::clock::duration_ms(rt.config.workers.lease_duration);
    let mut change = rt.change_unscoped().await?;
    let Some(row) = store::tasks::claim_one(change.conn(), rt.db.backend, owner, now, lease_until).await? else {
        return Ok(None);
    };
    let Some(scope) = row.scope() else {
        return Ok(None);
    };
    change.set_scope(&scope);
    let mut task = store_rows::from_body(&row.body)?;
    // The row already says `assigned`; the document and its event follow in the same commit.
    task.transition(&mut change, Status::Assigned, None, Reason::Regular)?;
    store::tasks::update(change.conn(), &scope, &store_rows::row(&task)?, Some(row.lease_gen)).await?;
    change.commit().await?;
    let next_input = row
        .next_input
        .as_deref()
        .map(|text| store::read_json::<NextInput>(text, "next task input"))
        .transpose()?;
    Ok(Some(Claim {
        scope,
        task,
        generation: row.lease_gen,
        next_input,
    }))
}

/// How a claim ended while its attempt ran.
enum Ended {
    Finished(Result<&'static str, ApiError>),
    Lost,
    Shutdown,
    Timeout,
}

async fn work(rt: Runtime, claim: Claim) {
    let scope = claim.scope.clone();
    let id = claim.task.id.clone();
    let generation = claim.generation;
    let max_duration = claim.task.max_duration;
    let started = tokio::time::Instant::now();
    let limit = max_duration.map(|d| Duration::from_millis(u64::try_from(d).unwrap_or(0)));
    let ended = tokio::select! {
        result = attempt::run(&rt, claim) => Ended::Finished(result),
        () = lost(&rt, &scope, &id, generation) => Ended::Lost,
        () = rt.shutdown.cancelled() => Ended::Shutdown,
        () = async {
            match limit {
                Some(limit) => tokio::time::sleep_until(started + limit).await,
                None => std::future::pending().await,
            }
        } => Ended::Timeout,
    };
    let outcome = match ended {
        Ended::Finished(Ok(outcome)) => outcome,
        Ended::Finished(Err(e)) => {
            tracing::error!(task_id = %id, error = ?e, "task attempt failed to record");
            "error"
        }
        Ended::Lost => "lost",
        Ended::Shutdown => match interrupt(&rt, &scope, &id, generation, Stop::Shutdown).await {
            Ok(()) => "interrupted",
            Err(e) => {
                tracing::warn!(task_id = %id, error = ?e, "could not release a task at shutdown");
                "interrupted"
            }
        },
        Ended::Timeout => {
            if let Err(e) = interrupt(&rt, &scope, &id, generation, Stop::Timeout(max_duration.unwrap_or(0))).await {
                tracing::warn!(task_id = %id, error = ?e, "could not record a task timeout");
            }
            "timeout"
        }
    };
    attempt::count(&rt, outcome);
}

/// Resolves when this worker no longer holds the task: its heartbeat finds the lease taken, or
/// an event about the task (a pause, kill or delete on any instance) comes with a new lease
/// generation.
async fn lost(rt: &Runtime, scope: &Scope, id: &str, generation: i64) {
    let mut beat = tokio::time::interval(rt.config.workers.heartbeat_interval);
    beat.reset();
    let mut subscription = rt.hub.subscribe(scope).await.ok();
    let mention = format!("\"taskId\":\"{id}\"");
    loop {
        let check = tokio::select! {
            _ = beat.tick() => {
                let until = crate::clock::now_ms() + crate::clock::duration_ms(rt.config.workers.lease_duration);
                match store::tasks::renew(&rt.db.pool, scope, id, generation, until).await {
                    Ok(true) => false,
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(task_id = %id, error = %e, "lease renewal failed");
                        false
                    }
                }
            }
            event = async {
                match subscription.as_mut() {
                    Some(s) => s.events.recv().await,
                    None => std::future::pending().await,
                }
            } => match event {
                Some(event) => event.payload.contains(&mention),
                // Dropped as too slow: read the lease from the database instead.
                None => {
                    subscription = None;
                    true
                }
            },
        };
        if check {
            match store::tasks::get_claimed(&rt.db.pool, scope, id).await {
                Ok(Some(row)) if row.lease_gen == generation => {}
                Ok(_) => return,
                Err(e) => tracing::warn!(task_id = %id, error = %e, "could not read a task's lease"),
            }
        }
    }
}

/// Why a running attempt is stopped from outside its worker.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// The server is shutting down: back to `pending`, no retry consumed (spec §10.5).
    Shutdown,
    /// The worker died and its lease expired (spec §5.8 rule 4).
    Recovered,
    /// `maxDuration` passed: the task fails (spec §5.7 step 9).
    Timeout(i64),
}

/// Records the interrupted attempt and moves the task as `stop` says, under the claim's
/// generation; does nothing when another party holds the task now.
async fn interrupt(rt: &Runtime, scope: &Scope, id: &str, generation: i64, stop: Stop) -> Result<(), ApiError> {
    let mut change = rt.change(scope).await?;
    let Some(row) = store::tasks::get_claimed(change.conn(), scope, id).await? else {
        return Ok(());
    };
    if row.lease_gen != generation || !Status::parse(&row.status).is_some_and(Status::is_running) {
        return Ok(());
    }
    let mut task: Task = store_rows::from_body(&row.body)?;
    let now = crate::clock::Timestamp(change.at());
    let (code, message) = match stop {
        Stop::Shutdown | Stop::Recovered => ("interrupted", "the attempt was interrupted before it finished"),
        Stop::Timeout(_) => ("timeout", "the attempt ran longer than maxDuration"),
    };
    let error = TaskError::new(code, message);
    super::actions::stop_running_attempt(&mut task, &mut change, code);
    let previous = task.status();
    match stop {
        Stop::Shutdown => task.transition(&mut change, Status::Pending, None, Reason::Requeue)?,
        Stop::Recovered => {
            task.transition(&mut change, Status::Pending, None, Reason::Requeue)?;
            change.emit(Event::TaskRecovered {
                task_id: task.id.clone(),
                title: task.title.clone(),
                previous_status: previous.as_str().to_string(),
            });
        }
        Stop::Timeout(limit) => {
            let started = task
                .result
                .as_ref()
                .and_then(|r| r.attempts.last())
                .map_or(now.ms(), |a| a.started_at.ms());
            change.emit(Event::TaskTimeout {
                task_id: task.id.clone(),
                reason: "maxDuration".into(),
                elapsed_ms: now.ms().saturating_sub(started),
                limit_ms: limit,
            });
            task.result_mut().error = Some(error);
            task.transition(&mut change, Status::Failed, None, Reason::Stop)?;
        }
    }
    if !store::tasks::update(change.conn(), scope, &store_rows::row(&task)?, Some(generation)).await? {
        return Ok(());
    }
    // An interrupted fix stays a fix: its input is kept for the next attempt.
    let keep = match stop {
        Stop::Timeout(_) => None,
        _ => row.next_input.as_deref(),
    };
    store::tasks::release(change.conn(), scope, id, 0, keep).await?;
    change.commit().await?;
    Ok(())
}

/// The stored timers: leases that expired (their worker died), attempts past `maxDuration`,
/// and task deadlines.
async fn timers(rt: &Runtime) -> Result<(), ApiError> {
    let now = crate::clock::now_ms();
    for row in store::tasks::expired(&rt.db.pool, now, TIMER_BATCH).await? {
        if let Some(scope) = row.scope() {
            interrupt(rt, &scope, &row.id, row.lease_gen, Stop::Recovered).await?;
        }
    }
    // The worker enforces `maxDuration` itself; the stored timer covers a worker that stalls
    // while its lease is still renewed, on any instance.
    for row in store::tasks::past_attempt_deadline(&rt.db.pool, now, TIMER_BATCH).await? {
        if let Some(scope) = row.scope() {
            let limit = store_rows::from_body(&row.body)?.max_duration.unwrap_or(0);
            interrupt(rt, &scope, &row.id, row.lease_gen, Stop::Timeout(limit)).await?;
        }
    }
    for row in store::tasks::past_deadline(&rt.db.pool, now, TIMER_BATCH).await? {
        if let Some(scope) = row.scope() {
            deadline(rt, &scope, &row).await?;
        }
    }
    Ok(())
}

/// A task still open at its deadline fails (`deadline`, `task:timeout`; spec §5.7 step 9).
async fn deadline(rt: &Runtime, scope: &Scope, row: &ClaimedRow) -> Result<(), ApiError> {
    let mut change = rt.change(scope).await?;
    let mut task: Task = store_rows::from_body(&row.body)?;
    if task.status().is_terminal() {
        return Ok(());
    }
    let now = change.at();
    let limit = task.deadline.map_or(now, |d| d.ms());
    change.emit(Event::TaskTimeout {
        task_id: task.id.clone(),
        reason: "deadline".into(),
        elapsed_ms: now.saturating_sub(task.created_at.ms()),
        limit_ms: limit.saturating_sub(task.created_at.ms()),
    });
    super::actions::stop_running_attempt(&mut task, &mut change, "deadline");
    task.result_mut().error = Some(TaskError::new("deadline", "the task was not finished by its deadline"));
    task.transition(&mut change, Status::Failed, None, Reason::Stop)?;
    super::approvals::cancel(&mut change, scope, &task.id).await?;
    if !store::tasks::update(change.conn(), scope, &store_rows::row(&task)?, Some(row.lease_gen)).await? {
        return Ok(());
    }
    store::tasks::release(change.conn(), scope, &task.id, 0, None).await?;
    change.commit().await?;
    Ok(())
}
