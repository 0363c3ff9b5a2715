//! Statements prepared together and written together. A [`Script`] holds statements with their
//! values; [`Script::run`] runs them one after another inside the caller's transaction, and on
//! SQLite [`run_in_one_call`] runs many scripts with the transaction's `BEGIN` (and `COMMIT`, when
//! nothing has to be checked before it) in a single call to the connection's thread instead of
//! one call per statement.
//!
//! Each statement numbers its own placeholders from `$1`; they are renumbered when statements are
//! joined (SQLite numbers `$N` across the whole text of one call).

use futures_util::TryStreamExt;
use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, Either, Executor};

use crate::scope::Scope;

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub enum Value {
    Text(String),
    MaybeText(Option<String>),
    Int(i64),
}

impl Value {
    /// `$1` and `$2` of a scoped statement (see `store::scoped`), with room for `more` values.
    pub fn scope(scope: &Scope, more: usize) -> Vec<Value> {
        let mut values = Vec::with_capacity(2 + more);
        values.push(Value::Text(scope.project.clone()));
        values.push(Value::Text(scope.environment.as_str().to_string()));
        values
    }
}

#[derive(Debug, Clone)]
struct Statement {
    sql: String,
    values: Vec<Value>,
    /// Must change a row for the rest of its script to be written.
    guard: bool,
}

/// Statements of one write, in order.
#[derive(Debug, Clone, Default)]
pub struct Script {
    statements: Vec<Statement>,
}

impl Script {
    /// Adds a statement.
    pub fn push(&mut self, sql: impl Into<String>, values: Vec<Value>) {
        self.statements.push(Statement {
            sql: sql.into(),
            values,
            guard: false,
        });
    }

    /// Adds a statement that must change a row for the write to go on: when it changes none (the
    /// row is gone), nothing of the script is written. Guards come before the other statements.
    pub fn push_guard(&mut self, sql: impl Into<String>, values: Vec<Value>) {
        debug_assert!(
            self.statements.iter().all(|s| s.guard),
            "a guard follows a write of its script"
        );
        self.statements.push(Statement {
            sql: sql.into(),
            values,
            guard: true,
        });
    }

    /// Runs the statements in order on `conn`, inside the caller's transaction: `false` when a
    /// guard changed no row (then nothing was written, as guards come first).
    pub async fn run(&self, conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
        for statement in &self.statements {
            let query = bind_all(sqlx::query(&statement.sql), &statement.values);
            let changed = conn.execute(query).await?.rows_affected();
            if statement.guard && changed == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    values: impl IntoIterator<Item = &'q Value>,
) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
    for value in values {
        query = match value {
            Value::Text(v) => query.bind(v.as_str()),
            Value::MaybeText(v) => query.bind(v.as_deref()),
            Value::Int(v) => query.bind(*v),
        };
    }
    query
}

/// `sql` with each `$N` placeholder moved up by `offset`.
fn renumber(sql: &str, offset: usize, out: &mut String) {
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        match sql[start..end].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&sql[start..end]),
        }
    }
}

/// The most values SQLite takes in one call: `$N` counts across the whole text, and SQLite's
/// highest parameter number is 32766.
const MAX_VALUES_IN_ONE_CALL: usize = 32766;

/// Whether `scripts` can be sent to SQLite in one call.
pub fn fit_in_one_call(scripts: &[&Script]) -> bool {
    let values: usize = scripts
        .iter()
        .flat_map(|script| &script.statements)
        .map(|statement| statement.values.len())
        .sum();
    values <= MAX_VALUES_IN_ONE_CALL
}

/// How [`run_in_one_call`] left the transaction.
#[derive(Debug)]
pub enum OneCall {
    /// No script had a guard: the call ended with `COMMIT` too.
    Committed,
    /// Still open, with whether each script's guards held: the caller commits when all held
    /// and rolls back otherwise.
    Open(Vec<bool>),
}

/// SQLite only: begins a transaction on `conn` and runs every script in it, in order, in one
/// call, committing in the same call when no script has a guard. On `Err` a statement failed
/// and the transaction may still be open: the caller rolls back.
pub async fn run_in_one_call(conn: &mut AnyConnection, scripts: &[&Script]) -> Result<OneCall, sqlx::Error> {
    let mut sql = String::from("BEGIN;\n");
    let mut values: Vec<&Value> = Vec::new();
    // The position of each statement's answer (after BEGIN's) and its script, for the guards.
    let mut guards: Vec<(usize, usize)> = Vec::new();
    let mut position = 1;
    for (index, script) in scripts.iter().enumerate() {
        for statement in &script.statements {
            renumber(&statement.sql, values.len(), &mut sql);
            sql.push_str(";\n");
            values.extend(&statement.values);
            if statement.guard {
                guards.push((position, index));
            }
            position += 1;
        }
    }
    if guards.is_empty() {
        sql.push_str("COMMIT;\n");
        position += 1;
    }
    // The text of one write's call recurs (a turn's shape), so its prepared statements are kept;
    // a batch of many writes seldom recurs, and kept it would push the recurring ones out of the
    // connection's statement cache.
    let query = bind_all(sqlx::query(&sql), values).persistent(scripts.len() <= 2);
    let answers: Vec<u64> = (&mut *conn)
        .fetch_many(query)
        .try_filter_map(|step| async move {
            Ok(match step {
                Either::Left(done) => Some(done.rows_affected()),
                Either::Right(_) => None,
            })
        })
        .try_collect()
        .await?;
    if answers.len() != position {
        return Err(sqlx::Error::Protocol(format!(
            "{} of {position} statements answered",
            answers.len()
        )));
    }
    if guards.is_empty() {
        return Ok(OneCall::Committed);
    }
    let mut outcomes = vec![true; scripts.len()];
    for (at, index) in guards {
        if answers[at] == 0 {
            outcomes[index] = false;
        }
    }
    Ok(OneCall::Open(outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_move_up_by_the_offset_and_nothing_else_changes() {
        let mut out = String::new();
        renumber(
            "UPDATE t SET a = $3, b = 'x$' WHERE p = $1 AND e = $2 AND c = $10",
            7,
            &mut out,
        );
        assert_eq!(
            out,
            "UPDATE t SET a = $10, b = 'x$' WHERE p = $8 AND e = $9 AND c = $17"
        );
    }
}
