//! Diagnostics for the person at the console: a problem in a file, with its line, column, what is
//! wrong and how to fix it. Owns the error type shared by config and zone loading; it reads no
//! files itself.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a configuration or zone file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    pub what: String,
    pub fix: String,
}

impl Diagnostic {
    /// A diagnostic located by a byte span of `text` (as given by toml and `Spanned`).
    pub fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        what: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            what: what.into(),
            fix: fix.into(),
        }
    }

    /// A diagnostic about a file as a whole (unreadable, missing).
    pub fn file(file: &Path, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            what: what.into(),
            fix: fix.into(),
        }
    }

    /// Turns a toml parse/deserialize error into a diagnostic with a fix hint.
    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        let msg = err.message().trim().to_string();
        let fix = if msg.contains("unknown field") {
            "remove the key or correct its spelling (see the configuration reference in README.md)"
        } else if msg.contains("missing field") {
            "add the missing key"
        } else if msg.contains("invalid type") {
            "give the value the type the message names (strings need quotes, lists need [ ])"
        } else if msg.contains("unknown variant") {
            "use one of the values the message lists"
        } else {
            "correct the TOML syntax at this place"
        };
        Diagnostic::at(file, text, err.span(), msg, fix)
    }
}

/// 1-based line and column of byte offset `pos` in `text`.
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text.as_bytes()[..pos];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = text
        .get(line_start..pos)
        .map_or(pos - line_start, |s| s.chars().count())
        + 1;
    (line, column)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": error: {}\n  fix: {}", self.what, self.fix)
    }
}

/// Every problem found in one load; loading reports all of them, not just the first.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }
}
