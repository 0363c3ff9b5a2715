//! Operator actions behind the CLI (spec §10.1) and the first start of `serve` (§10.2):
//! projects, key creation and revocation.

use std::time::Duration;

use super::key;
use crate::clock;
use crate::ids;
use crate::scope::Environment;
use crate::store::{self, Db};

/// The project created on an empty database.
pub const DEFAULT_PROJECT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Duplicate(String),
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    #[error("no secure random source: {0}")]
    Random(getrandom::Error),
}

/// A key just created: the only moment its plaintext exists outside the caller's hands.
pub struct CreatedKey {
    pub id: String,
    pub prefix: String,
    pub plaintext: String,
}

/// `^[a-z0-9][a-z0-9-]{1,62}$`
pub fn valid_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    (2..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

pub async fn create_project(db: &Db, slug: &str) -> Result<(), AdminError> {
    if !valid_slug(slug) {
        return Err(AdminError::Invalid(format!(
            "invalid project slug {slug:?}: use ^[a-z0-9][a-z0-9-]{{1,62}}$"
        )));
    }
    if store::projects::insert(&db.pool, slug, clock::now_ms()).await? {
        Ok(())
    } else {
        Err(AdminError::Duplicate(format!("project {slug:?} already exists")))
    }
}

pub async fn create_key(
    db: &Db,
    project: &str,
    environment: Environment,
    name: Option<String>,
    expires_in: Option<Duration>,
) -> Result<CreatedKey, AdminError> {
    if !store::projects::exists(&db.pool, project).await? {
        return Err(AdminError::NotFound(format!("no project {project:?}")));
    }
    let plaintext = key::generate(environment).map_err(AdminError::Random)?;
    let now = clock::now_ms();
    let expires_at = expires_in.map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    let row = store::keys::KeyRow {
        id: ids::new_id("key_"),
        project: project.to_string(),
        environment: environment.as_str().to_string(),
        name,
        prefix: key::display_prefix(&plaintext).to_string(),
        hash: key::hash(&plaintext),
        created_at: now,
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    store::keys::insert(&db.pool, &row).await?;
    Ok(CreatedKey {
        id: row.id,
        prefix: row.prefix,
        plaintext,
    })
}

pub async fn revoke_key(db: &Db, id: &str) -> Result<(), AdminError> {
    if store::keys::revoke(&db.pool, id, clock::now_ms()).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("no key {id:?}")))
    }
}

/// On a database without any project: creates `default` and one sandbox key. Returns the key
/// only to the instance that created the project, so concurrent first starts print one key.
pub async fn first_start(db: &Db) -> Result<Option<CreatedKey>, AdminError> {
    if store::projects::count(&db.pool).await? > 0 {
        return Ok(None);
    }
    if !store::projects::insert(&db.pool, DEFAULT_PROJECT, clock::now_ms()).await? {
        return Ok(None);
    }
    let key = create_key(db, DEFAULT_PROJECT, Environment::Test, Some("sandbox".into()), None).await?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_cli_pattern() {
        assert!(valid_slug("default"));
        assert!(valid_slug("acme-2"));
        assert!(!valid_slug("a"));
        assert!(!valid_slug("-acme"));
        assert!(!valid_slug("Acme"));
        assert!(!valid_slug(&"a".repeat(64)));
    }
}
