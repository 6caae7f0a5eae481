//! A `ChatService` client that presents the service token on every call: what the control
//! commands, the benchmarks and the tests use to reach a gateway.

use crate::v1::chat_service_client::ChatServiceClient;
use std::net::SocketAddr;
use tonic::metadata::errors::InvalidMetadataValue;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds an `authorization` header to every call (or nothing, to test refusals).
#[derive(Clone)]
pub struct Bearer(pub Option<MetadataValue<Ascii>>);

impl Bearer {
    /// `authorization: Bearer <service_token>`.
    pub fn service(service_token: &str) -> Result<Self, InvalidMetadataValue> {
        Ok(Bearer(Some(format!("Bearer {service_token}").parse()?)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

/// The client type.
pub type Client = ChatServiceClient<InterceptedService<Channel, Bearer>>;

/// Largest message either way (a campaign's status, a long history page).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Connects to the gRPC port at `addr` over plain HTTP/2.
pub async fn connect(addr: SocketAddr, bearer: Bearer) -> Result<Client, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://{addr}")).expect("a socket address is a valid URI").connect().await?;
    Ok(ChatServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
