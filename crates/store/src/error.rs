use sqlx::error::ErrorKind;

/// What can go wrong in the store, sorted so callers can answer the user precisely.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{what} '{name}' not found")]
    NotFound {
        /// "pool", "desktop", "token".
        what: &'static str,
        /// The name looked up.
        name: String,
    },
    /// A unique constraint refused the write.
    #[error("{message}")]
    Conflict {
        /// The constraint's name, e.g. `pools_name_key`.
        constraint: String,
        /// A readable explanation.
        message: String,
    },
    /// A check constraint refused the write.
    #[error("{message}")]
    Invalid {
        /// The constraint's name.
        constraint: String,
        /// A readable explanation.
        message: String,
    },
    /// Optimistic concurrency: the row changed since the caller read it.
    #[error("pool was changed by someone else (now at version {current}); reload and retry")]
    VersionMismatch {
        /// The version now stored.
        current: i64,
    },
    /// This replica no longer holds the leader lease; the write was refused.
    #[error("leader lease lost (fencing token {token} is stale)")]
    Fenced {
        /// The stale token.
        token: i64,
    },
    /// The pool is being deleted: its spec can no longer change.
    #[error("pool '{name}' is being deleted")]
    PoolDeleting {
        /// The pool's name.
        name: String,
    },
    /// The pool still has desktops on its vCenter, so its vCenter or datacenter may not change.
    #[error(
        "pool '{name}' still has {desktops} desktop(s) on vCenter '{vcenter}' / datacenter '{datacenter}': \
         scale it to 0 (or delete it) before moving it elsewhere"
    )]
    VcenterFixed {
        /// The pool's name.
        name: String,
        /// Desktops it still has.
        desktops: i64,
        /// The vCenter they live on.
        vcenter: String,
        /// The datacenter they live in.
        datacenter: String,
    },
    /// A stored value could not be read back (e.g. an unknown state string).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Any other database failure (connection lost, timeout...).
    #[error("database error: {0}")]
    Db(#[source] sqlx::Error),
}

impl StoreError {
    /// True when the database itself is unreachable or failing, rather than refusing input.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Db(e) if !matches!(e, sqlx::Error::RowNotFound | sqlx::Error::Database(_)))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let constraint = db.constraint().unwrap_or_default().to_owned();
            let message = match constraint.as_str() {
                "pools_name_key" => "a pool with that name already exists".to_owned(),
                "desktops_name_key" => {
                    "a desktop with that name already exists (in this or another pool: check the naming patterns)".to_owned()
                }
                "api_tokens_active_name_key" => "an active token with that name already exists".to_owned(),
                "pools_size_bounds" => "sizes must satisfy min_size <= target_size <= max_size".to_owned(),
                _ => db.message().to_owned(),
            };
            match db.kind() {
                ErrorKind::UniqueViolation => {
                    return Self::Conflict {
                        constraint,
                        message,
                    }
                }
                ErrorKind::CheckViolation | ErrorKind::NotNullViolation => {
                    return Self::Invalid {
                        constraint,
                        message,
                    }
                }
                _ => {}
            }
        }
        Self::Db(e)
    }
}
