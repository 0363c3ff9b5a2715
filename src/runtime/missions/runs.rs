//! Runs (spec §6.5–§6.7): the start in one transaction, the run's progress (holds armed and
//! released, completion, "no task can make progress", the mission deadline), resume, abort,
//! checkpoint resume, reads and reports. Every step works on whichever run is the mission's
//! latest: run N behaves as run 1.

use std::collections::{BTreeSet, HashMap};

use super::Locked;
use super::crud::{self, group_name};
use super::model::{CheckpointState, DelayState, GateState, Plan, RUN_PREFIX, Report, Run, StoredRun, mean, score};
use super::schedule;
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::events::{Change, Event};
use crate::ids;
use crate::runtime::tasks::model::ID_PREFIX as TASK_PREFIX;
use crate::runtime::tasks::{Status, Task, actions, store_rows};
use crate::runtime::{Runtime, agents};
use crate::scope::Scope;
use crate::store::{self, missions::RunRow};

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Api,
    /// A schedule tick, at this instant.
    Schedule(i64),
}

fn conflict(message: impl Into<String>, status: &str) -> ApiError {
    ApiError::Conflict {
        message: message.into(),
        details: Some(serde_json::json!({"status": status})),
    }
}

fn run_row(run: &StoredRun) -> Result<RunRow, ApiError> {
    Ok(RunRow {
        id: run.id.clone(),
        mission_id: run.mission_id.clone(),
        number: run.number,
        status: run.status.clone(),
        body: serde_json::to_string(run).map_err(ApiError::internal)?,
    })
}

fn read_run(row: &RunRow) -> Result<StoredRun, ApiError> {
    Ok(store::read_json(&row.body, "mission run document")?)
}

async fn tasks_of(
    conn: &mut sqlx::AnyConnection,
    scope: &Scope,
    run_id: &str,
    hold: Option<store::Backend>,
) -> Result<Vec<Task>, ApiError> {
    store::tasks::of_run(conn, scope, run_id, hold)
        .await?
        .iter()
        .map(|r| Ok(store_rows::from_body(&r.body)?))
        .collect()
}

async fn run_tasks(conn: &mut sqlx::AnyConnection, scope: &Scope, run_id: &str) -> Result<Vec<Task>, ApiError> {
    tasks_of(conn, scope, run_id, None).await
}

/// A plan checked against the project's agents before a change opened, and the definitions it
/// was checked from.
pub struct Prepared {
    pub checked: Plan,
    pub from: Plan,
}

/// The run's tasks, held until the change ends (see `store::tasks::of_run`).
async fn locked_tasks(change: &mut Change, scope: &Scope, run_id: &str) -> Result<Vec<Task>, ApiError> {
    let backend = change.backend();
    tasks_of(change.conn(), scope, run_id, Some(backend)).await
}

/// Checks, before any change opens, that the definitions still resolve against the project's
/// agents as they are now (spec §6.6 step 1); returns the plan with names resolved.
pub async fn prepare(rt: &Runtime, scope: &Scope, mission_id: &str) -> Result<Prepared, ApiError> {
    let mission = crud::get(rt, scope, mission_id).await?;
    let mut plan = mission.plan();
    let problems = super::plan::check_agents(rt, scope, &mut plan).await?;
    if !problems.is_empty() {
        return Err(ApiError::invalid_fields(problems));
    }
    Ok(Prepared {
        checked: plan,
        from: mission.plan(),
    })
}

