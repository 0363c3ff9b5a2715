//! The mission driver of one instance: fires due schedule ticks and moves live runs on (holds,
//! delays, deadlines, completion). It wakes when a run's task changes status and at least every
//! second otherwise. Any number of instances run it side by side: every step holds the
//! mission's row, and a tick is claimed in the database under a key of (mission, instant), so a
//! tick fires exactly once whichever instance sees it first (spec §6.8 rule 3).

use std::time::Duration;

use super::runs::{self, Trigger};
use super::{Locked, crud, schedule};
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::scope::Scope;
use crate::store;

/// The backstop when no wake-up comes (delays and deadlines are timers read from the database).
const TICK: Duration = Duration::from_millis(1000);
/// Missions read per page.
const BATCH: i64 = 500;

/// Runs until shutdown.
pub async fn run(rt: Runtime) {
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => return,
            () = rt.hub.missions.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        if rt.shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = pass(&rt).await {
            tracing::warn!(error = ?e, "mission driver pass failed; retrying");
        }
    }
}

async fn pass(rt: &Runtime) -> Result<(), ApiError> {
    let now = crate::clock::now_ms();
    for due in store::missions::due(&rt.db.pool, now, BATCH).await? {
        if let Some(scope) = due.scope()
            && let Err(e) = fire(rt, &scope, &due.id).await
        {
            tracing::warn!(mission_id = %due.id, error = ?e, "could not fire a mission schedule");
        }
    }
    // Every live run, a page at a time.
    let mut after = String::new();
    loop {
        let page = store::missions::live_runs(&rt.db.pool, &after, BATCH).await?;
        for live in &page {
            if let Some(scope) = live.scope()
                && let Err(e) = runs::evaluate(rt, &scope, &live.mission_id).await
            {
                tracing::warn!(mission_id = %live.mission_id, error = ?e, "could not move a mission run on");
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == BATCH => after = last.id.clone(),
            _ => return Ok(()),
        }
    }
}

/// Fires the latest due tick of a mission's schedule, once: a run (trigger `schedule`), or a
/// skip when the previous run is still live or the tick is older than the catch-up window.
/// Then arms the next tick.
async fn fire(rt: &Runtime, scope: &Scope, mission_id: &str) -> Result<(), ApiError> {
    // The definitions are checked against the agents before the change opens (SQLite has one
    // connection); a tick whose definitions no longer resolve is skipped.
    let prepared = runs::prepare(rt, scope, mission_id).await;
    let mut change = rt.change(scope).await?;
    let mut locked = Locked::load(&mut change, rt, scope, mission_id).await?;
    let now = change.at();
    let (Some(next), Some(text)) = (locked.next_fire_at, locked.mission.schedule.clone()) else {
        return Ok(());
    };
    if next > now {
        // Another instance fired it and armed the next tick meanwhile.
        return Ok(());
    }
    let Ok(parsed) = schedule::parse(&text) else {
        locked.next_fire_at = None;
        locked.save(&mut change, scope).await?;
        change.commit().await?;
        return Ok(());
    };
    let tick = parsed.latest_until(now).unwrap_or(next).max(next);
    let window = crate::clock::duration_ms(rt.config.schedule.catch_up_window);
    let end_passed = locked.mission.end_date.is_some_and(|end| tick > end.ms());
    if now - tick > window || end_passed {
        tracing::info!(mission_id, scheduled_for = %crate::clock::format_ms(tick),
            "schedule tick missed while no instance ran, older than the catch-up window; not replayed");
    } else if locked.mission.is_live() {
        if store::missions::claim_tick(change.conn(), scope, mission_id, tick, None, now).await? {
            tracing::info!(mission_id, scheduled_for = %crate::clock::format_ms(tick),
                "schedule tick skipped: the previous run is still live");
        }
    } else {
        match prepared {
            // The definitions changed after they were checked: the next pass checks them again.
            Ok(prepared) if locked.mission.plan() != prepared.from => return Ok(()),
            Ok(prepared) => {
                // Claim first: the key on (mission, instant) makes a second firing impossible.
                if store::missions::claim_tick(change.conn(), scope, mission_id, tick, None, now).await? {
                    let run = runs::start_in(
                        &mut change,
                        scope,
                        &mut locked,
                        prepared.checked,
                        Trigger::Schedule(tick),
                    )
                    .await?;
                    store::missions::set_tick_run(change.conn(), scope, mission_id, tick, &run.id).await?;
                }
            }
            Err(e) => {
                store::missions::claim_tick(change.conn(), scope, mission_id, tick, None, now).await?;
                tracing::warn!(mission_id, error = ?e, "schedule tick skipped: the mission's definitions no longer resolve");
            }
        }
    }
    locked.next_fire_at = if parsed.is_cron() {
        crud::next_tick(&parsed, locked.mission.end_date, now.max(tick))
    } else {
        None
    };
    if locked.next_fire_at.is_none() && matches!(locked.mission.status.as_str(), "scheduled" | "recurring") {
        // The schedule has nothing left to fire: the mission shows its latest run's outcome.
        locked.mission.status = match &locked.mission.current_run_id {
            Some(run_id) => store::missions::get_run(change.conn(), scope, mission_id, run_id)
                .await?
                .map_or_else(|| "draft".to_string(), |r| r.status),
            None => "draft".into(),
        };
    }
    locked.save(&mut change, scope).await?;
    change.commit().await?;
    Ok(())
}
