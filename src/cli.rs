//! The operator CLI (spec §10.1): `serve`, `migrate`, `projects`, `keys`, and `missions import`.
//! Logs go to stderr; stdout carries only the outputs the spec names, and the imported mission.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::input::JsonObject;
use crate::app::{self, AppState};
use crate::auth::admin::{self, AdminError};
use crate::config::{Config, LogFormat};
use crate::error::ApiError;
use crate::providers::Providers;
use crate::runtime::Runtime;
use crate::scope::{Environment, Scope};
use crate::store::{self, Db};

#[derive(Debug, Parser)]
#[command(name = "polpo-api", version, about = "Polpo's hosted Agent API server")]
pub struct Cli {
    /// Database URL: sqlite://FILE or postgres://… (default: sqlite file polpo.db).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Configuration file (default: config/default.toml when present).
    #[arg(long, global = true, env = "POLPO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, env = "POLPO_BIND")]
        bind: Option<String>,
        /// Do not apply migrations; refuse to start on a database behind the code's schema.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations, then exit.
    Migrate,
    /// Manage projects.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage missions.
    #[command(subcommand)]
    Missions(MissionsCommand),
}

#[derive(Debug, Subcommand)]
enum ProjectsCommand {
    /// Create a project; prints its slug.
    Create { slug: String },
    /// One line per project: slug and creation time.
    List,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; the plaintext key is printed alone on the last line, once.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long = "env", value_parser = ["live", "test"])]
        environment: String,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime: an integer with s, m, h or d (90d).
        #[arg(long, value_parser = parse_expires_in)]
        expires_in: Option<Duration>,
    },
    /// One line per key: id, prefix, environment, name, created, expires, revoked.
    List {
        #[arg(long)]
        project: String,
    },
    /// Revoke a key by id; effective on every instance within 5 s.
    Revoke { key_id: String },
}

#[derive(Debug, Subcommand)]
enum MissionsCommand {
    /// Save a new mission from a JSON file holding a create body (spec §6.1), validated as
    /// `POST /v1/missions` does; prints its id and name, tab-separated. Never replaces one.
    Import {
        /// The JSON file.
        file: PathBuf,
        #[arg(long)]
        project: String,
        #[arg(long = "env", value_parser = ["live", "test"])]
        environment: String,
    },
}

