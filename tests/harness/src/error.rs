use std::path::PathBuf;

/// Errors of the test environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary or file the environment needs is not where the setup scripts put it.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What is missing.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// What to run to get it.
        hint: String,
    },
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Something did not happen in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
    /// A component process exited while it should be running.
    #[error("{name} exited early ({status}); its log: {log}")]
    Exited {
        /// The component.
        name: String,
        /// Its exit status.
        status: String,
        /// Where its output went.
        log: PathBuf,
    },
    /// An external command (kubectl, helm, a setup script) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// Starting the shared environment failed earlier in this test binary.
    #[error("the shared test environment failed to start: {0}")]
    SharedStart(String),
    /// A value was not valid.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
