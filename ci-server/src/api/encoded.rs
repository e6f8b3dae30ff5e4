//! [`EncodedJson`]: a JSON answer already encoded, described in the API
//! document as the type it encodes.
//!
//! poem-openapi's `Json<T>` builds a tree of JSON values and writes it out
//! on every answer. [`EncodedJson`] writes the answer's bytes straight from
//! the value with `serde` (its types derive `Serialize` with the names of
//! their API schema), and an answer that is served many times (a cached
//! listing) is encoded once and then sent as bytes.

use std::marker::PhantomData;

use bytes::Bytes;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;

/// The content type of every JSON answer, as poem-openapi's `Json` sends it.
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The JSON encoding of a `T`, made by [`EncodedJson::encode`]: the same
/// JSON value as poem-openapi's `Json<T>` would write (the API model's tests
/// compare the two).
pub struct EncodedJson<T> {
    body: Bytes,
    encodes: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for EncodedJson<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedJson")
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl<T: serde::Serialize> EncodedJson<T> {
    /// Encodes `value`. The API's types have string keys and no custom
    /// serializers, so this cannot fail; if it ever did, the answer would be
    /// `null` and the error logged.
    pub fn encode(value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|error| {
            tracing::error!(%error, "an answer could not be encoded");
            b"null".to_vec()
        });
        Self::from_bytes(Bytes::from(body))
    }
}

impl<T> EncodedJson<T> {
    /// An answer from bytes that [`encode`](Self::encode) made earlier.
    pub fn from_bytes(body: Bytes) -> Self {
        Self {
            body,
            encodes: PhantomData,
        }
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.body
    }
}

impl<T: Type> Payload for EncodedJson<T> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> IntoResponse for EncodedJson<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(CONTENT_TYPE)
            .body(self.body)
    }
}

impl<T: Type> ApiResponse for EncodedJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: CONTENT_TYPE,
                    schema: T::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
