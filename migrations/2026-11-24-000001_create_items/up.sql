-- The demo table used by the tour, the benchmarks, the doc examples and the tests.
-- Portable SQL: the same file runs on SQLite, PostgreSQL and MySQL/MariaDB (and
-- PostgreSQL-compatible distributed engines). Ids are assigned by the application.
-- `INTEGER PRIMARY KEY` makes the id SQLite's rowid, so walking the table in id order is a
-- plain table scan there (with BIGINT it would go through a separate index).
CREATE TABLE items (
    id INTEGER PRIMARY KEY NOT NULL,
    category INTEGER NOT NULL,
    name VARCHAR(64) NOT NULL,
    payload VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX items_category_id ON items (category, id);
CREATE INDEX items_created_at_id ON items (created_at, id);
