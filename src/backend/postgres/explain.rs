//! PostgreSQL's half of the plan checks: `EXPLAIN (FORMAT JSON)`; whether an index is usable
//! is asked with `SET LOCAL enable_seqscan = off` in a transaction that is rolled back.

use diesel::connection::Connection;
use diesel::pg::{Pg, PgConnection};
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

impl Sealed for PgConnection {}

impl ExplainConnection for PgConnection {
    fn explain_plan<Q>(&mut self, query: &Q, index_usable: bool) -> QueryResult<Plan>
    where
        Q: QueryFragment<Pg> + QueryId,
    {
        let explain = |conn: &mut PgConnection| -> QueryResult<Plan> {
            let json: String =
                ExplainQuery::<Q, Text>::new("EXPLAIN (FORMAT JSON) ", query).get_result(conn)?;
            parse(&json)
        };
        if !index_usable {
            return explain(self);
        }
        // In a transaction (a savepoint inside one) rolled back at once: the setting and
        // anything else end with it.
        let mut plan = None;
        let outcome = self.transaction::<(), DieselError, _>(|conn| {
            diesel::sql_query("SET LOCAL enable_seqscan = off").execute(conn)?;
            plan = Some(explain(conn)?);
            Err(DieselError::RollbackTransaction)
        });
        match (plan, outcome) {
            (Some(plan), Err(DieselError::RollbackTransaction)) => Ok(plan),
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Err(DieselError::NotFound),
            (Some(plan), Ok(())) => Ok(plan),
        }
    }

    fn count_rows_capped(&mut self, table: &str, cap: u64) -> QueryResult<u64> {
        let rows: i64 = CappedCount::new(table, cap).get_result(self)?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }
}

/// Reads `EXPLAIN (FORMAT JSON)`: `[{"Plan": {..}}]`, nodes nested under `Plans`.
pub(crate) fn parse(json: &str) -> QueryResult<Plan> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| DieselError::DeserializationError(Box::new(e)))?;
    let top = value
        .get(0)
        .and_then(|v| v.get("Plan"))
        .ok_or_else(|| DieselError::DeserializationError("no Plan in EXPLAIN output".into()))?;
    let mut nodes = Vec::new();
    walk(top, None, &mut nodes);
    Ok(Plan {
        backend: BackendKind::Postgres,
        nodes,
        estimated_rows: top.get("Plan Rows").and_then(as_rows),
        raw: json.to_owned(),
    })
}

fn as_rows(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f.max(0.0).round() as u64))
}

fn walk(node: &Value, parent_table: Option<&str>, out: &mut Vec<PlanNode>) {
    let kind = node.get("Node Type").and_then(Value::as_str).unwrap_or("");
    let table = node
        .get("Relation Name")
        .and_then(Value::as_str)
        .or(parent_table);
    let index = node
        .get("Index Name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let access = match kind {
        "Seq Scan" => Access::FullScan,
        "Index Scan" | "Index Only Scan" | "Bitmap Index Scan" => Access::Index,
        _ => Access::Other,
    };
    if access != Access::Other || node.get("Relation Name").is_some() {
        out.push(PlanNode {
            table: table.map(str::to_owned),
            access,
            index,
            possible_indexes: Vec::new(),
            estimated_rows: node.get("Plan Rows").and_then(as_rows),
        });
    }
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        for child in children {
            walk(child, table, out);
        }
    }
}

/// `diesel-budget explain` on postgres: connects to `url` and explains `sql` there.
pub(crate) fn explain_at(url: &str, sql: &str, options: ExplainOptions) -> Result<SqlExplain> {
    let mut conn = <PgConnection as diesel::Connection>::establish(url)?;
    explain_text(&mut conn, sql, options)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn seq_scans_and_index_scans() {
        let json = r#"[{"Plan": {"Node Type": "Limit", "Plan Rows": 11, "Plans": [
            {"Node Type": "Nested Loop", "Plan Rows": 11, "Plans": [
              {"Node Type": "Seq Scan", "Relation Name": "items", "Plan Rows": 500},
              {"Node Type": "Bitmap Heap Scan", "Relation Name": "tags", "Plan Rows": 2,
               "Plans": [{"Node Type": "Bitmap Index Scan", "Index Name": "tags_item",
                          "Plan Rows": 2}]},
              {"Node Type": "Index Only Scan", "Relation Name": "owners",
               "Index Name": "owners_pkey", "Plan Rows": 1}
            ]}]}}]"#;
        let plan = parse(json).expect("parses");
        assert_eq!(plan.full_scans(), ["items"]);
        assert_eq!(plan.indexes(), ["tags_item", "owners_pkey"]);
        assert_eq!(plan.estimated_rows, Some(11));
        assert_eq!(
            plan.shape(),
            "full scan items; index tags_item on tags; index owners_pkey on owners"
        );
        assert!(parse("[]").is_err());
    }
}
