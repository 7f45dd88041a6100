//! SQLite: this backend's half of every capability (session set-up, streaming, bind limits, and
//! each capability's per-backend path), the way sea-query's `backend/<db>/` mirrors its
//! `query/`. Capabilities declare a sealed trait in their own folder and implement it here.

mod bulk;
