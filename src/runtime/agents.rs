//! Agents and their memory (spec §2): the stored document, creation, the PATCH merge rules,
//! deletion, and lookups by id or name.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clock::{self, Timestamp};
use crate::error::ApiError;
use crate::field::Field;
use crate::ids;
use crate::providers::types::Reasoning;
use crate::scope::{Environment, Scope};
use crate::store::{self, Backend, Db, ResultExt};

pub const ID_PREFIX: &str = "agt_";

/// The agent object of spec §2.1.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    #[schema(example = "agt_01jz8k2m4p6r8t0v2x4z6b8d0f")]
    pub id: String,
    #[schema(example = "backend-dev")]
    pub name: String,
    pub role: Option<String>,
    #[schema(example = "anthropic:claude-sonnet-4-5")]
    pub model: String,
    pub system_prompt: Option<String>,
    pub allowed_tools: Vec<String>,
    pub skills: Vec<String>,
    pub max_turns: i64,
    pub max_concurrency: Option<i64>,
    pub reasoning: Option<Reasoning>,
    pub identity: Option<Identity>,
    pub reports_to: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// The identity block of spec §2.1; every member optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
// Unknown members are refused on input (spec §0.4 rule 3); saying so here puts
// `additionalProperties: false` in the document too.
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Identity {
    #[schema(max_length = 1000)]
    pub display_name: Option<String>,
    #[schema(max_length = 1000)]
    pub title: Option<String>,
    #[schema(max_length = 1000)]
    pub company: Option<String>,
    #[schema(max_length = 1000)]
    pub email: Option<String>,
    #[schema(max_length = 1000)]
    pub bio: Option<String>,
    /// An IANA time zone name, such as `Europe/Rome`: its shape is checked, not looked up.
    #[schema(
        max_length = 1000,
        pattern = r"^(UTC|GMT|(Africa|America|Antarctica|Arctic|Asia|Atlantic|Australia|Europe|Indian|Pacific|Etc)(/[A-Za-z0-9_+-]+)+)$"
    )]
    pub timezone: Option<String>,
    #[schema(max_length = 1000)]
    pub tone: Option<String>,
    #[schema(max_length = 1000)]
    pub personality: Option<String>,
    /// At most 32 of at most 1000 characters; `null` in a request removes them.
    #[schema(value_type = Option<Vec<String>>, max_items = 32)]
    pub responsibilities: Vec<String>,
    /// At most 16, keys of 1–1000 characters, values of at most 1000; `null` in a request
    /// removes them.
    #[schema(schema_with = socials_schema)]
    pub socials: BTreeMap<String, String>,
}

fn socials_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
    let text = |min| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(min)
            .max_length(Some(1000))
    };
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(16))
        .property_names(Some(text(Some(1))))
        .additional_properties(Some(AdditionalProperties::RefOr(
            Schema::Object(text(None).build()).into(),
        )))
        .build()
}

