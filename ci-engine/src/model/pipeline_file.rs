//! Pipelines people write: a TOML file read into a [`Pipeline`], with errors
//! that name the file and the line.
//!
//! (Interface placeholder: the parser lands in the next commit.)

use std::path::{Path, PathBuf};

use super::Pipeline;

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

impl Pipeline {
    /// Reads and validates the pipeline file at `path`.
    ///
    /// # Errors
    /// [`PipelineFileError`] naming the file, the line and the problem.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineFileError {
            path: path.to_owned(),
            line: None,
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates pipeline file text; `path` is only used in errors.
    ///
    /// # Errors
    /// [`PipelineFileError`] naming the file, the line and the problem.
    pub fn from_toml(text: &str, path: &Path) -> Result<Pipeline, PipelineFileError> {
        let _ = text;
        Err(PipelineFileError {
            path: path.to_owned(),
            line: None,
            problem: "pipeline files are not read yet".into(),
        })
    }
}
