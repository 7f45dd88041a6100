// Hidden set-up for the doc examples (`# include!("../tests/doc_setup.rs");`), like diesel's
// doctest_setup.rs: the backend is chosen by feature, SQLite first, then PostgreSQL, then MySQL.
//
// - `DbConnection`: the connection type of that backend, for `Db<DbConnection>` in examples;
//   `DbBackend`, its Diesel backend.
// - `database_url()`: SQLite, a file in a fresh temporary directory; PostgreSQL / MySQL, the
//   database `<name>_doc` next to PG_DATABASE_URL / MYSQL_DATABASE_URL's (else DATABASE_URL's,
//   else diesel_budget_test's on the local server), created when missing.
// - `demo_db(rows)`: a migrated pool on `database_url()` and a connection, with exactly the demo
//   items 1..=rows in `items`.
//
// Isolation: each doctest is a process of its own. A SQLite doctest has its own file. On a
// server, the process first takes a lock on the server (PostgreSQL `pg_advisory_lock`, MySQL
// `GET_LOCK`) on a connection kept open until it exits, so doctests on one database run one at
// a time, each on the table state it sets. They never touch the database the integration
// tests use.
#[cfg(feature = "sqlite")]
#[allow(dead_code)]
type DbConnection = diesel::sqlite::SqliteConnection;
#[cfg(all(feature = "postgres", not(feature = "sqlite")))]
#[allow(dead_code)]
type DbConnection = diesel::pg::PgConnection;
#[cfg(all(feature = "mysql", not(feature = "sqlite"), not(feature = "postgres")))]
#[allow(dead_code)]
type DbConnection = diesel::mysql::MysqlConnection;

/// The Diesel backend of [`DbConnection`], for `into_boxed::<DbBackend>()` in examples.
#[allow(dead_code)]
type DbBackend = <DbConnection as diesel::Connection>::Backend;

#[cfg(feature = "sqlite")]
#[allow(dead_code)]
fn database_url() -> Result<String, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("diesel-budget-doc")
        .tempdir()?
        .keep();
    Ok(dir
        .join("doc.db")
        .to_str()
        .ok_or("non-utf-8 temp path")?
        .to_owned())
}

#[cfg(not(feature = "sqlite"))]
#[allow(dead_code)]
fn database_url() -> Result<String, Box<dyn std::error::Error>> {
    use diesel::connection::{Connection as _, SimpleConnection as _};
    use diesel_budget::{demo, BackendKind, BudgetConnection as _};
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(url) = URL.get() {
        return Ok(url.clone());
    }
    let (var, lock) = match <DbConnection as diesel_budget::BudgetConnection>::KIND {
        BackendKind::Postgres => ("PG_DATABASE_URL", "SELECT pg_advisory_lock(727274)"),
        _ => (
            "MYSQL_DATABASE_URL",
            "DO GET_LOCK('diesel_budget_doc', 600)",
        ),
    };
    let server = demo::url_from_env(var, DbConnection::KIND, "diesel_budget_test")?
        .ok_or("no server URL")?;
    let name = format!("{}_doc", demo::split_url(&server)?.1);
    let url = demo::sibling_url(&server, &name)?;
    demo::create_database::<DbConnection>(&url)?;
    // Held until the process exits: the server releases the lock with the session.
    let mut holder = DbConnection::establish(&url)?;
    holder.batch_execute(lock)?;
    std::mem::forget(holder);
    Ok(URL.get_or_init(|| url).clone())
}

#[allow(dead_code)]
fn demo_db(
    rows: i32,
) -> Result<
    (
        diesel_budget::Db<DbConnection>,
        diesel_budget::Conn<DbConnection>,
    ),
    Box<dyn std::error::Error>,
> {
    use diesel::RunQueryDsl as _;
    let db = diesel_budget::Db::builder(database_url()?)
        .migrations(diesel_budget::demo::MIGRATIONS)
        .max_size(2)
        .build()?;
    let mut conn = db.get()?;
    diesel::delete(diesel_budget::demo::items::table).execute(conn.unbudgeted())?;
    diesel_budget::demo::seed(&mut conn, 1, rows + 1, |_| {})?;
    Ok((db, conn))
}
