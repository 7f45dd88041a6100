//! SQLite's half of pages: row values `(a, b) > (?, ?)` are planned as index ranges (SQLite
//! 3.15+), and `NULLS FIRST | LAST` is accepted (3.30+; the bundled SQLite is newer).

impl crate::page::sealed::Sealed for diesel::sqlite::Sqlite {}

impl crate::page::PageBackend for diesel::sqlite::Sqlite {
    const ROW_VALUES: bool = true;
    const NULLS_ORDER_SYNTAX: bool = true;
}
