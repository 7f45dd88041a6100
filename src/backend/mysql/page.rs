//! MySQL/MariaDB's half of pages: MariaDB does not turn a row-value comparison into an index
//! range, so keys use the conjunctive expansion `a >= ? AND (a > ? OR b > ?)`, which it does;
//! there is no `NULLS FIRST | LAST`, so the rule is emulated as `col IS NULL DESC, col ASC`.

impl crate::page::sealed::Sealed for diesel::mysql::Mysql {}

impl crate::page::PageBackend for diesel::mysql::Mysql {
    const ROW_VALUES: bool = false;
    const NULLS_ORDER_SYNTAX: bool = false;
}
