// Hidden set-up for the doc examples (`# include!("../tests/doc_setup.rs");`): an SQLite
// database in a fresh temporary directory, migrated, with `rows` demo items (ids 1..=rows).
#[allow(dead_code)]
fn demo_db(
    rows: i32,
) -> Result<
    (
        diesel_budget::Db<diesel::sqlite::SqliteConnection>,
        diesel_budget::Conn<diesel::sqlite::SqliteConnection>,
    ),
    Box<dyn std::error::Error>,
> {
    let dir = tempfile::Builder::new()
        .prefix("diesel-budget-doc")
        .tempdir()?
        .keep();
    let path = dir.join("doc.db");
    let db = diesel_budget::Db::builder(path.to_str().ok_or("non-utf-8 temp path")?)
        .migrations(diesel_budget::demo::MIGRATIONS)
        .max_size(2)
        .build()?;
    let mut conn = db.get()?;
    diesel_budget::demo::seed(&mut conn, 1, rows + 1, |_| {})?;
    Ok((db, conn))
}
