// The same page as `nullable_key_without_rule.rs`, with the rule: it compiles.
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
            (asc(scores::score).nulls_last(), asc(scores::id)),
            |r: &(i32, Option<i32>)| (r.1, r.0),
            PageRequest::First,
            conn,
        );
}

fn main() {
    let _ = (page, PageKeys::new(1, &[0u8; 32]));
}
