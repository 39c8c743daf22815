//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, and `POST /backup`
//! (a consistent copy of the databases into `data_dir/backups/`, used by `portcullis backup`).
//! It is bound only to `server.admin_listen`; the public listener never serves these.

use crate::state::AppState;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

pub struct OpsApp {
    pub state: Arc<AppState>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        if path == "/backup" {
            if method != http::Method::POST {
                return reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "application/json",
                    br#"{"detail":"Method Not Allowed"}"#.to_vec(),
                );
            }
            return match self.state.backup().await {
                Ok(dir) => {
                    let body = serde_json::json!({ "path": dir.to_string_lossy() })
                        .to_string()
                        .into_bytes();
                    reply(StatusCode::OK, "application/json", body)
                }
                Err(e) => {
                    tracing::error!(error = %e, "backup failed");
                    reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "application/json",
                        br#"{"detail":"Backup failed; see the server log"}"#.to_vec(),
                    )
                }
            };
        }
        match path.as_str() {
            "/metrics" => {
                // Gauges of live state are read at scrape time.
                let sessions = self.state.sessions.len() as i64;
                self.state.metrics.sessions.set(sessions);
                let (content_type, body) = self.state.metrics.render();
                reply(StatusCode::OK, &content_type, body)
            }
            "/healthz" => reply(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" => {
                if self.state.is_draining() {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        br#"{"status":"draining"}"#.to_vec(),
                    )
                } else if !self.state.is_ready() {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        br#"{"status":"storage unavailable"}"#.to_vec(),
                    )
                } else {
                    reply(
                        StatusCode::OK,
                        "application/json",
                        br#"{"status":"ready"}"#.to_vec(),
                    )
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"detail":"Not Found"}"#.to_vec(),
            ),
        }
    }
}
