//! Every page of a listing through a real HTTP server and client (`examples/page_server`):
//! forward from the first page and backward from the last, each equal to the database's own
//! order; a modified token is a 400 with a message that does not echo it. SQLite only (the
//! server example is SQLite; the page logic is tested on all three backends in
//! `tests/backends/pages.rs`).
#![cfg(all(feature = "sqlite", feature = "page"))]

#[path = "../examples/page_server/app.rs"]
mod app;

use diesel::prelude::*;
use diesel_budget::demo::{self, items};
use diesel_budget::page::{PageKeys, Pager};
use diesel_budget::Db;

#[test]
fn every_page_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pages.db");
    let db = Db::<diesel::SqliteConnection>::builder(path.to_str().expect("utf-8"))
        .migrations(demo::MIGRATIONS)
        .build()
        .expect("db");
    demo::seed(&mut db.get().expect("conn"), 1, 238, |_| {}).expect("seed");
    let expected: Vec<i32> = items::table
        .select(items::id)
        .order((items::created_at.desc(), items::id.desc()))
        .load(db.get().expect("conn").unbudgeted())
        .expect("reference order");
    assert_eq!(expected.len(), 237);

    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
    let addr = server.server_addr().to_ip().expect("ip address");
    let pager = Pager::new(PageKeys::new(1, &[3u8; 32]).expect("key"));
    let serving = {
        let server = server.clone();
        std::thread::spawn(move || app::serve(&server, &db, &pager))
    };
    let get = |query: &str| -> (u16, serde_json::Value) {
        let url = format!("http://{addr}/items{query}");
        let mut response = ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .expect("request");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.body_mut().read_json().expect("json body");
        (status, body)
    };
    let ids = |page: &serde_json::Value| -> Vec<i32> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["id"].as_i64().expect("id") as i32)
            .collect()
    };

    // Forward.
    let mut seen = Vec::new();
    let (status, mut page) = get("");
    let mut pages = 1;
    loop {
        assert_eq!(status, 200);
        seen.extend(ids(&page));
        let Some(next) = page["next"].as_str().map(str::to_owned) else {
            break;
        };
        page = get(&format!("?page={next}")).1;
        pages += 1;
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, 237_usize.div_ceil(app::PAGE_SIZE as usize));

    // Backward.
    let mut seen: Vec<i32> = Vec::new();
    let (_, mut page) = get("?last=1");
    loop {
        let mut here = ids(&page);
        here.extend(seen);
        seen = here;
        let Some(prev) = page["prev"].as_str().map(str::to_owned) else {
            break;
        };
        page = get(&format!("?page={prev}")).1;
    }
    assert_eq!(seen, expected);

    // A token with one character changed: refused, the token not echoed.
    let (_, first) = get("");
    let next = first["next"].as_str().expect("next").to_owned();
    let mut bad: Vec<char> = next.chars().collect();
    bad[5] = if bad[5] == 'A' { 'B' } else { 'A' };
    let bad: String = bad.into_iter().collect();
    let (status, body) = get(&format!("?page={bad}"));
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().expect("error message");
    assert!(message.starts_with("invalid page token"), "{message}");
    assert!(!message.contains(&bad), "{message}");

    server.unblock();
    serving.join().expect("server thread");
}
