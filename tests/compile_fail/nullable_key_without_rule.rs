// A nullable column in a page key needs a NULLS FIRST / LAST rule: `asc(score)` alone is not a
// `KeyPart`, so the page does not compile (`ok_nullable_key.rs` is the same with the rule).
use diesel::prelude::*;
use diesel::SqliteConnection;
use diesel_budget::page::{asc, PageKeys, PageRequest, Pager};
use diesel_budget::prelude::*;

diesel::table! {
    scores (id) {
        id -> Integer,
        score -> Nullable<Integer>,
    }
}

fn page(conn: &mut Conn<SqliteConnection>, pager: &Pager) {
    let _ = scores::table
        .select((scores::id, scores::score))
        .budget(Budget::rows(10))
        .keyset_page(
            pager,
            (asc(scores::score), asc(scores::id)),
            |r: &(i32, Option<i32>)| (r.1, r.0),
            PageRequest::First,
            conn,
        );
}

fn main() {
    let _ = (page, PageKeys::new(1, &[0u8; 32]));
}
