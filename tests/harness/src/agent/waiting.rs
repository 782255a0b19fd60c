//! Why a container cannot start yet: the reason and message its waiting state shows (`ErrImagePull`,
//! `CreateContainerConfigError`, a volume that cannot be mounted, ...).

/// Why a container could not be prepared (shown as its waiting state).
pub(crate) struct NotReady {
    /// The waiting reason, as kubelet names it.
    pub(crate) reason: &'static str,
    /// What is missing or wrong.
    pub(crate) message: String,
}
