//! grpc.health.v1 and server reflection work on the gRPC port, so Kubernetes probes and
//! grpcurl need no extra setup.

#![allow(clippy::panic)] // tests fail by panicking

mod common;

use common::TestServer;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn health_reports_every_service_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel());
    for service in ["", "liveness", "keyscope.v1.Checker", "keyscope.v1.KeyAdmin", "keyscope.v1.ScopeAdmin"] {
        let response = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|s| panic!("health {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_and_describes_the_keyscope_services() {
    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel());
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("keyscope.v1.ScopeAdmin".into())),
        },
    ];
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(requests)).await.expect("reflection").into_inner();
    let listed = responses.message().await.expect("stream").expect("first response");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("expected a service list, got {listed:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["keyscope.v1.Checker", "keyscope.v1.KeyAdmin", "keyscope.v1.ScopeAdmin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    let described = responses.message().await.expect("stream").expect("second response");
    let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response else {
        panic!("expected descriptors, got {described:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await;
}
