//! The builtin engine: deterministic replies, no server, with
//! fault-injection knobs (token delay, failure rate, a real leak) so tests
//! and benchmarks can exercise slow, failing and leaking bots for real.

use std::sync::Mutex;
use std::time::Duration;

use bot_worker::{BuiltinSpec, ChatMessage, FailCode, Role, Usage, WorkerMessage};
use tokio::sync::mpsc;

use super::output::{emit, EngineError};

pub struct Builtin {
    bot: String,
    spec: BuiltinSpec,
    /// Memory taken on purpose by `leak_per_message` and never given back.
    leaked: Mutex<Vec<Vec<u8>>>,
}

impl Builtin {
    pub fn new(bot: String, spec: BuiltinSpec) -> Self {
        Self {
            bot,
            spec,
            leaked: Mutex::new(Vec::new()),
        }
    }

    /// Streams the reply to `messages` as `Delta`s for request `id`.
    pub async fn reply(
        &self,
        id: u64,
        messages: &[ChatMessage],
        out: &mpsc::Sender<WorkerMessage>,
    ) -> Result<Usage, EngineError> {
        self.leak();
        let asked = last_user_message(messages);
        let asked_for = |trigger: &Option<String>| {
            trigger
                .as_deref()
                .is_some_and(|t| !t.is_empty() && asked.contains(t))
        };
        if asked_for(&self.spec.panic_on) {
            panic!("builtin engine: injected panic (panic_on)");
        }
        if asked_for(&self.spec.hang_on) {
            std::future::pending::<()>().await;
        }
        let text = compose(&self.bot, messages);
        let tokens = tokenize(&text, self.spec.max_tokens);
        // Decide up front whether (and after how many tokens) this turn fails,
        // so a failure can land mid-stream like a real engine's would.
        let fail_after =
            (fastrand::f64() < self.spec.fail_rate).then(|| fastrand::usize(..=tokens.len()));
        let delay = Duration::from_millis(self.spec.token_delay_ms);
        for (i, token) in tokens.iter().enumerate() {
            if fail_after == Some(i) {
                return Err(self.injected_failure());
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let delta = WorkerMessage::Delta {
                id,
                text: (*token).to_owned(),
            };
            self.keep(self.spec.leak_per_token);
            emit(out, delta).await?;
        }
        if fail_after == Some(tokens.len()) {
            return Err(self.injected_failure());
        }
        Ok(Usage {
            prompt_tokens: count_words(messages),
            completion_tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
            ..Usage::default()
        })
    }

    fn injected_failure(&self) -> EngineError {
        EngineError::new(
            FailCode::EngineFailed,
            format!(
                "builtin engine: injected failure (fail_rate = {})",
                self.spec.fail_rate
            ),
        )
    }

    fn leak(&self) {
        self.keep(self.spec.leak_per_message);
    }

    fn keep(&self, bytes: u64) {
        let n = usize::try_from(bytes).unwrap_or(usize::MAX);
        if n == 0 {
            return;
        }
        // A non-zero fill touches every page, so the leak shows up in RSS
        // rather than sitting in untouched virtual memory.
        let block = vec![0xA5u8; n];
        if let Ok(mut leaked) = self.leaked.lock() {
            leaked.push(block);
        }
    }
}

/// The builtin engine's reply: a pure function of the bot and the last user
/// message, so the same question always gets the same answer.
pub fn compose(bot: &str, messages: &[ChatMessage]) -> String {
    let last = last_user_message(messages);
    if last.is_empty() {
        return format!("Hello, I am {bot}. Ask me anything.");
    }
    const OPENERS: [&str; 4] = [
        "Good question.",
        "Let me think about that.",
        "Here is what I have.",
        "Thanks for asking.",
    ];
    let opener = OPENERS[(fnv1a(last.as_bytes()) % OPENERS.len() as u64) as usize];
    let words: Vec<&str> = last.split_whitespace().collect();
    let echoed = words.iter().take(40).copied().collect::<Vec<_>>().join(" ");
    let ellipsis = if words.len() > 40 { " …" } else { "" };
    format!(
        "{opener} You said \"{echoed}{ellipsis}\", {n} word{s}. I am {bot}, a built-in bot: \
         I answer the same words the same way every time.",
        n = words.len(),
        s = if words.len() == 1 { "" } else { "s" },
    )
}

/// What the user said last, trimmed ("" when nothing).
fn last_user_message(messages: &[ChatMessage]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.trim())
}