/// `execute` (spec §6.4, §6.6 step 1): the run, its team and one task per definition in one
/// transaction. Allowed unless the mission is live.
pub async fn execute(rt: &Runtime, scope: &Scope, mission_id: &str) -> Result<Run, ApiError> {
    for _ in 0..crud::UPDATE_TRIES {
        let prepared = prepare(rt, scope, mission_id).await?;
        let mut change = rt.change(scope).await?;
        let mut locked = Locked::load(&mut change, rt, scope, mission_id).await?;
        if locked.mission.is_live() {
            return Err(conflict(
                format!(
                    "the mission is {}; abort or wait for its run first",
                    locked.mission.status
                ),
                &locked.mission.status,
            ));
        }
        // The definitions changed after they were checked: check them again.
        if locked.mission.plan() != prepared.from {
            continue;
        }
        let run = start_in(&mut change, scope, &mut locked, prepared.checked, Trigger::Api).await?;
        let tasks = run_tasks(change.conn(), scope, &run.id).await?;
        change.commit().await?;
        return Ok(Run::of(run, tasks));
    }
    Err(ApiError::Conflict {
        message: "the mission changed while this request was checked; retry".into(),
        details: None,
    })
}

/// Starts a run in the caller's change, the mission row held: the run, its team, its tasks
/// (each under the run's unique key for its definition), events, then the holds.
pub async fn start_in(
    change: &mut Change,
    scope: &Scope,
    locked: &mut Locked,
    plan: Plan,
    trigger: Trigger,
) -> Result<StoredRun, ApiError> {
    let at = change.at();
    let mission = &mut locked.mission;
    let number = mission.execution_count + 1;
    let run = StoredRun {
        id: ids::new_id(RUN_PREFIX),
        mission_id: mission.id.clone(),
        number,
        group: group_name(&mission.name, number),
        status: "active".into(),
        trigger: match trigger {
            Trigger::Api => "api",
            Trigger::Schedule(_) => "schedule",
        }
        .into(),
        gates: plan
            .quality_gates
            .iter()
            .map(|g| GateState {
                name: g.name.clone(),
                status: "waiting".into(),
                avg_score: None,
            })
            .collect(),
        checkpoints: plan
            .checkpoints
            .iter()
            .map(|c| CheckpointState {
                name: c.name.clone(),
                status: "waiting".into(),
                reached_at: None,
                resumed_at: None,
            })
            .collect(),
        delays: plan
            .delays
            .iter()
            .map(|d| DelayState {
                name: d.name.clone(),
                status: "waiting".into(),
                started_at: None,
                expires_at: None,
            })
            .collect(),
        started_at: Timestamp(at),
        finished_at: None,
        plan,
    };
    store::missions::insert_run(change.conn(), scope, &run_row(&run)?, at).await?;
    create_team(change, scope, &run).await?;
    let ids: HashMap<&str, String> = run
        .plan
        .tasks
        .iter()
        .map(|d| (d.title.as_str(), ids::new_id(TASK_PREFIX)))
        .collect();
    for (node, def) in run.plan.tasks.iter().enumerate() {
        let mut task = Task::new(ids[def.title.as_str()].clone(), Status::Pending, Timestamp(at));
        task.title = def.title.clone();
        task.description = def.description.clone();
        task.assign_to = def.assign_to.clone();
        task.group = Some(run.group.clone());
        task.mission_id = Some(run.mission_id.clone());
        task.run_id = Some(run.id.clone());
        task.depends_on = def.depends_on.iter().map(|t| ids[t.as_str()].clone()).collect();
        task.expectations = def.expectations.clone();
        task.expected_outcomes = def.expected_outcomes.clone();
        task.priority = def.priority;
        task.max_retries = def.max_retries;
        task.max_duration = def.max_duration;
        task.retry_policy = def.retry_policy.clone();
        task.side_effects = def.side_effects;
        let row = store_rows::row(&task)?;
        let node = i64::try_from(node).unwrap_or(i64::MAX);
        store::tasks::insert(change.conn(), scope, &row, at, Some(node)).await?;
        store::tasks::set_dependencies(change.conn(), scope, &task.id, &task.depends_on).await?;
        change.emit(Event::TaskCreated {
            task_id: task.id.clone(),
            task: serde_json::to_value(&task).map_err(ApiError::internal)?,
        });
    }
    if let (Trigger::Schedule(tick), Some(schedule)) = (trigger, &mission.schedule) {
        change.emit(Event::ScheduleTriggered {
            mission_id: mission.id.clone(),
            run_id: run.id.clone(),
            schedule: schedule.clone(),
            scheduled_for: crate::clock::format_ms(tick),
        });
    }
    change.emit(Event::MissionExecuted {
        mission_id: mission.id.clone(),
        run_id: run.id.clone(),
        number,
        group: run.group.clone(),
        task_count: i64::try_from(run.plan.tasks.len()).unwrap_or(i64::MAX),
        trigger: run.trigger.clone(),
    });
    mission.execution_count = number;
    mission.current_run_id = Some(run.id.clone());
    mission.status = "active".into();
    mission.updated_at = Timestamp(at).max(mission.updated_at);
    let mut run = run;
    advance(change, scope, locked, &mut run).await?;
    locked.save(change, scope).await?;
    Ok(run)
}

