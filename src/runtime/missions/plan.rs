//! The validation of spec §6.2, at create, at PATCH and again when a run starts: titles and
//! references, cycles, holds that could never release, agents and models, schedules, durations
//! and times. Every problem is named by its JSON path; nothing is stored on error.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::{Mission, Plan};
use super::schedule::{self, Schedule};
use crate::runtime::{Runtime, agents};
use crate::scope::Scope;

pub type Problems = BTreeMap<String, String>;

fn add(problems: &mut Problems, path: String, problem: impl Into<String>) {
    problems.entry(path).or_insert_with(|| problem.into());
}

/// One hold of any kind, for the rules they share.
struct HoldRef<'a> {
    list: &'static str,
    name: &'a str,
    after: &'a [String],
    blocks: &'a [String],
}

fn holds(plan: &Plan) -> Vec<HoldRef<'_>> {
    let gates = plan.quality_gates.iter().map(|h| HoldRef {
        list: "qualityGates",
        name: &h.name,
        after: &h.after_tasks,
        blocks: &h.blocks_tasks,
    });
    let checkpoints = plan.checkpoints.iter().map(|h| HoldRef {
        list: "checkpoints",
        name: &h.name,
        after: &h.after_tasks,
        blocks: &h.blocks_tasks,
    });
    let delays = plan.delays.iter().map(|h| HoldRef {
        list: "delays",
        name: &h.name,
        after: &h.after_tasks,
        blocks: &h.blocks_tasks,
    });
    gates.chain(checkpoints).chain(delays).collect()
}

/// Rules 1 and 2 and the delay durations: everything that needs no lookup.
pub fn check_shape(plan: &Plan) -> Problems {
    let mut problems = Problems::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, def) in plan.tasks.iter().enumerate() {
        if index.insert(def.title.as_str(), i).is_some() {
            add(
                &mut problems,
                format!("tasks[{i}].title"),
                "another task of this mission has this title",
            );
        }
    }
    for (i, def) in plan.tasks.iter().enumerate() {
        for (j, dependency) in def.depends_on.iter().enumerate() {
            let path = format!("tasks[{i}].dependsOn[{j}]");
            if dependency == &def.title {
                add(&mut problems, path, "a task cannot depend on itself");
            } else if !index.contains_key(dependency.as_str()) {
                add(
                    &mut problems,
                    path,
                    format!("no task titled {dependency:?} in this mission"),
                );
            }
        }
    }
    if problems.is_empty()
        && let Some(cycle) = find_cycle(plan, &index)
    {
        add(
            &mut problems,
            format!("tasks[{}].dependsOn", cycle[0]),
            format!(
                "the dependencies make a cycle: {}",
                cycle
                    .iter()
                    .chain(cycle.first())
                    .map(|i| plan.tasks[*i].title.as_str())
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
        );
    }
    let mut seen_names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut positions: BTreeMap<&str, usize> = BTreeMap::new();
    for hold in holds(plan) {
        let i = {
            let n = positions.entry(hold.list).or_insert(0);
            *n += 1;
            *n - 1
        };
        let at = format!("{}[{i}]", hold.list);
        if !seen_names.entry(hold.list).or_default().insert(hold.name) {
            add(
                &mut problems,
                format!("{at}.name"),
                format!("another entry of {} has this name", hold.list),
            );
        }
        for (field, titles) in [("afterTasks", hold.after), ("blocksTasks", hold.blocks)] {
            if titles.is_empty() {
                add(&mut problems, format!("{at}.{field}"), "must name at least one task");
            }
            for (j, title) in titles.iter().enumerate() {
                if !index.contains_key(title.as_str()) {
                    add(
                        &mut problems,
                        format!("{at}.{field}[{j}]"),
                        format!("no task titled {title:?} in this mission"),
                    );
                }
            }
        }
        if !problems.is_empty() {
            continue;
        }
        // Rule 2: what it blocks must not be what it waits for, directly or not.
        let waited = prerequisites(plan, &index, hold.after);
        for (j, title) in hold.blocks.iter().enumerate() {
            if waited.contains(title.as_str()) {
                add(
                    &mut problems,
                    format!("{at}.blocksTasks[{j}]"),
                    format!("{title:?} must finish before this hold can release, so it could never be released"),
                );
            }
        }
    }
    for (i, delay) in plan.delays.iter().enumerate() {
        if let Err(problem) = schedule::parse_duration(&delay.duration) {
            add(&mut problems, format!("delays[{i}].duration"), problem);
        }
    }
    problems
}

/// The titles in `after` and every task they depend on, transitively.
fn prerequisites<'p>(plan: &'p Plan, index: &HashMap<&str, usize>, after: &'p [String]) -> BTreeSet<&'p str> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = after.iter().map(String::as_str).collect();
    while let Some(title) = todo.pop() {
        if seen.insert(title)
            && let Some(i) = index.get(title)
        {
            todo.extend(plan.tasks[*i].depends_on.iter().map(String::as_str));
        }
    }
    seen
}

