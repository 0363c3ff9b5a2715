//! The walls between layers, read from the source: business rules (`runtime`), SQL (`store`),
//! the event log (`events`) and model providers (`providers`) must keep working without a
//! request behind them, so they may not reach up into HTTP (`app`, `api`, `auth`,
//! `middleware`); providers stand alone; SQL knows nothing of business rules or providers.
//! Background work goes through the runtime's task tracker, so that shutdown can wait for it.

use std::path::{Path, PathBuf};

/// `(layer, modules it may not name)`: a file under `src/<layer>` naming `crate::<module>` is a
/// breach.
const WALLS: &[(&str, &[&str])] = &[
    ("runtime", &["app", "api", "auth", "middleware"]),
    ("store", &["app", "api", "auth", "middleware", "runtime", "providers"]),
    ("events", &["app", "api", "auth", "middleware"]),
    (
        "providers",
        &["app", "api", "auth", "middleware", "runtime", "store", "events"],
    ),
];

/// The one file allowed to spawn: it spawns onto the tracker that shutdown waits for.
const SPAWNER: &str = "runtime/context.rs";

/// Every `.rs` file under `dir`, with its path relative to `src/` (with `/` separators).
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap().components();
            let relative = relative
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((relative, path));
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &root, &mut files);
    files.sort();
    assert!(
        files.iter().any(|(name, _)| name == SPAWNER),
        "walked the wrong directory: {}",
        root.display()
    );
    files
        .into_iter()
        .map(|(name, path)| (name, std::fs::read_to_string(path).unwrap()))
        .collect()
}

/// The text with `//` comments blanked (line count kept): prose may mention any module.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every top-level module named through `crate::`, with its 1-based line: `crate::api::x`,
/// `crate::{app, store::{a, b}}` and the same spread over several lines.
fn crate_modules(code: &str) -> Vec<(usize, String)> {
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (start, _) in code.match_indices("crate::") {
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[start + "crate::".len()..];
        let offset = start + "crate::".len();
        let skipped = rest.len() - rest.trim_start().len();
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The first path segment of each item at the group's top level.
            let mut depth = 1;
            let mut expect_item = true;
            let mut chars = group.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_item = true,
                    c if depth == 1 && expect_item && is_ident(c) => {
                        let mut name = String::from(c);
                        while let Some(&(_, next)) = chars.peek() {
                            if !is_ident(next) {
                                break;
                            }
                            name.push(next);
                            chars.next();
                        }
                        found.push((line_of(offset + skipped + 1 + i), name));
                        expect_item = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                found.push((line_of(offset), name));
            }
        }
    }
    found
}

#[test]
fn the_parser_sees_plain_grouped_and_multiline_paths() {
    let code = "use crate::api::x;\nuse crate::{config::Config,\n    auth::{self, AuthContext}, store};\nlet polpo_crate::app = 1;";
    assert_eq!(
        crate_modules(code),
        [
            (1, "api".to_string()),
            (2, "config".to_string()),
            (3, "auth".to_string()),
            (3, "store".to_string()),
        ]
    );
}

#[test]
fn lower_layers_do_not_name_the_layers_above_them() {
    let mut breaches = Vec::new();
    for (name, text) in sources() {
        let Some((_, forbidden)) = WALLS
            .iter()
            .find(|(layer, _)| name.starts_with(&format!("{layer}/")) || name == format!("{layer}.rs"))
        else {
            continue;
        };
        let code = code_only(&text);
        let lines: Vec<&str> = text.lines().collect();
        for (line, module) in crate_modules(&code) {
            if forbidden.contains(&module.as_str()) {
                breaches.push(format!(
                    "src/{name}:{line}: names crate::{module}: {}",
                    lines[line - 1].trim()
                ));
            }
        }
    }
    assert!(breaches.is_empty(), "layer walls breached:\n{}", breaches.join("\n"));
}

#[test]
fn background_work_is_spawned_only_through_the_runtime_tracker() {
    let mut untracked = Vec::new();
    for (name, text) in sources() {
        if name == SPAWNER {
            continue;
        }
        for (i, line) in code_only(&text).lines().enumerate() {
            if line.contains("tokio::spawn(") || line.contains("tokio::task::spawn(") {
                untracked.push(format!("src/{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        untracked.is_empty(),
        "tasks spawned outside the runtime's tracker (shutdown would not wait for them):\n{}",
        untracked.join("\n")
    );
}
