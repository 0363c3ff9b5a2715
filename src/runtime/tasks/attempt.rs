//! One claimed task, from its attempt to the decision after review (spec §5.7): the brief, the
//! model call, then checks and reviewer calls, then done, approval, fix, retry or failure. No
//! transaction is held during a model call; every write is fenced by the claim's lease
//! generation, so a worker that lost its claim writes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::assessment::{self, Check, Expectation};
use super::call::{self, Answer, CallError};
use super::model::{Assessment, Attempt, Task, TaskError, Usage};
use super::status::{Phase, Reason, Status};
use super::{approvals, store_rows};
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::events::Event;
use crate::metrics;
use crate::providers::types::{ChatMessage, ChatRequest, Params, Role};
use crate::runtime::{Runtime, prompt};
use crate::scope::Scope;
use crate::store;

/// What the next attempt must answer (kept beside the task until that attempt starts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NextInput {
    pub previous_output: Option<String>,
    pub feedback: String,
    pub failed_checks: Vec<String>,
}

/// A task this worker holds.
pub struct Claim {
    pub scope: Scope,
    pub task: Task,
    pub generation: i64,
    pub next_input: Option<NextInput>,
}

/// Each dependency output in the brief is cut at this size (spec §5.7 step 2).
const DEPENDENCY_OUTPUT_LIMIT: usize = 64 * 1024;
/// Reviewer calls tried before the assessment fails (spec §5.7 step 3).
const REVIEW_TRIES: usize = 3;
/// Retry backoff: 5 s × 2^(n−1), at most 5 min (spec §5.7 step 6).
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The brief (spec §5.7 step 2): markdown sections for the title, description, dependency
/// outputs, expected outcomes and acceptance criteria.
async fn brief(rt: &Runtime, scope: &Scope, task: &Task) -> Result<String, ApiError> {
    let mut out = format!("# {}\n", task.title);
    if !task.description.is_empty() {
        out.push_str(&format!("\n{}\n", task.description));
    }
    if let Some(run_id) = &task.run_id
        && let Some(plan) = crate::runtime::missions::runs::brief_of(rt, scope, run_id).await?
    {
        out.push_str(&format!("\n## Mission \"{}\"\n", plan.name));
        if let Some(prompt) = plan.prompt.filter(|p| !p.is_empty()) {
            out.push_str(&format!("\n{prompt}\n"));
        }
        if let Some(data) = plan.data {
            let pretty = serde_json::to_string_pretty(&data).map_err(ApiError::internal)?;
            out.push_str(&format!("\n### Mission data\n\n```json\n{pretty}\n```\n"));
        }
    }
    for id in &task.depends_on {
        let Some(row) = store::tasks::get(&rt.db.pool, scope, id).await? else {
            continue;
        };
        let dependency = store_rows::from_body(&row.body)?;
        let output = dependency.result.and_then(|r| r.output).unwrap_or_default();
        out.push_str(&format!(
            "\n## Output of \"{}\"\n\n{}\n",
            dependency.title,
            cut(&output, DEPENDENCY_OUTPUT_LIMIT)
        ));
    }
    let outcomes = assessment::outcomes_text(&task.expected_outcomes);
    if !outcomes.is_empty() {
        out.push_str(&format!("\n## Expected outcomes\n\n{outcomes}\n"));
    }
    let criteria = assessment::criteria_text(&task.expectations);
    if !criteria.is_empty() {
        out.push_str(&format!("\n## Acceptance criteria\n\n{criteria}\n"));
    }
    Ok(out)
}

