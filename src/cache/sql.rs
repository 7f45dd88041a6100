//! Which tables a statement reads or writes, from its SQL text as Diesel renders it.
//!
//! The reader is deliberately conservative: whatever it cannot classify for certain counts as a
//! write to *every* table ([`Tables::All`]). A spurious invalidation costs a refill; a missed one
//! would serve stale rows.

use std::collections::BTreeSet;

/// Tables a statement writes (or a cached read depends on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tables {
    /// These tables (lower-case, unqualified names).
    Some(BTreeSet<String>),
    /// Every table: the statement could not be read with certainty.
    All,
}

/// What one statement does, as far as cached results are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// `BEGIN`, `START TRANSACTION`, `SAVEPOINT`: one level deeper.
    Begin,
    /// `RELEASE SAVEPOINT`, `ROLLBACK TO SAVEPOINT`: one level up, inside the transaction.
    Release,
    /// `COMMIT` / `END`: the transaction's writes become visible.
    Commit,
    /// `ROLLBACK`: the transaction's writes are undone.
    Rollback,
    /// Writes to these tables.
    Write(Tables),
    /// Schema change (DDL): writes every table and, on MySQL, commits implicitly.
    Ddl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier, upper-cased.
    Word(String),
    /// A quoted identifier (`"x"`, `` `x` ``, `[x]`), as written.
    Quoted(String),
    /// One punctuation character.
    Punct(char),
    /// A string or number literal, a placeholder.
    Literal,
}

/// Splits `sql` into tokens, statements separated by `Punct(';')`. `None` when a quote or
/// comment is not closed (then nothing can be said about what follows).
fn tokens(sql: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '#' => {
                // MySQL comment to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let mut j = i + 2;
                loop {
                    if j + 1 >= chars.len() {
                        return None;
                    }
                    if chars[j] == '*' && chars[j + 1] == '/' {
                        break;
                    }
                    j += 1;
                }
                i = j + 2;
            }
            '\'' => {
                // '' doubles a quote; a backslash escapes the next character (MySQL, E'..').
                let mut j = i + 1;
                loop {
                    match chars.get(j)? {
                        '\\' => j += 2,
                        '\'' if chars.get(j + 1) == Some(&'\'') => j += 2,
                        '\'' => break,
                        _ => j += 1,
                    }
                }
                out.push(Token::Literal);
                i = j + 1;
            }
            '$' if chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                let mut j = i + 1;
                while chars.get(j).is_some_and(|d| d.is_ascii_digit()) {
                    j += 1;
                }
                out.push(Token::Literal);
                i = j;
            }
            '$' => {
                // PostgreSQL dollar quoting: $tag$ ... $tag$.
                let mut j = i + 1;
                while chars
                    .get(j)
                    .is_some_and(|d| d.is_alphanumeric() || *d == '_')
                {
                    j += 1;
                }
                if chars.get(j) != Some(&'$') {
                    return None;
                }
                let tag: String = chars[i..=j].iter().collect();
                let rest: String = chars[j + 1..].iter().collect();
                let end = rest.find(&tag)?;
                out.push(Token::Literal);
                i = j + 1 + rest[..end].chars().count() + tag.chars().count();
            }
            '"' | '`' | '[' => {
                let close = match c {
                    '[' => ']',
                    other => other,
                };
                let mut j = i + 1;
                let mut name = String::new();
                loop {
                    let d = *chars.get(j)?;
                    if d == close {
                        if chars.get(j + 1) == Some(&close) && close != ']' {
                            name.push(d);
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    name.push(d);
                    j += 1;
                }
                out.push(Token::Quoted(name));
                i = j + 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i;
                while chars
                    .get(j)
                    .is_some_and(|d| d.is_alphanumeric() || *d == '_' || *d == '$')
                {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                out.push(Token::Word(word.to_uppercase()));
                i = j;
            }
            c if c.is_ascii_digit() => {
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_alphanumeric() || *d == '.')
                {
                    i += 1;
                }
                out.push(Token::Literal);
            }
            '?' => {
                out.push(Token::Literal);
                i += 1;
            }
            other => {
                out.push(Token::Punct(other));
                i += 1;
            }
        }
    }
    Some(out)
}

fn is_word(t: Option<&Token>, w: &str) -> bool {
    matches!(t, Some(Token::Word(x)) if x == w)
}

