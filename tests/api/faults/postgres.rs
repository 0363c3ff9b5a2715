//! A Postgres server of a test's own, which the test can stop and start again.

use std::path::Path;
use std::process::Command;

/// A Postgres server of the test's own (`scripts/throwaway-postgres`), which it can stop and
/// start again without touching the server the rest of the suite uses. Removed on drop.
pub struct OwnPostgres {
    pub url: String,
    dir: String,
}

impl OwnPostgres {
    fn script(args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throwaway-postgres");
        let output = Command::new(script).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "throwaway-postgres {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn start() -> Self {
        let printed = Self::script(&["start"]);
        let var = |name: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in {printed:?}"))
                .to_string()
        };
        Self {
            url: var("TEST_DATABASE_URL"),
            dir: var("PG_THROWAWAY_DIR"),
        }
    }

    /// Stops the server (a fast shutdown: sessions ended, committed data kept).
    pub async fn stop(&self) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::script(&["pause", &dir]))
            .await
            .unwrap();
    }

    /// Starts it again on the same port and data.
    pub async fn start_again(&self) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::script(&["resume", &dir]))
            .await
            .unwrap();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        Self::script(&["stop", &self.dir]);
    }
}
