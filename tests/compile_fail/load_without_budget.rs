// Diesel's `load` needs a Diesel connection; a pooled `Conn` is not one.
use diesel::prelude::*;
use diesel::SqliteConnection;
use diesel_budget::demo::{items, Item};
use diesel_budget::Conn;

fn all_items(conn: &mut Conn<SqliteConnection>) -> Vec<Item> {
    items::table.load(conn).unwrap()
}

fn main() {}
