//! The one writer of locally generated responses to a pingora session: JSON bodies with an
//! exact Content-Length (so keep-alive survives), the request id, and the error's headers.

use crate::error::Error;
use bytes::Bytes;
use http::{Method, StatusCode};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Write a complete JSON response. `close` ends the connection after it (used when the request
/// body was not read, so it can never be parsed as a next request).
pub async fn json(
    session: &mut Session,
    status: StatusCode,
    body: Vec<u8>,
    extra: &[(&'static str, String)],
    request_id: &str,
    close: bool,
) -> pingora_core::Result<()> {
    typed(
        session,
        status,
        "application/json",
        Bytes::from(body),
        extra,
        request_id,
        close,
    )
    .await
}

/// Write a complete response with the given content type.
pub async fn typed(
    session: &mut Session,
    status: StatusCode,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
    request_id: &str,
    close: bool,
) -> pingora_core::Result<()> {
    let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
    header.insert_header(http::header::CONTENT_TYPE, content_type)?;
    header.set_content_length(body.len())?;
    header.insert_header(super::headers::REQUEST_ID, request_id)?;
    for (name, value) in extra {
        header.insert_header(*name, value.as_str())?;
    }
    if close {
        session.set_keepalive(None);
        header.insert_header(http::header::CONNECTION, "close")?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Write `err` as `{"detail": …}` with its status and headers, plus `extra` headers.
pub async fn error(
    session: &mut Session,
    err: &Error,
    extra: &[(&'static str, String)],
    request_id: &str,
    close: bool,
) -> pingora_core::Result<()> {
    let mut headers = err.headers();
    headers.extend_from_slice(extra);
    json(
        session,
        err.status(),
        err.body(),
        &headers,
        request_id,
        close,
    )
    .await
}
