//! The pingora side: the `Gateway` (our `ProxyHttp`) classifies each request, answers the
//! accounts API and every refusal locally, and sends the rest through the gate to the upstream
//! with spoofable headers stripped and the real identity injected.

pub mod headers;
pub mod ops;
pub mod path;
pub mod respond;
pub mod slow_head;
pub mod upstream;

use crate::api::{self, ApiRequest};
use crate::auth::sessions::Identity;
use crate::auth::{gate, limiter};
use crate::error::Error;
use crate::metrics::status_class;
use crate::routes::Destination;
use crate::state::{AppState, Live};
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct Gateway {
    pub state: Arc<AppState>,
    /// Timeouts of every upstream connection.
    pub peer_timeouts: upstream::PeerTimeouts,
}

/// Where a request went, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Unrouted,
    Api,
    Route(usize),
}

/// Per-request state shared between the hooks.
pub struct RequestCtx {
    start: Instant,
    request_id: String,
    peer_ip: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    /// What per-address limits count the client by (its network, for IPv6).
    client_key: Option<IpAddr>,
    /// Normalized origin-form target the upstream receives.
    upstream_target: Option<String>,
    served: Served,
    identity: Option<Identity>,
    /// Why the request was refused or failed, for the log.
    outcome: Option<&'static str>,
    /// The request body was read whole (so the connection can be kept alive).
    body_read: bool,
    /// The rate-limit decision that let this request through, for the `RateLimit-*` headers.
    rate: Option<crate::auth::limiter::Decision>,
    /// The routes and limits this request was decided with (a reload does not change them
    /// mid-request).
    live: Option<Arc<Live>>,
}

/// Does the request carry a body that we have not read?
fn has_body(req: &RequestHeader) -> bool {
    let cl = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    cl.is_some_and(|n| n > 0) || req.headers.contains_key(http::header::TRANSFER_ENCODING)
}

/// Size of the request head as received: target plus every header line.
fn header_bytes(req: &RequestHeader) -> usize {
    req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Read an API request body of at most `limit` bytes. A declared or actual size over the
/// limit is refused with 413 before the rest is read (the connection is then closed).
async fn read_api_body(session: &mut Session, limit: usize) -> Result<bytes::Bytes, Error> {
    let req = session.req_header();
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::PayloadTooLarge);
    }
    if !has_body(req) {
        return Ok(bytes::Bytes::new());
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|_| Error::BadRequest("Cannot read request body"))?;
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Error::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if matches!(e.etype(), pingora_error::ErrorType::ReadTimedout) => {
                return Err(Error::RequestTimeout)
            }
            Err(_) => return Err(Error::BadRequest("Cannot read request body")),
        }
    }
    Ok(body.freeze())
}