/// A possibly qualified name at `toks[*i..]` (`a`, `"s"."t"`); returns its last part,
/// lower-cased, and moves past it.
fn name(toks: &[Token], i: &mut usize) -> Option<String> {
    let mut last = None;
    loop {
        match toks.get(*i) {
            Some(Token::Word(w)) => last = Some(w.to_lowercase()),
            Some(Token::Quoted(q)) => last = Some(q.to_lowercase()),
            _ => return last,
        }
        *i += 1;
        if toks.get(*i) == Some(&Token::Punct('.')) {
            *i += 1;
        } else {
            return last;
        }
    }
}

/// What each statement in `sql` does (several for a `;`-separated batch).
pub(crate) fn effects(sql: &str) -> Vec<Effect> {
    let Some(toks) = tokens(sql) else {
        return vec![Effect::Write(Tables::All)];
    };
    toks.split(|t| *t == Token::Punct(';'))
        .filter(|s| !s.is_empty())
        .filter_map(statement)
        .collect()
}

/// The effect of one statement; `None` for reads and session statements.
fn statement(toks: &[Token]) -> Option<Effect> {
    let all = Some(Effect::Write(Tables::All));
    let first = match toks.first() {
        Some(Token::Word(w)) => w.as_str(),
        // `(SELECT ..) UNION ..`
        Some(Token::Punct('(')) => return read_only(toks),
        _ => return all,
    };
    let one = |i: usize| -> Option<Effect> {
        let mut i = i;
        match name(toks, &mut i) {
            // Another table follows (`UPDATE a, b`, `DELETE FROM a, b`, `.. JOIN ..`): all.
            Some(t) if !written_more(&toks[i..]) => {
                Some(Effect::Write(Tables::Some(BTreeSet::from([t]))))
            }
            _ => Some(Effect::Write(Tables::All)),
        }
    };
    match first {
        "SELECT" | "VALUES" | "TABLE" => read_only(toks),
        "SHOW" | "DESCRIBE" | "DESC" | "PRAGMA" | "SET" | "RESET" | "DISCARD" | "DEALLOCATE"
        | "LISTEN" | "UNLISTEN" | "NOTIFY" | "PREPARE" => None,
        "EXPLAIN" => {
            if toks
                .iter()
                .any(|t| matches!(t, Token::Word(w) if w == "ANALYZE"))
            {
                all
            } else {
                None
            }
        }
        "BEGIN" | "START" | "SAVEPOINT" => Some(Effect::Begin),
        "RELEASE" => Some(Effect::Release),
        "COMMIT" | "END" => Some(Effect::Commit),
        "ROLLBACK" => {
            if toks
                .iter()
                .any(|t| matches!(t, Token::Word(w) if w == "TO"))
            {
                Some(Effect::Release)
            } else {
                Some(Effect::Rollback)
            }
        }
        "INSERT" | "REPLACE" => {
            // INSERT [OR REPLACE|IGNORE|..] [LOW_PRIORITY|IGNORE|..] INTO t
            let into = toks.iter().position(|t| is_word(Some(t), "INTO"))?;
            one(into + 1).or(all)
        }
        "MERGE" => match toks.iter().position(|t| is_word(Some(t), "INTO")) {
            Some(into) => one(into + 1),
            None => all,
        },
        "UPDATE" => {
            let mut i = 1;
            while ["ONLY", "LOW_PRIORITY", "IGNORE", "OR"]
                .iter()
                .any(|w| is_word(toks.get(i), w))
                || (is_word(toks.get(i - 1), "OR") && matches!(toks.get(i), Some(Token::Word(_))))
            {
                i += 1;
            }
            one(i)
        }
        "DELETE" => {
            let mut i = 1;
            while ["LOW_PRIORITY", "QUICK", "IGNORE"]
                .iter()
                .any(|w| is_word(toks.get(i), w))
            {
                i += 1;
            }
            if !is_word(toks.get(i), "FROM") {
                // MySQL's multi-table `DELETE a, b FROM ..`.
                return all;
            }
            i += 1;
            if is_word(toks.get(i), "ONLY") {
                i += 1;
            }
            one(i)
        }
        "TRUNCATE" => {
            let mut i = 1;
            if is_word(toks.get(i), "TABLE") {
                i += 1;
            }
            if is_word(toks.get(i), "ONLY") {
                i += 1;
            }
            one(i)
        }
        "CREATE" | "ALTER" | "DROP" | "RENAME" => Some(Effect::Ddl),
        _ => all,
    }
}

