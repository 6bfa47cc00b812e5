//! The domain's error: what went wrong, in words the caller can act on. It knows nothing of HTTP;
//! `http::error` maps each case to a status and code of the API's one envelope.
//!
//! Database errors are classified here, once: an unreachable or busy database is `Unavailable`
//! (temporary), a number or text the database cannot store is `Invalid`, anything else `Internal`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request does not fit; the message names what and why.
    #[error("{0}")]
    Invalid(String),
    /// A missing API key, or one that is not valid (every reason, one answer).
    #[error("unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("insufficient credits")]
    InsufficientCredits { price: i64, available: i64 },
    /// A key's or account's limit refuses the create (issue 20).
    #[error("{}", .0.message())]
    Limit(crate::limits::Refusal),
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the resource's state does not allow it now.
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    RateLimited { retry_after_secs: u64, message: String },
    /// A provider refused the work.
    #[error("{0}")]
    Upstream(String),
    /// Temporarily unable to answer (the database is down or busy): retry shortly.
    #[error("{0}")]
    Unavailable(String),
    /// More work is waiting than this process takes on (the create queue is full): retry in a second.
    #[error("{0}")]
    Overloaded(String),
    /// Anything the client cannot act on: logged with its cause, answered with a generic message.
    #[error(transparent)]
    Internal(anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(what: &str) -> Error {
        Error::NotFound(format!("{what} not found."))
    }
}

/// A database error carried in an `anyhow::Error` is classified like any other database error.
impl From<anyhow::Error> for Error {
    fn from(error: anyhow::Error) -> Self {
        match error.downcast::<sqlx::Error>() {
            Ok(database) => Error::from(database),
            Err(other) => Error::Internal(other),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => {
                tracing::error!(error = %error, "database unavailable");
                Error::Unavailable("The database is unavailable; retry shortly.".into())
            }
            // The server cut the connection or is shutting down or starting up (a restart, a
            // failover): as unreachable as a refused connection, and as temporary.
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(is_server_unavailable) => {
                tracing::error!(error = %db, "database unavailable");
                Error::Unavailable("The database is unavailable; retry shortly.".into())
            }
            // SQLite: the one write lock stayed taken past the busy timeout (SQLITE_BUSY, SQLITE_LOCKED).
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && db
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .is_some_and(|code| matches!(code & 0xff, 5 | 6)) =>
            {
                tracing::error!(error = %db, "database busy");
                Error::Unavailable("The database is busy; retry shortly.".into())
            }
            // A number beyond what the database holds (e.g. a balance past 2^63). SQLite: the schema's
            // `typeof(…) = 'integer'` checks refuse a sum that left the integers.
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some("22003")
                    || (db.kind() == sqlx::error::ErrorKind::CheckViolation && db.message().contains("typeof(")) =>
            {
                Error::Invalid("A number in this request is out of range.".into())
            }
            // Text the database cannot store: a NUL character (U+0000), in text or in JSON.
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("22021" | "22P05")) => {
                Error::Invalid("Text in this request contains a NUL character (U+0000), which is not allowed.".into())
            }
            other => Error::Internal(other.into()),
        }
    }
}

/// SQLSTATE class 08 (connection exception), 57P01 admin_shutdown, 57P02 crash_shutdown,
/// 57P03 cannot_connect_now.
fn is_server_unavailable(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}