impl Gateway {
    /// Decide the request: `Ok(true)` when answered here, `Ok(false)` to proxy it.
    async fn decide(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool, Error> {
        let state = &self.state;
        let req = session.req_header();
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(Error::BadRequest("Duplicate Host header"));
        }
        if host.is_none() && req.version == http::Version::HTTP_11 {
            return Err(Error::BadRequest("Missing Host header"));
        }
        let target = path::parse_target(req.raw_path())?;
        if let Some(authority) = &target.authority {
            let host = host.and_then(|h| h.to_str().ok()).unwrap_or("");
            if !host.eq_ignore_ascii_case(authority) {
                return Err(Error::BadRequest("Request target and Host disagree"));
            }
        }
        let now = state.clock.now();
        let live = state.live();
        ctx.live = Some(live.clone());
        match live.routes.classify(&target.path, api::owns) {
            Destination::NotFound => Err(Error::NotFound),
            Destination::Api(rel) => {
                ctx.served = Served::Api;
                let rel = rel.to_string();
                let (method, headers) = (req.method.clone(), req.headers.clone());
                let query = target.query.clone();
                ctx.rate =
                    Some(api::admit(state, &live, &rel, &headers, ctx.client_key, now).await?);
                let body = read_api_body(session, state.config.api.max_body_bytes).await?;
                ctx.body_read = true;
                let api_req = ApiRequest {
                    method,
                    path: rel,
                    query,
                    headers,
                    body,
                    client_ip: ctx.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
                    client_key: ctx.client_key.unwrap_or(IpAddr::from([127, 0, 0, 1])),
                    request_id: ctx.request_id.clone(),
                    now,
                };
                let path = api_req.path.clone();
                match api::handle(state, api_req).await {
                    Ok(resp) => {
                        let mut extra = ctx.rate.map(|d| d.headers()).unwrap_or_default();
                        if resp.no_store {
                            extra.push(("cache-control", "no-store".to_string()));
                            extra.push(("pragma", "no-cache".to_string()));
                        }
                        let written = match resp.raw {
                            Some(raw) => {
                                extra.extend(raw.headers);
                                respond::typed(
                                    session,
                                    resp.status,
                                    raw.content_type,
                                    raw.bytes,
                                    &extra,
                                    &ctx.request_id,
                                    false,
                                )
                                .await
                            }
                            None => {
                                let body = resp.body.to_string().into_bytes();
                                respond::json(
                                    session,
                                    resp.status,
                                    body,
                                    &extra,
                                    &ctx.request_id,
                                    false,
                                )
                                .await
                            }
                        };
                        written
                            .map_err(|e| Error::Internal(format!("writing API response: {e}")))?;
                        Ok(true)
                    }
                    Err(Error::MethodNotAllowed) => {
                        let err = Error::MethodNotAllowed;
                        let allow = api::allowed_methods(&path)
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(", ");
                        ctx.outcome = Some(err.reason());
                        let mut extra = ctx.rate.map(|d| d.headers()).unwrap_or_default();
                        extra.push(("allow", allow));
                        respond::json(
                            session,
                            err.status(),
                            err.body(),
                            &extra,
                            &ctx.request_id,
                            false,
                        )
                        .await
                        .map_err(|e| Error::Internal(format!("writing API response: {e}")))?;
                        Ok(true)
                    }
                    Err(e) => Err(e),
                }
            }
            Destination::Route(index) => {
                ctx.served = Served::Route(index);
                let route = live.routes.route(index);
                let decided = if route.rule.is_public() {
                    Ok(None)
                } else {
                    match gate::credential(&req.headers) {
                        Ok(credential) => state
                            .authorize(&route.rule, credential, now)
                            .await
                            .map(Some),
                        Err(e) => Err(e),
                    }
                };
                match decided {
                    Ok(identity) => {
                        if identity.is_some() {
                            state
                                .metrics
                                .gate
                                .with_label_values(&["allow", "valid"])
                                .inc();
                        }
                        ctx.identity = identity;
                    }
                    Err(e) => {
                        let e = Error::from(e);
                        state
                            .metrics
                            .gate
                            .with_label_values(&["deny", e.reason()])
                            .inc();
                        return Err(e);
                    }
                }
                if let Some(limiter) = &route.limiter {
                    let decision = match &ctx.identity {
                        Some(id) => {
                            state
                                .admit("route", &route.path, limiter, id.user_id())
                                .await
                        }
                        None => {
                            let ip = ctx.client_key.unwrap_or(IpAddr::from([0, 0, 0, 0]));
                            state.admit("route", &route.path, limiter, ip).await
                        }
                    }
                    .map_err(|d| Error::Throttled(d, None))?;
                    ctx.rate = Some(decision);
                }
                ctx.upstream_target = Some(target.origin_form());
                Ok(false)
            }
        }
    }