/// Whether more written tables follow the first one of an UPDATE / DELETE / TRUNCATE.
fn written_more(rest: &[Token]) -> bool {
    match rest.first() {
        Some(Token::Punct(',')) => true,
        // An alias, then a comma or a JOIN.
        Some(Token::Word(w)) if w == "AS" || !KEYWORDS_AFTER_TABLE.contains(&w.as_str()) => {
            let after = if w == "AS" { rest.get(2) } else { rest.get(1) };
            matches!(after, Some(Token::Punct(',')))
                || rest.iter().any(|t| is_word(Some(t), "JOIN"))
        }
        _ => rest.iter().take(3).any(|t| is_word(Some(t), "JOIN")),
    }
}

const KEYWORDS_AFTER_TABLE: &[&str] = &[
    "SET",
    "WHERE",
    "USING",
    "RETURNING",
    "VALUES",
    "DEFAULT",
    "SELECT",
    "ON",
    "ORDER",
    "LIMIT",
    "RESTART",
    "CONTINUE",
    "CASCADE",
    "RESTRICT",
    "WITH",
    "OUTPUT",
    "PARTITION",
];

/// A statement that starts like a read: still a write when a data-modifying part hides in it.
fn read_only(toks: &[Token]) -> Option<Effect> {
    let writes = toks.iter().any(|t| {
        matches!(t, Token::Word(w) if matches!(
            w.as_str(),
            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "REPLACE" | "TRUNCATE"
        ))
    });
    if writes {
        // `SELECT .. FOR UPDATE` locks, it does not write.
        let for_update = toks.windows(2).any(|w| {
            is_word(Some(&w[0]), "FOR") && is_word(Some(&w[1]), "UPDATE")
                || is_word(Some(&w[0]), "KEY") && is_word(Some(&w[1]), "UPDATE")
        });
        let other = toks.iter().any(|t| {
            matches!(t, Token::Word(w) if matches!(
                w.as_str(),
                "INSERT" | "DELETE" | "MERGE" | "REPLACE" | "TRUNCATE"
            ))
        });
        if !for_update || other {
            return Some(Effect::Write(Tables::All));
        }
    }
    None
}

/// The tables a read depends on: every name after `FROM` or `JOIN` (and after the commas of a
/// `FROM a, b` list). [`Tables::All`] when there is none (the query depends on something we
/// cannot name, e.g. a function) or the text cannot be read.
pub(crate) fn read_tables(sql: &str) -> Tables {
    let Some(toks) = tokens(sql) else {
        return Tables::All;
    };
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < toks.len() {
        if is_word(toks.get(i), "FROM") || is_word(toks.get(i), "JOIN") {
            i += 1;
            loop {
                if toks.get(i) == Some(&Token::Punct('(')) {
                    break; // a subquery: its own FROM is found later
                }
                match name(&toks, &mut i) {
                    Some(t) => {
                        found.insert(t);
                    }
                    None => break,
                }
                // Optional alias.
                if is_word(toks.get(i), "AS") {
                    i += 1;
                    let _ = name(&toks, &mut i);
                } else if let Some(Token::Quoted(_)) = toks.get(i) {
                    i += 1;
                } else if let Some(Token::Word(w)) = toks.get(i) {
                    if !RESERVED.contains(&w.as_str()) {
                        i += 1;
                    }
                }
                if toks.get(i) == Some(&Token::Punct(',')) {
                    i += 1;
                } else {
                    break;
                }
            }
        } else {
            i += 1;
        }
    }
    if found.is_empty() {
        Tables::All
    } else {
        Tables::Some(found)
    }
}

