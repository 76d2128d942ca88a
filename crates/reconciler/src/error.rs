use deskpool_store::StoreError;

/// Why a pass or a worker stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// vCenter failed.
    #[error(transparent)]
    Vsphere(#[from] deskpool_vsphere::Error),
    /// Leadership was lost or the reconciler is shutting down.
    #[error("stopped: {0}")]
    Stopped(&'static str),
    /// A desktop's step is retried after the pool's backoff (it is `pending` again, or its
    /// clone failed); the text says why.
    #[error("{0}")]
    Retry(String),
    /// A worker panicked (a bug); the desktop is retried after a backoff.
    #[error("{0}")]
    Panicked(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e.into())
    }
}

impl Error {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Store(StoreError::Fenced { .. }) => "fenced",
            Error::Store(_) => "database",
            Error::Vsphere(e) => e.kind(),
            Error::Stopped(_) => "stopped",
            Error::Retry(_) => "retry",
            Error::Panicked(_) => "panic",
        }
    }
}
