//! What `dedupe-claims` prints: tables for people, laid out as kubectl lays out its own (one
//! line per claim, columns as wide as their widest cell, three spaces apart, nothing cut), and
//! JSON or YAML for scripts. The JSON shapes are documented in docs/OPERATIONS.md
//! ("dedupe-claims JSON"); fields are only ever added; YAML is the same document.
//!
//! Every cell and value of human output goes through [`sanitize`], so a stored name cannot
//! carry terminal control sequences to the operator's screen.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use dedupe_store::claim::ClaimState;
use dedupe_store::inspect::{ClaimList, ClaimRecord, ClaimStats};
use serde_json::{json, Value};

use crate::human;

/// Width of the label column of a `describe` block.
const LABEL_WIDTH: usize = 15;

/// How `get` and `release` describe claims: the settings that turn rows into dates.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub retention_days: u32,
    pub pending_grace: Duration,
}

// --- JSON ---------------------------------------------------------------------------------

/// One claim as JSON.
pub fn claim_json(r: &ClaimRecord, cx: Context) -> Value {
    let c = &r.claim;
    json!({
        "deliveryId": r.key.delivery_id,
        "scope": r.key.scope.as_str(),
        "namespace": r.key.namespace,
        "orchestration": r.key.orchestration,
        "key": r.key.to_string(),
        "run": {"namespace": c.holder.namespace, "name": c.holder.name, "uid": c.holder.uid},
        "state": c.state.as_str(),
        "claimedAt": human::rfc3339(c.claimed_at),
        "updatedAt": human::rfc3339(c.updated_at),
        "observedAt": human::rfc3339(c.observed_at),
        "ageSeconds": r.age().num_seconds(),
        "idleSeconds": c.idle_for().num_seconds(),
        "admissions": c.admissions,
        "takeovers": c.takeovers,
        "prunableAfter": human::rfc3339(r.prunable_after(cx.retention_days)),
        "pendingPastGrace": r.pending_past_grace(cx.pending_grace),
    })
}

pub fn get_json(delivery_id: &str, claims: &[ClaimRecord], cx: Context) -> Value {
    json!({
        "deliveryId": delivery_id,
        "retentionDays": cx.retention_days,
        "claims": claims.iter().map(|r| claim_json(r, cx)).collect::<Vec<_>>(),
    })
}

/// `continue` is the token for the next page (`--continue`), null when nothing is left.
pub fn list_json(list: &ClaimList, limit: u32, next: Option<&str>, cx: Context) -> Value {
    json!({
        "limit": limit,
        "truncated": list.truncated,
        "continue": next,
        "retentionDays": cx.retention_days,
        "claims": list.claims.iter().map(|r| claim_json(r, cx)).collect::<Vec<_>>(),
    })
}

/// `released` is true only when the claim was deleted (committed); `claims` are the matches.
pub fn release_json(delivery_id: &str, released: bool, claims: &[ClaimRecord], cx: Context) -> Value {
    json!({
        "deliveryId": delivery_id,
        "released": released,
        "claims": claims.iter().map(|r| claim_json(r, cx)).collect::<Vec<_>>(),
    })
}

pub fn stats_json(s: &ClaimStats, cx: Context) -> Value {
    let by_state = |state: ClaimState| -> u64 {
        s.by_scope_state
            .iter()
            .filter(|g| g.state == state)
            .map(|g| g.claims)
            .sum()
    };
    json!({
        "observedAt": human::rfc3339(s.observed_at),
        "total": s.total,
        "pending": by_state(ClaimState::Pending),
        "confirmed": by_state(ClaimState::Confirmed),
        "byScopeAndState": s.by_scope_state.iter().map(|g| json!({
            "scope": g.scope.as_str(),
            "state": g.state.as_str(),
            "claims": g.claims,
            "oldestClaimedAt": human::rfc3339(g.oldest),
        })).collect::<Vec<_>>(),
        "oldest": s.oldest.as_ref().map(|r| claim_json(r, cx)),
        "retentionDays": s.retention_days,
        "pastRetention": s.past_retention,
        "pendingGraceSeconds": s.pending_grace.as_secs(),
        "pendingPastGrace": s.pending_past_grace,
        "tableBytes": s.table_bytes,
        "migrationVersion": s.migration_version,
    })
}

// --- tables -------------------------------------------------------------------------------

/// Which columns a claim table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// DELIVERY, SCOPE, STATE, RUN, AGE.
    Default,
    /// The default columns, then ORCHESTRATION, RUN-UID, IDLE, ADMISSIONS, TAKEOVERS,
    /// PRUNED-AFTER (`-o wide`).
    Wide,
}

