//! MySQL's and MariaDB's half of the plan checks: `EXPLAIN FORMAT=JSON`. A table read in full
//! (`"access_type": "ALL"`) that has `possible_keys` counts as served by an index when the
//! check asks whether one is usable: on a small table the optimizer scans anyway.

use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::{QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel::sql_types::Text;
use diesel::{QueryResult, RunQueryDsl};
use serde_json::Value;

use crate::backend::BackendKind;
use crate::error::Result;
use crate::testing::explain::{
    explain_text, Access, CappedCount, ExplainConnection, ExplainOptions, ExplainQuery, Plan,
    PlanNode, Sealed, SqlExplain,
};

impl Sealed for MysqlConnection {}

impl ExplainConnection for MysqlConnection {
    fn explain_plan<Q>(&mut self, query: &Q, index_usable: bool) -> QueryResult<Plan>
    where
        Q: QueryFragment<Mysql> + QueryId,
    {
        let json: String =
            ExplainQuery::<Q, Text>::new("EXPLAIN FORMAT=JSON ", query).get_result(self)?;
        let mut plan = parse(&json)?;
        if index_usable {
            served_by_possible_keys(&mut plan);
        }
        Ok(plan)
    }

    fn count_rows_capped(&mut self, table: &str, cap: u64) -> QueryResult<u64> {
        let rows: i64 = CappedCount::new(table, cap).get_result(self)?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }
}

/// Counts a table read in full that has `possible_keys` as served by the first of them.
fn served_by_possible_keys(plan: &mut Plan) {
    for node in &mut plan.nodes {
        if node.access == Access::FullScan && !node.possible_indexes.is_empty() {
            node.access = Access::Index;
            node.index = node.possible_indexes.first().cloned();
        }
    }
}

/// Reads `EXPLAIN FORMAT=JSON` (MySQL and MariaDB): every object with a `table_name` is a
/// table access, wherever it is nested (`nested_loop`, `ordering_operation`, subqueries).
pub(crate) fn parse(json: &str) -> QueryResult<Plan> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| DieselError::DeserializationError(Box::new(e)))?;
    let mut nodes = Vec::new();
    walk(&value, &mut nodes);
    let estimated_rows = nodes
        .iter()
        .map(|n: &PlanNode| n.estimated_rows)
        .try_fold(1u64, |acc, r| r.map(|r| acc.saturating_mul(r)))
        .filter(|_| !nodes.is_empty());
    Ok(Plan {
        backend: BackendKind::Mysql,
        nodes,
        estimated_rows,
        raw: json.to_owned(),
    })
}

fn walk(value: &Value, out: &mut Vec<PlanNode>) {
    match value {
        Value::Object(map) => {
            if let Some(table) = map.get("table_name").and_then(Value::as_str) {
                let access = match map.get("access_type").and_then(Value::as_str) {
                    Some("ALL") => Access::FullScan,
                    Some(_) if map.get("key").is_some() => Access::Index,
                    Some("index" | "range" | "ref" | "eq_ref" | "const" | "ref_or_null") => {
                        Access::Index
                    }
                    _ => Access::Other,
                };
                let possible_indexes = map
                    .get("possible_keys")
                    .and_then(Value::as_array)
                    .map(|keys| {
                        keys.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(PlanNode {
                    table: Some(table.to_owned()),
                    access,
                    index: map.get("key").and_then(Value::as_str).map(str::to_owned),
                    possible_indexes,
                    estimated_rows: map
                        .get("rows")
                        .or_else(|| map.get("rows_examined_per_scan"))
                        .and_then(Value::as_u64),
                });
            }
            for v in map.values() {
                walk(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
        _ => {}
    }
}

/// `diesel-budget explain` on mysql: connects to `url` and explains `sql` there.
pub(crate) fn explain_at(url: &str, sql: &str, options: ExplainOptions) -> Result<SqlExplain> {
    let mut conn = <MysqlConnection as diesel::Connection>::establish(url)?;
    explain_text(&mut conn, sql, options)
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::testing::explain::Access;

    #[test]
    fn all_is_a_full_scan_and_keys_are_indexes() {
        let json = r#"{"query_block": {"select_id": 1, "nested_loop": [
            {"table": {"table_name": "items", "access_type": "ALL", "rows": 500,
                       "filtered": 100, "attached_condition": "items.payload = 'x'"}},
            {"table": {"table_name": "tags", "access_type": "ref",
                       "possible_keys": ["tags_item"], "key": "tags_item", "rows": 2}},
            {"table": {"table_name": "small", "access_type": "ALL",
                       "possible_keys": ["small_a"], "rows": 3}}
        ]}}"#;
        let plan = parse(json).expect("parses");
        assert_eq!(plan.full_scans(), ["items", "small"]);
        assert_eq!(plan.indexes(), ["tags_item"]);
        assert_eq!(plan.nodes[2].possible_indexes, ["small_a"]);
        assert_eq!(plan.nodes[1].access, Access::Index);
        assert_eq!(plan.estimated_rows, Some(3000));

        // Asked whether an index is usable: `small` has one, `items` none.
        let mut usable = plan.clone();
        super::served_by_possible_keys(&mut usable);
        assert_eq!(usable.full_scans(), ["items"]);
        assert_eq!(usable.indexes(), ["tags_item", "small_a"]);
    }
}
