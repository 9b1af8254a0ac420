//! A user of the REST API and the WebSocket, as a browser would be.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub struct ApiUser {
    pub base: String,
    pub token: String,
    pub client: Client,
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Registers `name` and returns the logged-in user.
pub fn register(base: &str, name: &str) -> ApiUser {
    let client = client();
    let res = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": name, "password": "correct horse battery"}))
        .send()
        .expect("register");
    assert_eq!(res.status(), 201, "register {name}");
    let body: Value = res.json().expect("json");
    ApiUser {
        base: base.to_owned(),
        token: body["token"].as_str().expect("token").to_owned(),
        client,
    }
}

/// Logs `name` in (registered with the tests' password); `None` when the
/// host refuses.
pub fn login(base: &str, name: &str) -> Option<ApiUser> {
    let client = client();
    let res = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": name, "password": "correct horse battery"}))
        .send()
        .expect("login");
    if res.status() != 200 {
        return None;
    }
    let body: Value = res.json().expect("json");
    Some(ApiUser {
        base: base.to_owned(),
        token: body["token"].as_str().expect("token").to_owned(),
        client,
    })
}

/// A response's status and its error code ("" when none).
pub fn error_code(res: Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

impl ApiUser {
    /// `POST path` with `body` as it is, declared JSON (for bodies a JSON
    /// encoder would not write: malformed, chunked, not UTF-8).
    pub fn post_raw(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("POST")
    }

    pub fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .expect("GET")
    }

    pub fn post(&self, path: &str, body: Value) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .expect("POST")
    }

    pub fn conversation(&self, bot: &str) -> i64 {
        let res = self.post("/api/v1/conversations", json!({"bot": bot}));
        assert_eq!(res.status(), 201);
        res.json::<Value>().expect("json")["id"]
            .as_i64()
            .expect("id")
    }

    pub fn history(&self, conv: i64) -> Vec<Value> {
        let res = self.get(&format!("/api/v1/conversations/{conv}/messages?limit=100"));
        assert_eq!(res.status(), 200);
        res.json().expect("json")
    }

    pub async fn ws(&self) -> Ws {
        self.ws_on_try(1).await
    }

    /// A WebSocket whose upgrade says it is the `attempt`-th try
    /// (`web::admission`).
    pub async fn ws_on_try(&self, attempt: u32) -> Ws {
        let url = format!(
            "{}/api/v1/ws?token={}&attempt={attempt}",
            self.base.replacen("http", "ws", 1),
            self.token
        );
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket");
        Ws { stream }
    }
}

pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    pub async fn send_json(&mut self, v: Value) {
        self.stream
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    pub async fn chat(&mut self, conv: i64, id: &str, content: &str) {
        self.send_json(json!({"type": "send", "conversation_id": conv, "client_msg_id": id, "content": content}))
            .await;
    }

    /// Reads until the host closes the connection (10 s at most); the close
    /// code, if the host sent one.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("closed within 10 s");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next JSON frame other than `bot_status`.
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("a frame within 10 s")
                .expect("open")
                .expect("frame");
            if let Message::Text(text) = msg {
                let v: Value = serde_json::from_str(&text).expect("JSON frame");
                if v["type"] != "bot_status" {
                    return v;
                }
            }
        }
    }

    /// Waits (10 s at most) for the `bot_status` push saying `bot` is
    /// `status`, skipping other frames.
    pub async fn bot_status(&mut self, bot: &str, status: &str) {
        let wanted = json!({"type": "bot_status", "bot": bot, "status": status});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no {wanted} within 10 s"))
                .expect("open")
                .expect("frame");
            if let Message::Text(text) = msg {
                if serde_json::from_str::<Value>(&text).expect("JSON frame") == wanted {
                    return;
                }
            }
        }
    }

    /// Reads one turn to its end: (ack, streamed text, last frame).
    pub async fn turn(&mut self) -> (Value, String, Value) {
        let ack = self.next().await;
        if ack["type"] == "error" {
            return (Value::Null, String::new(), ack);
        }
        assert_eq!(ack["type"], "ack", "{ack}");
        let mut text = String::new();
        loop {
            let f = self.next().await;
            match f["type"].as_str() {
                Some("delta") => text.push_str(f["text"].as_str().unwrap_or_default()),
                _ => return (ack, text, f),
            }
        }
    }
}
