//! Statements prepared together and written together. A [`Script`] holds statements with their
//! values; [`Script::run`] runs them one after another inside the caller's transaction on a
//! pool connection, and [`Script::run_direct`] the same inside a transaction of SQLite's direct
//! connection (`store::direct`). Each statement numbers its placeholders from `$1`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, Executor};

use crate::scope::Scope;

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub enum Value {
    Text(String),
    /// A text known when the server is built, such as an environment's name.
    Name(&'static str),
    MaybeText(Option<String>),
    Int(i64),
}

impl Value {
    /// `$1` and `$2` of a scoped statement (see `store::scoped`), with room for `more` values.
    pub fn scope(scope: &Scope, more: usize) -> Vec<Value> {
        let mut values = Vec::with_capacity(2 + more);
        values.push(Value::Text(scope.project.clone()));
        values.push(Value::Name(scope.environment.as_str()));
        values
    }
}

/// The texts of a statement that writes several rows at once, by number of rows, each made the
/// first time it is needed and kept for the life of the process; past `N` rows each is made
/// anew.
pub struct Texts<const N: usize>([OnceLock<String>; N]);

impl<const N: usize> Texts<N> {
    pub const fn new() -> Self {
        Self([const { OnceLock::new() }; N])
    }

    /// The text for `rows` rows, made by `make` when it is not kept.
    pub fn get(&'static self, rows: usize, make: impl FnOnce() -> String) -> Cow<'static, str> {
        match rows.checked_sub(1).and_then(|i| self.0.get(i)) {
            Some(kept) => Cow::Borrowed(kept.get_or_init(make).as_str()),
            None => Cow::Owned(make()),
        }
    }
}

impl<const N: usize> Default for Texts<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone)]
struct Statement {
    sql: Cow<'static, str>,
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
    pub fn push(&mut self, sql: impl Into<Cow<'static, str>>, values: Vec<Value>) {
        self.statements.push(Statement {
            sql: sql.into(),
            values,
            guard: false,
        });
    }