fn parse_expires_in(text: &str) -> Result<Duration, String> {
    if text.ends_with("ms") {
        return Err("use s, m, h or d".into());
    }
    crate::config::parse_duration(text)
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs the parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let mut config = match Config::load(cli.config.as_deref(), &env_var) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("polpo-api: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(url) = cli.database_url {
        config.database.url = Some(url);
    }
    if let Command::Serve { bind: Some(bind), .. } = &cli.command {
        config.server.bind.clone_from(bind);
    }
    init_logging(&config);
    let result = match cli.command {
        Command::Serve { no_migrate, .. } => serve(config, no_migrate).await,
        Command::Missions(MissionsCommand::Import {
            file,
            project,
            environment,
        }) => import_mission(config, &file, &project, &environment).await,
        command => admin(&config, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("polpo-api: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let level = &config.log.level;
    // A bare level keeps the database driver's per-statement logs out unless asked for.
    let directives = if level.contains('=') || level.contains(',') {
        level.clone()
    } else {
        format!("{level},sqlx=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

async fn connect(config: &Config) -> Result<Db, String> {
    let database = &config.database;
    Db::connect_with(
        database.url.as_deref(),
        database.max_connections,
        database.acquire_timeout,
    )
    .await
    .map_err(|e| format!("cannot open the database: {e}"))
}

async fn admin(config: &Config, command: Command) -> Result<(), String> {
    let db = connect(config).await?;
    store::migrate::run(&db).await.map_err(|e| e.to_string())?;
    let result = match command {
        Command::Migrate | Command::Serve { .. } | Command::Missions(_) => Ok(()),
        Command::Projects(ProjectsCommand::Create { slug }) => {
            admin::create_project(&db, &slug).await.map(|()| println!("{slug}"))
        }
        Command::Projects(ProjectsCommand::List) => list_projects(&db).await,
        Command::Keys(KeysCommand::Create {
            project,
            environment,
            name,
            expires_in,
        }) => {
            let environment = Environment::parse(&environment).unwrap_or(Environment::Test);
            admin::create_key(&db, &project, environment, name, expires_in)
                .await
                .map(|key| {
                    println!("{} {}", key.id, key.prefix);
                    println!("{}", key.plaintext);
                })
        }
        Command::Keys(KeysCommand::List { project }) => list_keys(&db, &project).await,
        Command::Keys(KeysCommand::Revoke { key_id }) => admin::revoke_key(&db, &key_id)
            .await
            .map(|()| println!("{key_id} revoked")),
    };
    db.pool.close().await;
    result.map_err(|e| e.to_string())
}

async fn list_projects(db: &Db) -> Result<(), AdminError> {
    for project in store::projects::list(&db.pool).await? {
        println!("{}\t{}", project.slug, crate::clock::format_ms(project.created_at));
    }
    Ok(())
}

async fn list_keys(db: &Db, project: &str) -> Result<(), AdminError> {
    if !store::projects::exists(&db.pool, project).await? {
        return Err(AdminError::NotFound(format!("no project {project:?}")));
    }
    let time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), crate::clock::format_ms);
    for key in store::keys::list(&db.pool, project).await? {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            key.id,
            key.prefix,
            key.environment,
            key.name.as_deref().unwrap_or("-"),
            crate::clock::format_ms(key.created_at),
            time(key.expires_at),
            time(key.revoked_at),
        );
    }
    Ok(())
}

/// `missions import`: the file read as the body of `POST /v1/missions` and saved by the same
/// rules, in a runtime that starts no background work (the servers pick the mission up).
async fn import_mission(config: Config, file: &Path, project: &str, environment: &str) -> Result<(), String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let body = match serde_json::from_str(&text) {
        Ok(value @ serde_json::Value::Object(_)) => {
            JsonObject::from_value(value).map_err(|e| format!("{shown}: {e}"))?
        }
        Ok(_) => return Err(format!("{shown} must hold one JSON object: a mission create body")),
        Err(e) => return Err(format!("{shown} is not valid JSON: {e}")),
    };
    let scope = Scope {
        project: project.to_string(),
        environment: Environment::parse(environment).unwrap_or(Environment::Test),
    };
    let providers = Providers::from_config(&config.providers, &env_var)?;
    let db = connect(&config).await?;
    let result = async {
        store::migrate::run(&db).await.map_err(|e| e.to_string())?;
        if !store::projects::exists(&db.pool, project)
            .await
            .map_err(|e| format!("database: {e}"))?
        {
            return Err(format!("no project {project:?}"));
        }
        let rt = Runtime::new(db.clone(), config, providers)?;
        let saved = async {
            let input = crate::api::missions::input::read(&rt, body, true)?;
            crate::runtime::missions::crud::create(&rt, &scope, input).await
        };
        let mission = saved.await.map_err(|e| import_error(&e, &shown.to_string(), &scope))?;
        tracing::info!(mission_id = %mission.id, project, environment, status = %mission.status, "mission imported");
        println!("{}\t{}", mission.id, mission.name);
        Ok(())
    }
    .await;
    db.pool.close().await;
    result
}

/// What the operator reads when an import fails: every field problem on a line of its own as
/// `path: problem`, the cause of an internal failure (stderr is theirs, not a client's).
fn import_error(error: &ApiError, file: &str, scope: &Scope) -> String {
    match error {
        ApiError::BadRequest { fields, .. } if !fields.is_empty() => {
            let lines: Vec<String> = fields
                .iter()
                .map(|(path, problem)| format!("{path}: {problem}"))
                .collect();
            format!(
                "{file} is not a valid mission; nothing was saved:\n{}",
                lines.join("\n")
            )
        }
        ApiError::Conflict { message, .. } => format!(
            "{message} in project {} ({}); import saves new missions only: rename it, or change the saved one with PATCH /v1/missions/{{id}}",
            scope.project,
            scope.environment.as_str()
        ),
        ApiError::Internal(cause) | ApiError::Unavailable(cause) if !cause.is_empty() => cause.clone(),
        other => other.to_string(),
    }
}

/// Longest wait, once the server has stopped, for tracked work to save and release what it holds.
const DRAIN: Duration = Duration::from_secs(5);

async fn serve(config: Config, no_migrate: bool) -> Result<(), String> {
    let providers = Providers::from_config(&config.providers, &env_var)?;
    let _lock = store::lock_sqlite(config.database.url.as_deref()).map_err(|e| e.to_string())?;
    let db = connect(&config).await?;
    if no_migrate {
        let pending = store::migrate::pending(&db).await.map_err(|e| e.to_string())?;
        if !pending.is_empty() {
            return Err(format!(
                "the database is behind the code's schema (pending migrations {pending:?}); run polpo-api migrate"
            ));
        }
    } else {
        store::migrate::run(&db).await.map_err(|e| e.to_string())?;
    }
    if let Some(key) = admin::first_start(&db).await.map_err(|e| e.to_string())? {
        tracing::info!(project = admin::DEFAULT_PROJECT, key_id = %key.id, prefix = %key.prefix,
            "first start: created project and a sandbox key (printed once on stdout)");
        println!("{}", key.plaintext);
    }
    let listener = tokio::net::TcpListener::bind(&config.server.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %addr, "listening");
    let deadline = config.server.shutdown_timeout;
    let state = AppState::new(db.clone(), config, providers)?;
    let rt = state.runtime.clone();
    rt.start_background();
    let server = app::serve(listener, state);
    tokio::pin!(server);
    tokio::select! {
        () = app::shutdown_signal() => {
            tracing::info!(deadline_s = deadline.as_secs_f64(), "shutting down");
            rt.shutdown.cancel();
            if tokio::time::timeout(deadline, &mut server).await.is_err() {
                tracing::warn!("shutdown deadline reached; closing remaining streams");
                rt.hard_stop.cancel();
                // A moment for open streams to write their error frame and end. Connections run
                // in tasks of their own, which leaving this function does not close: every
                // long-lived response must end on the hard stop by itself.
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut server).await;
            }
        }
        result = &mut server => result.map_err(|e| format!("server failed: {e}"))?,
    }
    // Chat turns store their replies and workers release what they hold before the pool closes.
    if rt.drain(DRAIN).await {
        tracing::info!("drained");
    } else {
        tracing::warn!("background work still running at exit");
    }
    db.pool.close().await;
    Ok(())
}
