//! Saving missions (spec §6.1–§6.4): create, PATCH, read, list and delete, with the whole
//! validation of §6.2 and the status a schedule gives.

use serde_json::Value;

use super::model::{Checkpoint, Delay, ID_PREFIX, Mission, QualityGate, TaskDef, Team};
use super::plan::{self, Problems, TimesGiven};
use super::schedule::Schedule;
use super::{Locked, runs};
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::events::Event;
use crate::field::Field;
use crate::ids;
use crate::runtime::Runtime;
use crate::scope::Scope;
use crate::store::{self, ResultExt};

/// The fields of a create or PATCH request, already checked for shape; each replaces the
/// stored value (spec §6.4). A TaskDef without `assignTo` has it empty.
#[derive(Debug, Clone, Default)]
pub struct MissionInput {
    pub name: Field<String>,
    pub prompt: Field<String>,
    pub data: Field<Value>,
    pub tasks: Field<Vec<TaskDef>>,
    pub team: Field<Team>,
    pub quality_threshold: Field<f64>,
    pub deadline: Field<Timestamp>,
    pub schedule: Field<String>,
    pub end_date: Field<Timestamp>,
    pub quality_gates: Field<Vec<QualityGate>>,
    pub checkpoints: Field<Vec<Checkpoint>>,
    pub delays: Field<Vec<Delay>>,
}

impl MissionInput {
    /// True when the request changes anything beyond `deadline` and `endDate`, which alone may
    /// change while a run is live.
    fn touches_definitions(&self) -> bool {
        !(self.name.is_absent()
            && self.prompt.is_absent()
            && self.data.is_absent()
            && self.tasks.is_absent()
            && self.team.is_absent()
            && self.quality_threshold.is_absent()
            && self.schedule.is_absent()
            && self.quality_gates.is_absent()
            && self.checkpoints.is_absent()
            && self.delays.is_absent())
    }

    fn apply(self, mission: &mut Mission) {
        if let Field::Value(name) = self.name {
            mission.name = name;
        }
        self.prompt.set(&mut mission.prompt);
        self.data.set(&mut mission.data);
        self.tasks.set_or(&mut mission.tasks, Vec::new);
        self.team.set(&mut mission.team);
        self.quality_threshold
            .set_or(&mut mission.quality_threshold, || DEFAULT_THRESHOLD);
        self.deadline.set(&mut mission.deadline);
        self.schedule.set(&mut mission.schedule);
        self.end_date.set(&mut mission.end_date);
        self.quality_gates.set_or(&mut mission.quality_gates, Vec::new);
        self.checkpoints.set_or(&mut mission.checkpoints, Vec::new);
        self.delays.set_or(&mut mission.delays, Vec::new);
        mission.task_count = i64::try_from(mission.tasks.len()).unwrap_or(i64::MAX);
    }
}

const DEFAULT_THRESHOLD: f64 = 3.0;

pub fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("mission {id:?} not found"))
}

/// A run's group: `name` for run 1, `name #N` after (spec §6.5).
pub fn group_name(name: &str, number: i64) -> String {
    if number <= 1 {
        name.to_string()
    } else {
        format!("{name} #{number}")
    }
}

/// The mission name a run group belongs to: `name #N` → `name`.
pub fn group_owner(group: &str) -> &str {
    match group.rsplit_once(" #") {
        Some((name, digits)) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => group,
    }
}

/// The whole validation: shape, times, then agents (read before any change opens, since
/// SQLite has a single connection). Fills `assignTo` defaults and resolved names.
async fn validate(
    rt: &Runtime,
    scope: &Scope,
    mission: &mut Mission,
    given: TimesGiven,
) -> Result<Option<Schedule>, ApiError> {
    let mut problems: Problems = Problems::new();
    if mission.tasks.is_empty() {
        problems.insert("tasks".into(), "required: 1 to 200 task definitions".into());
    }
    let mut plan = mission.plan();
    problems.extend(plan::check_shape(&plan));
    let schedule = plan::check_times(mission, given, crate::clock::now_ms(), &mut problems);
    for (path, problem) in plan::check_agents(rt, scope, &mut plan).await? {
        problems.entry(path).or_insert(problem);
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid_fields(problems));
    }
    mission.tasks = plan.tasks;
    Ok(schedule)
}

