//! A WebSocket chat client as the page is one: connect with a token, send
//! a `send` frame, read the turn's frames until `done`.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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
pub async fn open(
    url: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> Result<
    (
        WsStream,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    tokio_tungstenite::connect_async_with_config(url, Some(config), false).await
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