fn backoff(retries: i64, retry_after: Option<Duration>) -> Duration {
    let exponent = u32::try_from(retries.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    let plain = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(BACKOFF_MAX);
    retry_after.map_or(plain, |wait| plain.max(wait))
}

/// Attempts that failed (an error or a failed review), for escalation.
fn failed_attempts(task: &Task) -> i64 {
    let attempts = task.result.as_ref().map(|r| r.attempts.as_slice()).unwrap_or_default();
    i64::try_from(
        attempts
            .iter()
            .filter(|a| a.error.is_some() || a.passed == Some(false))
            .count(),
    )
    .unwrap_or(i64::MAX)
}

/// Writes the task under the claim in `change`, ends the claim when `release` says so
/// (`run_after`, next input), and commits; `Ok(false)` when the claim was lost and nothing was
/// written.
async fn commit_claimed(
    mut change: crate::events::Change,
    claim: &Claim,
    task: &Task,
    release: Option<(i64, Option<String>)>,
) -> Result<bool, ApiError> {
    let row = store_rows::row(task)?;
    if !store::tasks::update(change.conn(), &claim.scope, &row, Some(claim.generation)).await? {
        return Ok(false);
    }
    if let Some((run_after, next_input)) = release {
        store::tasks::release(change.conn(), &claim.scope, &task.id, run_after, next_input.as_deref()).await?;
    }
    change.commit().await?;
    Ok(true)
}

/// Writes the task under the claim with `events`.
async fn save(rt: &Runtime, claim: &Claim, task: &Task, events: Vec<Event>) -> Result<bool, ApiError> {
    let mut change = rt.change(&claim.scope).await?;
    events.into_iter().for_each(|e| change.emit(e));
    commit_claimed(change, claim, task, None).await
}

/// A status change under the claim, with its event and `events` before it.
#[allow(clippy::too_many_arguments)]
async fn move_to(
    rt: &Runtime,
    claim: &Claim,
    task: &mut Task,
    to: Status,
    phase: Option<Phase>,
    reason: Reason,
    events: Vec<Event>,
    release: Option<(i64, Option<String>)>,
) -> Result<bool, ApiError> {
    let mut change = rt.change(&claim.scope).await?;
    events.into_iter().for_each(|e| change.emit(e));
    task.transition(&mut change, to, phase, reason)?;
    commit_claimed(change, claim, task, release).await
}

fn last_attempt(task: &mut Task) -> Option<&mut Attempt> {
    task.result.as_mut().and_then(|r| r.attempts.last_mut())
}

/// `agent:finished` for the task's latest attempt.
pub(super) fn finished_event(task: &Task, error: Option<&TaskError>) -> Option<Event> {
    let attempt = task.result.as_ref()?.attempts.last()?;
    let duration = attempt
        .finished_at
        .map_or(0, |f| f.ms().saturating_sub(attempt.started_at.ms()));
    Some(Event::AgentFinished {
        task_id: task.id.clone(),
        agent: attempt.agent.clone(),
        model: attempt.model.clone(),
        attempt: attempt.number,
        duration_ms: duration,
        usage: crate::events::UsageCounts {
            prompt_tokens: attempt.usage.prompt_tokens,
            completion_tokens: attempt.usage.completion_tokens,
            total_tokens: attempt.usage.total_tokens,
        },
        error: error.and_then(|e| serde_json::to_value(e).ok()),
    })
}

/// Fails the task at once (configuration errors, exhausted retries, limits).
async fn fail(
    rt: &Runtime,
    claim: &Claim,
    task: &mut Task,
    error: TaskError,
    extra: Vec<Event>,
) -> Result<(), ApiError> {
    task.result_mut().error = Some(error);
    // From `in_progress` or `review` failing is a regular move; before the attempt started
    // (a configuration error) it is a stop.
    let reason = if super::status::allowed(task.status(), Status::Failed, Reason::Regular) {
        Reason::Regular
    } else {
        Reason::Stop
    };
    move_to(rt, claim, task, Status::Failed, None, reason, extra, Some((0, None))).await?;
    Ok(())
}

/// Runs the claimed task until it leaves the worker's hands. Returns the attempt outcome label
/// for metrics.
pub async fn run(rt: &Runtime, mut claim: Claim) -> Result<&'static str, ApiError> {
    let mut task = claim.task.clone();
    // Escalation (spec §5.7 step 7): after enough failed attempts, the fallback agent and/or
    // model take over.
    let policy = task.retry_policy.clone().unwrap_or_default();
    let escalate = policy.escalate_after.is_some_and(|n| failed_attempts(&task) >= n);
    let agent_name = match (&policy.fallback_agent, escalate) {
        (Some(fallback), true) => fallback.clone(),
        _ => task.assign_to.clone(),
    };
    let run_id = task.run_id.clone();
    let Some(agent) =
        crate::runtime::missions::runs::find_agent(rt, &claim.scope, run_id.as_deref(), &agent_name).await?
    else {
        let error = TaskError::new("agent_not_found", format!("agent {agent_name:?} no longer exists"));
        fail(rt, &claim, &mut task, error, Vec::new()).await?;
        return Ok("failed");
    };
    let model = match (&policy.escalate_model, escalate) {
        (Some(model), true) => model.clone(),
        _ => agent.model.clone(),
    };
    if let Err(problem) = rt.providers.check_model(&model) {
        let error = TaskError::new("provider_not_configured", problem);
        fail(rt, &claim, &mut task, error, Vec::new()).await?;
        return Ok("failed");
    }
    let phase = if claim.next_input.is_some() {
        Phase::Fix
    } else {
        Phase::Execution
    };
    let now = Timestamp::now();
    let number = task.result.as_ref().map_or(0, |r| r.attempts.len()) + 1;
    let number = i64::try_from(number).unwrap_or(i64::MAX);
    task.started_at.get_or_insert(now);
    task.result_mut().attempts.push(Attempt {
        number,
        agent: agent.name.clone(),
        model: model.clone(),
        phase,
        started_at: now,
        finished_at: None,
        output: None,
        finish_reason: None,
        usage: Usage::default(),
        error: None,
        passed: None,
        global_score: None,
    });
    let spawned = Event::AgentSpawned {
        task_id: task.id.clone(),
        agent: agent.name.clone(),
        model: model.clone(),
        attempt: number,
        phase: if phase == Phase::Fix { "fix" } else { "execution" }.to_string(),
    };
    // The attempt starts, with its stored `maxDuration` timer, in one commit.
    let mut change = rt.change(&claim.scope).await?;
    change.emit(spawned);
    task.transition(&mut change, Status::InProgress, Some(phase), Reason::Regular)?;
    if !store::tasks::update(
        change.conn(),
        &claim.scope,
        &store_rows::row(&task)?,
        Some(claim.generation),
    )
    .await?
    {
        return Ok("lost");
    }
    let attempt_deadline = task.max_duration.map(|d| now.ms() + d);
    store::tasks::start_attempt(
        change.conn(),
        &claim.scope,
        &task.id,
        claim.generation,
        attempt_deadline,
    )
    .await?;
    change.commit().await?;

    // The conversation: the agent's prompt, the brief, and for a fix the previous output and
    // what was wrong with it (spec §5.7 step 5).
    let (project_memory, agent_memory) = store::memory::get_pair(&rt.db.pool, &claim.scope, &agent.id).await?;
    let system = prompt::compose(
        &agent,
        &project_memory.map(|m| m.content).unwrap_or_default(),
        &agent_memory.map(|m| m.content).unwrap_or_default(),
        "",
    );
    let mut messages = vec![
        ChatMessage::text(Role::System, system),
        ChatMessage::text(Role::User, brief(rt, &claim.scope, &task).await?),
    ];
    if let Some(input) = claim.next_input.take() {
        if let Some(previous) = input.previous_output {
            messages.push(ChatMessage::text(Role::Assistant, previous));
        }
        let mut fix = format!("Your previous answer was not accepted.\n\nFeedback: {}", input.feedback);
        if !input.failed_checks.is_empty() {
            fix.push_str("\n\nFailed checks:\n");
            for check in &input.failed_checks {
                fix.push_str(&format!("- {check}\n"));
            }
        }
        fix.push_str("\nAnswer the task again, addressing this.");
        messages.push(ChatMessage::text(Role::User, fix));
    }
    let request = ChatRequest {
        model: String::new(),
        messages,
        params: Params {
            temperature: agent.temperature,
            max_tokens: agent.max_tokens,
            reasoning: agent.reasoning,
            user: task.user.clone(),
            ..Params::default()
        },
    };
    // The text goes to the task's followers as it comes (spec §5.6), and reaches other
    // instances before the events that end the attempt.
    let key = crate::events::live::key(&claim.scope, &task.id);
    let live = std::sync::Arc::clone(&rt.hub.live);
    let result = call::call(rt, &model, request, |text| live.publish(&key, text)).await;
    live.flush(&key).await;
    let finished = Timestamp::now();
    match result {
        Err(CallError {
            error,
            partial,
            retry_after,
        }) => {
            let code = error.code();
            let task_error = TaskError::new(code, error.to_string());
            if let Some(attempt) = last_attempt(&mut task) {
                attempt.finished_at = Some(finished);
                attempt.output = (!partial.text.is_empty()).then_some(partial.text);
                attempt.error = Some(task_error.clone());
            }
            let mut events: Vec<Event> = finished_event(&task, Some(&task_error)).into_iter().collect();
            if task.retries < task.max_retries && !task.side_effects {
                task.retries += 1;
                events.push(Event::TaskRetry {
                    task_id: task.id.clone(),
                    attempt: number,
                    max_retries: task.max_retries,
                    reason: "error".into(),
                });
                let wait = backoff(task.retries, retry_after);
                let run_after = finished.ms() + crate::clock::duration_ms(wait);
                move_to(
                    rt,
                    &claim,
                    &mut task,
                    Status::Pending,
                    None,
                    Reason::Requeue,
                    events,
                    Some((run_after, None)),
                )
                .await?;
                Ok("retried")
            } else {
                fail(rt, &claim, &mut task, task_error, events).await?;
                Ok("failed")
            }
        }
        Ok(answer) => review(rt, claim, task, answer, number, &model, phase, finished).await,
    }
}