/// The status a saved mission that is not live takes from its schedule (spec §6.4), and the
/// next tick to fire.
fn arm(mission: &mut Mission, schedule: Option<&Schedule>, now: i64) -> Option<i64> {
    match schedule {
        Some(schedule) => {
            mission.status = if schedule.is_cron() { "recurring" } else { "scheduled" }.into();
            next_tick(schedule, mission.end_date, now)
        }
        None => {
            if matches!(mission.status.as_str(), "scheduled" | "recurring") {
                mission.status = "draft".into();
            }
            None
        }
    }
}

/// The first tick after `now`, unless it is past `endDate`.
pub fn next_tick(schedule: &Schedule, end_date: Option<Timestamp>, now: i64) -> Option<i64> {
    schedule
        .next_after(now)
        .filter(|tick| end_date.is_none_or(|end| *tick <= end.ms()))
}

fn saved(mission: &Mission) -> Event {
    Event::MissionSaved {
        mission_id: mission.id.clone(),
        name: mission.name.clone(),
        status: mission.status.clone(),
    }
}

fn duplicate(name: &str) -> impl FnOnce() -> ApiError + '_ {
    move || ApiError::Conflict {
        message: format!("a mission named {name:?} already exists"),
        details: None,
    }
}

fn given(input: &MissionInput) -> TimesGiven {
    TimesGiven {
        deadline: !input.deadline.is_absent(),
        schedule: !input.schedule.is_absent(),
        end_date: !input.end_date.is_absent(),
    }
}

/// Creates a mission: `draft`, `scheduled` or `recurring` (spec §6.4), with `mission:saved`.
pub async fn create(rt: &Runtime, scope: &Scope, input: MissionInput) -> Result<Mission, ApiError> {
    if !matches!(input.name, Field::Value(_)) {
        return Err(ApiError::invalid_field("name", "required"));
    }
    let now = Timestamp::now();
    let mut mission = Mission {
        id: ids::new_id(ID_PREFIX),
        name: String::new(),
        prompt: None,
        data: None,
        tasks: Vec::new(),
        team: None,
        quality_threshold: DEFAULT_THRESHOLD,
        deadline: None,
        schedule: None,
        end_date: None,
        quality_gates: Vec::new(),
        checkpoints: Vec::new(),
        delays: Vec::new(),
        status: "draft".into(),
        execution_count: 0,
        task_count: 0,
        current_run_id: None,
        created_at: now,
        updated_at: now,
    };
    let times = given(&input);
    input.apply(&mut mission);
    let schedule = validate(rt, scope, &mut mission, times).await?;
    let next_fire_at = arm(&mut mission, schedule.as_ref(), now.ms());
    let mut change = rt.change(scope).await?;
    let locked = Locked { mission, next_fire_at };
    store::missions::insert(change.conn(), scope, &locked.row()?, now.ms())
        .await
        .on_unique(store::missions::NAME_CONSTRAINT, duplicate(&locked.mission.name))?;
    change.emit(saved(&locked.mission));
    change.commit().await?;
    Ok(locked.mission)
}

