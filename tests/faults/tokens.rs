// Included by tests/faults.rs into one module per backend: tampered page tokens.

/// Every single-bit flip of real page tokens (a first page's `next`, a middle page's `prev`
/// and `next`) is refused with `InvalidPageToken`, and no SQL is sent for it (the statements
/// recorded through the pool's instrumentation).
fn tampered_page_tokens(env: &Env<C>, _: &mut Rng) -> Row {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use diesel_budget::page::{asc, PageKeys, PageRequest, Pager};

    let mut row = Row::new::<C>("tampered page tokens (every bit flipped), no SQL sent");
    let pager = Pager::new(PageKeys::new(1, &[0x42; 32]).expect("key"));
    let key = (asc(items::category), asc(items::id));
    let key_of = |i: &Item| (i.category, i.id);
    let listing = || {
        items::table
            .filter(in_range(env.walk_from, WALK_ROWS))
            .budget(Budget::rows(20))
    };
    let mut conn = env.tdb.db.get().expect("checkout");
    let first = listing()
        .keyset_page(&pager, key, key_of, PageRequest::First, &mut conn)
        .expect("first page");
    let next = first.next.expect("a second page");
    let second = listing()
        .keyset_page(&pager, key, key_of, PageRequest::Token(&next), &mut conn)
        .expect("second page");
    let tokens = [next, second.prev.expect("prev"), second.next.expect("next")];
    for token in &tokens {
        let raw = URL_SAFE_NO_PAD.decode(token).expect("base64");
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let t = URL_SAFE_NO_PAD.encode(&flipped);
            row.run(|row| {
                let (r, ledger) = diesel_budget::testing::record(&mut conn, |c| {
                    listing().keyset_page(&pager, key, key_of, PageRequest::Token(&t), c)
                });
                match r {
                    Err(Error::InvalidPageToken { .. }) => row.typed += 1,
                    Err(e) => row.other(format!("bit {bit}: {e:?}")),
                    Ok(_) => row.other(format!("bit {bit}: a tampered token served a page")),
                }
                if !ledger.statements().is_empty() {
                    row.other(format!(
                        "bit {bit}: {} statements sent for a refused token",
                        ledger.statements().len()
                    ));
                }
            });
        }
    }
    row
}
