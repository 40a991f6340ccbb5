//! The bootstrap admin key (SPEC section 5): made once, from a configured token or a new one,
//! and refused at start when the configured token's key can no longer administer.

#![allow(clippy::panic)] // tests fail by panicking

use std::sync::Arc;

use keyscope::{
    domain::{Action, KeyState, Module, Pepper, TokenFormat},
    service::{Bootstrap, Builtins, Keyscope, ServiceError},
    store::{MemoryStore, Store},
};

fn core(store: Arc<dyn Store>) -> Keyscope {
    Keyscope::new(
        store,
        Builtins::new(&[]).expect("builtins"),
        TokenFormat::new("ks").expect("prefix"),
        Pepper::new(b"bootstrap-test-pepper").expect("pepper"),
    )
}

#[tokio::test]
async fn a_created_bootstrap_key_is_made_once_per_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let Bootstrap::Created(id, token) = core(store.clone()).ensure_bootstrap(None).await.expect("first start") else {
        panic!("a fresh store gets a new bootstrap key")
    };
    // A second replica (or restart) on the same store finds it and prints nothing.
    match core(store.clone()).ensure_bootstrap(None).await.expect("second start") {
        Bootstrap::Existing(existing) => assert_eq!(existing, id),
        other => panic!("expected the existing key, got {other:?}"),
    }
    let caller = core(store).authorize(Some(token.expose()), "acme", &Module::scopes(), Action::Delete).await;
    assert!(
        caller.is_ok_and(|c| c.key.id == id && c.tenant.as_str() == "acme"),
        "the bootstrap key administers any tenant"
    );
}

#[tokio::test]
async fn a_configured_token_becomes_the_admin_key_and_is_refused_once_revoked() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let tokens = TokenFormat::new("ks").expect("prefix");
    let (_, text) = tokens.issue(&tokens.new_key_id().expect("random")).expect("random");
    let configured = Some(text.expose());
    assert!(matches!(core(store.clone()).ensure_bootstrap(configured).await, Ok(Bootstrap::ConfiguredCreated(_))));
    assert!(matches!(core(store.clone()).ensure_bootstrap(configured).await, Ok(Bootstrap::Configured(_))));

    let service = core(store.clone());
    let caller = service.authorize(configured, "", &Module::keys(), Action::Update).await.expect("admin");
    let id = caller.key.id.clone();
    service.set_key_state(&caller, &id, None, KeyState::Revoked).await.expect("revoke");
    let restart = core(store.clone()).ensure_bootstrap(configured).await;
    assert!(
        matches!(&restart, Err(ServiceError::FailedPrecondition(m)) if m.contains("not an active `system` admin key")),
        "{restart:?}"
    );

    // The same key id with another secret is refused too, and the message shows no secret.
    let (_, other) = tokens.issue(&id).expect("random");
    let refused = core(store).ensure_bootstrap(Some(other.expose())).await;
    let message = format!("{:?}", refused.expect_err("different secret"));
    assert!(message.contains("different secret") && !message.contains(other.expose()), "{message}");
}
