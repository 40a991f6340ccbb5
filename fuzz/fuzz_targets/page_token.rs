//! Page tokens (`page_token`, `page_cursor`, `page_cursor_within`): never panics on any input;
//! only tokens this server issued decode, they decode to the cursor they were made from, and
//! an error never echoes the token.
#![no_main]

use std::fmt::Display;
use std::str::FromStr;

use keyscope::domain::{AuditId, KeyId, Problem, ScopeId, Subject, limits};
use keyscope::grpc::convert::{page_cursor_within, page_token};
use libfuzzer_sys::fuzz_target;

/// `canonical`: the cursor's text form is unique, so the token must be the one we issue.
fn check<T>(raw: &str, max: usize, canonical: bool)
where
    T: FromStr<Err = Problem> + Display + PartialEq + std::fmt::Debug,
{
    match page_cursor_within::<T>("page_token", raw, max) {
        Ok(None) => assert!(raw.is_empty(), "only the empty token is the first page"),
        Ok(Some(cursor)) => {
            assert!(raw.len() <= max);
            let again = page_token(&cursor.to_string());
            assert!(again.len() <= max, "an issued token is always accepted back");
            assert_eq!(page_cursor_within::<T>("page_token", &again, max), Ok(Some(cursor)));
            if canonical {
                assert_eq!(again, raw, "one token per cursor");
            }
        }
        Err(e) => {
            assert!(!raw.is_empty());
            // One fixed message whatever was sent: the token is never echoed.
            let fixed = page_cursor_within::<T>("page_token", "!", max).expect_err("not base64").to_string();
            assert_eq!(e.to_string(), fixed);
        }
    }
    // The input as a cursor: what parses as a cursor survives a token round trip.
    if let Ok(cursor) = raw.parse::<T>() {
        let token = page_token(raw);
        if token.len() <= max {
            assert_eq!(page_cursor_within::<T>("page_token", &token, max), Ok(Some(cursor)));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    check::<KeyId>(&raw, limits::PAGE_TOKEN_MAX, true);
    check::<ScopeId>(&raw, limits::PAGE_TOKEN_MAX, true);
    check::<AuditId>(&raw, limits::PAGE_TOKEN_MAX, false);
    check::<Subject>(&raw, limits::PRINCIPAL_PAGE_TOKEN_MAX, true);
});
