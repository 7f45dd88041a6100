//! The page server of `examples/page_server.rs`, shared with `tests/http_pages.rs`: one route,
//! `GET /items?page=<token>&last=1`, serving keyset pages of the demo items newest first as
//! JSON (`Page<Item>`); a bad token is `400` with the error's (safe to log) message.

use diesel::SqliteConnection;
use diesel_budget::demo::{items, Item};
use diesel_budget::page::{desc, PageRequest, Pager};
use diesel_budget::prelude::*;
use diesel_budget::Error;

/// Rows per page.
pub const PAGE_SIZE: u64 = 25;

/// The value of `name` in the query string of `url` (tokens are URL-safe base64: no decoding).
fn param<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Answers one request: status and JSON body.
pub fn handle(url: &str, db: &Db<SqliteConnection>, pager: &Pager) -> (u16, String) {
    if url.split('?').next() != Some("/items") {
        return (404, r#"{"error":"not found"}"#.to_owned());
    }
    let request = match (param(url, "page"), param(url, "last")) {
        (Some(token), _) => PageRequest::Token(token),
        (None, Some("1")) => PageRequest::Last,
        (None, _) => PageRequest::First,
    };
    let result = db.get().and_then(|mut conn| {
        items::table.budget(Budget::rows(PAGE_SIZE)).keyset_page(
            pager,
            (desc(items::created_at), desc(items::id)),
            |i: &Item| (i.created_at, i.id),
            request,
            &mut conn,
        )
    });
    let error = |status, e: &Error| {
        (
            status,
            serde_json::json!({ "error": e.to_string() }).to_string(),
        )
    };
    match result {
        Ok(page) => match serde_json::to_string(&page) {
            Ok(body) => (200, body),
            Err(e) => (
                500,
                serde_json::json!({ "error": e.to_string() }).to_string(),
            ),
        },
        Err(e @ (Error::InvalidPageToken { .. } | Error::PageSizeTooLarge { .. })) => {
            error(400, &e)
        }
        Err(e) => error(500, &e),
    }
}

/// Serves requests until the server is unblocked (or forever).
pub fn serve(server: &tiny_http::Server, db: &Db<SqliteConnection>, pager: &Pager) {
    for request in server.incoming_requests() {
        let (status, body) = handle(request.url(), db, pager);
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
            response = response.with_header(h);
        }
        // A client that went away is not the server's failure.
        let _ = request.respond(response);
    }
}
