//! What must not compile (trybuild): Diesel's own `load`/`first` on a pooled [`Conn`], which is
//! not a Diesel connection; reaching the Diesel connection behind any `Executor` from outside
//! the crate (the sealed accessor needs a token only the crate can build); a byte budget
//! on a row type that cannot say its size; and a page key with a nullable column but no NULLS
//! FIRST / LAST rule. The
//! `ok_*.rs` cases are the same code with the budget (or a row budget only): they compile, so
//! the failures are about the budget and nothing else.
//!
//! The first two also pin the wording: rustc's error names `.budget(..)` (our
//! `#[diagnostic::on_unimplemented]` on the never-satisfied bound of `Conn`'s Diesel impls),
//! not Diesel's "`LoadConnection` is not implemented".
//!
//! Expected compiler output is in `compile_fail/*.stderr`; after a deliberate change, run
//! `TRYBUILD=overwrite cargo test --test compile_fail` and review the diff.
//!
//! Runs with the default features only (`cargo test --test compile_fail`): rustc's messages
//! list the connection types that *do* implement Diesel's traits, and that list grows with the
//! `postgres` and `mysql` features, so one set of `.stderr` files cannot match every feature
//! set (and switching features makes trybuild rebuild Diesel). Under `--all-features` this
//! binary has no tests; CI runs it separately with the default features.
//!
//! [`Conn`]: diesel_budget::Conn
#![cfg(all(feature = "sqlite", not(feature = "postgres"), not(feature = "mysql")))]

#[test]
fn queries_without_a_budget_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.pass("tests/compile_fail/ok_budgeted.rs");
    t.compile_fail("tests/compile_fail/load_without_budget.rs");
    t.compile_fail("tests/compile_fail/first_without_budget.rs");
    t.compile_fail("tests/compile_fail/bytes_without_get_size.rs");
    t.compile_fail("tests/compile_fail/raw_connection.rs");
    t.pass("tests/compile_fail/ok_nullable_key.rs");
    t.compile_fail("tests/compile_fail/nullable_key_without_rule.rs");
}
