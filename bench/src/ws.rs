//! A WebSocket chat client as the page is one: connect with a token, send
//! a `send` frame, read the turn's frames until `done`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::MaybeTlsStream;

pub type WsStream = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What ended a turn that did not complete.
pub const CONNECTION_CLOSED: &str = "connection closed";

pub async fn connect(addr: &str, token: &str) -> anyhow::Result<WsStream> {
    let url = format!("ws://{addr}/api/v1/ws?token={token}");
    let (ws, _) = open(url).await.context("WebSocket connect")?;
    Ok(ws)
}

/// Opens a client WebSocket with a 4 KiB read buffer instead of
/// tungstenite's 128 KiB. Its codec zero-fills the free part of the buffer
/// before every read, so with the default a load tool holding thousands of
/// sockets spent a fifth of its CPU in `memset` and page faults: CPU taken
/// from the host it measures on the same two cores. A browser's socket
/// costs the host the same either way; our frames are far smaller.
pub async fn open(url: impl IntoClientRequest + Unpin) -> Result<(WsStream, Response), Error> {
    tokio_tungstenite::connect_async_with_config(url, Some(client_config()), false).await
}

/// [`open`], from the loopback address `source` (any of 127.0.0.0/8).
/// Thousands of browsers come from thousands of addresses; a load tool
/// connecting them all from 127.0.0.1 makes the kernel search one
/// address's 28,000 ephemeral ports past every socket still open or in
/// TIME_WAIT, and that search took half the tool's CPU (perf:
/// `__inet_check_established`, `__inet_hash_connect`), more the more the
/// run before had left: the benchmark measured its own tool.
pub async fn open_from(source: IpAddr, url: &str) -> Result<(WsStream, Response), Error> {
    let request = url.into_client_request()?;
    let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let server: SocketAddr = authority
        .parse()
        .map_err(|_| Error::Url(UrlError::UnableToConnect(authority.to_owned())))?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(stream),
        Some(client_config()),
    )
    .await
}

/// `count` loopback addresses to connect from (127.0.1.1, 127.0.1.2, ...).
pub fn loopback_sources(count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1 + (i / 250) as u8,
                1 + (i % 250) as u8,
            ))
        })
        .collect()
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Sends `content` as message `id` of `conversation` and reads the turn to
/// its end: (time to the first delta, time to `done`), both from the send.
pub async fn turn(
    ws: &mut WsStream,
    conversation: i64,
    id: &str,
    content: &str,
) -> Result<(Duration, Duration), String> {
    let frame = json!({"type": "send", "conversation_id": conversation,
                       "client_msg_id": id, "content": content});
    let sent = Instant::now();
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let mut first = None;
    loop {
        let Some(msg) = ws.next().await else {
            return Err(CONNECTION_CLOSED.into());
        };
        let text = match msg.map_err(|e| e.to_string())? {
            Message::Text(t) => t,
            _ => continue,
        };
        let frame: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if frame["client_msg_id"] != id {
            continue; // bot_status pushes
        }
        match frame["type"].as_str() {
            Some("delta") => {
                first.get_or_insert_with(|| sent.elapsed());
            }
            Some("done") if frame["status"] == "complete" => {
                let done = sent.elapsed();
                return Ok((first.unwrap_or(done), done));
            }
            Some("ack") => {}
            _ => return Err(format!("turn {id}: {text}")),
        }
    }
}
