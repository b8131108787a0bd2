//! What the webhook answers: the [`Verdict`] on one request and the [`Decision`] it records.
//! Its own module so that the decision table (`decision.rs`), which makes verdicts, and the
//! review writer (`review.rs`), which turns them into AdmissionReview answers, both depend
//! on it and not on each other.

use dedupe_store::RunRef;

/// The audit annotation `decision` and the `decision` log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// First create for the delivery: claimed, allowed.
    Claimed,
    /// Another run holds the delivery: denied 409.
    Duplicate,
    /// A retried create of the run that holds the pending claim: allowed.
    Retry,
    /// A stale pending claim whose run does not exist was taken over: allowed.
    Takeover,
    /// A dry-run create that would be allowed; nothing written.
    DryRun,
    /// An update that changes the claim key: denied 422.
    Immutable,
    /// A create with a bad delivery id or mismatched spec: denied 422.
    Invalid,
    /// An allowed update/delete (answered without the store).
    Allowed,
    /// Not ours: unlabelled, another resource, a subresource.
    Ignored,
}

impl Decision {
    #[cfg(test)]
    pub const ALL: [Decision; 9] = [
        Decision::Claimed,
        Decision::Duplicate,
        Decision::Retry,
        Decision::Takeover,
        Decision::DryRun,
        Decision::Immutable,
        Decision::Invalid,
        Decision::Allowed,
        Decision::Ignored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Claimed => "claimed",
            Decision::Duplicate => "duplicate",
            Decision::Retry => "retry",
            Decision::Takeover => "takeover",
            Decision::DryRun => "dry-run",
            Decision::Immutable => "immutable",
            Decision::Invalid => "invalid",
            Decision::Allowed => "allowed",
            Decision::Ignored => "ignored",
        }
    }
}

/// The webhook's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// `status.code` of a deny (409 or 422); 0 when allowed.
    pub code: u16,
    /// `status.reason` of a deny ([`DUPLICATE_REASON`], `Invalid`).
    pub reason: &'static str,
    pub message: String,
    pub decision: Decision,
    pub warnings: Vec<String>,
    /// The run holding the claim, when that is what the answer is about (for logs).
    pub existing_run: Option<String>,
    /// The run holding the delivery, for a 409's `status.details` (name, uid, namespace),
    /// so a submitter's program can return it without parsing the message.
    pub holder: Option<RunRef>,
}

impl Verdict {
    pub(crate) fn allow(decision: Decision, message: String) -> Self {
        Self {
            allowed: true,
            code: 0,
            reason: "",
            message,
            decision,
            warnings: Vec::new(),
            existing_run: None,
            holder: None,
        }
    }

    pub(crate) fn invalid(decision: Decision, message: String) -> Self {
        Self {
            allowed: false,
            code: 422,
            reason: "Invalid",
            message,
            decision,
            warnings: Vec::new(),
            existing_run: None,
            holder: None,
        }
    }

    pub(crate) fn warn(mut self, warning: String) -> Self {
        self.warnings.push(warning);
        self
    }
}

/// `status.reason` of a duplicate's 409. Not `AlreadyExists`: on Kubernetes >= 1.30 the API
/// server takes that reason on a `generateName` create for a generated-name collision and
/// retries the create with new names (up to 8 webhook calls per duplicate). `Conflict` keeps
/// the 409 and is never retried.
pub const DUPLICATE_REASON: &str = "Conflict";
