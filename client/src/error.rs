//! Errors a client sees, split by what the caller can do about them.

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no monitors configured: list them in [[monitors]] of cairn.toml or pass --mon")]
    NoMonitors,
    #[error("cannot reach any monitor ({tried}): {last}")]
    Unreachable { tried: String, last: String },
    #[error("{0}")]
    NoQuorum(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the monitors answered something unexpected: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("data could not be read intact: {0}")]
    Io(String),
    #[error("fenced: {0}")]
    Blocklisted(String),
    #[error("gave up: {0}")]
    TimedOut(String),
}

impl ClientError {
    /// Whether another attempt (maybe at another mon) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::NoQuorum(_)
        )
    }
}