/// Creates the run's volatile team (spec §6.2 rule 4); a resume creates it again.
async fn create_team(change: &mut Change, scope: &Scope, run: &StoredRun) -> Result<(), ApiError> {
    let Some(team) = &run.plan.team else {
        return Ok(());
    };
    store::missions::delete_run_agents(change.conn(), scope, &run.id).await?;
    for config in &team.agents {
        let agent = agents::instantiate(config, change.at())?;
        let row = store::missions::RunAgentRow {
            name: agent.name.clone(),
            body: serde_json::to_string(&agent).map_err(ApiError::internal)?,
            max_concurrency: agent.max_concurrency,
        };
        store::missions::insert_run_agent(change.conn(), scope, &run.id, &row).await?;
    }
    Ok(())
}

/// The agent a task of `run_id` runs as: a member of the run's team first, then the project's
/// agent of that name or id.
pub async fn find_agent(
    rt: &Runtime,
    scope: &Scope,
    run_id: Option<&str>,
    name: &str,
) -> Result<Option<agents::Agent>, ApiError> {
    if let Some(run_id) = run_id
        && let Some(row) = store::missions::run_agent(&rt.db.pool, scope, run_id, name).await?
    {
        return Ok(Some(store::read_json(&row.body, "team agent document")?));
    }
    agents::find(&rt.db, scope, name).await
}

/// What a task of a run is told about its mission (spec §5.7 step 2): name, prompt and data.
pub async fn brief_of(rt: &Runtime, scope: &Scope, run_id: &str) -> Result<Option<Plan>, ApiError> {
    let Some(row) = store::missions::run_by_id(&rt.db.pool, scope, run_id).await? else {
        return Ok(None);
    };
    Ok(Some(read_run(&row)?.plan))
}

/// The state of a run's tasks, by definition title.
struct Board {
    tasks: Vec<Task>,
    index: HashMap<String, usize>,
}

impl Board {
    fn new(tasks: Vec<Task>) -> Self {
        let index = tasks.iter().enumerate().map(|(i, t)| (t.title.clone(), i)).collect();
        Self { tasks, index }
    }

    fn get(&self, title: &str) -> Option<&Task> {
        self.index.get(title).map(|i| &self.tasks[*i])
    }

    fn status(&self, title: &str) -> Option<Status> {
        self.get(title).map(Task::status)
    }

    fn all(&self, titles: &[String], test: impl Fn(Status) -> bool) -> bool {
        titles.iter().all(|t| self.status(t).is_some_and(&test))
    }
}

/// Titles that some unreleased hold blocks.
fn blocked_titles(run: &StoredRun) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (gate, state) in run.plan.quality_gates.iter().zip(&run.gates) {
        if state.status != "passed" {
            out.extend(gate.blocks_tasks.iter().cloned());
        }
    }
    for (checkpoint, state) in run.plan.checkpoints.iter().zip(&run.checkpoints) {
        if state.status != "resumed" {
            out.extend(checkpoint.blocks_tasks.iter().cloned());
        }
    }
    for (delay, state) in run.plan.delays.iter().zip(&run.delays) {
        if state.status != "expired" {
            out.extend(delay.blocks_tasks.iter().cloned());
        }
    }
    out
}

