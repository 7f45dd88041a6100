//! SQLite's half of the plan checks: `EXPLAIN QUERY PLAN`, one line per step.

use diesel::query_builder::{QueryFragment, QueryId};
use diesel::sql_types::{Integer, Text};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{QueryResult, RunQueryDsl};

use crate::backend::BackendKind;
use crate::error::Result;
use crate::testing::explain::{
    explain_text, Access, CappedCount, ExplainConnection, ExplainOptions, ExplainQuery, Plan,
    PlanNode, Sealed, SqlExplain,
};

impl Sealed for SqliteConnection {}

impl ExplainConnection for SqliteConnection {
    /// SQLite plans without statistics (unless `ANALYZE` ran): an index that serves the query
    /// is used whatever the table's size, so `index_usable` changes nothing.
    fn explain_plan<Q>(&mut self, query: &Q, _index_usable: bool) -> QueryResult<Plan>
    where
        Q: QueryFragment<Sqlite> + QueryId,
    {
        let rows: Vec<(i32, i32, i32, String)> =
            ExplainQuery::<Q, (Integer, Integer, Integer, Text)>::new("EXPLAIN QUERY PLAN ", query)
                .load(self)?;
        Ok(parse(rows.into_iter().map(|(_, _, _, detail)| detail)))
    }

    fn count_rows_capped(&mut self, table: &str, cap: u64) -> QueryResult<u64> {
        let rows: i64 = CappedCount::new(table, cap).get_result(self)?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }
}

/// Reads `EXPLAIN QUERY PLAN`'s detail lines: `SCAN t` (`SCAN TABLE t` before 3.36) without an
/// index is a full scan, as is a `SEARCH` through an automatic index (built by reading the
/// whole table); `SEARCH t USING [COVERING] INDEX i (..)`, `.. USING INTEGER PRIMARY KEY ..`
/// and `SCAN t USING [COVERING] INDEX i` use an index.
pub(crate) fn parse(lines: impl IntoIterator<Item = String>) -> Plan {
    let mut raw = String::new();
    let mut nodes = Vec::new();
    for line in lines {
        raw.push_str(&line);
        raw.push('\n');
        let (scan, rest) = if let Some(r) = line.strip_prefix("SCAN ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("SEARCH ") {
            (false, r)
        } else {
            continue;
        };
        let rest = rest.strip_prefix("TABLE ").unwrap_or(rest);
        if rest.starts_with("CONSTANT ROW") {
            continue;
        }
        let mut words = rest.split_whitespace();
        let table = words.next().map(str::to_owned);
        let using = rest.find(" USING ").map(|at| &rest[at + 7..]);
        let (access, index) = match using {
            Some(u) if u.starts_with("AUTOMATIC") => (Access::FullScan, None),
            Some(u) => {
                let index = if let Some(at) = u.find("INDEX ") {
                    u[at + 6..].split_whitespace().next().map(str::to_owned)
                } else if u.contains("PRIMARY KEY") {
                    Some("PRIMARY KEY".to_owned())
                } else {
                    None
                };
                (Access::Index, index)
            }
            None if scan => (Access::FullScan, None),
            None => (Access::Other, None),
        };
        nodes.push(PlanNode {
            table,
            access,
            index,
            possible_indexes: Vec::new(),
            estimated_rows: None,
        });
    }
    Plan {
        backend: BackendKind::Sqlite,
        nodes,
        estimated_rows: None,
        raw,
    }
}

/// `diesel-budget explain` on sqlite: connects to `url` and explains `sql` there.
pub(crate) fn explain_at(url: &str, sql: &str, options: ExplainOptions) -> Result<SqlExplain> {
    let mut conn = <SqliteConnection as diesel::Connection>::establish(url)?;
    explain_text(&mut conn, sql, options)
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::testing::explain::Access;

    #[test]
    fn scans_and_searches() {
        let plan = parse(
            [
                "SCAN items",
                "SEARCH tags USING INDEX tags_item (item_id=?)",
                "SEARCH owners USING INTEGER PRIMARY KEY (rowid=?)",
                "SEARCH t2 USING AUTOMATIC COVERING INDEX (a=?)",
                "SCAN TABLE old USING COVERING INDEX old_a",
                "USE TEMP B-TREE FOR ORDER BY",
                "SCAN CONSTANT ROW",
            ]
            .map(String::from),
        );
        assert_eq!(plan.full_scans(), ["items", "t2"]);
        assert_eq!(plan.indexes(), ["tags_item", "PRIMARY KEY", "old_a"]);
        assert_eq!(plan.nodes.len(), 5);
        assert_eq!(plan.nodes[4].access, Access::Index);
        assert_eq!(
            plan.shape(),
            "full scan items; index tags_item on tags; index PRIMARY KEY on owners; \
             full scan t2; index old_a on old"
        );
    }
}
