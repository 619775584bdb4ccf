//! How a job body fails: for good (recorded on the run or document, no redelivery) or for now
//! (infrastructure down, apalis delivers the job again).

/// The failure of a job body. `F` is what a permanent failure records: a provider error on a
/// run, an extraction error on a document.
#[derive(Debug, thiserror::Error)]
pub enum JobError<F> {
    /// Trying again cannot help; the job records `F` and ends.
    #[error("permanent failure: {0}")]
    Permanent(F),
    /// Postgres is unavailable or erroring; the job is delivered again.
    #[error("transient failure: {0}")]
    Transient(#[from] sqlx::Error),
}