/// Records the answer, then assesses it and decides (spec §5.7 steps 3–5, 8).
#[allow(clippy::too_many_arguments)]
async fn review(
    rt: &Runtime,
    claim: Claim,
    mut task: Task,
    answer: Answer,
    number: i64,
    model: &str,
    phase: Phase,
    finished: Timestamp,
) -> Result<&'static str, ApiError> {
    if let Some(attempt) = last_attempt(&mut task) {
        attempt.finished_at = Some(finished);
        attempt.output = Some(answer.text.clone());
        attempt.finish_reason = Some(answer.finish.map_or("stop", |f| f.as_str()).to_string());
        attempt.usage = Usage::of(answer.usage.prompt_tokens, answer.usage.completion_tokens);
    }
    let usage = Usage::of(answer.usage.prompt_tokens, answer.usage.completion_tokens);
    {
        let result = task.result_mut();
        result.output = Some(answer.text.clone());
        result.usage.add(usage);
        result.error = None;
        let first = result.attempts.first().map_or(finished.ms(), |a| a.started_at.ms());
        result.duration_ms = finished.ms().saturating_sub(first);
    }
    let events: Vec<Event> = finished_event(&task, None).into_iter().collect();
    let trigger = if phase == Phase::Fix { "fix" } else { "initial" };
    let required = task.expected_outcomes.iter().any(|o| o.required);
    if task.expectations.is_empty() && !required && !task.side_effects {
        // Nothing to assess: the review passes at once (spec §5.7 step 3), in the same commit.
        let mut change = rt.change(&claim.scope).await?;
        for event in events {
            change.emit(event);
        }
        task.transition(&mut change, Status::Review, Some(Phase::Review), Reason::Regular)?;
        task.outcomes = assessment::extract_outcomes(&task.expected_outcomes, &answer.text).0;
        task.transition(&mut change, Status::Done, None, Reason::Regular)?;
        let written = commit_claimed(change, &claim, &task, Some((0, None))).await?;
        return Ok(if written { "passed" } else { "lost" });
    }
    if !move_to(
        rt,
        &claim,
        &mut task,
        Status::Review,
        Some(Phase::Review),
        Reason::Regular,
        events,
        None,
    )
    .await?
    {
        return Ok("lost");
    }
    let assessed = if task.expectations.is_empty() && !required {
        None
    } else {
        let started = Event::AssessmentStarted {
            task_id: task.id.clone(),
            attempt: number,
            trigger: trigger.into(),
        };
        if !save(rt, &claim, &task, vec![started]).await? {
            return Ok("lost");
        }
        match assess(rt, &claim.scope, &task, model, &answer.text, trigger).await {
            Ok((assessment, reviewer_usage)) => {
                task.result_mut().usage.add(reviewer_usage);
                Some(assessment)
            }
            Err(error) => {
                let complete = Event::AssessmentComplete {
                    task_id: task.id.clone(),
                    attempt: number,
                    passed: false,
                    global_score: None,
                    checks: serde_json::json!([]),
                };
                fail(rt, &claim, &mut task, error, vec![complete]).await?;
                return Ok("failed");
            }
        }
    };
    let passed = assessed.as_ref().is_none_or(|a| a.passed);
    let mut events = Vec::new();
    if let Some(assessment) = &assessed {
        if let Some(attempt) = last_attempt(&mut task) {
            attempt.passed = Some(assessment.passed);
            attempt.global_score = assessment.global_score;
        }
        events.push(Event::AssessmentComplete {
            task_id: task.id.clone(),
            attempt: number,
            passed: assessment.passed,
            global_score: assessment.global_score,
            checks: serde_json::to_value(&assessment.checks).map_err(ApiError::internal)?,
        });
        task.result_mut().assessment = Some(assessment.clone());
    }
    if passed {
        let (outcomes, _) = assessment::extract_outcomes(&task.expected_outcomes, &answer.text);
        task.outcomes = outcomes;
        if task.side_effects {
            let mut change = rt.change(&claim.scope).await?;
            for event in events {
                change.emit(event);
            }
            approvals::request(&mut change, &claim.scope, &mut task, &answer.text).await?;
            task.transition(&mut change, Status::AwaitingApproval, None, Reason::Regular)?;
            let written = commit_claimed(change, &claim, &task, Some((0, None))).await?;
            return Ok(if written { "passed" } else { "lost" });
        }
        move_to(
            rt,
            &claim,
            &mut task,
            Status::Done,
            None,
            Reason::Regular,
            events,
            Some((0, None)),
        )
        .await?;
        return Ok("passed");
    }
    let assessment = assessed.unwrap_or_else(|| unreachable_assessment(trigger));
    if task.retries < task.max_retries && !task.side_effects {
        task.retries += 1;
        events.push(Event::TaskFix {
            task_id: task.id.clone(),
            attempt: number,
            max_retries: task.max_retries,
            feedback: assessment.feedback.clone(),
        });
        let next = NextInput {
            previous_output: Some(answer.text.clone()),
            feedback: assessment.feedback.clone(),
            failed_checks: assessment
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| format!("{}: {}", c.r#type, c.message))
                .collect(),
        };
        let next = serde_json::to_string(&next).map_err(ApiError::internal)?;
        move_to(
            rt,
            &claim,
            &mut task,
            Status::Pending,
            None,
            Reason::Requeue,
            events,
            Some((0, Some(next))),
        )
        .await?;
        return Ok("fix");
    }
    let error = TaskError::new("review_failed", assessment.feedback.clone());
    fail(rt, &claim, &mut task, error, events).await?;
    Ok("failed")
}