/// The claim table's header, in a fixed order: scripts may pick columns by position, and the
/// wide columns only ever come after the default ones.
const DEFAULT_HEADERS: [&str; 5] = ["DELIVERY", "SCOPE", "STATE", "RUN", "AGE"];
const WIDE_HEADERS: [&str; 6] = [
    "ORCHESTRATION",
    "RUN-UID",
    "IDLE",
    "ADMISSIONS",
    "TAKEOVERS",
    "PRUNED-AFTER",
];

/// Claims one line each (`get`, `list`, a release's matches).
pub fn claims_table(claims: &[ClaimRecord], columns: Columns, headers: bool, cx: Context) -> String {
    let mut names: Vec<&str> = DEFAULT_HEADERS.to_vec();
    if columns == Columns::Wide {
        names.extend(WIDE_HEADERS);
    }
    let mut table = Table::new(&names);
    for r in claims {
        let c = &r.claim;
        let mut row = vec![
            r.key.delivery_id.clone(),
            r.key.scope.as_str().to_owned(),
            c.state.as_str().to_owned(),
            c.holder.to_string(),
            human::span(r.age()),
        ];
        if columns == Columns::Wide {
            row.extend([
                or_none(&r.key.orchestration),
                or_none(&c.holder.uid),
                human::span(c.idle_for()),
                c.admissions.to_string(),
                c.takeovers.to_string(),
                human::time(r.prunable_after(cx.retention_days)),
            ]);
        }
        table.row(row);
    }
    table.render(headers)
}

/// `claim/DELIVERY_ID` per claim (`-o name`): what `get`, `describe` and `release` accept.
pub fn names(claims: &[ClaimRecord]) -> String {
    claims
        .iter()
        .map(|r| format!("claim/{}\n", sanitize(&r.key.delivery_id)))
        .collect()
}

/// One claim as labelled lines, nothing cut or wrapped (a long name makes a long line:
/// it stays copyable).
pub fn claim_block(r: &ClaimRecord, cx: Context) -> String {
    let c = &r.claim;
    let state = match c.state {
        ClaimState::Pending if r.pending_past_grace(cx.pending_grace) => format!(
            "pending, idle {} (past the {} s grace: the next create takes it over if the run is gone)",
            human::span(c.idle_for()),
            cx.pending_grace.as_secs()
        ),
        ClaimState::Pending => format!("pending, idle {}", human::span(c.idle_for())),
        ClaimState::Confirmed => "confirmed".to_owned(),
    };
    let prunable = r.prunable_after(cx.retention_days);
    let fields = [
        ("delivery", r.key.delivery_id.clone()),
        ("scope", r.key.scope.as_str().to_owned()),
        ("namespace", or_none(&r.key.namespace)),
        ("orchestration", or_none(&r.key.orchestration)),
        ("run", c.holder.to_string()),
        ("run uid", c.holder.uid.clone()),
        ("state", state),
        (
            "claimed at",
            format!("{} ({})", human::time(c.claimed_at), human::relative(r.age())),
        ),
        (
            "updated at",
            format!(
                "{} ({})",
                human::time(c.updated_at),
                human::relative(c.idle_for())
            ),
        ),
        ("admissions", c.admissions.to_string()),
        ("take-overs", c.takeovers.to_string()),
        (
            "pruned after",
            format!(
                "{} ({}; retention {} d)",
                human::time(prunable),
                human::relative(c.observed_at - prunable),
                cx.retention_days
            ),
        ),
    ];
    let mut out = String::new();
    for (label, value) in fields {
        field(&mut out, label, &value);
    }
    out
}

/// `''` key parts (outside the scope) and empty values, as kubectl shows them.
fn or_none(s: &str) -> String {
    if s.is_empty() {
        NONE.to_owned()
    } else {
        s.to_owned()
    }
}

/// What an empty cell shows (kubectl's word for it).
const NONE: &str = "<none>";

/// `label          value`, the value whole on one line.
fn field(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "{label:<LABEL_WIDTH$}{}", sanitize(value));
}

/// `describe`: every claim of the delivery as a block.
pub fn describe(delivery_id: &str, claims: &[ClaimRecord], cx: Context) -> String {
    let mut out = format!(
        "delivery {}: {}\n",
        sanitize(delivery_id),
        plural(claims.len(), "claim", "claims")
    );
    for r in claims {
        out.push('\n');
        out.push_str(&claim_block(r, cx));
    }
    out
}

