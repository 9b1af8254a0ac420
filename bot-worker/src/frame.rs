//! Length-prefixed JSON frames: 4-byte big-endian length, then JSON.
//!
//! [`FrameCodec`] plugs into `tokio_util::codec` (`Framed`, `FramedRead`).
//! It decodes into one message type and encodes another, so the host uses
//! `FrameCodec<WorkerMessage, HostMessage>` and the worker the mirror image.
//!
//! What it refuses, each with its own [`FrameError`]:
//! - a length prefix above [`MAX_FRAME_BYTES`] (checked before buffering, so
//!   a hostile peer cannot make us allocate);
//! - a connection that ends part-way through a frame;
//! - a body that is not JSON, or JSON that is not a known message.
//!
//! Any of these means the peer is broken: the caller closes the connection.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// The largest frame body either side accepts or sends: 1 MiB.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

const HEADER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame ({have} of {want} bytes received)")]
    Truncated { have: usize, want: usize },
    #[error("frame is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("frame is not a message this side understands: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes `D`, encodes `E`.
pub struct FrameCodec<D, E> {
    max: usize,
    _types: PhantomData<fn(E) -> D>,
}

impl<D, E> FrameCodec<D, E> {
    pub fn new() -> Self {
        Self::with_max(MAX_FRAME_BYTES)
    }

    /// A codec with a different cap; tests use small ones.
    pub fn with_max(max: usize) -> Self {
        Self {
            max,
            _types: PhantomData,
        }
    }
}

impl<D, E> Default for FrameCodec<D, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: DeserializeOwned, E> Decoder for FrameCodec<D, E> {
    type Item = D;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, FrameError> {
        let Some(len) = peek_len(src) else {
            return Ok(None);
        };
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if src.len() < HEADER + len {
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        let body = src.split_to(len);
        serde_json::from_slice(&body).map(Some).map_err(classify)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<D>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                have: src.len(),
                want: peek_len(src).map_or(HEADER, |len| HEADER + len),
            }),
        }
    }
}

impl<D, E: Serialize> Encoder<E> for FrameCodec<D, E> {
    type Error = FrameError;

    fn encode(&mut self, item: E, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_into(&item, self.max, dst)
    }
}

/// Encodes one message into a standalone buffer, for writers that queue
/// ready-made frames (the host's per-worker write task does).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<bytes::Bytes, FrameError> {
    let mut buf = BytesMut::new();
    encode_into(msg, MAX_FRAME_BYTES, &mut buf)?;
    Ok(buf.freeze())
}

fn encode_into<T: Serialize>(item: &T, max: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    if let Err(e) = serde_json::to_writer((&mut *dst).writer(), item) {
        dst.truncate(start);
        return Err(FrameError::Invalid(e));
    }
    let len = dst.len() - start - HEADER;
    // Never put an oversized frame on the wire: the peer would drop us.
    let Some(len32) = u32::try_from(len).ok().filter(|_| len <= max) else {
        dst.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    };
    dst[start..start + HEADER].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

fn peek_len(src: &BytesMut) -> Option<usize> {
    let header: [u8; HEADER] = src.get(..HEADER)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(header)).ok()
}

