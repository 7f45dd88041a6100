//! Reading SQL as Diesel renders it, where a query's type cannot tell (a query's own `LIMIT` or
//! `OFFSET` before a keyset walk). Bound values are never inlined by Diesel, so user data cannot
//! fake what is read here.

/// Whether `sql`, as Diesel renders it, ends in a top-level `LIMIT` with a bound value.
///
/// Diesel renders a select's limit clause last (before any locking clause) as ` LIMIT ` and a
/// placeholder (`$n` or `?`); bind values are never inlined, so the user's data cannot fake it.
/// An offset without a limit renders as `LIMIT -1` (SQLite) or `LIMIT 18446744073709551615`
/// (MySQL), which does not count. A `LIMIT` inside a subquery is followed by a `)`.
pub(crate) fn has_top_level_limit(sql: &str) -> bool {
    has_top_level_bound_clause(sql, " LIMIT ")
}

/// Whether `sql` has a top-level `OFFSET` with a bound value (see [`has_top_level_limit`]).
pub(crate) fn has_top_level_offset(sql: &str) -> bool {
    has_top_level_bound_clause(sql, " OFFSET ")
}

/// The last `keyword` in `sql` is followed by a placeholder and is not inside parentheses.
fn has_top_level_bound_clause(sql: &str, keyword: &str) -> bool {
    let Some(at) = sql.rfind(keyword) else {
        return false;
    };
    let rest = &sql[at + keyword.len()..];
    (rest.starts_with('?') || rest.starts_with('$')) && !rest.contains(')')
}

#[cfg(test)]
mod tests {
    use super::{has_top_level_limit, has_top_level_offset};

    #[test]
    fn detects_only_a_top_level_bound_limit() {
        assert!(has_top_level_limit("SELECT a FROM t LIMIT ?"));
        assert!(has_top_level_limit("SELECT a FROM t LIMIT $1 OFFSET $2"));
        assert!(has_top_level_limit("SELECT a FROM t LIMIT $3 FOR UPDATE"));
        assert!(!has_top_level_limit("SELECT a FROM t"));
        assert!(!has_top_level_limit("SELECT a FROM t LIMIT -1 OFFSET ?"));
        assert!(!has_top_level_limit(
            "SELECT a FROM t LIMIT 18446744073709551615 OFFSET ?"
        ));
        assert!(!has_top_level_limit(
            "SELECT a FROM t WHERE a IN (SELECT b FROM u LIMIT ?)"
        ));
        assert!(has_top_level_offset("SELECT a FROM t LIMIT -1 OFFSET ?"));
        assert!(has_top_level_offset("SELECT a FROM t OFFSET $1"));
        assert!(!has_top_level_offset("SELECT a FROM t LIMIT ?"));
        assert!(!has_top_level_offset(
            "SELECT a FROM t WHERE EXISTS (SELECT b FROM u OFFSET ?)"
        ));
    }
}
