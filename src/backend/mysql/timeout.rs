//! MySQL's and MariaDB's half of time budgets.
//!
//! - MariaDB: `SET STATEMENT max_statement_time=<seconds> FOR ` before the statement, so the
//!   limit costs no round trip and ends with the statement. (A `?max_statement_time=` in the URL
//!   is silently ignored by the client library; a session `SET` would stay on the pooled
//!   connection.)
//! - MySQL (Oracle's server), which has no `SET STATEMENT`: the optimizer hint
//!   `/*+ MAX_EXECUTION_TIME(<ms>) */` right after the statement's `SELECT`. MySQL applies it to
//!   read-only `SELECT`s, which is what budgets run. **Untested against a MySQL server** (this
//!   project's machines run MariaDB only): its rendering is unit-tested.
//!
//! Which of the two a connection talks to is read once from `SELECT VERSION()` (MariaDB's
//! version string names it) and kept in the connection's [`BudgetInstrumentation`]; a plain
//! connection without it asks again for each timed statement.

use std::time::Duration;

use diesel::mysql::MysqlConnection;
use diesel::result::Error as D;
use diesel::{Connection as _, RunQueryDsl as _};

use crate::error::{Error, Result};
use crate::instrument::{BudgetInstrumentation, InternalScope};
use crate::timeout::{millis, sealed, TimeLimit, TimeSql};

impl sealed::Sealed for MysqlConnection {}

/// The server flavours, as noted in the instrumentation.
const MARIADB: &str = "mariadb";
const MYSQL: &str = "mysql";

/// MariaDB names itself in its version string (`10.11.19-MariaDB-0+deb12u1`); MySQL's is a bare
/// version (`8.0.36`).
fn flavour_of(version: &str) -> &'static str {
    if version.to_ascii_lowercase().contains("mariadb") {
        MARIADB
    } else {
        MYSQL
    }
}

/// What a time limit of `limit` adds on a server of `flavour`. Numbers of ours, never user
/// input: neither `SET STATEMENT` nor a hint takes a bound parameter.
fn time_sql_for(flavour: &str, limit: Duration) -> TimeSql {
    let ms = millis(limit);
    if flavour == MARIADB {
        TimeSql {
            prefix: Some(format!(
                "SET STATEMENT max_statement_time={}.{:03} FOR ",
                ms / 1000,
                ms % 1000
            )),
            hint: None,
        }
    } else {
        TimeSql {
            prefix: None,
            hint: Some(format!("/*+ MAX_EXECUTION_TIME({ms}) */ ")),
        }
    }
}

/// This connection's server flavour: noted in our instrumentation, or asked.
fn flavour(conn: &mut MysqlConnection) -> Result<&'static str> {
    if let Some(note) = conn
        .instrumentation()
        .downcast_ref::<BudgetInstrumentation>()
        .and_then(|ours| ours.server_note)
    {
        return Ok(note);
    }
    const SQL: &str = "SELECT VERSION()";
    let version: String = {
        let _internal = InternalScope::enter();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("VERSION()"))
            .get_result(conn)
            .map_err(|e| Error::query(SQL, e))?
    };
    let flavour = flavour_of(&version);
    if let Some(ours) = conn
        .instrumentation()
        .downcast_mut::<BudgetInstrumentation>()
    {
        ours.server_note = Some(flavour);
    }
    Ok(flavour)
}

impl TimeLimit for MysqlConnection {
    const CLIENT_DEADLINE: bool = false;

    fn time_sql(&mut self, limit: Duration) -> Result<TimeSql> {
        Ok(time_sql_for(flavour(self)?, limit))
    }

    fn within_time_limit<R>(
        &mut self,
        _: Duration,
        run: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        run(self)
    }

    fn set_session_time_limit(&mut self, limit: Option<Duration>) -> diesel::QueryResult<()> {
        use diesel::connection::SimpleConnection as _;
        let flavour = flavour(self).map_err(|e| match e {
            Error::Query { source, .. } => source,
            other => D::QueryBuilderError(other.to_string().into()),
        })?;
        if flavour != MARIADB {
            // MySQL proper: its hint stays per statement (untested against a MySQL server).
            return Ok(());
        }
        // A number of ours, never user input; 0 is "no limit".
        let ms = limit.map_or(0, millis);
        self.batch_execute(&format!(
            "SET SESSION max_statement_time = {}.{:03}",
            ms / 1000,
            ms % 1000
        ))?;
        crate::timeout::note_session_time(self, limit);
        Ok(())
    }

