//! The `ArrayJob` spec and everything that can be said about one without reading data: its types (the CRD's
//! schema), the limits on every number it carries, index templates, selections, S3 names, and validation with
//! stage shape inference. No IO and no array code: the engine, the CLI and the operator all check a spec here,
//! so they refuse the same manifests with the same messages.

pub mod dtype;
pub mod error;
pub mod job;
pub mod limits;
pub mod progress;
pub mod s3;
pub mod select;
pub mod spec;
pub mod template;
pub mod validate;

pub use dtype::DType;
pub use error::ConfigError;
