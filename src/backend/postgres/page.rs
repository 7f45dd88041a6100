//! PostgreSQL's half of pages: a row value `(a, b) > ($1, $2)` becomes an Index Cond on an index
//! over `(a, b)`; `NULLS FIRST | LAST` is native.

impl crate::page::sealed::Sealed for diesel::pg::Pg {}

impl crate::page::PageBackend for diesel::pg::Pg {
    const ROW_VALUES: bool = true;
    const NULLS_ORDER_SYNTAX: bool = true;
}
