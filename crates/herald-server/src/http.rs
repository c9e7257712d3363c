//! The HTTP listener. For now it answers a health check (`GET /health`) that load balancers
//! and the admin can poll; WebSocket, BOSH and uploads will be mounted here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Server;

const MAX_HEAD: usize = 8 * 1024;

pub async fn serve(server: Arc<Server>, mut tcp: TcpStream, _peer: SocketAddr) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
        }
    })
    .await;
    let Ok(Some(end)) = head else { return };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/health") | ("GET", "/") => (
            "200 OK",
            "application/json",
            format!(
                "{{\"status\":\"ok\",\"version\":\"{}\",\"sessions\":{},\"uptime_secs\":{}}}",
                env!("CARGO_PKG_VERSION"),
                server.registry.session_count(),
                server.started.elapsed().as_secs()
            ),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(resp.as_bytes()).await;
    let _ = tcp.shutdown().await;
}