fn classify(e: serde_json::Error) -> FrameError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => FrameError::NotJson(e),
        Category::Data | Category::Io => FrameError::Invalid(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HostMessage, WorkerMessage};
    use proptest::prelude::*;

    type HostSide = FrameCodec<WorkerMessage, HostMessage>;

    fn raw_frame(body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(body.len() as u32);
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn round_trips_a_message() {
        let mut buf = BytesMut::new();
        let msg = HostMessage::Chat {
            id: 42,
            messages: vec![],
        };
        FrameCodec::<HostMessage, HostMessage>::new()
            .encode(msg.clone(), &mut buf)
            .unwrap();
        let got = FrameCodec::<HostMessage, HostMessage>::new()
            .decode(&mut buf)
            .unwrap();
        assert_eq!(got, Some(msg));
        assert!(buf.is_empty());
    }

    #[test]
    fn waits_for_the_rest_of_a_split_frame() {
        let mut whole = raw_frame(br#"{"type":"pong","seq":1}"#);
        let tail = whole.split_off(6);
        let mut codec = HostSide::new();
        assert_eq!(codec.decode(&mut whole).unwrap(), None);
        whole.unsplit(tail);
        assert_eq!(
            codec.decode(&mut whole).unwrap(),
            Some(WorkerMessage::Pong { seq: 1 })
        );
    }

    #[test]
    fn refuses_an_oversized_length_before_reading_the_body() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_BYTES + 1) as u32);
        let err = HostSide::new().decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == MAX_FRAME_BYTES + 1 && max == MAX_FRAME_BYTES)
        );
        assert!(err.to_string().contains("exceeds the 1048576-byte limit"));
    }

    #[test]
    fn refuses_to_encode_an_oversized_frame_and_leaves_the_buffer_clean() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let msg = HostMessage::Chat {
            id: 1,
            messages: vec![crate::ChatMessage {
                role: crate::Role::User,
                content: "x".repeat(64),
            }],
        };
        let err = FrameCodec::<(), HostMessage>::with_max(32)
            .encode(msg, &mut buf)
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 32, .. }));
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut buf = raw_frame(br#"{"type":"pong","seq":1}"#);
        buf.truncate(10);
        let err = HostSide::new().decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { have: 10, want: 27 }),
            "{err}"
        );
    }

    #[test]
    fn truncated_header_at_eof_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        let err = HostSide::new().decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { have: 2, want: 4 }),
            "{err}"
        );
    }

    #[test]
    fn clean_eof_is_not_an_error() {
        assert_eq!(
            HostSide::new().decode_eof(&mut BytesMut::new()).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_is_not_json() {
        let err = HostSide::new()
            .decode(&mut raw_frame(b"\x00\xffnot json"))
            .unwrap_err();
        assert!(matches!(err, FrameError::NotJson(_)), "{err}");
    }

    #[test]
    fn unknown_type_is_invalid_and_says_so() {
        let err = HostSide::new()
            .decode(&mut raw_frame(br#"{"type":"launch_missiles"}"#))
            .unwrap_err();
        assert!(matches!(err, FrameError::Invalid(_)));
        assert!(
            err.to_string()
                .contains("unknown variant `launch_missiles`"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_invalid() {
        let err = HostSide::new()
            .decode(&mut raw_frame(br#"{"type":"delta","id":1}"#))
            .unwrap_err();
        assert!(err.to_string().contains("missing field `text`"), "{err}");
    }

    proptest! {
        /// The decoder's contract under any input: no panic, and every call
        /// either consumes a whole frame, asks for more, or returns an error.
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut codec = FrameCodec::<WorkerMessage, ()>::with_max(256);
            let mut buf = BytesMut::new();
            for chunk in chunks {
                buf.extend_from_slice(&chunk);
                while let Ok(Some(_)) = codec.decode(&mut buf) {}
            }
            let _ = codec.decode_eof(&mut buf);
        }

        #[test]
        fn valid_frames_survive_any_split(text in ".{0,200}", id in any::<u64>(), cut in 0usize..300) {
            let msg = WorkerMessage::Delta { id, text };
            let mut encoded = BytesMut::new();
            FrameCodec::<(), WorkerMessage>::new().encode(msg.clone(), &mut encoded).unwrap();
            let cut = cut.min(encoded.len());
            let mut codec = FrameCodec::<WorkerMessage, ()>::new();
            let mut buf = BytesMut::from(&encoded[..cut]);
            let first = codec.decode(&mut buf).unwrap();
            if cut < encoded.len() {
                prop_assert_eq!(first, None);
                buf.extend_from_slice(&encoded[cut..]);
                prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
            } else {
                prop_assert_eq!(first, Some(msg));
            }
        }
    }
}
