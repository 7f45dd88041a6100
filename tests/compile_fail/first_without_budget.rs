// Diesel's `first` needs a Diesel connection; a pooled `Conn` is not one.
use diesel::prelude::*;
use diesel::SqliteConnection;
use diesel_budget::demo::{items, Item};
use diesel_budget::Conn;

fn first_item(conn: &mut Conn<SqliteConnection>) -> Item {
    items::table.order(items::id).first(conn).unwrap()
}

fn main() {}
