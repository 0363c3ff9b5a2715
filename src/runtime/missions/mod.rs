//! Missions (spec §6): saved plans of task definitions with holds and schedules; each execution
//! is a run that owns its tasks.
//!
//! - `model`: the mission, run and report objects; `schedule`: cron, instants, durations
//! - `plan`: the validation of §6.2; `crud`: create, PATCH, read, delete
//! - `runs`: start, the run's progress (holds, completion, deadline), resume, abort, reports
//! - `driver`: the background loop that fires schedules and moves live runs on
//!
//! Every change of a mission or of its runs holds the mission's row (Postgres `FOR UPDATE`;
//! SQLite has one writer), so instances act on a run one at a time.

pub mod crud;
pub mod driver;
pub mod model;
pub mod plan;
pub mod runs;
pub mod schedule;

use crate::error::ApiError;
use crate::events::Change;
use crate::runtime::Runtime;
use crate::scope::Scope;
use crate::store::{self, missions::MissionRow};
use model::Mission;

/// A mission read in a change under its row lock, with its schedule's next tick.
pub struct Locked {
    pub mission: Mission,
    pub next_fire_at: Option<i64>,
}

impl Locked {
    pub async fn load(change: &mut Change, rt: &Runtime, scope: &Scope, id: &str) -> Result<Self, ApiError> {
        let row = store::missions::lock(change.conn(), rt.db.backend, scope, id)
            .await?
            .ok_or_else(|| crud::not_found(id))?;
        Ok(Self {
            mission: store::read_json(&row.body, "mission document")?,
            next_fire_at: row.next_fire_at,
        })
    }

    pub fn row(&self) -> Result<MissionRow, ApiError> {
        Ok(MissionRow {
            id: self.mission.id.clone(),
            name: self.mission.name.clone(),
            status: self.mission.status.clone(),
            body: serde_json::to_string(&self.mission).map_err(ApiError::internal)?,
            next_fire_at: self.next_fire_at,
            updated_at: self.mission.updated_at.ms(),
        })
    }

    pub async fn save(&self, change: &mut Change, scope: &Scope) -> Result<(), ApiError> {
        if !store::missions::update(change.conn(), scope, &self.row()?).await? {
            return Err(crud::not_found(&self.mission.id));
        }
        Ok(())
    }
}

/// Sets `polpo_mission_runs_live` from the database (read at scrape time).
pub async fn refresh_metrics(rt: &Runtime) {
    match store::missions::count_live_runs(&rt.db.pool).await {
        #[allow(clippy::cast_precision_loss)]
        Ok(n) => rt.metrics.set(crate::metrics::MISSION_RUNS_LIVE, &[], n as f64),
        Err(e) => tracing::warn!(error = %e, "could not count live mission runs for metrics"),
    }
}