const RESERVED: &[&str] = &[
    "WHERE",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "CROSS",
    "JOIN",
    "ON",
    "GROUP",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "HAVING",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "FOR",
    "NATURAL",
    "USING",
    "WINDOW",
    "FETCH",
    "LATERAL",
    "OUTER",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn w(tables: &[&str]) -> Effect {
        Effect::Write(Tables::Some(tables.iter().map(|t| t.to_string()).collect()))
    }
    const ALL: Effect = Effect::Write(Tables::All);

    #[test]
    fn diesel_writes_name_their_table() {
        for (sql, e) in [
            (
                r#"INSERT INTO "items" ("id", "name") VALUES ($1, $2)"#,
                w(&["items"]),
            ),
            ("INSERT INTO `items` (`id`) VALUES (?), (?)", w(&["items"])),
            (
                r#"INSERT OR IGNORE INTO "Items" ("id") VALUES (?)"#,
                w(&["items"]),
            ),
            ("REPLACE INTO `items` (`id`) VALUES (?)", w(&["items"])),
            (
                r#"UPDATE "items" SET "name" = $1 WHERE ("items"."id" = $2)"#,
                w(&["items"]),
            ),
            (
                "UPDATE `items` SET `name` = ? WHERE (`items`.`id` = ?)",
                w(&["items"]),
            ),
            (
                r#"DELETE FROM "public"."items" WHERE ("items"."id" = $1)"#,
                w(&["items"]),
            ),
            ("delete from items where id = 1", w(&["items"])),
            ("TRUNCATE TABLE items", w(&["items"])),
            (
                "MERGE INTO items AS t USING src ON t.id = src.id WHEN MATCHED THEN DELETE",
                w(&["items"]),
            ),
            (
                r#"INSERT INTO "items" ("id") VALUES ($1) ON CONFLICT ("id") DO UPDATE SET "name" = excluded."name""#,
                w(&["items"]),
            ),
        ] {
            assert_eq!(effects(sql), vec![e], "{sql}");
        }
    }

    #[test]
    fn unclear_writes_are_writes_to_everything() {
        for sql in [
            "UPDATE a, b SET a.x = b.x",
            "UPDATE a JOIN b ON a.id = b.id SET a.x = 1",
            "DELETE a FROM a JOIN b ON a.id = b.id",
            "TRUNCATE a, b",
            "WITH gone AS (DELETE FROM items RETURNING id) SELECT count(*) FROM gone",
            "COPY items FROM STDIN",
            "CALL refill()",
            "INSERT INTO 'unterminated",
            "EXPLAIN ANALYZE DELETE FROM items",
        ] {
            let e = effects(sql);
            assert!(e.contains(&ALL) || e.contains(&Effect::Ddl), "{sql}: {e:?}");
        }
        assert_eq!(effects("CREATE TABLE t (id INT)"), vec![Effect::Ddl]);
        assert_eq!(effects("SELECT 1; DELETE FROM items"), vec![w(&["items"])]);
    }

    #[test]
    fn reads_and_session_statements_write_nothing() {
        for sql in [
            r#"SELECT "items"."id" FROM "items" WHERE ("items"."name" = $1) LIMIT $2"#,
            "SELECT 1",
            "SELECT * FROM items WHERE name = 'DELETE FROM items; ' FOR UPDATE",
            "SELECT * FROM t -- DELETE FROM t\n",
            "SET search_path = x",
            "PRAGMA busy_timeout = 10000",
            "SHOW TABLES",
        ] {
            assert_eq!(effects(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn transaction_control() {
        assert_eq!(effects("BEGIN"), vec![Effect::Begin]);
        assert_eq!(effects("BEGIN IMMEDIATE"), vec![Effect::Begin]);
        assert_eq!(effects("SAVEPOINT diesel_savepoint_1"), vec![Effect::Begin]);
        assert_eq!(
            effects("RELEASE SAVEPOINT diesel_savepoint_1"),
            vec![Effect::Release]
        );
        assert_eq!(
            effects("ROLLBACK TO SAVEPOINT diesel_savepoint_1"),
            vec![Effect::Release]
        );
        assert_eq!(effects("COMMIT"), vec![Effect::Commit]);
        assert_eq!(effects("ROLLBACK"), vec![Effect::Rollback]);
        assert_eq!(
            effects("BEGIN; UPDATE t SET x = 'a;b'; COMMIT;"),
            vec![Effect::Begin, w(&["t"]), Effect::Commit]
        );
    }

    #[test]
    fn reads_depend_on_their_tables() {
        let t = |ts: &[&str]| Tables::Some(ts.iter().map(|t| t.to_string()).collect());
        assert_eq!(
            read_tables(r#"SELECT "items"."id" FROM "items" WHERE ("items"."id" = $1) LIMIT $2"#),
            t(&["items"])
        );
        assert_eq!(
            read_tables("SELECT * FROM `a` INNER JOIN `b` ON (`a`.`id` = `b`.`a_id`)"),
            t(&["a", "b"])
        );
        assert_eq!(
            read_tables("SELECT * FROM s.a x, b AS y WHERE x.id IN (SELECT id FROM c)"),
            t(&["a", "b", "c"])
        );
        assert_eq!(
            read_tables(
                "SELECT * FROM (SELECT * FROM items LIMIT 3) AS diesel_budget_capped LIMIT ?"
            ),
            t(&["items"])
        );
        assert_eq!(read_tables("SELECT 1"), Tables::All);
        assert_eq!(read_tables("SELECT now()"), Tables::All);
    }
}
