//! Input that may be a secret is never echoed whole: a token pasted as a metadata key, a
//! subject or an owner shows at most its prefix and key id in an error or a check message.

#![allow(clippy::panic)] // tests fail by panicking

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use common::TestServer;
use keyscope::{domain::TokenFormat, grpc::pb};
use tonic::Code;

/// A fresh well-formed token and the parts that must never be shown: its last part (secret
/// and checksum).
fn pasted() -> (String, String) {
    let tokens = TokenFormat::new("ks").expect("prefix");
    let (_, text) = tokens.issue(&tokens.new_key_id().expect("random")).expect("random");
    let text = text.expose().to_owned();
    let tail = text.rsplit_once('_').expect("token parts").1.to_owned();
    (text, tail)
}

/// `message` names the pasted token by its key id and never shows its secret.
fn shows_only_the_key_id(message: &str, token: &str, tail: &str) {
    let shown = token.strip_suffix(tail).expect("token ends with its tail");
    assert!(!message.contains(tail) && !message.contains(&tail[..22]), "the secret was echoed: {message}");
    assert!(message.contains(shown), "the key id part is not shown: {message}");
}

async fn pasted_tokens_are_never_echoed(server: &TestServer) {
    let (token, tail) = pasted();
    let principals = || server.principals();

    // As a subject: not found, registered, at a stale version, deleted.
    let get = pb::GetPrincipalRequest { tenant: "acme".into(), subject: token.clone() };
    let status = principals().get_principal(get).await.expect_err("not registered");
    assert_eq!(status.code(), Code::NotFound);
    shows_only_the_key_id(status.message(), &token, &tail);
    let delete = pb::DeletePrincipalRequest { tenant: "acme".into(), subject: token.clone(), version: 0 };
    let status = principals().delete_principal(delete).await.expect_err("not registered");
    assert_eq!(status.code(), Code::NotFound);
    shows_only_the_key_id(status.message(), &token, &tail);
    let upsert = |version| pb::UpsertPrincipalRequest {
        tenant: "acme".into(),
        subject: token.clone(),
        version,
        ..Default::default()
    };
    principals().upsert_principal(upsert(0)).await.expect("a subject may look like a token");
    let status = principals().upsert_principal(upsert(7)).await.expect_err("stale version");
    assert_eq!(status.code(), Code::Aborted);
    shows_only_the_key_id(status.message(), &token, &tail);
    let roles =
        pb::SetPrincipalRolesRequest { tenant: "acme".into(), subject: token.clone(), roles: vec![], version: 9 };
    let status = principals().set_principal_roles(roles).await.expect_err("stale version");
    shows_only_the_key_id(status.message(), &token, &tail);

    // As the owner of a key: the owner's denial names it shortened.
    let (_, key_token) = server.owned_key("acme", &token, &["read-only"]).await;
    principals()
        .disable_principal(pb::PrincipalStateRequest { tenant: "acme".into(), subject: token.clone() })
        .await
        .expect("disable");
    let answer = server.check(&key_token, "courses", pb::Action::Read).await;
    assert!(!answer.allowed && answer.message.contains("owner"), "{answer:?}");
    shows_only_the_key_id(&answer.message, &token, &tail);
    principals()
        .delete_principal(pb::DeletePrincipalRequest { tenant: "acme".into(), subject: token.clone(), version: 0 })
        .await
        .expect("delete");
    let answer = server.check(&key_token, "courses", pb::Action::Read).await;
    shows_only_the_key_id(&answer.message, &token, &tail);

    // As a metadata key whose value is refused: the field names the key shortened.
    let request = pb::CreateKeyRequest {
        tenant: "acme".into(),
        scope_ids: vec!["read-only".into()],
        metadata: [(token.clone(), "x".repeat(600))].into_iter().collect(),
        ..Default::default()
    };
    let status = server.keys().create_key(request).await.expect_err("value too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("metadata["), "the field is named: {}", status.message());
    shows_only_the_key_id(status.message(), &token, &tail);
}

on_memory_and_redis!(
    pasted_tokens_are_never_echoed:
        a_token_used_as_a_subject_owner_or_metadata_key_is_never_echoed_on_memory,
        a_token_used_as_a_subject_owner_or_metadata_key_is_never_echoed_on_redis
);