/// PATCH (spec §6.4): each given field replaces the stored one and the whole mission is
/// validated again. While a run is live only `deadline` and `endDate` may change.
pub async fn update(rt: &Runtime, scope: &Scope, id: &str, input: MissionInput) -> Result<Mission, ApiError> {
    // Validation reads agents before the change opens (SQLite has one connection); the mission
    // it validated must still be the one the change holds, else it starts again.
    for _ in 0..UPDATE_TRIES {
        let original = get(rt, scope, id).await?;
        let mut probe = original.clone();
        let times = given(&input);
        let touches_definitions = input.touches_definitions();
        let schedule_changed = !input.schedule.is_absent() || !input.end_date.is_absent();
        input.clone().apply(&mut probe);
        let schedule = validate(rt, scope, &mut probe, times).await?;
        let mut change = rt.change(scope).await?;
        let mut locked = Locked::load(&mut change, rt, scope, id).await?;
        if locked.mission != original {
            continue;
        }
        if locked.mission.is_live() && touches_definitions {
            return Err(ApiError::Conflict {
                message: format!(
                    "the mission is {}; only deadline and endDate may change until its run ends",
                    locked.mission.status
                ),
                details: Some(serde_json::json!({"status": locked.mission.status})),
            });
        }
        // The mission as validated, with the names resolved before the change opened.
        locked.mission = probe;
        let now = change.at();
        locked.mission.updated_at = Timestamp(now).max(locked.mission.updated_at);
        if schedule_changed && !locked.mission.is_live() {
            locked.next_fire_at = arm(&mut locked.mission, schedule.as_ref(), now);
        } else if schedule_changed {
            // Live: the status mirrors the run; the schedule is armed again for its next tick.
            locked.next_fire_at = schedule
                .as_ref()
                .and_then(|s| next_tick(s, locked.mission.end_date, now));
        }
        let name = locked.mission.name.clone();
        let written = store::missions::update(change.conn(), scope, &locked.row()?)
            .await
            .on_unique(store::missions::NAME_CONSTRAINT, duplicate(&name))?;
        if !written {
            return Err(not_found(id));
        }
        change.emit(saved(&locked.mission));
        change.commit().await?;
        return Ok(locked.mission);
    }
    Err(ApiError::Conflict {
        message: "the mission changed while this request was checked; retry".into(),
        details: None,
    })
}

/// Times a write starts again when the mission changed under its checks.
pub const UPDATE_TRIES: usize = 5;

pub async fn get(rt: &Runtime, scope: &Scope, id: &str) -> Result<Mission, ApiError> {
    let row = store::missions::get(&rt.db.pool, scope, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(store::read_json(&row.body, "mission document")?)
}

pub async fn list(
    rt: &Runtime,
    scope: &Scope,
    status: &str,
    after: &str,
    fetch: i64,
) -> Result<Vec<Mission>, ApiError> {
    let rows = store::missions::list(&rt.db.pool, scope, status, after, fetch).await?;
    Ok(rows
        .iter()
        .map(|r| store::read_json(&r.body, "mission document"))
        .collect::<Result<_, _>>()?)
}

/// DELETE (spec §6.4): a live run is aborted first; open tasks elsewhere that depend on the
/// mission's tasks fail (`dependency_removed`, as a forced task DELETE, spec §5.4) rather than
/// run without them; every task of every run is removed (`task:removed`), then the runs, ticks
/// and the mission (`mission:deleted`).
pub async fn delete(rt: &Runtime, scope: &Scope, id: &str) -> Result<(), ApiError> {
    let mut change = rt.change(scope).await?;
    let mut locked = Locked::load(&mut change, rt, scope, id).await?;
    if locked.mission.is_live() {
        runs::abort_in(&mut change, scope, &mut locked).await?;
    }
    let message = format!("a task it depends on was deleted with its mission ({id})");
    for dependent in store::tasks::live_dependents_of_mission(change.conn(), scope, id).await? {
        crate::runtime::tasks::actions::stop_for(&mut change, scope, &dependent, "dependency_removed", &message)
            .await?;
    }
    if let Some(run_id) = &locked.mission.current_run_id {
        store::missions::delete_run_agents(change.conn(), scope, run_id).await?;
    }
    let deleted = store::tasks::delete_of_mission(change.conn(), scope, id).await?;
    for task_id in &deleted {
        change.emit(Event::TaskRemoved {
            task_id: task_id.clone(),
        });
    }
    store::missions::delete_runs(change.conn(), scope, id).await?;
    store::missions::delete_ticks(change.conn(), scope, id).await?;
    store::missions::delete(change.conn(), scope, id).await?;
    change.emit(Event::MissionDeleted {
        mission_id: id.to_string(),
        deleted_tasks: deleted,
    });
    change.commit().await?;
    Ok(())
}

/// Whether `group` is the group of an existing mission's runs (reserved for them, spec §5.1).
pub async fn group_is_reserved(
    conn: &mut sqlx::AnyConnection,
    scope: &Scope,
    group: &str,
) -> Result<bool, sqlx::Error> {
    let owner = group_owner(group);
    Ok(store::missions::by_name(conn, scope, owner).await?.is_some())
}
