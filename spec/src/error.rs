//! The one error of this crate: a spec field whose value cannot work.

/// A field of the spec (or of a number read from outside, checked against a limit) that cannot work: the
/// field's path and what is wrong. The engine turns it into its own area's error (`SourceError::Config`,
/// `S3Error::Config`), validation into a `Problem`, with the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Spec field path, e.g. `spec.source.files.pattern`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// The problem `message` with the field at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}
