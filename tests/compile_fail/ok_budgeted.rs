// The counterpart of the failing cases: with a budget they compile, and a row type without
// `GetSize` is fine under a row budget.
use diesel::prelude::*;
use diesel::SqliteConnection;
use diesel_budget::demo::{items, Item};
use diesel_budget::prelude::*;

#[derive(Queryable)]
#[allow(dead_code)]
struct Plain {
    id: i32,
    category: i32,
    name: String,
    payload: String,
    created_at: i64,
}

#[allow(dead_code)]
fn all_items(conn: &mut Conn<SqliteConnection>) -> diesel_budget::Result<Vec<Item>> {
    items::table.budget(Budget::rows(100)).load(conn)
}

#[allow(dead_code)]
fn first_item(conn: &mut Conn<SqliteConnection>) -> diesel_budget::Result<Item> {
    items::table
        .order(items::id)
        .budget(Budget::rows(1))
        .first(conn)
}

#[allow(dead_code)]
fn sized(conn: &mut Conn<SqliteConnection>) -> diesel_budget::Result<Vec<Item>> {
    items::table
        .budget(Budget::rows(100).bytes(1 << 20))
        .load(conn)
}

#[allow(dead_code)]
fn plain(conn: &mut Conn<SqliteConnection>) -> diesel_budget::Result<Vec<Plain>> {
    items::table.budget(Budget::rows(100)).load(conn)
}

fn main() {}