pub fn stats_table(s: &ClaimStats, headers: bool, cx: Context) -> String {
    let mut out = String::new();
    let count = |state: ClaimState| -> u64 {
        s.by_scope_state
            .iter()
            .filter(|g| g.state == state)
            .map(|g| g.claims)
            .sum()
    };
    field(
        &mut out,
        "claims",
        &format!(
            "{} (pending {}, confirmed {})",
            s.total,
            count(ClaimState::Pending),
            count(ClaimState::Confirmed)
        ),
    );
    if !s.by_scope_state.is_empty() {
        let mut table = Table::new(&["SCOPE", "STATE", "CLAIMS", "OLDEST"]);
        for g in &s.by_scope_state {
            table.row(vec![
                g.scope.as_str().to_owned(),
                g.state.as_str().to_owned(),
                g.claims.to_string(),
                human::time(g.oldest),
            ]);
        }
        for line in table.render(headers).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let oldest = match &s.oldest {
        Some(r) => format!(
            "{} ({}), claimed {} ({})",
            r.key.delivery_id,
            r.key.scope.as_str(),
            human::time(r.claim.claimed_at),
            human::relative(r.age())
        ),
        None => NONE.to_owned(),
    };
    field(&mut out, "oldest", &oldest);
    field(
        &mut out,
        "past retention",
        &format!(
            "{} (older than {} d: the next pruner run deletes them)",
            s.past_retention, s.retention_days
        ),
    );
    field(
        &mut out,
        "pending stale",
        &format!(
            "{} (pending, idle longer than the {} s grace)",
            s.pending_past_grace,
            cx.pending_grace.as_secs()
        ),
    );
    field(
        &mut out,
        "table size",
        &format!("{} (with indexes)", human::bytes(s.table_bytes)),
    );
    field(
        &mut out,
        "schema version",
        &s.migration_version
            .map_or_else(|| "none applied".to_owned(), |v| v.to_string()),
    );
    out
}

pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Text from the store made safe for a terminal: what a terminal would act on
/// ([`human::acts_on_terminal`]: C0 controls, tab and newline too, as a cell is one line; DEL;
/// C1 controls; the bidirectional overrides and isolates) is shown escaped (`\x1b`, `\u{9b}`,
/// `\u{202e}`), everything else as is. The one place human output is escaped: the table writer
/// and [`field`] call it on every cell and value.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(human::acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match u32::from(c) {
            n @ (0..=0x1f | 0x7f) => {
                let _ = write!(out, "\\x{n:02x}");
            }
            n if human::acts_on_terminal(c) => {
                let _ = write!(out, "\\u{{{n:x}}}");
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A plain-text table laid out as kubectl's tabwriter does: each column as wide as its widest
/// cell (header included), three spaces between columns, the last column not padded, no cell
/// ever cut.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Spaces between columns (kubectl's printers use a tabwriter with padding 3).
const GAP: usize = 3;

impl Table {
    fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, headers: bool) -> String {
        let lines: Vec<Vec<Cow<'_, str>>> = headers
            .then_some(&self.headers)
            .into_iter()
            .chain(&self.rows)
            .map(|cells| {
                (0..self.headers.len())
                    .map(|i| sanitize(cells.get(i).map_or("", String::as_str)))
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                lines
                    .iter()
                    .map(|cells| cells[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for cells in &lines {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count() + GAP;
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_three_spaces_apart() {
        let mut t = Table::new(&["DELIVERY", "STATE", "RUN"]);
        let long = "x".repeat(63);
        let run = format!("agents/{}", "r".repeat(60));
        t.row(vec![long.clone(), "confirmed".into(), run.clone()]);
        t.row(vec!["d".into(), "pending".into(), "a/b".into()]);
        let text = t.render(true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                format!("DELIVERY{}STATE       RUN", " ".repeat(63 - 8 + 3)),
                format!("{long}   confirmed   {run}"),
                format!("d{}pending     a/b", " ".repeat(62 + 3)),
            ]
        );
        assert!(!text.contains('…'), "nothing is cut: {text}");
        assert_eq!(
            t.render(false).lines().count(),
            2,
            "--no-headers drops the header only"
        );
    }

    #[test]
    fn narrow_tables_are_not_padded_at_the_end() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["1".into(), "2".into()]);
        assert_eq!(t.render(true), "A   B\n1   2\n");
    }

    #[test]
    fn control_characters_in_cells_are_escaped_and_keep_the_columns_aligned() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x\u{1b}]0;pwned\u{7}\ny".into(), "z".into()]);
        t.row(vec!["\u{9b}31m\u{7f}".into(), "w".into()]);
        let text = t.render(true);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains(r"x\x1b]0;pwned\x07\x0ay"), "{text}");
        assert!(text.contains(r"\u{9b}31m\x7f"), "{text}");
        assert_eq!(text.lines().count(), 3, "one line per row: {text}");
        assert_eq!(sanitize("plain/name-1"), Cow::Borrowed("plain/name-1"));
    }

    #[test]
    fn long_values_stay_whole_on_one_line() {
        let mut out = String::new();
        field(&mut out, "orchestration", &"x".repeat(200));
        assert_eq!(out.lines().count(), 1);
        assert_eq!(out.matches('x').count(), 200);
    }
}
