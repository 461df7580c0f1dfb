//! Case failures.

/// Why a case failed.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The subject did something the rule forbids, or not what it requires.
    #[error("{0}")]
    Failed(String),
    /// The subject went silent.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A link error on the harness side.
    #[error("link: {0}")]
    Link(#[from] vox_core::link::LinkError),
    /// An I/O error (listener, process, raw socket).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A message could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
}

impl From<vox_core::wire::DecodeError> for CaseError {
    fn from(e: vox_core::wire::DecodeError) -> Self {
        CaseError::Codec(e.to_string())
    }
}

impl From<vox_core::wire::EncodeError> for CaseError {
    fn from(e: vox_core::wire::EncodeError) -> Self {
        CaseError::Codec(e.to_string())
    }
}

/// The result of a case step.
pub type CaseResult<T = ()> = Result<T, CaseError>;

/// Fails the case with a formatted message.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { return Err($crate::error::CaseError::Failed(format!($($arg)*))) };
}

/// Fails the case unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { $crate::fail!($($arg)*); } };
}
