//! Event name filters (spec §7.1): comma-separated glob patterns where `*` matches any run of
//! characters (including `:`) and everything else is literal.

/// A parsed filter; empty means "every event".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    patterns: Vec<String>,
}

const MAX_PATTERNS: usize = 32;
const MAX_PATTERN_LEN: usize = 100;

impl Filter {
    /// Parses `task:*, *:completed`. The error is a client-facing sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        let patterns: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        Self::from_patterns(patterns)
    }

    pub fn from_patterns(patterns: Vec<String>) -> Result<Self, String> {
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} patterns"));
        }
        for pattern in &patterns {
            let valid_chars = pattern
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":_*-".contains(&b));
            if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN || !valid_chars {
                return Err(format!(
                    "invalid pattern {pattern:?}: 1 to {MAX_PATTERN_LEN} characters of [a-z0-9:_*-]"
                ));
            }
        }
        Ok(Self { patterns })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn matches(&self, name: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

/// Glob match with `*` only, iterative with backtracking to the last star (linear in practice).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_patterns_match_as_described() {
        let cases = [
            ("task:*", "task:transition", true),
            ("task:*", "task:completed", true),
            ("task:*", "agent:spawned", false),
            ("*:completed", "task:completed", true),
            ("*:completed", "assessment:completed", true),
            ("*:completed", "mission:completed", true),
            ("*:completed", "assessment:complete", false),
            ("mission:executed", "mission:executed", true),
            ("mission:executed", "mission:executed2", false),
            ("*", "quality:gate:passed", true),
            ("quality:*", "quality:gate:failed", true),
            ("*gate*", "quality:gate:passed", true),
            ("assessment:complete", "assessment:completed", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                Filter::parse(pattern).unwrap().matches(name),
                expected,
                "{pattern} vs {name}"
            );
        }
    }

    #[test]
    fn combinations_match_any_pattern_and_empty_matches_all() {
        let filter = Filter::parse(" task:* , session:created ").unwrap();
        assert!(filter.matches("task:created"));
        assert!(filter.matches("session:created"));
        assert!(!filter.matches("message:added"));
        assert!(Filter::parse("").unwrap().matches("anything:at_all"));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        assert!(Filter::parse("Task:*").is_err());
        assert!(Filter::parse("task:?").is_err());
        assert!(Filter::parse(&"a".repeat(101)).is_err());
        assert!(Filter::parse(&vec!["a"; 33].join(",")).is_err());
    }
}
