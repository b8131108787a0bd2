//! The claim model: what a claim key is, who holds it and what a claim attempt found.

use chrono::{DateTime, Utc};
use std::fmt;

/// Kubernetes label values are at most 63 characters; so is a delivery id.
pub const MAX_DELIVERY_ID_LEN: usize = 63;

/// Which parts of a run make up its claim key (`--claim-scope`: with the `cli` feature,
/// parsed by clap from the `ValueEnum` names, which are also the values stored in the
/// `scope` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ClaimScope {
    /// (namespace, spec.orchestrationRef.name, delivery-id)
    #[default]
    Orchestration,
    /// (namespace, delivery-id)
    Namespace,
    /// (delivery-id): provider ids are globally unique
    Cluster,
}

impl ClaimScope {
    /// Every scope, in the order `--claim-scope` lists them.
    pub const ALL: [ClaimScope; 3] = [
        ClaimScope::Orchestration,
        ClaimScope::Namespace,
        ClaimScope::Cluster,
    ];

    /// The stored value (and flag value) of the scope.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimScope::Orchestration => "orchestration",
            ClaimScope::Namespace => "namespace",
            ClaimScope::Cluster => "cluster",
        }
    }
}

/// A scope name that is none of [`ClaimScope::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown claim scope `{0}`")]
pub struct UnknownScope(pub String);

impl std::str::FromStr for ClaimScope {
    type Err = UnknownScope;

    /// The stored value (as [`ClaimScope::as_str`] writes it), exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClaimScope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// The unique key of a claim. Parts outside the scope are empty strings, so the database's
/// primary key over all four columns enforces uniqueness for every scope alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimKey {
    pub delivery_id: String,
    pub scope: ClaimScope,
    pub namespace: String,
    pub orchestration: String,
}

impl ClaimKey {
    /// Builds the key for `delivery_id` under `scope`, dropping the parts the scope ignores.
    pub fn new(scope: ClaimScope, namespace: &str, orchestration: &str, delivery_id: &str) -> Self {
        let (namespace, orchestration) = match scope {
            ClaimScope::Orchestration => (namespace, orchestration),
            ClaimScope::Namespace => (namespace, ""),
            ClaimScope::Cluster => ("", ""),
        };
        Self {
            delivery_id: delivery_id.to_owned(),
            scope,
            namespace: namespace.to_owned(),
            orchestration: orchestration.to_owned(),
        }
    }
}

impl fmt::Display for ClaimKey {
    /// `scope:namespace/orchestration/delivery` with the parts the scope uses, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            ClaimScope::Orchestration => write!(
                f,
                "orchestration:{}/{}/{}",
                self.namespace, self.orchestration, self.delivery_id
            ),
            ClaimScope::Namespace => write!(f, "namespace:{}/{}", self.namespace, self.delivery_id),
            ClaimScope::Cluster => write!(f, "cluster:{}", self.delivery_id),
        }
    }
}

/// A run as the webhook sees it. Identity is namespace/name (a retried create of the same
/// name gets a new uid); the uid is recorded for the operator only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl RunRef {
    /// True when `other` is the same run by namespace/name, whatever its uid.
    pub fn same_run(&self, other: &RunRef) -> bool {
        self.namespace == other.namespace && self.name == other.name
    }
}

impl fmt::Display for RunRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `pending` until the run is known to exist, then `confirmed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    Pending,
    Confirmed,
}

impl ClaimState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Confirmed => "confirmed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ClaimState::Pending),
            "confirmed" => Some(ClaimState::Confirmed),
            _ => None,
        }
    }
}

impl fmt::Display for ClaimState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A claim row as stored, plus the database clock when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub holder: RunRef,
    pub state: ClaimState,
    /// When the current holder claimed the key (retention counts from here).
    pub claimed_at: DateTime<Utc>,
    /// Last admission or state change (the pending grace period counts from here).
    pub updated_at: DateTime<Utc>,
    /// Retried creates of the holder admitted since it claimed.
    pub admissions: i32,
    pub takeovers: i32,
    /// The database clock at the statement that read this row.
    pub observed_at: DateTime<Utc>,
}

impl Claim {
    /// How long since the holder was last admitted or changed, by the database clock.
    pub fn idle_for(&self) -> chrono::Duration {
        self.observed_at - self.updated_at
    }
}

/// What [`crate::ClaimStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// No claim existed: this run now holds a pending claim.
    Claimed(Claim),
    /// The same run (namespace/name) already held the pending claim: a retried create,
    /// counted; the claim keeps the first create's uid.
    SameRun(Claim),
    /// Another run holds the claim, or this run's claim is already confirmed.
    HeldBy(Claim),
    /// The claim changed between this attempt's two statements: the holder the insert lost
    /// to was gone when it was read (pruned), or a retried create's claim was confirmed or
    /// taken over before the retry was counted. Nothing was written; the caller decides
    /// again on what is there now (the webhook's create loop is the one place that retries).
    Changed,
}

/// How many claims are past a cutoff, and the oldest of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredCount {
    pub expired: u64,
    pub oldest: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored names are the flag's names: one list, no second parser to drift.
    #[cfg(feature = "cli")]
    #[test]
    fn scope_names_are_the_flag_values() {
        use clap::ValueEnum;
        assert_eq!(ClaimScope::value_variants(), ClaimScope::ALL);
        for scope in ClaimScope::value_variants() {
            let flag = scope.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(flag.as_deref(), Some(scope.as_str()));
            assert_eq!(ClaimScope::from_str(scope.as_str(), false).ok(), Some(*scope));
        }
        assert!(ClaimScope::from_str("global", false).is_err());
    }

    #[test]
    fn stored_scope_names_parse_back() {
        for scope in ClaimScope::ALL {
            assert_eq!(scope.as_str().parse::<ClaimScope>().ok(), Some(scope));
        }
        assert!("global".parse::<ClaimScope>().is_err());
        assert!("Cluster".parse::<ClaimScope>().is_err());
    }

    #[test]
    fn scope_drops_the_parts_it_ignores() {
        let k = ClaimKey::new(ClaimScope::Orchestration, "agents", "codex", "d1");
        assert_eq!(
            (k.namespace.as_str(), k.orchestration.as_str()),
            ("agents", "codex")
        );
        let k = ClaimKey::new(ClaimScope::Namespace, "agents", "codex", "d1");
        assert_eq!((k.namespace.as_str(), k.orchestration.as_str()), ("agents", ""));
        let k = ClaimKey::new(ClaimScope::Cluster, "agents", "codex", "d1");
        assert_eq!((k.namespace.as_str(), k.orchestration.as_str()), ("", ""));
        assert_eq!(k.delivery_id, "d1");
    }

    #[test]
    fn key_display_names_the_scope() {
        let k = ClaimKey::new(ClaimScope::Orchestration, "agents", "codex", "d1");
        assert_eq!(k.to_string(), "orchestration:agents/codex/d1");
        let k = ClaimKey::new(ClaimScope::Cluster, "agents", "codex", "d1");
        assert_eq!(k.to_string(), "cluster:d1");
    }

    #[test]
    fn same_run_ignores_uid() {
        let a = RunRef {
            namespace: "n".into(),
            name: "r".into(),
            uid: "1".into(),
        };
        let b = RunRef {
            uid: "2".into(),
            ..a.clone()
        };
        let c = RunRef {
            name: "other".into(),
            ..a.clone()
        };
        assert!(a.same_run(&b));
        assert!(!a.same_run(&c));
    }
}