/// Members of `identity` as sent in a request: each absent, `null` (remove) or a value.
#[derive(Debug, Clone)]
pub struct IdentityChanges {
    pub strings: Vec<(&'static str, Field<String>)>,
    pub responsibilities: Field<Vec<String>>,
    pub socials: Field<BTreeMap<String, String>>,
}

/// The writable agent fields of a create or PATCH request, already checked for shape.
#[derive(Debug, Clone)]
pub struct AgentChanges {
    pub name: Field<String>,
    pub role: Field<String>,
    pub model: Field<String>,
    pub system_prompt: Field<String>,
    pub allowed_tools: Field<Vec<String>>,
    pub skills: Field<Vec<String>>,
    pub max_turns: Field<i64>,
    pub max_concurrency: Field<i64>,
    pub reasoning: Field<Reasoning>,
    pub identity: Field<IdentityChanges>,
    pub reports_to: Field<String>,
    pub temperature: Field<f64>,
    pub max_tokens: Field<i64>,
    pub metadata: Field<BTreeMap<String, String>>,
}

const DEFAULT_MAX_TURNS: i64 = 10;

impl Identity {
    fn apply(&mut self, changes: IdentityChanges) {
        for (member, value) in changes.strings {
            let slot = match member {
                "displayName" => &mut self.display_name,
                "title" => &mut self.title,
                "company" => &mut self.company,
                "email" => &mut self.email,
                "bio" => &mut self.bio,
                "timezone" => &mut self.timezone,
                "tone" => &mut self.tone,
                "personality" => &mut self.personality,
                _ => continue,
            };
            value.set(slot);
        }
        changes.responsibilities.set_or(&mut self.responsibilities, Vec::new);
        changes.socials.set_or(&mut self.socials, BTreeMap::new);
    }
}

impl Agent {
    /// Applies the PATCH rules of spec §2.2 rule 1 (also used on create, over an empty agent).
    fn apply(&mut self, changes: AgentChanges) {
        changes.role.set(&mut self.role);
        if let Field::Value(model) = changes.model {
            self.model = model;
        }
        changes.system_prompt.set(&mut self.system_prompt);
        changes.allowed_tools.set_or(&mut self.allowed_tools, Vec::new);
        changes.skills.set_or(&mut self.skills, Vec::new);
        changes.max_turns.set_or(&mut self.max_turns, || DEFAULT_MAX_TURNS);
        changes.max_concurrency.set(&mut self.max_concurrency);
        changes.reasoning.set(&mut self.reasoning);
        match changes.identity {
            Field::Absent => {}
            Field::Null => self.identity = None,
            Field::Value(identity) => self.identity.get_or_insert_with(Identity::default).apply(identity),
        }
        changes.reports_to.set(&mut self.reports_to);
        changes.temperature.set(&mut self.temperature);
        changes.max_tokens.set(&mut self.max_tokens);
        changes.metadata.set_or(&mut self.metadata, BTreeMap::new);
    }

    /// An agent with every optional field at its default.
    fn blank(id: String, name: String, model: String, at_ms: i64) -> Self {
        Self {
            id,
            name,
            role: None,
            model,
            system_prompt: None,
            allowed_tools: Vec::new(),
            skills: Vec::new(),
            max_turns: DEFAULT_MAX_TURNS,
            max_concurrency: None,
            reasoning: None,
            identity: None,
            reports_to: None,
            temperature: None,
            max_tokens: None,
            metadata: BTreeMap::new(),
            created_at: Timestamp(at_ms),
            updated_at: Timestamp(at_ms),
        }
    }

    fn from_row(row: &store::agents::AgentRow) -> Result<Self, ApiError> {
        Ok(store::read_json(&row.body, "agent document")?)
    }

