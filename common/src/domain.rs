//! The closed sets of chatq's data: statuses, roles, kinds, modes and error codes. Each is an
//! enum whose one name mapping (snake_case) serves Postgres (`text` columns with a CHECK),
//! JSON, the OpenAPI schema and metrics labels alike.

use std::fmt;

/// Declares a domain enum with its single name mapping: the variant name in snake_case, used
/// by serde, by sqlx (a `text` column) and by [`as_str`](RunStatus::as_str) for metrics labels
/// and logs.
macro_rules! domain_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema,
            strum::IntoStaticStr,
        )]
        #[serde(rename_all = "snake_case")]
        #[sqlx(type_name = "text", rename_all = "snake_case")]
        #[strum(serialize_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and serialised name.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// For metrics labels.
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    };
}

domain_enum! {
    /// Where a run is in its life (`runs.status`).
    pub enum RunStatus {
        /// Waiting for a worker (first time, or after a retryable error).
        Queued,
        /// A worker holds its lease and is answering.
        InProgress,
        /// The answer is complete.
        Completed,
        /// It failed for good; see its [`RunErrorCode`].
        Failed,
        /// Stopped on request.
        Cancelled,
    }
}

impl RunStatus {
    /// Whether the run reached a final status.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

    /// Whether the run still counts against the one-active-run-per-thread rule.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::InProgress)
    }
}

domain_enum! {
    /// Why a run failed (`runs.error_code`), stable for clients.
    pub enum RunErrorCode {
        /// Moderation flagged the user's message, or the answer (which is then withdrawn).
        ModerationFlagged,
        /// The provider is down, answered 5xx, or broke the stream.
        ProviderUnavailable,
        /// The provider refused the request (4xx, no quota).
        ProviderRejected,
        /// The provider asked to slow down (429).
        ProviderRateLimited,
        /// The provider sent nothing for too long.
        Timeout,
        /// The conversation does not fit the model's context.
        ContextTooLong,
        /// A fault of chatq (including runs whose workers kept dying).
        Internal,
    }
}

domain_enum! {
    /// Where a document is in ingestion (`documents.status`).
    pub enum DocumentStatus {
        /// Uploaded, waiting for a worker.
        Queued,
        /// A worker is extracting, chunking and embedding it.
        Processing,
        /// Its chunks are searchable.
        Ready,
        /// It cannot be ingested; see its [`DocumentErrorCode`].
        Failed,
    }
}

domain_enum! {
    /// Why a document could not be ingested (`documents.error_code`), stable for clients.
    pub enum DocumentErrorCode {
        /// The file holds no text.
        EmptyDocument,
        /// A text file that is not UTF-8.
        InvalidUtf8,
        /// The PDF cannot be parsed.
        PdfUnreadable,
        /// The PDF needs a password.
        PdfEncrypted,
        /// The PDF has no pages.
        PdfNoPages,
        /// The PDF has no text layer (a scan).
        PdfNoText,
        /// The PDF extractor crashed on the file.
        PdfExtractionCrashed,
        /// The extractor died on a text or Markdown file (memory limit, crash).
        ExtractionCrashed,
        /// Extraction and chunking took longer than their limit.
        ExtractionTimeout,
        /// The extracted text is larger than the extractor's output limit.
        ExtractionOutputTooLarge,
        /// The HTML nests elements deeper than the converter allows.
        HtmlTooDeeplyNested,
        /// The HTML cannot be converted.
        HtmlUnreadable,
        /// The media type is not one chatq ingests.
        UnsupportedMediaType,
        /// The provider did not embed the chunks.
        EmbeddingFailed,
        /// The uploaded bytes of the document are gone.
        MissingContent,
        /// Ingestion was interrupted (worker died, job lost) as many times as it may be tried.
        IngestionAttemptsExhausted,
    }
}

domain_enum! {
    /// Where a maintenance job is (`maintenance_jobs.status`).
    pub enum MaintenanceStatus {
        /// Requested, waiting for the worker.
        Queued,
        /// A worker is running it.
        Running,
        /// It ended normally.
        Completed,
        /// It ended with an error, or could not be queued.
        Failed,
    }
}

impl MaintenanceStatus {
    /// Whether the job is queued or running (at most one such job per kind).
    pub fn is_active(self) -> bool {
        matches!(self, MaintenanceStatus::Queued | MaintenanceStatus::Running)
    }
}

domain_enum! {
    /// What a maintenance job does (`maintenance_jobs.kind`).
    pub enum MaintenanceKind {
        /// Retention: expired threads, old run events, data of deleted documents.
        Cleanup,
    }
}