/// The task indexes of one dependency cycle, if there is one.
fn find_cycle(plan: &Plan, index: &HashMap<&str, usize>) -> Option<Vec<usize>> {
    // 0: unvisited, 1: on the current path, 2: done.
    let mut state = vec![0u8; plan.tasks.len()];
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        node: usize,
        plan: &Plan,
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[node] = 1;
        path.push(node);
        for dependency in &plan.tasks[node].depends_on {
            let Some(&next) = index.get(dependency.as_str()) else {
                continue;
            };
            if state[next] == 1 {
                let start = path.iter().position(|n| *n == next).unwrap_or(0);
                return Some(path[start..].to_vec());
            }
            if state[next] == 0
                && let Some(cycle) = visit(next, plan, index, state, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        state[node] = 2;
        None
    }
    (0..plan.tasks.len()).find_map(|start| {
        if state[start] == 0 {
            visit(start, plan, index, &mut state, &mut path)
        } else {
            None
        }
    })
}

/// Rules 3 to 5, against the project's agents as they are now: team members are unique and
/// usable, every `assignTo` (defaulting to the first member) and `fallbackAgent` resolves to a
/// member or a project agent, whose model is usable. Resolved names are written back.
pub async fn check_agents(rt: &Runtime, scope: &Scope, plan: &mut Plan) -> Result<Problems, crate::error::ApiError> {
    let mut problems = Problems::new();
    let members = plan.team.as_ref().map(super::model::Team::names).unwrap_or_default();
    if let Some(team) = &plan.team {
        let mut seen = BTreeSet::new();
        for (i, member) in team.agents.iter().enumerate() {
            let name = member["name"].as_str().unwrap_or_default();
            if !seen.insert(name) {
                add(
                    &mut problems,
                    format!("team.agents[{i}].name"),
                    "another member of the team has this name",
                );
            }
            let model = member["model"].as_str().unwrap_or_default();
            if let Err(problem) = rt.providers.check_model(model) {
                add(&mut problems, format!("team.agents[{i}].model"), problem);
            }
            if let Some(boss) = member["reportsTo"].as_str()
                && !members.iter().any(|m| m == boss)
                && agents::find(&rt.db, scope, boss).await?.is_none()
            {
                add(
                    &mut problems,
                    format!("team.agents[{i}].reportsTo"),
                    format!("no team member or agent {boss:?}"),
                );
            }
        }
    }
    let mut resolved: HashMap<String, Result<String, String>> = HashMap::new();
    for i in 0..plan.tasks.len() {
        if plan.tasks[i].assign_to.is_empty() {
            match members.first() {
                Some(first) => plan.tasks[i].assign_to = first.clone(),
                None => {
                    add(
                        &mut problems,
                        format!("tasks[{i}].assignTo"),
                        "required when the mission has no team",
                    );
                    continue;
                }
            }
        }
        let wanted = plan.tasks[i].assign_to.clone();
        match resolve(rt, scope, &members, &wanted, &mut resolved).await? {
            Ok(name) => plan.tasks[i].assign_to = name,
            Err(problem) => add(&mut problems, format!("tasks[{i}].assignTo"), problem),
        }
        let Some(policy) = plan.tasks[i].retry_policy.as_mut() else {
            continue;
        };
        if let Some(fallback) = policy.fallback_agent.clone() {
            match resolve(rt, scope, &members, &fallback, &mut resolved).await? {
                Ok(name) => policy.fallback_agent = Some(name),
                Err(problem) => add(&mut problems, format!("tasks[{i}].retryPolicy.fallbackAgent"), problem),
            }
        }
        if let Some(model) = &policy.escalate_model
            && let Err(problem) = rt.providers.check_model(model)
        {
            add(&mut problems, format!("tasks[{i}].retryPolicy.escalateModel"), problem);
        }
    }
    Ok(problems)
}

/// A team member's name, or a project agent's name when its model is usable.
async fn resolve(
    rt: &Runtime,
    scope: &Scope,
    members: &[String],
    wanted: &str,
    cache: &mut HashMap<String, Result<String, String>>,
) -> Result<Result<String, String>, crate::error::ApiError> {
    if members.iter().any(|m| m == wanted) {
        return Ok(Ok(wanted.to_string()));
    }
    if let Some(known) = cache.get(wanted) {
        return Ok(known.clone());
    }
    let outcome = match agents::find(&rt.db, scope, wanted).await? {
        None => Err(format!("no team member or agent {wanted:?}")),
        Some(agent) => match rt.providers.check_model(&agent.model) {
            Ok(_) => Ok(agent.name),
            Err(problem) => Err(format!("agent {:?} cannot run: {problem}", agent.name)),
        },
    };
    cache.insert(wanted.to_string(), outcome.clone());
    Ok(outcome)
}

/// Which time fields the request set: only those must be in the future.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimesGiven {
    pub deadline: bool,
    pub schedule: bool,
    pub end_date: bool,
}

/// The schedule, `endDate` and `deadline` rules (spec §6.1, §6.8); returns the parsed schedule.
pub fn check_times(mission: &Mission, given: TimesGiven, now: i64, problems: &mut Problems) -> Option<Schedule> {
    if given.deadline
        && let Some(deadline) = mission.deadline
        && deadline.ms() <= now
    {
        add(problems, "deadline".into(), "must be in the future");
    }
    let parsed = match mission.schedule.as_deref().map(schedule::parse) {
        None => None,
        Some(Ok(parsed)) => Some(parsed),
        Some(Err(problem)) => {
            add(problems, "schedule".into(), problem);
            None
        }
    };
    if given.schedule
        && let Some(Schedule::Once(at)) = &parsed
        && *at <= now
    {
        add(problems, "schedule".into(), "a one-time schedule must be in the future");
    }
    if let Some(end) = mission.end_date {
        if !parsed.as_ref().is_some_and(Schedule::is_cron) && !problems.contains_key("schedule") {
            add(problems, "endDate".into(), "allowed only with a cron schedule");
        } else if given.end_date && end.ms() <= now {
            add(problems, "endDate".into(), "must be in the future");
        } else if (given.end_date || given.schedule)
            && let Some(cron) = &parsed
            && cron.next_after(now).is_none_or(|tick| tick > end.ms())
        {
            add(problems, "endDate".into(), "the schedule has no tick before it");
        }
    }
    parsed
}
