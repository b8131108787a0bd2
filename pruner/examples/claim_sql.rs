//! Prints the webhook's claim statement (`dedupe_shared::sql::CLAIM_INSERT`) verbatim, so
//! the pruner benchmark (`tests/bench/pruner.sh`) drives pgbench with exactly the SQL the
//! webhook runs, not a copy that could drift.

fn main() {
    println!("{}", dedupe_shared::sql::CLAIM_INSERT);
}
