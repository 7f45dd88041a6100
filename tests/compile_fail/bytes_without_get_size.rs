// A byte budget meters rows through `GetSize`; this row type does not implement it.
use diesel::prelude::*;
use diesel::SqliteConnection;
use diesel_budget::demo::items;
use diesel_budget::prelude::*;

#[derive(Queryable)]
struct Plain {
    id: i32,
    category: i32,
    name: String,
    payload: String,
    created_at: i64,
}

fn load(conn: &mut Conn<SqliteConnection>) -> Vec<Plain> {
    items::table
        .budget(Budget::rows(100).bytes(1 << 20))
        .load::<Plain>(conn)
        .unwrap()
}

fn main() {}