/// Only reached when a failed review had no assessment, which cannot happen: a review fails
/// only through an assessment.
fn unreachable_assessment(trigger: &str) -> Assessment {
    Assessment {
        passed: false,
        global_score: None,
        checks: Vec::new(),
        feedback: String::new(),
        reviewer_model: None,
        trigger: trigger.into(),
        timestamp: Timestamp::now(),
    }
}

/// Deterministic checks, one reviewer call per `llm_review` expectation, required outcomes
/// (spec §5.7 step 3). A reviewer that fails 3 times, or answers invalid JSON twice, fails the
/// assessment (`assessment_failed`).
pub async fn assess(
    rt: &Runtime,
    scope: &Scope,
    task: &Task,
    model: &str,
    output: &str,
    trigger: &str,
) -> Result<(Assessment, Usage), TaskError> {
    // The project's reviewer, else the server's, else the attempt's own model (spec §10.4).
    let reviewer = rt
        .config
        .projects
        .get(&scope.project)
        .and_then(|p| p.assessment_model.clone())
        .or_else(|| rt.config.assessment.model.clone())
        .unwrap_or_else(|| model.to_string());
    let mut checks: Vec<Check> = Vec::new();
    let mut feedback: Vec<String> = Vec::new();
    let mut usage = Usage::default();
    let mut reviewed = false;
    for expectation in &task.expectations {
        if let Some(check) = assessment::check(expectation, output) {
            checks.push(check);
            continue;
        }
        if let Expectation::LlmReview { .. } = expectation {
            reviewed = true;
            let (check, said, spent) = review_call(rt, task, &reviewer, expectation, output).await?;
            usage.add(spent);
            checks.push(check);
            if !said.is_empty() {
                feedback.push(said);
            }
        }
    }
    let (_, missing) = assessment::extract_outcomes(&task.expected_outcomes, output);
    checks.extend(missing);
    let passed = checks.iter().all(|c| c.passed);
    if feedback.is_empty() {
        feedback = checks.iter().filter(|c| !c.passed).map(|c| c.message.clone()).collect();
    }
    Ok((
        Assessment {
            passed,
            global_score: assessment::global_score(&checks),
            checks,
            feedback: feedback.join("\n"),
            reviewer_model: reviewed.then_some(reviewer),
            trigger: trigger.into(),
            timestamp: Timestamp::now(),
        },
        usage,
    ))
}

