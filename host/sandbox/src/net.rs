//! Outgoing HTTP for plugins (`wasi:http/outgoing-handler`): thin glue onto the host's
//! one outbound client ([`maestro_outbound`]), which does every check (allow-list,
//! resolve then check every address, connect to the checked address, redirects hop by
//! hop, secrets bound to scheme, host and port, caps, bounded denial records).
//!
//! Each call gets its own client under the call's [`NetPolicy`], recording into the
//! call's [`NetLog`]; this module only converts bodies and errors between `wasi:http`
//! and the client.

use std::future::Future;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use maestro_outbound::{
    Denial, HostPattern, MAX_REDIRECTS, NetLog, NetPolicy, NetRule, SecretHeader, SecretTarget,
};
use maestro_outbound::{OutboundClient, OutboundError};

/// The `wasi:http` hooks of one call.
#[derive(Debug)]
pub(crate) struct NetHooks {
    client: OutboundClient,
}

impl NetHooks {
    pub(crate) fn new(policy: Arc<NetPolicy>, log: Arc<Mutex<NetLog>>) -> Self {
        Self { client: OutboundClient::with_log("plugin", policy, log) }
    }
}

impl WasiHttpHooks for NetHooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                    HttpError,
                >,
            > + Send,
    > {
        let client = self.client.clone();
        Box::new(async move {
            let request = request.map(|body| body.map_err(|e| OutboundError::Body(Box::new(e))).boxed_unsync());
            let response = client.send_streaming(request).await.map_err(to_wasi)?;
            let response = response.map(|body| body.map_err(to_wasi).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// The `wasi:http` error code a plugin sees for a client error.
fn to_wasi(err: OutboundError) -> HttpError {
    match err {
        OutboundError::Denied { .. } => HttpError::HttpRequestDenied,
        OutboundError::RequestTooLarge { size, .. } => HttpError::HttpRequestBodySize(size),
        OutboundError::ResponseTooLarge { size, .. } => HttpError::HttpResponseBodySize(size),
        OutboundError::InvalidUri => HttpError::HttpRequestUriInvalid,
        OutboundError::Timeout(_) => HttpError::ConnectionTimeout,
        OutboundError::ReadTimeout(_) => HttpError::ConnectionReadTimeout,
        OutboundError::Connect(err) => HttpError::Connect(err),
        OutboundError::Tls(err) => HttpError::Tls(err),
        OutboundError::Protocol(err) => HttpError::Hyper(err),
        OutboundError::Body(err) => match err.downcast::<HttpError>() {
            Ok(wasi) => *wasi,
            Err(other) => HttpError::InternalError(Some(other.to_string())),
        },
    }
}
