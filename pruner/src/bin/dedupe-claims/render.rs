//! What `dedupe-claims` prints: tables that fit 80 columns for people, and JSON for scripts.
//! The JSON shapes are documented in docs/OPERATIONS.md ("dedupe-claims JSON"); fields are
//! only ever added. Every value from a claim goes into a table through [`shown`], so terminal
//! control characters in a row are printed escaped, never acted on (JSON escapes them itself).

use std::time::Duration;

use dedupe_store::claim::ClaimState;
use dedupe_store::inspect::{ClaimList, ClaimRecord, ClaimStats};
use serde_json::{json, Value};

use crate::human;

/// The width tables are laid out for.
pub const WIDTH: usize = 80;
/// Width of the label column of a `get` block.
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

pub fn list_json(list: &ClaimList, limit: u32, cx: Context) -> Value {
    json!({
        "limit": limit,
        "truncated": list.truncated,
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

/// One claim as labelled lines (values too long for a line continue on the next).
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
        ("delivery", shown(&r.key.delivery_id)),
        ("scope", r.key.scope.as_str().to_owned()),
        ("namespace", or_dash(&r.key.namespace)),
        ("orchestration", or_dash(&r.key.orchestration)),
        ("run", shown(&c.holder.to_string())),
        ("run uid", shown(&c.holder.uid)),
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

/// `''` key parts (outside the scope) shown as `-`.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        shown(s)
    }
}

/// A value from a claim, for a table: terminal controls escaped (`human::printable`).
fn shown(s: &str) -> String {
    human::printable(s).into_owned()
}

/// `label          value`, wrapping the value at word boundaries (or hard, for long names)
/// so that no line passes [`WIDTH`].
fn field(out: &mut String, label: &str, value: &str) {
    let room = WIDTH - LABEL_WIDTH;
    let mut first = true;
    for line in wrap(value, room) {
        let label = if first { label } else { "" };
        out.push_str(&format!("{label:<LABEL_WIDTH$}{line}\n"));
        first = false;
    }
}

fn wrap(text: &str, room: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        // A word longer than a line (a long name) is cut hard.
        while word.len() > room {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let rest = word.split_off(room);
            lines.push(word.into_iter().collect());
            word = rest;
        }
        let len = line.chars().count();
        if len > 0 && len + 1 + word.len() > room {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

pub fn get_table(delivery_id: &str, claims: &[ClaimRecord], cx: Context) -> String {
    let mut out = format!(
        "delivery {}: {}\n",
        shown(delivery_id),
        plural(claims.len(), "claim", "claims")
    );
    for r in claims {
        out.push('\n');
        out.push_str(&claim_block(r, cx));
    }
    out
}

/// Claims two lines each: the key and state on the first, the run (indented) on the second,
/// so that neither a 36-character delivery id nor a long run name has to be cut to fit.
pub fn list_table(list: &ClaimList, limit: u32) -> String {
    let mut table = Table::new(&["DELIVERY", "STATE", "AGE", "SCOPE"]);
    for r in &list.claims {
        table.row(vec![
            shown(&r.key.delivery_id),
            r.claim.state.as_str().to_owned(),
            human::span(r.age()),
            r.key.scope.as_str().to_owned(),
        ]);
    }
    let mut out = String::new();
    if !list.claims.is_empty() {
        out = with_run_lines(&table, &list.claims);
    }
    if list.truncated {
        out.push_str(&format!(
            "showing the newest {limit}: more claims match (raise --limit, or narrow the filters)\n"
        ));
    } else {
        out.push_str(&format!("{}\n", plural(list.claims.len(), "claim", "claims")));
    }
    out
}

/// Indent of the run line under each claim.
const RUN_INDENT: &str = "  ";

/// The table with each claim's run on an indented line of its own under its row.
fn with_run_lines(table: &Table, claims: &[ClaimRecord]) -> String {
    let rendered = table.render(WIDTH);
    let mut lines = rendered.lines();
    let mut out = String::new();
    if let Some(header) = lines.next() {
        out.push_str(&format!("{header}\n{RUN_INDENT}RUN\n"));
    }
    for (line, r) in lines.zip(claims) {
        let run = fit(
            &format!("{RUN_INDENT}{}", shown(&r.claim.holder.to_string())),
            WIDTH,
        );
        out.push_str(&format!("{line}\n{}\n", run.trim_end()));
    }
    out
}

/// Several matches of a release, one line each, so the operator can pick one.
pub fn matches_table(claims: &[ClaimRecord]) -> String {
    let mut table = Table::new(&["SCOPE", "NAMESPACE", "ORCHESTRATION", "STATE"]);
    for r in claims {
        table.row(vec![
            r.key.scope.as_str().to_owned(),
            or_dash(&r.key.namespace),
            or_dash(&r.key.orchestration),
            r.claim.state.as_str().to_owned(),
        ]);
    }
    with_run_lines(&table, claims)
}

pub fn stats_table(s: &ClaimStats, cx: Context) -> String {
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
        for line in table.render(WIDTH - 2).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let oldest = match &s.oldest {
        Some(r) => format!(
            "{} ({}), claimed {} ({})",
            shown(&r.key.delivery_id),
            r.key.scope.as_str(),
            human::time(r.claim.claimed_at),
            human::relative(r.age())
        ),
        None => "-".to_owned(),
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

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A plain-text table whose columns shrink (the widest first, cells cut with `…`) until it
/// fits the width.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Columns are separated by this many spaces.
const GAP: usize = 2;
/// No column shrinks below this (or its header, if shorter).
const MIN_COLUMN: usize = 8;

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

    fn render(&self, width: usize) -> String {
        let mut widths: Vec<usize> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain(std::iter::once(h.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
        while total(&widths) > width {
            let Some((i, _)) = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| **w > self.headers[*i].chars().count().max(MIN_COLUMN))
                .max_by_key(|(_, w)| **w)
            else {
                break;
            };
            widths[i] -= 1;
        }
        let mut out = String::new();
        for cells in std::iter::once(&self.headers).chain(&self.rows) {
            let line: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| fit(cells.get(i).map_or("", String::as_str), *w))
                .collect();
            out.push_str(line.join(&" ".repeat(GAP)).trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` padded or cut (with `…`) to exactly `width` characters.
fn fit(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len <= width {
        format!("{text:<width$}")
    } else {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_tables_shrink_to_the_width_and_mark_cuts() {
        let mut t = Table::new(&["DELIVERY", "STATE", "RUN"]);
        t.row(vec![
            "x".repeat(63),
            "confirmed".into(),
            format!("agents/{}", "r".repeat(60)),
        ]);
        let text = t.render(WIDTH);
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
        }
        assert!(text.contains('…'));
        assert!(
            text.contains("confirmed"),
            "narrow columns are left alone: {text}"
        );
    }

    #[test]
    fn narrow_tables_are_not_padded_at_the_end() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["1".into(), "2".into()]);
        assert_eq!(t.render(WIDTH), "A  B\n1  2\n");
    }

    #[test]
    fn long_values_wrap_within_the_width() {
        let mut long_name = String::new();
        field(&mut long_name, "orchestration", &"x".repeat(200));
        let mut words = String::new();
        field(&mut words, "state", &"word ".repeat(40));
        for line in long_name.lines().chain(words.lines()) {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
        }
        assert_eq!(long_name.matches('x').count(), 200, "nothing lost: {long_name}");
        assert_eq!(words.matches("word").count(), 40, "nothing lost: {words}");
    }
}
