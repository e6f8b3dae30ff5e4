//! Pipelines people write: a TOML file read into a [`Pipeline`], with errors
//! that name the file and the line.
//!
//! The file holds one `[[step]]` table per step (the format is described in
//! `docs/pipelines.md`). Reading goes in three passes, each in its own module:
//! the TOML parser (syntax errors carry its byte offset), [`step_table`] (each
//! table's keys, types and words into a [`StepSpec`](super::StepSpec), keeping
//! where every value was written), and [`Pipeline::new`] for everything about
//! the steps together, whose [`PipelineError`](super::PipelineError) [`locate`]
//! maps back to the line of the key it is about.

mod duration;
mod locate;
mod step_table;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::{Pipeline, PipelineError};
use step_table::{StepEntry, read_step};

/// Why a pipeline file could not be used. Displays as one line,
/// `FILE:LINE: problem` (without the line when the problem has none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {problem}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PipelineFileError {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line the problem is on, when it has one.
    pub line: Option<usize>,
    /// What is wrong, in words.
    pub problem: String,
}

/// A problem found in the text, before it is turned into a
/// [`PipelineFileError`]: the byte range it is about (if any) and the words.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    /// Byte offsets into the file text.
    at: Option<Range<usize>>,
    /// What is wrong.
    message: String,
}

impl Problem {
    /// A problem about the text at `at`.
    fn at(at: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            at: Some(at),
            message: message.into(),
        }
    }

    /// A problem of the file as a whole.
    fn nowhere(message: impl Into<String>) -> Self {
        Self {
            at: None,
            message: message.into(),
        }
    }

    /// The error for `path`, with the line `at` starts on in `text`.
    fn into_error(self, text: &str, path: &Path) -> PipelineFileError {
        PipelineFileError {
            path: path.to_owned(),
            line: self.at.map(|at| line_of(text, at.start)),
            problem: self.message,
        }
    }
}

/// The 1-based line of byte `offset` in `text`. An offset at the very end of a
/// text that ends with a newline counts as the last line, not the empty one
/// after it.
fn line_of(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    if offset == text.len() && text.ends_with('\n') {
        offset -= 1;
    }
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Pipeline {
    /// Reads and validates the pipeline file at `path`.
    ///
    /// # Errors
    /// [`PipelineFileError`] naming the file, the line and the problem; a file
    /// that cannot be read (or is not UTF-8) has no line.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineFileError {
            path: path.to_owned(),
            line: None,
            problem: format!("cannot read the file: {e}"),
        })?;
        let pipeline = Self::from_toml(&text, path)?;
        tracing::debug!(path = %path.display(), steps = pipeline.len(), "pipeline file read");
        Ok(pipeline)
    }

    /// Parses and validates pipeline file text; `path` is only used in errors.
    ///
    /// Steps keep the order they are written in, except that a step always
    /// comes after the steps it needs (see [`Pipeline::new`]).
    ///
    /// # Errors
    /// [`PipelineFileError`] naming the file, the line and the problem: invalid
    /// TOML, an unknown key, a value of the wrong type or out of range, or a
    /// [`PipelineError`] (placed on the line of the key it is about). Only a
    /// file without steps has no line.
    pub fn from_toml(text: &str, path: &Path) -> Result<Pipeline, PipelineFileError> {
        parse(text).map_err(|problem| problem.into_error(text, path))
    }
}

/// What the top level of the file may hold.
const TOP_LEVEL_KEYS: &str = "[[step]] tables";

/// The whole file: the TOML, then each step, then the steps together.
fn parse(text: &str) -> Result<Pipeline, Problem> {
    let document = DeTable::parse(text).map_err(|e| Problem {
        at: e.span(),
        message: format!("invalid TOML: {}", e.message()),
    })?;
    let mut step_tables = None;
    for (key, value) in in_file_order(document.get_ref()) {
        if key.get_ref() == "step" {
            step_tables = Some(value);
        } else {
            return Err(Problem::at(
                key.span(),
                format!(
                    "unknown key {:?}: a pipeline file holds only {TOP_LEVEL_KEYS}",
                    key.get_ref()
                ),
            ));
        }
    }
    let entries: Vec<StepEntry> = match step_tables {
        None => Vec::new(),
        Some(value) => {
            let Some(tables) = value.get_ref().as_array() else {
                return Err(Problem::at(
                    value.span(),
                    format!(
                        "`step` must be an array of tables (write each step as a [[step]] table), not {}",
                        step_table::a_type(value.get_ref())
                    ),
                ));
            };
            tables
                .iter()
                .enumerate()
                .map(|(i, table)| read_step(i + 1, table))
                .collect::<Result<_, _>>()?
        }
    };
    if entries.is_empty() {
        return Err(Problem::nowhere(format!(
            "{}: add a [[step]] table for each step",
            PipelineError::Empty
        )));
    }
    let specs = entries.iter().map(|e| e.spec.clone()).collect();
    Pipeline::new(specs).map_err(|error| locate::locate(&error, &entries))
}

/// The entries of a table in the order they are written in the file.
fn in_file_order<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(
    &'t toml::Spanned<toml::de::DeString<'i>>,
    &'t toml::Spanned<DeValue<'i>>,
)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}
