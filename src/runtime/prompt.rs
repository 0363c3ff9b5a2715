//! The agent system prompt of spec §2.3: parts in a fixed order, blank lines between them,
//! empty parts left out.

use crate::runtime::agents::Agent;

/// Part 2: the identity block, one "Label: value" line per set member.
fn identity_block(agent: &Agent) -> String {
    let mut lines = vec![format!("Name: {}", agent.name)];
    if let Some(role) = &agent.role {
        lines.push(format!("Role: {role}"));
    }
    if let Some(identity) = &agent.identity {
        let members = [
            ("Display name", &identity.display_name),
            ("Title", &identity.title),
            ("Company", &identity.company),
            ("Email", &identity.email),
            ("Bio", &identity.bio),
            ("Timezone", &identity.timezone),
            ("Tone", &identity.tone),
            ("Personality", &identity.personality),
        ];
        for (label, value) in members {
            if let Some(value) = value {
                lines.push(format!("{label}: {value}"));
            }
        }
        if !identity.responsibilities.is_empty() {
            lines.push(format!("Responsibilities: {}", identity.responsibilities.join("; ")));
        }
        if !identity.socials.is_empty() {
            let socials: Vec<String> = identity.socials.iter().map(|(k, v)| format!("{k} {v}")).collect();
            lines.push(format!("Socials: {}", socials.join("; ")));
        }
    }
    lines.join("\n")
}

fn section(heading: &str, content: &str) -> String {
    if content.trim().is_empty() {
        String::new()
    } else {
        format!("# {heading}\n{content}")
    }
}

/// The whole system prompt. `caller` is the text of the request's system/developer messages
/// (chat only; empty for tasks).
pub fn compose(agent: &Agent, project_memory: &str, agent_memory: &str, caller: &str) -> String {
    let parts = [
        agent.system_prompt.clone().unwrap_or_default(),
        identity_block(agent),
        section("Project memory", project_memory),
        section("Agent memory", agent_memory),
        section("Context from the caller", caller),
    ];
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::agents::Identity;

    fn agent() -> Agent {
        serde_json::from_value(serde_json::json!({
            "id": "agt_01jz8k2m4p6r8t0v2x4z6b8d0f", "name": "ada", "role": "Backend engineer", "model": "mock/echo",
            "systemPrompt": "You write Rust.", "allowedTools": [], "skills": [], "maxTurns": 10,
            "maxConcurrency": null, "reasoning": null, "identity": null, "reportsTo": null, "temperature": null,
            "maxTokens": null, "metadata": {}, "createdAt": "2026-01-01T00:00:00.000Z",
            "updatedAt": "2026-01-01T00:00:00.000Z"
        }))
        .unwrap()
    }

    #[test]
    fn parts_come_in_order_and_empty_ones_are_left_out() {
        let mut agent = agent();
        agent.identity = Some(Identity {
            tone: Some("direct".into()),
            ..Identity::default()
        });
        let prompt = compose(&agent, "We ship Fridays.", "", "Answer in French.");
        assert_eq!(
            prompt,
            "You write Rust.\n\nName: ada\nRole: Backend engineer\nTone: direct\n\n# Project memory\nWe ship Fridays.\n\n\
             # Context from the caller\nAnswer in French."
        );
    }

    #[test]
    fn an_agent_without_prompt_still_has_its_identity() {
        let mut agent = agent();
        agent.system_prompt = None;
        agent.role = None;
        assert_eq!(compose(&agent, "", "", ""), "Name: ada");
    }
}