    fn is_time_out(e: &D) -> bool {
        match e {
            D::DatabaseError(_, info) => {
                let m = info.message();
                // MariaDB 1969; MySQL 3024 (`MAX_EXECUTION_TIME`).
                m.contains("max_statement_time exceeded")
                    || m.contains("maximum statement execution time exceeded")
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{BudgetShape, OwnLimit};
    use diesel::mysql::Mysql;
    use diesel::prelude::*;
    use diesel::query_builder::{QueryBuilder as _, QueryFragment};

    diesel::table! {
        t (id) {
            id -> Integer,
            name -> Text,
        }
    }

    fn sql<Q: QueryFragment<Mysql>>(q: &Q) -> String {
        let mut out = <Mysql as diesel::backend::Backend>::QueryBuilder::default();
        q.to_sql(&mut out, &Mysql).expect("renders");
        out.finish()
    }

    fn hint() -> Option<String> {
        time_sql_for(MYSQL, Duration::from_millis(1500)).hint
    }

    #[test]
    fn flavour_from_the_version_string() {
        assert_eq!(flavour_of("10.11.19-MariaDB-0+deb12u1"), MARIADB);
        assert_eq!(flavour_of("11.4.2-MariaDB"), MARIADB);
        assert_eq!(flavour_of("8.0.36"), MYSQL);
        assert_eq!(flavour_of("8.4.0-commercial"), MYSQL);
    }

    #[test]
    fn mariadb_prefix_in_seconds() {
        assert_eq!(
            time_sql_for(MARIADB, Duration::from_millis(1500)),
            TimeSql {
                prefix: Some("SET STATEMENT max_statement_time=1.500 FOR ".into()),
                hint: None
            }
        );
        assert_eq!(
            time_sql_for(MARIADB, Duration::from_micros(1))
                .prefix
                .as_deref(),
            Some("SET STATEMENT max_statement_time=0.001 FOR ")
        );
    }

    #[test]
    fn mysql_hint_right_after_select_in_every_shape() {
        assert_eq!(hint().as_deref(), Some("/*+ MAX_EXECUTION_TIME(1500) */ "));
        assert_eq!(
            time_sql_for(MYSQL, Duration::from_micros(1))
                .hint
                .as_deref(),
            Some("/*+ MAX_EXECUTION_TIME(1) */ ")
        );
        // No LIMIT of its own.
        let q = t::table.filter(t::id.gt(3)).order(t::id).distinct();
        let own = BudgetShape::<Mysql>::own_limit(&q).expect("own limit");
        assert_eq!(
            sql(&BudgetShape::<Mysql>::limited(q, 11, own, hint())),
            "SELECT /*+ MAX_EXECUTION_TIME(1500) */ DISTINCT `t`.`id`, `t`.`name` FROM `t` \
             WHERE (`t`.`id` > ?) ORDER BY `t`.`id` LIMIT ?"
        );
        // Without a hint: Diesel's own statement.
        assert_eq!(
            sql(&BudgetShape::<Mysql>::limited(
                t::table.select(t::id),
                11,
                own,
                None
            )),
            "SELECT `t`.`id` FROM `t` LIMIT ?"
        );
        // A LIMIT and OFFSET of its own.
        let q = t::table.select(t::name).limit(5).offset(2);
        let own = BudgetShape::<Mysql>::own_limit(&q).expect("own limit");
        assert_eq!(own, OwnLimit::Known(5));
        assert_eq!(
            sql(&BudgetShape::<Mysql>::limited(q, 11, own, hint())),
            "SELECT /*+ MAX_EXECUTION_TIME(1500) */ `t`.`name` FROM `t` LIMIT ? OFFSET ?"
        );
        // Boxed.
        let q = t::table.filter(t::id.eq(1)).into_boxed::<Mysql>();
        let own = BudgetShape::<Mysql>::own_limit(&q).expect("own limit");
        assert_eq!(
            sql(&BudgetShape::<Mysql>::limited(q, 2, own, hint())),
            "SELECT /*+ MAX_EXECUTION_TIME(1500) */ `t`.`id`, `t`.`name` FROM `t` \
             WHERE (`t`.`id` = ?) LIMIT ?"
        );
    }
}