async fn review_call(
    rt: &Runtime,
    task: &Task,
    reviewer: &str,
    expectation: &Expectation,
    output: &str,
) -> Result<(Check, String, Usage), TaskError> {
    let mut request = assessment::review_request("", &task.title, &task.description, expectation, output);
    let mut usage = Usage::default();
    let mut asked_again = false;
    let mut last_problem = String::new();
    for _ in 0..REVIEW_TRIES {
        match call::call(rt, reviewer, request.clone(), |_| {}).await {
            Ok(answer) => {
                usage.add(Usage::of(answer.usage.prompt_tokens, answer.usage.completion_tokens));
                match assessment::read_review(expectation, &answer.text) {
                    Ok((check, said)) => return Ok((check, said, usage)),
                    Err(problem) if !asked_again => {
                        asked_again = true;
                        request = assessment::review_retry(&request, &answer.text, &problem);
                        last_problem = problem;
                    }
                    Err(problem) => {
                        last_problem = problem;
                        break;
                    }
                }
            }
            Err(e) => last_problem = e.error.to_string(),
        }
    }
    Err(TaskError::new(
        "assessment_failed",
        format!("the reviewer gave no usable answer: {last_problem}"),
    ))
}

/// The attempt outcome counted in `polpo_task_attempts_total`.
pub fn count(rt: &Runtime, outcome: &str) {
    rt.metrics.add(metrics::TASK_ATTEMPTS, &[("outcome", outcome)], 1.0);
}
