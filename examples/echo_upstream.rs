//! A tiny upstream to put behind portcullis: answers every request with a JSON echo of its
//! method, target, headers and body size, so you can see what the gateway injected.
//!
//! `cargo run --example echo_upstream -- 127.0.0.1:9000`

#[path = "../tests/common/echo.rs"]
mod echo;

use std::sync::Arc;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ECHO_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo_upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("echo upstream listening on {addr}");
    echo::serve(listener, Arc::new(echo::Record::default())).await;
}
