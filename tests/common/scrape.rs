//! Reads keyscope's HTTP port in tests: a plain HTTP/1.1 GET over a socket, and the value of
//! one sample in OpenMetrics text.
#![allow(dead_code, missing_docs, clippy::panic)]

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// `GET path` on `addr`: the status code and the body.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap_or_else(|e| panic!("read {path}: {e}"));
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer within 10 s"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {response}"));
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {head}"));
    (status, body.to_owned())
}

/// The `/metrics` text of the server at `addr`.
pub async fn metrics(addr: &str) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The value of the sample `name` whose labels include every one of `labels`; `None` when
/// there is none. Panics when several match (the label set given is ambiguous).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or((line, ""));
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels.iter().all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\""))) {
            assert!(found.is_none(), "several samples of {name} match {labels:?}:\n{text}");
            found = Some(value.parse::<f64>().unwrap_or_else(|_| panic!("not a number in: {line}")));
        }
    }
    found
}

/// [`sample`], 0 when absent (a counter never incremented is not shown).
pub fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}