/// Splits text into tokens that each carry their trailing whitespace, so the
/// concatenation of all tokens is the original text. `max` of 0 means no cap.
pub fn tokenize(text: &str, max: u32) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            tokens.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    if max > 0 {
        tokens.truncate(max as usize);
    }
    tokens
}

fn count_words(messages: &[ChatMessage]) -> u32 {
    let n: usize = messages
        .iter()
        .map(|m| m.content.split_whitespace().count())
        .sum();
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: text.into(),
        }
    }

    fn spec() -> BuiltinSpec {
        BuiltinSpec {
            token_delay_ms: 0,
            fail_rate: 0.0,
            leak_per_message: 0,
            leak_per_token: 0,
            max_tokens: 0,
            panic_on: None,
            hang_on: None,
        }
    }

    #[test]
    fn same_words_same_answer() {
        let a = compose("helper", &[user("what is rust?")]);
        let b = compose("helper", &[user("what is rust?")]);
        assert_eq!(a, b);
        assert!(a.contains("You said \"what is rust?\", 3 words."), "{a}");
        assert!(a.contains("I am helper"), "{a}");
    }

    #[test]
    fn answers_the_last_user_message() {
        let a = compose(
            "b",
            &[
                user("first"),
                ChatMessage {
                    role: Role::Assistant,
                    content: "x".into(),
                },
                user("second"),
            ],
        );
        assert!(a.contains("\"second\", 1 word."), "{a}");
    }

    #[test]
    fn tokens_rebuild_the_text() {
        let text = "Hello,  world!\nnext line ";
        let tokens = tokenize(text, 0);
        assert_eq!(tokens, vec!["Hello,  ", "world!\n", "next ", "line "]);
        assert_eq!(tokens.concat(), text);
    }

    #[test]
    fn max_tokens_caps_the_reply() {
        assert_eq!(tokenize("a b c d", 2), vec!["a ", "b "]);
    }

    #[tokio::test]
    async fn streams_every_token_then_reports_usage() {
        let engine = Builtin::new("b".into(), spec());
        let (tx, mut rx) = mpsc::channel(1024);
        let usage = engine.reply(9, &[user("hi there")], &tx).await.unwrap();
        drop(tx);
        let mut text = String::new();
        while let Some(WorkerMessage::Delta { id, text: t }) = rx.recv().await {
            assert_eq!(id, 9);
            text.push_str(&t);
        }
        assert_eq!(text, compose("b", &[user("hi there")]));
        assert_eq!(usage.prompt_tokens, 2);
        assert_eq!(usage.completion_tokens as usize, tokenize(&text, 0).len());
    }

    #[tokio::test]
    async fn fail_rate_one_always_fails() {
        let engine = Builtin::new(
            "b".into(),
            BuiltinSpec {
                fail_rate: 1.0,
                ..spec()
            },
        );
        let (tx, _rx) = mpsc::channel(1024);
        let err = engine.reply(1, &[user("hi")], &tx).await.unwrap_err();
        assert_eq!(err.code, FailCode::EngineFailed);
    }

    #[tokio::test]
    async fn leak_keeps_the_memory() {
        let engine = Builtin::new(
            "b".into(),
            BuiltinSpec {
                leak_per_message: 4096,
                leak_per_token: 0,
                ..spec()
            },
        );
        let (tx, _rx) = mpsc::channel(1024);
        for _ in 0..3 {
            engine.reply(1, &[user("hi")], &tx).await.unwrap();
        }
        let leaked = engine.leaked.lock().unwrap();
        assert_eq!(leaked.iter().map(Vec::len).sum::<usize>(), 3 * 4096);
    }
}
