// A query with an OFFSET and no LIMIT. Included for SQLite and PostgreSQL only: Diesel does not
// let a (non-boxed) MySQL query have an OFFSET without a LIMIT, and boxed queries cannot be
// walked in batches (they are not `Clone`), so on MySQL this query cannot be written.

/// An OFFSET would apply to every keyset batch (skipping rows each time) or once to a stream:
/// either way the walk would not deliver the rows the query has. It must be refused like LIMIT.
#[test]
fn batches_reject_a_query_with_an_offset() {
    let mut ctx = C::seeded(25, 30);
    let base = ctx.base;
    for mode in MODES {
        let mut batches = items::table
            .filter(in_range(base, 30))
            .offset(2)
            .budget(Budget::rows(10))
            .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
            .mode(mode);
        let first = batches.next();
        let got: Vec<i32> = first
            .iter()
            .chain(batches.by_ref().collect::<Vec<_>>().iter())
            .filter_map(|b| b.as_ref().ok())
            .flat_map(|b| ids(b))
            .collect();
        assert!(
            matches!(first, Some(Err(Error::InvalidArgument { .. }))),
            "{mode:?}: an OFFSET query was walked, delivering {} of 30 rows: {got:?}",
            got.len()
        );
    }
}