/// True when the run's open tasks can never finish: each waits, directly or not, on a failed
/// task (or a failed gate), and no checkpoint or delay is pending (spec §6.6 step 3).
fn stuck(run: &StoredRun, board: &Board) -> bool {
    let open: Vec<&str> = run
        .plan
        .tasks
        .iter()
        .map(|d| d.title.as_str())
        .filter(|t| board.status(t).is_some_and(|s| !s.is_terminal()))
        .collect();
    if open.is_empty() {
        return false;
    }
    let pending_hold =
        run.checkpoints.iter().any(|c| c.status == "reached") || run.delays.iter().any(|d| d.status == "running");
    if pending_hold {
        return false;
    }
    let dead =
        |title: &str, stuck: &BTreeSet<String>| board.status(title) == Some(Status::Failed) || stuck.contains(title);
    let mut stuck: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut grew = false;
        for def in &run.plan.tasks {
            if stuck.contains(&def.title) || board.status(&def.title) != Some(Status::Pending) {
                continue;
            }
            let by_dependency = def.depends_on.iter().any(|d| dead(d, &stuck));
            let by_gate = run
                .plan
                .quality_gates
                .iter()
                .zip(&run.gates)
                .any(|(g, s)| g.blocks_tasks.contains(&def.title) && s.status == "failed");
            let by_hold = holds_blocking(run, &def.title).any(|after| after.iter().any(|a| dead(a, &stuck)));
            if by_dependency || by_gate || by_hold {
                stuck.insert(def.title.clone());
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    open.iter().all(|t| stuck.contains(*t))
}

/// The `afterTasks` of every unreleased hold that blocks `title`.
fn holds_blocking<'r>(run: &'r StoredRun, title: &'r str) -> impl Iterator<Item = &'r [String]> + 'r {
    let gates = run
        .plan
        .quality_gates
        .iter()
        .zip(&run.gates)
        .filter(|(_, s)| s.status == "waiting")
        .map(|(g, _)| (&g.blocks_tasks, g.after_tasks.as_slice()));
    let checkpoints = run
        .plan
        .checkpoints
        .iter()
        .zip(&run.checkpoints)
        .filter(|(_, s)| s.status == "waiting")
        .map(|(c, _)| (&c.blocks_tasks, c.after_tasks.as_slice()));
    let delays = run
        .plan
        .delays
        .iter()
        .zip(&run.delays)
        .filter(|(_, s)| s.status == "waiting")
        .map(|(d, _)| (&d.blocks_tasks, d.after_tasks.as_slice()));
    gates
        .chain(checkpoints)
        .chain(delays)
        .filter(move |(blocks, _)| blocks.iter().any(|b| b == title))
        .map(|(_, after)| after)
}

/// Moves a live run on (spec §6.6, §6.7), in the caller's change with the mission row held:
/// the mission deadline, gates, checkpoints and delays armed or released, which tasks the runner
/// may claim, the run's status, and its end. Writes the run when anything changed; the caller
/// saves the mission.
pub async fn advance(
    change: &mut Change,
    scope: &Scope,
    locked: &mut Locked,
    run: &mut StoredRun,
) -> Result<bool, ApiError> {
    if !run.is_live() {
        return Ok(false);
    }
    let before = run.clone();
    let now = change.at();
    let board = Board::new(locked_tasks(change, scope, &run.id).await?);
    let ids = |titles: &[String]| -> Vec<String> {
        titles
            .iter()
            .filter_map(|t| board.get(t).map(|task| task.id.clone()))
            .collect()
    };
    if let Some(deadline) = locked.mission.deadline
        && deadline.ms() <= now
    {
        let open: Vec<String> = board
            .tasks
            .iter()
            .filter(|t| !t.status().is_terminal())
            .map(|t| t.id.clone())
            .collect();
        for id in &open {
            actions::stop_for(change, scope, id, "mission_deadline", "the mission's deadline passed").await?;
        }
        finish(change, scope, locked, run, "failed").await?;
        return Ok(true);
    }
    for i in 0..run.gates.len() {
        let gate = run.plan.quality_gates[i].clone();
        if run.gates[i].status != "waiting" || !board.all(&gate.after_tasks, Status::is_terminal) {
            continue;
        }
        let avg = mean(gate.after_tasks.iter().map(|t| board.get(t).and_then(score)));
        let score_met = match (gate.min_score, avg) {
            (Some(min), Some(avg)) => avg >= min,
            _ => true,
        };
        let all_done = board.all(&gate.after_tasks, |s| s == Status::Done);
        run.gates[i].avg_score = avg;
        if score_met && (!gate.require_all_passed || all_done) {
            run.gates[i].status = "passed".into();
            change.emit(Event::QualityGatePassed {
                mission_id: run.mission_id.clone(),
                run_id: run.id.clone(),
                gate: gate.name.clone(),
                avg_score: avg,
            });
            continue;
        }
        let reason = if score_met {
            "not every task it waits for is done".to_string()
        } else {
            format!(
                "average score {:.2} is below the minimum {:.2}",
                avg.unwrap_or_default(),
                gate.min_score.unwrap_or_default()
            )
        };
        run.gates[i].status = "failed".into();
        change.emit(Event::QualityGateFailed {
            mission_id: run.mission_id.clone(),
            run_id: run.id.clone(),
            gate: gate.name.clone(),
            avg_score: avg,
            reason: reason.clone(),
        });
        // Running work stops; everything else stays where it is, for a resume.
        let running: Vec<String> = board
            .tasks
            .iter()
            .filter(|t| t.status().is_running())
            .map(|t| t.id.clone())
            .collect();
        let message = format!("quality gate {:?} failed: {reason}", gate.name);
        for id in &running {
            actions::stop_for(change, scope, id, "quality_gate_failed", &message).await?;
        }
        finish(change, scope, locked, run, "failed").await?;
        return Ok(true);
    }
    for i in 0..run.checkpoints.len() {
        let checkpoint = run.plan.checkpoints[i].clone();
        if run.checkpoints[i].status == "waiting" && board.all(&checkpoint.after_tasks, |s| s == Status::Done) {
            run.checkpoints[i].status = "reached".into();
            run.checkpoints[i].reached_at = Some(Timestamp(now));
            change.emit(Event::CheckpointReached {
                mission_id: run.mission_id.clone(),
                run_id: run.id.clone(),
                checkpoint: checkpoint.name.clone(),
                message: checkpoint.message.clone(),
                after_tasks: ids(&checkpoint.after_tasks),
                blocks_tasks: ids(&checkpoint.blocks_tasks),
                reached_at: crate::clock::format_ms(now),
            });
        }
    }
    for i in 0..run.delays.len() {
        let delay = run.plan.delays[i].clone();
        let state = &mut run.delays[i];
        if state.status == "waiting" && board.all(&delay.after_tasks, |s| s == Status::Done) {
            let length = schedule::parse_duration(&delay.duration).map_err(ApiError::internal)?;
            state.status = "running".into();
            state.started_at = Some(Timestamp(now));
            state.expires_at = Some(Timestamp(now + length));
            change.emit(Event::DelayStarted {
                mission_id: run.mission_id.clone(),
                run_id: run.id.clone(),
                delay: delay.name.clone(),
                duration: delay.duration.clone(),
                started_at: crate::clock::format_ms(now),
                expires_at: crate::clock::format_ms(now + length),
            });
        }
        if state.status == "running" && state.expires_at.is_some_and(|e| e.ms() <= now) {
            state.status = "expired".into();
            change.emit(Event::DelayExpired {
                mission_id: run.mission_id.clone(),
                run_id: run.id.clone(),
                delay: delay.name.clone(),
            });
        }
    }
    hold(change, scope, run, &board, false).await?;
    let reached = run.checkpoints.iter().any(|c| c.status == "reached");
    let all_terminal = board.tasks.iter().all(|t| t.status().is_terminal());
    if all_terminal && !reached {
        let avg = mean(board.tasks.iter().map(score));
        let all_done = board.tasks.iter().all(|t| t.status() == Status::Done);
        let passed = all_done && avg.is_none_or(|a| a >= run.plan.quality_threshold);
        finish(change, scope, locked, run, if passed { "completed" } else { "failed" }).await?;
        return Ok(true);
    }
    if stuck(run, &board) {
        finish(change, scope, locked, run, "failed").await?;
        return Ok(true);
    }
    run.status = if reached { "paused" } else { "active" }.into();
    locked.mission.status = run.status.clone();
    if *run == before {
        return Ok(false);
    }
    store::missions::update_run(change.conn(), scope, &run_row(run)?).await?;
    Ok(true)
}

/// Writes which of the run's tasks the runner may claim: none when `all`, else those no
/// unreleased hold blocks.
async fn hold(change: &mut Change, scope: &Scope, run: &StoredRun, board: &Board, all: bool) -> Result<(), ApiError> {
    let blocked = blocked_titles(run);
    let held: BTreeSet<String> = store::tasks::held_of_run(change.conn(), scope, &run.id)
        .await?
        .into_iter()
        .collect();
    for task in &board.tasks {
        let want = all || blocked.contains(&task.title);
        if want != held.contains(&task.id) {
            store::tasks::set_held(change.conn(), scope, &task.id, want).await?;
        }
    }
    Ok(())
}

/// Ends a run: its open tasks stay where they are but are no longer claimed, its team is
/// removed, the mission takes its status (a cron mission with ticks left returns to
/// `recurring`), and `mission:completed` carries the report (not for an abort).
async fn finish(
    change: &mut Change,
    scope: &Scope,
    locked: &mut Locked,
    run: &mut StoredRun,
    status: &str,
) -> Result<(), ApiError> {
    let now = change.at();
    run.status = status.to_string();
    run.finished_at = Some(Timestamp(now));
    let board = Board::new(locked_tasks(change, scope, &run.id).await?);
    hold(change, scope, run, &board, true).await?;
    store::missions::delete_run_agents(change.conn(), scope, &run.id).await?;
    store::missions::update_run(change.conn(), scope, &run_row(run)?).await?;
    let mission = &mut locked.mission;
    let recurring = status != "cancelled"
        && locked.next_fire_at.is_some()
        && mission
            .schedule
            .as_deref()
            .and_then(|s| schedule::parse(s).ok())
            .is_some_and(|s| s.is_cron());
    mission.status = if recurring { "recurring" } else { status }.to_string();
    mission.updated_at = Timestamp(now).max(mission.updated_at);
    if status != "cancelled" {
        let report = Report::of(run, &board.tasks, Timestamp(now));
        change.emit(Event::MissionCompleted {
            mission_id: run.mission_id.clone(),
            run_id: run.id.clone(),
            all_passed: report.all_passed,
            report: serde_json::to_value(&report).map_err(ApiError::internal)?,
        });
    }
    Ok(())
}

/// The mission's latest run, read in the change.
async fn latest(change: &mut Change, scope: &Scope, locked: &Locked) -> Result<Option<StoredRun>, ApiError> {
    let Some(run_id) = locked.mission.current_run_id.as_deref() else {
        return Ok(None);
    };
    match store::missions::get_run(change.conn(), scope, &locked.mission.id, run_id).await? {
        Some(row) => Ok(Some(read_run(&row)?)),
        None => Ok(None),
    }
}

/// Re-reads the mission's live run and moves it on; commits only when something changed.
pub async fn evaluate(rt: &Runtime, scope: &Scope, mission_id: &str) -> Result<(), ApiError> {
    let mut change = rt.change(scope).await?;
    let mut locked = match Locked::load(&mut change, rt, scope, mission_id).await {
        Ok(locked) => locked,
        Err(ApiError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(mut run) = latest(&mut change, scope, &locked).await? else {
        return Ok(());
    };
    if advance(&mut change, scope, &mut locked, &mut run).await? {
        locked.save(&mut change, scope).await?;
        change.commit().await?;
    }
    Ok(())
}

/// Kills the live run's open tasks (`mission_aborted`) and cancels the run, in the caller's
/// change; the schedule stops firing (spec §6.4 abort).
pub async fn abort_in(change: &mut Change, scope: &Scope, locked: &mut Locked) -> Result<StoredRun, ApiError> {
    let Some(mut run) = latest(change, scope, locked).await?.filter(StoredRun::is_live) else {
        return Err(conflict(
            format!(
                "the mission is {}; only an active or paused run can be aborted",
                locked.mission.status
            ),
            &locked.mission.status,
        ));
    };
    let open: Vec<String> = locked_tasks(change, scope, &run.id)
        .await?
        .iter()
        .filter(|t| !t.status().is_terminal())
        .map(|t| t.id.clone())
        .collect();
    for id in &open {
        actions::stop_for(change, scope, id, "mission_aborted", "the mission run was aborted").await?;
    }
    locked.next_fire_at = None;
    finish(change, scope, locked, &mut run, "cancelled").await?;
    change.emit(Event::MissionAborted {
        mission_id: run.mission_id.clone(),
        run_id: run.id.clone(),
        killed_tasks: open,
    });
    Ok(run)
}

/// `abort` (spec §6.4).
pub async fn abort(rt: &Runtime, scope: &Scope, mission_id: &str) -> Result<Run, ApiError> {
    let mut change = rt.change(scope).await?;
    let mut locked = Locked::load(&mut change, rt, scope, mission_id).await?;
    let run = abort_in(&mut change, scope, &mut locked).await?;
    locked.save(&mut change, scope).await?;
    let tasks = run_tasks(change.conn(), scope, &run.id).await?;
    change.commit().await?;
    Ok(Run::of(run, tasks))
}

/// `resume` (spec §6.4): a `paused` run resumes every reached checkpoint; a `failed` run becomes
/// `active` again with its failed gates re-armed, its team re-created and, with `retryFailed`,
/// its failed tasks retried.
pub async fn resume(rt: &Runtime, scope: &Scope, mission_id: &str, retry_failed: bool) -> Result<Run, ApiError> {
    let mut change = rt.change(scope).await?;
    let mut locked = Locked::load(&mut change, rt, scope, mission_id).await?;
    let Some(mut run) = latest(&mut change, scope, &locked).await? else {
        return Err(conflict("the mission has no run to resume", &locked.mission.status));
    };
    let mut retried = 0;
    match run.status.as_str() {
        "paused" => {
            for i in 0..run.checkpoints.len() {
                if run.checkpoints[i].status == "reached" {
                    release_checkpoint(&mut change, &mut run, i);
                }
            }
        }
        "failed" => {
            run.status = "active".into();
            run.finished_at = None;
            for gate in &mut run.gates {
                if gate.status == "failed" {
                    gate.status = "waiting".into();
                    gate.avg_score = None;
                }
            }
            create_team(&mut change, scope, &run).await?;
            if retry_failed {
                for task in run_tasks(change.conn(), scope, &run.id).await? {
                    if task.status() == Status::Failed {
                        actions::retry_in(&mut change, scope, task).await?;
                        retried += 1;
                    }
                }
            }
            locked.mission.status = "active".into();
        }
        other => {
            return Err(conflict(
                format!("the latest run is {other}; only a paused or failed run can be resumed"),
                other,
            ));
        }
    }
    let pending = run_tasks(change.conn(), scope, &run.id)
        .await?
        .iter()
        .filter(|t| t.status() == Status::Pending)
        .count();
    change.emit(Event::MissionResumed {
        mission_id: run.mission_id.clone(),
        run_id: run.id.clone(),
        retried,
        pending: i64::try_from(pending).unwrap_or(i64::MAX),
    });
    store::missions::update_run(change.conn(), scope, &run_row(&run)?).await?;
    advance(&mut change, scope, &mut locked, &mut run).await?;
    locked.save(&mut change, scope).await?;
    let tasks = run_tasks(change.conn(), scope, &run.id).await?;
    change.commit().await?;
    Ok(Run::of(run, tasks))
}

fn release_checkpoint(change: &mut Change, run: &mut StoredRun, i: usize) {
    run.checkpoints[i].status = "resumed".into();
    run.checkpoints[i].resumed_at = Some(Timestamp(change.at()));
    change.emit(Event::CheckpointResumed {
        mission_id: run.mission_id.clone(),
        run_id: run.id.clone(),
        checkpoint: run.checkpoints[i].name.clone(),
    });
}

/// `checkpoints/{name}/resume` (spec §6.4): releases one reached checkpoint of the live run.
pub async fn resume_checkpoint(rt: &Runtime, scope: &Scope, mission_id: &str, name: &str) -> Result<Run, ApiError> {
    let mut change = rt.change(scope).await?;
    let mut locked = Locked::load(&mut change, rt, scope, mission_id).await?;
    let unknown = || ApiError::not_found(format!("no checkpoint {name:?} in the mission's latest run"));
    let Some(mut run) = latest(&mut change, scope, &locked).await? else {
        return Err(unknown());
    };
    let i = run
        .checkpoints
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(unknown)?;
    let status = run.checkpoints[i].status.clone();
    if status != "reached" || !run.is_live() {
        return Err(conflict(
            format!(
                "checkpoint {name:?} is {status} in a run that is {}; only a reached checkpoint of a live run can be resumed",
                run.status
            ),
            &status,
        ));
    }
    release_checkpoint(&mut change, &mut run, i);
    store::missions::update_run(change.conn(), scope, &run_row(&run)?).await?;
    advance(&mut change, scope, &mut locked, &mut run).await?;
    locked.save(&mut change, scope).await?;
    let tasks = run_tasks(change.conn(), scope, &run.id).await?;
    change.commit().await?;
    Ok(Run::of(run, tasks))
}

fn run_not_found(run_id: &str) -> ApiError {
    ApiError::not_found(format!("run {run_id:?} not found in this mission"))
}

/// One run with its tasks.
pub async fn get(rt: &Runtime, scope: &Scope, mission_id: &str, run_id: &str) -> Result<Run, ApiError> {
    crud::get(rt, scope, mission_id).await?;
    let row = store::missions::get_run(&rt.db.pool, scope, mission_id, run_id)
        .await?
        .ok_or_else(|| run_not_found(run_id))?;
    let mut conn = rt.db.pool.acquire().await?;
    let tasks = run_tasks(&mut conn, scope, run_id).await?;
    Ok(Run::of(read_run(&row)?, tasks))
}

/// A page of a mission's runs by number, after run `after` (an id, `""` for the first page).
pub async fn list(
    rt: &Runtime,
    scope: &Scope,
    mission_id: &str,
    after: &str,
    fetch: i64,
) -> Result<Vec<Run>, ApiError> {
    crud::get(rt, scope, mission_id).await?;
    let rows = store::missions::list_runs(&rt.db.pool, scope, mission_id, after, fetch).await?;
    let mut conn = rt.db.pool.acquire().await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let tasks = run_tasks(&mut conn, scope, &row.id).await?;
        out.push(Run::of(read_run(row)?, tasks));
    }
    Ok(out)
}

/// The report of a run, by default the latest (spec §6.4).
pub async fn report(rt: &Runtime, scope: &Scope, mission_id: &str, run_id: Option<&str>) -> Result<Report, ApiError> {
    let mission = crud::get(rt, scope, mission_id).await?;
    let Some(run_id) = run_id.or(mission.current_run_id.as_deref()) else {
        return Err(ApiError::not_found("the mission has not run yet"));
    };
    let run = get(rt, scope, mission_id, run_id).await?;
    let row = store::missions::get_run(&rt.db.pool, scope, mission_id, run_id)
        .await?
        .ok_or_else(|| run_not_found(run_id))?;
    Ok(Report::of(&read_run(&row)?, &run.tasks, Timestamp::now()))
}