    /// Adds a statement that must change a row for the write to go on: when it changes none (the
    /// row is gone), nothing of the script is written. Guards come before the other statements.
    pub fn push_guard(&mut self, sql: impl Into<Cow<'static, str>>, values: Vec<Value>) {
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

    /// As [`Script::run`], on SQLite's direct connection, inside `tx`; `slots` keeps which
    /// value each parameter takes, by statement text.
    pub fn run_direct(&self, tx: &rusqlite::Transaction<'_>, slots: &mut Slots) -> rusqlite::Result<bool> {
        for statement in &self.statements {
            let mut prepared = tx.prepare_cached(&statement.sql)?;
            let taken = slots.of(&statement.sql, &prepared)?;
            for (i, slot) in taken.iter().enumerate() {
                let index = i + 1;
                let value = statement
                    .values
                    .get(*slot)
                    .ok_or(rusqlite::Error::InvalidParameterCount(index, statement.values.len()))?;
                match value {
                    Value::Text(v) => prepared.raw_bind_parameter(index, v.as_str())?,
                    Value::Name(v) => prepared.raw_bind_parameter(index, *v)?,
                    Value::MaybeText(v) => prepared.raw_bind_parameter(index, v.as_deref())?,
                    Value::Int(v) => prepared.raw_bind_parameter(index, *v)?,
                }
            }
            let changed = prepared.raw_execute()?;
            if statement.guard && changed == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Statement texts whose parameters [`Slots`] keeps at most; past that it starts again.
const SLOTS_KEPT: usize = 64;

/// Which value each parameter of a statement takes (`$N` names the statement's N-th value
/// wherever it appears; SQLite numbers the parameters by first appearance), by statement text,
/// for the direct connection. SQLite finds a parameter's name by walking the statement's list of
/// names, so asking for every name at each run would cost the square of the parameters, and a
/// batch's events insert has three per event.
#[derive(Debug, Default)]
pub struct Slots(HashMap<Box<str>, Arc<[usize]>, BuildHasherDefault<Ends>>);

impl Slots {
    /// The value (counted from 0) each parameter of `prepared`, the statement `sql`, takes.
    fn of(&mut self, sql: &str, prepared: &rusqlite::Statement<'_>) -> rusqlite::Result<Arc<[usize]>> {
        if let Some(taken) = self.0.get(sql) {
            return Ok(Arc::clone(taken));
        }
        let taken = (1..=prepared.parameter_count())
            .map(|index| {
                prepared
                    .parameter_name(index)
                    .and_then(|name| name.strip_prefix('$'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| n.checked_sub(1))
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(format!("parameter {index}")))
            })
            .collect::<rusqlite::Result<Arc<[usize]>>>()?;
        if self.0.len() >= SLOTS_KEPT {
            self.0.clear();
        }
        self.0.insert(sql.into(), Arc::clone(&taken));
        Ok(taken)
    }
}

/// A statement text's hash from its length and its two ends, not from every byte: the texts of
/// one shape differ in length (the number of rows), those of different shapes in their first
/// words, and the map compares whole texts when hashes meet.
#[derive(Debug, Default)]
struct Ends(u64);

impl Hasher for Ends {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const ENDS: usize = 32;
        let head = &bytes[..bytes.len().min(ENDS)];
        let tail = &bytes[bytes.len().saturating_sub(ENDS)..];
        // FNV-1a over the length and the ends.
        let mut hash = (self.0 ^ 0xcbf2_9ce4_8422_2325) ^ bytes.len() as u64;
        for &byte in head.iter().chain(tail) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    values: impl IntoIterator<Item = &'q Value>,
) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
    for value in values {
        query = match value {
            Value::Text(v) => query.bind(v.as_str()),
            Value::Name(v) => query.bind(*v),
            Value::MaybeText(v) => query.bind(v.as_deref()),
            Value::Int(v) => query.bind(*v),
        };
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(conn: &rusqlite::Connection) -> Vec<(String, String, Option<String>)> {
        let mut read = conn.prepare("SELECT a, b, c FROM t ORDER BY a").unwrap();
        read.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_kept_text_is_made_once_for_its_row_count_and_longer_ones_each_time() {
        static TEXTS: Texts<2> = Texts::new();
        let mut made = 0;
        let mut text = |rows: usize| {
            TEXTS.get(rows, || {
                made += 1;
                format!("{rows} rows")
            })
        };
        assert!(matches!(text(1), Cow::Borrowed("1 rows")));
        assert!(matches!(text(2), Cow::Borrowed("2 rows")));
        assert!(matches!(text(1), Cow::Borrowed("1 rows")));
        assert!(matches!(text(3), Cow::Owned(t) if t == "3 rows"));
        assert!(matches!(text(3), Cow::Owned(t) if t == "3 rows"));
        assert_eq!(made, 4, "kept texts were made again");
    }

    #[test]
    fn direct_statements_bind_each_placeholder_by_its_number_and_a_failed_guard_skips_the_rest() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT PRIMARY KEY, b TEXT NOT NULL, c TEXT, n INTEGER)")
            .unwrap();
        // `$2` comes before `$1` in the text and `$1` appears twice: SQLite numbers named
        // parameters by first appearance, so binding by position would swap them.
        let insert = |a: &str, b: &str, c: Option<&str>, n: i64| {
            let mut script = Script::default();
            script.push(
                "INSERT INTO t (b, a, c, n) VALUES ($2, $1, $3, length($1) + $4)",
                vec![
                    Value::Text(a.into()),
                    Value::Text(b.into()),
                    Value::MaybeText(c.map(Into::into)),
                    Value::Int(n),
                ],
            );
            script
        };
        let mut guarded = Script::default();
        guarded.push_guard(
            "UPDATE t SET b = $2 WHERE a = $1",
            vec![Value::Text("missing".into()), Value::Text("never".into())],
        );
        guarded.push(
            "INSERT INTO t (a, b) VALUES ($1, $2)",
            vec![Value::Text("two".into()), Value::Text("after a failed guard".into())],
        );
        let mut slots = Slots::default();
        let tx = conn.transaction().unwrap();
        assert!(insert("one", "first", None, 10).run_direct(&tx, &mut slots).unwrap());
        assert!(!guarded.run_direct(&tx, &mut slots).unwrap());
        tx.commit().unwrap();
        assert_eq!(names(&conn), [("one".to_string(), "first".to_string(), None)]);
        let n: i64 = conn.query_row("SELECT n FROM t", [], |row| row.get(0)).unwrap();
        assert_eq!(n, 13);

        // The same text again, its parameters' values now known: each still takes its own.
        let tx = conn.transaction().unwrap();
        assert!(
            insert("three", "second", Some("c"), 100)
                .run_direct(&tx, &mut slots)
                .unwrap()
        );
        tx.commit().unwrap();
        assert_eq!(
            names(&conn),
            [
                ("one".to_string(), "first".to_string(), None),
                ("three".to_string(), "second".to_string(), Some("c".to_string())),
            ]
        );
        let n: i64 = conn
            .query_row("SELECT n FROM t WHERE a = 'three'", [], |row| row.get(0))
            .unwrap();
        assert_eq!(n, 105);

        let mut short = Script::default();
        short.push(
            "INSERT INTO t (a, b) VALUES ($1, $2)",
            vec![Value::Text("three".into())],
        );
        let tx = conn.transaction().unwrap();
        assert!(
            short.run_direct(&tx, &mut slots).is_err(),
            "a statement missing a value runs"
        );
        // Known or not, the text of a statement missing a value fails again.
        assert!(
            short.run_direct(&tx, &mut slots).is_err(),
            "a statement missing a value runs"
        );
    }
}