domain_enum! {
    /// Who wrote a stored message (`messages.role`).
    pub enum MessageRole {
        /// The end user.
        User,
        /// The assistant's answer.
        Assistant,
    }
}

domain_enum! {
    /// What an API key may do (`api_keys.role`, and the `cq_<role>_` key prefix).
    pub enum Role {
        /// Everything, including assistants, knowledge bases, usage and maintenance.
        Admin,
        /// Chat on behalf of end users.
        Client,
    }
}

domain_enum! {
    /// Which kind of provider call a usage record is (`usage_records.kind`).
    pub enum UsageKind {
        /// A chat completion.
        Chat,
        /// An embeddings request (ingestion or a retrieval query).
        Embedding,
        /// A moderation check.
        Moderation,
    }
}

domain_enum! {
    /// What an assistant checks with the moderation endpoint (`assistants.moderation`).
    pub enum ModerationMode {
        /// No check.
        Off,
        /// The user's message is moderated before generation.
        Input,
        /// The answer is moderated when it completes (and, with
        /// `CHATQ_MODERATION_OUTPUT_EVERY_CHARS`, while it streams); a flagged answer is
        /// withdrawn and replaced by a refusal.
        Output,
        /// Both the user's message and the answer.
        Both,
    }
}

impl ModerationMode {
    /// Whether the user's message is checked before generation.
    pub fn checks_input(self) -> bool {
        matches!(self, ModerationMode::Input | ModerationMode::Both)
    }

    /// Whether the answer is checked before it is kept.
    pub fn checks_output(self) -> bool {
        matches!(self, ModerationMode::Output | ModerationMode::Both)
    }
}

/// How a provider call ended (`usage_records.outcome`): `ok`, `flagged` (a moderation check
/// that flagged its input), `cancelled`, `lease_lost`, `released` or the [`RunErrorCode`] of
/// the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageOutcome {
    /// The call succeeded.
    Ok,
    /// A moderation call succeeded and flagged its input.
    Flagged,
    /// The run was cancelled on request while the call streamed.
    Cancelled,
    /// The attempt stopped mid-call because it no longer owned the run (its lease went to
    /// another worker, or the run was deleted with its thread).
    LeaseLost,
    /// The worker gave the run back mid-call at shutdown.
    Released,
    /// The call failed.
    Error(RunErrorCode),
}

impl UsageOutcome {
    /// The stored name: `ok`, `flagged`, or the error code.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageOutcome::Ok => "ok",
            UsageOutcome::Flagged => "flagged",
            UsageOutcome::Cancelled => "cancelled",
            UsageOutcome::LeaseLost => "lease_lost",
            UsageOutcome::Released => "released",
            UsageOutcome::Error(code) => code.as_str(),
        }
    }

    /// Whether the call succeeded (a flagged moderation call did).
    pub fn is_ok(self) -> bool {
        self == UsageOutcome::Ok
    }
}

impl From<RunErrorCode> for UsageOutcome {
    fn from(code: RunErrorCode) -> Self {
        UsageOutcome::Error(code)
    }
}

impl fmt::Display for UsageOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For metrics labels.
impl AsRef<str> for UsageOutcome {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl sqlx::Type<sqlx::Postgres> for UsageOutcome {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for UsageOutcome {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde and `as_str` must agree for every variant (sqlx shares serde's `rename_all`).
    fn names_agree<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug>(
        all: &[T],
        as_str: fn(&T) -> &'static str,
    ) {
        for v in all {
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json, serde_json::Value::String(as_str(v).to_string()), "{v:?}");
            assert_eq!(&serde_json::from_value::<T>(json).unwrap(), v);
        }
    }

    #[test]
    fn every_enum_has_one_name_per_variant() {
        names_agree(RunStatus::ALL, |v| v.as_str());
        names_agree(RunErrorCode::ALL, |v| v.as_str());
        names_agree(DocumentStatus::ALL, |v| v.as_str());
        names_agree(DocumentErrorCode::ALL, |v| v.as_str());
        names_agree(MaintenanceStatus::ALL, |v| v.as_str());
        names_agree(MaintenanceKind::ALL, |v| v.as_str());
        names_agree(MessageRole::ALL, |v| v.as_str());
        names_agree(Role::ALL, |v| v.as_str());
        names_agree(UsageKind::ALL, |v| v.as_str());
        names_agree(ModerationMode::ALL, |v| v.as_str());
        assert_eq!(RunStatus::InProgress.as_str(), "in_progress");
        assert_eq!(DocumentErrorCode::InvalidUtf8.as_str(), "invalid_utf8");
        assert_eq!(UsageOutcome::Error(RunErrorCode::ProviderRateLimited).as_str(), "provider_rate_limited");
    }
}