    /// The route a request went to, for metrics and logs: its path, `api`, or `none`.
    fn route_label(ctx: &RequestCtx) -> &str {
        match (ctx.served, &ctx.live) {
            (Served::Route(i), Some(live)) => &live.routes.route(i).path,
            (Served::Api, _) => "api",
            _ => "none",
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            request_id: String::new(),
            peer_ip: None,
            client_ip: None,
            client_key: None,
            upstream_target: None,
            served: Served::Unrouted,
            identity: None,
            outcome: None,
            body_read: false,
            rate: None,
            live: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<bool> {
        let req = session.req_header();
        ctx.request_id = headers::request_id(req.headers.get(headers::REQUEST_ID));
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = ctx.peer_ip.map(|peer| {
            headers::client_ip(
                peer,
                &req.headers,
                &self.state.config.server.trusted_proxies,
            )
        });
        let v6_prefix = self.state.config.limits.ipv6_prefix;
        ctx.client_key = ctx.client_ip.map(|ip| limiter::client_key(ip, v6_prefix));
        session.set_read_timeout(Some(self.state.config.limits.body_read_timeout));
        let decided =
            if header_bytes(session.req_header()) > self.state.config.limits.max_header_bytes {
                Err(Error::HeadersTooLarge)
            } else {
                self.decide(session, ctx).await
            };
        match decided {
            Ok(answered) => Ok(answered),
            Err(err) => {
                if let Error::Internal(detail) = &err {
                    tracing::error!(request_id = %ctx.request_id, error = %detail, "internal error");
                }
                ctx.outcome = Some(err.reason());
                let close = has_body(session.req_header()) && !ctx.body_read;
                let extra = match (&err, ctx.rate) {
                    (Error::Throttled(..), _) | (_, None) => Vec::new(),
                    (_, Some(d)) => d.headers(),
                };
                respond::error(session, &err, &extra, &ctx.request_id, close).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let upstream = match (ctx.served, &ctx.live) {
            (Served::Route(i), Some(live)) => live.routes.route(i).next_upstream(),
            _ => None,
        };
        match upstream {
            Some(addr) => Ok(Box::new(upstream::peer(addr, &self.peer_timeouts))),
            None => Err(pingora_error::Error::explain(
                ErrorType::InternalError,
                "no route chosen before upstream_peer",
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<()> {
        let config = &self.state.config;
        if let Some(target) = &ctx.upstream_target {
            upstream.set_raw_path(target.as_bytes())?;
        }
        let from_trusted_proxy = ctx
            .peer_ip
            .is_some_and(|peer| headers::is_trusted_proxy(peer, &config.server.trusted_proxies));
        for name in headers::spoofable_headers(&upstream.headers, &config.proxy, from_trusted_proxy)
        {
            upstream.remove_header(&name);
        }
        if let Some(identity) = &ctx.identity {
            for (name, value) in
                headers::identity_headers(&config.proxy.identity, &identity.principal)
            {
                upstream.insert_header(name, value)?;
            }
        }
        if let (Some(peer), Some(client)) = (ctx.peer_ip, ctx.client_ip) {
            let downstream = &session.req_header().headers;
            for (name, value) in headers::forwarding_headers(
                peer,
                client,
                downstream,
                &config.server.trusted_proxies,
            ) {
                upstream.insert_header(name, value)?;
            }
        }
        upstream.insert_header(headers::REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<()> {
        response.insert_header(headers::REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(decision) = ctx.rate {
            for (name, value) in decision.headers() {
                response.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora_error::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) if *code == 413 => Some(Error::PayloadTooLarge),
            (
                ErrorSource::Upstream,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => Some(Error::UpstreamTimeout),
            (ErrorSource::Upstream, _) => Some(Error::UpstreamUnavailable),
            (ErrorSource::Downstream, ErrorType::ReadTimedout) => Some(Error::RequestTimeout),
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ) => None,
            (ErrorSource::Downstream, _) => Some(Error::BadRequest("Malformed request")),
            _ => Some(Error::Internal(e.to_string())),
        };
        let label = Self::route_label(ctx).to_string();
        match &err {
            Some(Error::UpstreamTimeout) => {
                self.state
                    .metrics
                    .upstream_errors
                    .with_label_values(&[&label, "timeout"])
                    .inc();
            }
            Some(Error::UpstreamUnavailable) => {
                self.state
                    .metrics
                    .upstream_errors
                    .with_label_values(&[&label, "unavailable"])
                    .inc();
            }
            _ => {}
        }
        tracing::warn!(request_id = %ctx.request_id, route = %label, error = %e, "request failed");
        let Some(err) = err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.outcome = Some(err.reason());
        let code = err.status().as_u16();
        if session.response_written().is_none() {
            if let Err(write_err) = respond::error(session, &err, &[], &ctx.request_id, true).await
            {
                tracing::debug!(error = %write_err, "cannot write error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora_error::Error>,
        ctx: &mut RequestCtx,
    ) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        let route = Self::route_label(ctx);
        let metrics = &self.state.metrics;
        metrics
            .requests
            .with_label_values(&[route, status_class(status)])
            .inc();
        metrics
            .latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        let req = session.req_header();
        let path = ctx
            .upstream_target
            .as_deref()
            .map(|t| t.split('?').next().unwrap_or(t))
            .unwrap_or_else(|| req.uri.path());
        tracing::info!(
            target: "portcullis::access",
            request_id = %ctx.request_id,
            method = %req.method,
            path = %path,
            route = %route,
            status = status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            user_id = ctx.identity.as_ref().map(|i| i.user_id()).unwrap_or(""),
            client_ip = %ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            outcome = ctx.outcome.unwrap_or(if status < 400 { "ok" } else { "error" }),
            "request"
        );
    }
}
