//! Keyset pages over HTTP: `cargo run --example page_server`, then
//! `curl 'http://127.0.0.1:8080/items'` and follow `next` with `curl '..../items?page=<next>'`
//! (`?last=1` for the last page). Embedded SQLite in a temporary directory, 1,000 demo items.

#[path = "page_server/app.rs"]
mod app;

use diesel_budget::demo;
use diesel_budget::page::{PageKeys, Pager};
use diesel_budget::Db;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pages.db");
    let db = Db::<diesel::SqliteConnection>::builder(path.to_str().ok_or("non-UTF-8 temp path")?)
        .migrations(demo::MIGRATIONS)
        .build()?;
    demo::seed(&mut db.get()?, 1, 1_001, |_| {})?;
    // In a real service the secret comes from a secret store.
    let pager = Pager::new(PageKeys::new(1, b"example secret, 32 bytes or more")?);
    let server = tiny_http::Server::http("127.0.0.1:8080")?;
    println!(
        "serving http://127.0.0.1:8080/items ({} items per page)",
        app::PAGE_SIZE
    );
    app::serve(&server, &db, &pager);
    Ok(())
}