    fn to_row(&self) -> Result<store::agents::AgentRow, ApiError> {
        Ok(store::agents::AgentRow {
            id: self.id.clone(),
            name: self.name.clone(),
            body: serde_json::to_string(self).map_err(ApiError::internal)?,
            max_concurrency: self.max_concurrency,
        })
    }
}

fn not_found(id_or_name: &str) -> ApiError {
    ApiError::not_found(format!("agent {id_or_name:?} not found"))
}

/// Looks an agent up by id (`agt_…`) or by name (spec §1.4).
pub async fn find(db: &Db, scope: &Scope, id_or_name: &str) -> Result<Option<Agent>, ApiError> {
    let row = if id_or_name.starts_with(ID_PREFIX) {
        store::agents::get_by_id(&db.pool, scope, id_or_name).await?
    } else {
        store::agents::get_by_name(&db.pool, scope, id_or_name).await?
    };
    row.as_ref().map(Agent::from_row).transpose()
}

/// An agent and what its prompt needs besides: the project's memory and its own (empty when
/// unset), read together.
pub struct WithMemories {
    pub agent: Agent,
    pub project_memory: String,
    pub agent_memory: String,
}

/// [`find`], with both memories, in one read, or none from the cache.
pub async fn find_with_memories(
    rt: &super::Runtime,
    scope: &Scope,
    id_or_name: &str,
) -> Result<Option<Arc<WithMemories>>, ApiError> {
    let cache = &rt.agent_cache;
    let generation = match cache.get(scope, id_or_name) {
        Ok(found) => return Ok(Some(found)),
        Err(generation) => generation,
    };
    let by_name = !id_or_name.starts_with(ID_PREFIX);
    let Some(row) = store::agents::get_with_memories(&rt.db.pool, scope, id_or_name, by_name).await? else {
        return Ok(None);
    };
    // What the entry holds, about: the stored document and both memories.
    let weight = ENTRY_OVERHEAD
        + row.agent.body.len()
        + row.project_memory.as_ref().map_or(0, String::len)
        + row.agent_memory.as_ref().map_or(0, String::len);
    let found = Arc::new(WithMemories {
        agent: Agent::from_row(&row.agent)?,
        project_memory: row.project_memory.unwrap_or_default(),
        agent_memory: row.agent_memory.unwrap_or_default(),
    });
    cache.put(generation, scope, id_or_name, &found, weight);
    Ok(Some(found))
}

/// Most agents the cache holds, and most bytes of their documents and memories (each of which
/// may reach 64 KiB); when either is reached it starts again empty.
const CACHE_ENTRIES: usize = 10_000;
const CACHE_BYTES: usize = 32 << 20;
/// What an entry costs besides its texts: the key, the parsed agent's other fields.
const ENTRY_OVERHEAD: usize = 512;

/// What chat turns read of an agent (the agent with both memories), kept on SQLite only, where
/// this process is the database's only writer: every write of an agent or a memory goes through
/// this module, which empties the cache before it answers, so the next turn reads the change.
/// Several instances share a Postgres database, and a change made by another one could be read
/// here only after a notification; there every turn reads the database.
pub struct AgentCache {
    enabled: bool,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// Counts the writes: a read that began before a write must not store what it read.
    generation: u64,
    entries: HashMap<(String, Environment, String), Arc<WithMemories>>,
    /// The weights of the entries, summed.
    bytes: usize,
}

impl AgentCache {
    pub fn new(backend: Backend) -> Self {
        Self {
            enabled: backend == Backend::Sqlite,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached entry, or the generation a read must quote to store its answer.
    fn get(&self, scope: &Scope, id_or_name: &str) -> Result<Arc<WithMemories>, u64> {
        let inner = self.lock();
        if !self.enabled {
            return Err(inner.generation);
        }
        let key = (scope.project.clone(), scope.environment, id_or_name.to_string());
        inner.entries.get(&key).cloned().ok_or(inner.generation)
    }

    /// Stores what a read found, unless a write happened since it began.
    fn put(&self, generation: u64, scope: &Scope, id_or_name: &str, found: &Arc<WithMemories>, weight: usize) {
        if !self.enabled {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= CACHE_ENTRIES || inner.bytes + weight > CACHE_BYTES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        let key = (scope.project.clone(), scope.environment, id_or_name.to_string());
        if inner.entries.insert(key, Arc::clone(found)).is_none() {
            inner.bytes += weight;
        }
    }

    /// After a write of an agent or a memory: nothing read before it is served again.
    fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
        inner.bytes = 0;
    }
}

pub async fn get(db: &Db, scope: &Scope, id_or_name: &str) -> Result<Agent, ApiError> {
    find(db, scope, id_or_name).await?.ok_or_else(|| not_found(id_or_name))
}

/// The fields every agent document has beyond its configuration.
const INSTANCE_FIELDS: [&str; 3] = ["id", "createdAt", "updatedAt"];

/// A team member's configuration (spec §6.1 `team`): the agent document that `changes` would
/// create, without id and timestamps. `name` and `model` are required.
pub fn config(changes: AgentChanges) -> Result<serde_json::Value, ApiError> {
    let (Field::Value(name), Field::Value(model)) = (changes.name.clone(), changes.model.clone()) else {
        return Err(ApiError::bad_request("name and model are required"));
    };
    let mut agent = Agent::blank(String::new(), name, model, 0);
    agent.apply(changes);
    let mut value = serde_json::to_value(&agent).map_err(ApiError::internal)?;
    if let Some(object) = value.as_object_mut() {
        for field in INSTANCE_FIELDS {
            object.remove(field);
        }
    }
    Ok(value)
}

/// A team member of a run, made from its configuration.
pub fn instantiate(config: &serde_json::Value, at_ms: i64) -> Result<Agent, ApiError> {
    let mut value = config.clone();
    if let Some(object) = value.as_object_mut() {
        object.insert("id".into(), ids::new_id(ID_PREFIX).into());
        for field in ["createdAt", "updatedAt"] {
            object.insert(field.into(), clock::format_ms(at_ms).into());
        }
    }
    serde_json::from_value(value).map_err(ApiError::internal)
}

/// Resolves `reportsTo` to a stored agent's name; unknown or self → `400`.
async fn resolve_reports_to(db: &Db, scope: &Scope, agent: &mut Agent) -> Result<(), ApiError> {
    let Some(target) = agent.reports_to.clone() else {
        return Ok(());
    };
    if target == agent.name || target == agent.id {
        return Err(ApiError::invalid_field("reportsTo", "an agent cannot report to itself"));
    }
    match find(db, scope, &target).await? {
        Some(boss) => {
            agent.reports_to = Some(boss.name);
            Ok(())
        }
        None => Err(ApiError::invalid_field(
            "reportsTo",
            format!("no agent {target:?} in this project"),
        )),
    }
}

pub async fn create(rt: &super::Runtime, scope: &Scope, changes: AgentChanges) -> Result<Agent, ApiError> {
    let (Field::Value(name), Field::Value(model)) = (changes.name.clone(), changes.model.clone()) else {
        return Err(ApiError::bad_request("name and model are required"));
    };
    let now = clock::now_ms();
    let mut agent = Agent::blank(ids::new_id(ID_PREFIX), name, model, now);
    agent.apply(changes);
    resolve_reports_to(&rt.db, scope, &mut agent).await?;
    let mut change = rt.change(scope).await?;
    store::agents::insert(change.conn(), scope, &agent.to_row()?, now)
        .await
        .on_unique(store::agents::NAME_CONSTRAINT, || ApiError::Conflict {
            message: format!("an agent named {:?} already exists", agent.name),
            details: None,
        })?;
    change.commit().await?;
    Ok(agent)
}

pub async fn update(
    rt: &super::Runtime,
    scope: &Scope,
    id_or_name: &str,
    changes: AgentChanges,
) -> Result<Agent, ApiError> {
    let db = &rt.db;
    let mut agent = get(db, scope, id_or_name).await?;
    if let Field::Value(name) = &changes.name
        && *name != agent.name
    {
        return Err(ApiError::invalid_field("name", "cannot be changed after creation"));
    }
    let reports_to_changed = !changes.reports_to.is_absent();
    agent.apply(changes);
    if reports_to_changed {
        resolve_reports_to(db, scope, &mut agent).await?;
    }
    agent.updated_at = Timestamp::now().max(agent.updated_at);
    let updated = store::agents::update(&db.pool, scope, &agent.to_row()?, agent.updated_at.ms()).await;
    rt.agent_cache.forget_all();
    if !updated? {
        return Err(not_found(id_or_name));
    }
    Ok(agent)
}

/// Deletes the agent and its memory (spec §2.2 rule 2). Its open tasks block the deletion
/// (`409` naming up to 10), unless `force`, which fails them first (`agent_deleted`).
pub async fn delete(rt: &super::Runtime, scope: &Scope, id_or_name: &str, force: bool) -> Result<(), ApiError> {
    let agent = get(&rt.db, scope, id_or_name).await?;
    let mut change = rt.change(scope).await?;
    let open = store::tasks::live_of_agent(change.conn(), scope, &agent.name).await?;
    if !open.is_empty() && !force {
        let shown: Vec<&String> = open.iter().take(10).collect();
        return Err(ApiError::Conflict {
            message: format!(
                "agent {:?} has {} open task(s); delete with force=true to fail them",
                agent.name,
                open.len()
            ),
            details: Some(serde_json::json!({"taskIds": shown})),
        });
    }
    for id in &open {
        super::tasks::actions::stop_for(&mut change, scope, id, "agent_deleted", "the agent was deleted").await?;
    }
    let deleted = store::agents::delete(change.conn(), scope, &agent.id).await?;
    store::memory::delete(change.conn(), scope, &agent.id).await?;
    let committed = change.commit().await;
    rt.agent_cache.forget_all();
    committed?;
    if deleted { Ok(()) } else { Err(not_found(id_or_name)) }
}

pub async fn list(db: &Db, scope: &Scope, after: Option<&str>, fetch: i64) -> Result<Vec<Agent>, ApiError> {
    let rows = store::agents::list(&db.pool, scope, after, fetch).await?;
    rows.iter().map(Agent::from_row).collect()
}

/// The memory object of spec §2.2 rule 3.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub content: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
    /// The agent's name; only on agent memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Reads project memory (`agent` = `None`) or an agent's memory.
pub async fn read_memory(db: &Db, scope: &Scope, agent: Option<&Agent>) -> Result<Memory, ApiError> {
    let owner = agent.map_or(store::memory::PROJECT_OWNER, |a| a.id.as_str());
    let row = store::memory::get(&db.pool, scope, owner).await?;
    Ok(Memory {
        content: row.as_ref().map(|r| r.content.clone()).unwrap_or_default(),
        updated_at: row.map(|r| Timestamp(r.updated_at)),
        agent: agent.map(|a| a.name.clone()),
    })
}

pub async fn write_memory(
    rt: &super::Runtime,
    scope: &Scope,
    agent: Option<&Agent>,
    content: String,
) -> Result<Memory, ApiError> {
    let owner = agent.map_or(store::memory::PROJECT_OWNER, |a| a.id.as_str());
    let now = clock::now_ms();
    let written = store::memory::put(&rt.db.pool, scope, owner, &content, now).await;
    rt.agent_cache.forget_all();
    written?;
    Ok(Memory {
        content,
        updated_at: Some(Timestamp(now)),
        agent: agent.map(|a| a.name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Arc<WithMemories> {
        Arc::new(WithMemories {
            agent: Agent::blank(format!("{ID_PREFIX}{name}"), name.into(), "mock/echo".into(), 0),
            project_memory: String::new(),
            agent_memory: String::new(),
        })
    }

    fn scope() -> Scope {
        Scope {
            project: "p".into(),
            environment: Environment::Test,
        }
    }

    #[test]
    fn a_read_that_began_before_a_write_is_not_kept() {
        let cache = AgentCache::new(Backend::Sqlite);
        let Err(before) = cache.get(&scope(), "a") else {
            panic!("an empty cache has nothing")
        };
        cache.forget_all();
        cache.put(before, &scope(), "a", &entry("a"), 1);
        assert!(
            cache.get(&scope(), "a").is_err(),
            "what was read before the write is stale"
        );
        let Err(after) = cache.get(&scope(), "a") else {
            panic!("still nothing")
        };
        cache.put(after, &scope(), "a", &entry("a"), 1);
        assert!(cache.get(&scope(), "a").is_ok());
        let other = Scope {
            project: "p".into(),
            environment: Environment::Live,
        };
        assert!(cache.get(&other, "a").is_err(), "environments are apart");
    }

    #[test]
    fn the_cache_is_bounded_by_bytes_and_off_on_postgres() {
        let cache = AgentCache::new(Backend::Sqlite);
        let half = CACHE_BYTES / 2 + 1;
        let Err(generation) = cache.get(&scope(), "a") else {
            panic!("an empty cache has nothing")
        };
        cache.put(generation, &scope(), "a", &entry("a"), half);
        cache.put(generation, &scope(), "b", &entry("b"), half);
        assert!(
            cache.get(&scope(), "a").is_err(),
            "two halves do not fit: the cache started again"
        );
        assert!(cache.get(&scope(), "b").is_ok());

        let off = AgentCache::new(Backend::Postgres);
        let Err(generation) = off.get(&scope(), "a") else {
            panic!("an empty cache has nothing")
        };
        off.put(generation, &scope(), "a", &entry("a"), 1);
        assert!(off.get(&scope(), "a").is_err());
    }
}
