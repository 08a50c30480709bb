//! Bodies on the forwarding path.
//!
//! - [`Replay`]: relays the request body as it comes while keeping a copy of its first
//!   [`crate::forward::retry::MAX_RETRY_BODY`] bytes, so a request that failed can be
//!   sent again to another instance; a longer (or broken) body is relayed but not kept,
//!   and such a request is not retried.
//! - [`Observed`]: relays the response body and reports the call's final gRPC status
//!   once (from the trailers, the trailers-only headers, a stream error, or the
//!   deadline, which ends the stream with DEADLINE_EXCEEDED); dropping it early
//!   (the caller went away) reports CANCELLED.

use super::status;
use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body shared by the attempts of one call. Dropped when the call has its
/// answer (no attempt follows): the attempt still sending then stops keeping frames and
/// lets go of the kept ones once it has sent them, so a long request stream does not
/// hold up to the limit for its whole life.
pub struct Replay {
    state: Arc<Mutex<ReplayState>>,
}

struct ReplayState {
    source: Body,
    /// The data frames read so far, while they fit in `limit`.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    limit: usize,
    trailers: Option<HeaderMap>,
    /// The source has ended: `kept` (plus `trailers`) is the whole body.
    ended: bool,
    /// More than `limit` was read, or the source failed: no replay possible.
    lost: bool,
}

impl Replay {
    pub fn new(source: Body, limit: usize) -> Self {
        Replay {
            state: Arc::new(Mutex::new(ReplayState {
                source,
                kept: Vec::new(),
                kept_bytes: 0,
                limit,
                trailers: None,
                ended: false,
                lost: false,
            })),
        }
    }

    /// The body for one more attempt: what was kept, then the rest of the source.
    pub fn attempt(&self) -> Body {
        Body::new(ReplayAttempt {
            state: self.state.clone(),
            position: 0,
            trailers_sent: false,
        })
    }

    /// Whether another attempt can still send the whole body.
    pub fn replayable(&self) -> bool {
        !self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lost
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        // `lost` also means "no replay": nothing more is kept from here on.
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lost = true;
    }
}

struct ReplayAttempt {
    state: Arc<Mutex<ReplayState>>,
    position: usize,
    trailers_sent: bool,
}

impl HttpBody for ReplayAttempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut state = this.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.lost && !state.kept.is_empty() && this.position >= state.kept.len() {
            // No attempt will replay them, and this one has sent them all.
            state.kept = Vec::new();
            this.position = 0;
        }
        if let Some(chunk) = state.kept.get(this.position) {
            let chunk = chunk.clone();
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = state.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let polled = ready!(Pin::new(&mut state.source).poll_frame(cx));
        let frame = match polled {
            None => {
                state.ended = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                state.lost = true;
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if !state.lost {
                state.kept_bytes += data.len();
                if state.kept_bytes > state.limit {
                    state.lost = true;
                    state.kept = Vec::new();
                    this.position = 0;
                } else {
                    state.kept.push(data.clone());
                    this.position += 1;
                }
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            state.trailers = Some(trailers.clone());
            state.ended = true;
            this.trailers_sent = true;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    /// True as soon as the source is known to be done, so the last DATA frame carries
    /// END_STREAM: a server counts small DATA frames that do not end their stream
    /// against a budget (h2 answers a flood of them with GOAWAY ENHANCE_YOUR_CALM), and
    /// a unary call then never touches it.
    fn is_end_stream(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let source_done = state.ended || (state.trailers.is_none() && state.source.is_end_stream());
        source_done
            && self.position >= state.kept.len()
            && (self.trailers_sent || state.trailers.is_none())
    }
}

/// Told the call's final status, once.
pub type OnEnd = Box<dyn FnOnce(tonic::Code) + Send>;

/// The response body, watched for the call's status and bounded by its deadline.
pub struct Observed {
    inner: Body,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The trailers-only status from the response headers, if any.
    header_status: Option<tonic::Code>,
    on_end: Option<OnEnd>,
    finished: bool,
}

impl Observed {
    pub fn new(
        inner: Body,
        header_status: Option<tonic::Code>,
        deadline: Option<tokio::time::Instant>,
        on_end: OnEnd,
    ) -> Self {
        Observed {
            inner,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            header_status,
            on_end: Some(on_end),
            finished: false,
        }
    }

    fn end(&mut self, code: tonic::Code) {
        self.finished = true;
        self.deadline = None;
        if let Some(on_end) = self.on_end.take() {
            on_end(code);
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // The upstream stream is reset when `inner` is dropped with this body.
            this.end(tonic::Code::DeadlineExceeded);
            this.inner = Body::empty();
            let mut trailers = HeaderMap::new();
            trailers.insert(
                "grpc-status",
                status::code_value(tonic::Code::DeadlineExceeded),
            );
            trailers.insert(
                "grpc-message",
                axum::http::HeaderValue::from_static("deadline exceeded (sidecar)"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status::grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                    this.end(code);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.end(tonic::Code::Unavailable);
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                let code = this.header_status.unwrap_or(tonic::Code::Unknown);
                this.end(code);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if !self.finished {
            self.end(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_small_body_is_sent_again_whole() {
        let replay = Replay::new(Body::from("hello"), 16);
        assert_eq!(collect(replay.attempt()).await, b"hello");
        assert!(replay.replayable());
        assert_eq!(collect(replay.attempt()).await, b"hello");
    }

    #[tokio::test]
    async fn an_attempt_dropped_early_leaves_the_rest_for_the_next() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from("ab")), Ok(Bytes::from("cd"))];
        let source = Body::from_stream(futures::stream::iter(chunks));
        let replay = Replay::new(source, 16);
        let mut first = replay.attempt();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        assert_eq!(collect(replay.attempt()).await, b"abcd");
    }

    #[tokio::test]
    async fn the_last_chunk_of_a_finished_body_ends_the_stream() {
        let replay = Replay::new(Body::from("hello"), 16);
        let mut attempt = replay.attempt();
        assert!(!attempt.is_end_stream());
        attempt.frame().await.unwrap().unwrap();
        assert!(
            attempt.is_end_stream(),
            "no empty DATA frame needed to end it"
        );
        assert_eq!(collect(replay.attempt()).await, b"hello");
    }

    #[tokio::test]
    async fn once_the_call_has_its_answer_the_last_attempt_keeps_nothing() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from("ab")),
            Ok(Bytes::from("cd")),
            Ok(Bytes::from("ef")),
        ];
        let replay = Replay::new(Body::from_stream(futures::stream::iter(chunks)), 16);
        let mut first = replay.attempt();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        drop(first);
        // A second attempt replays "ab" from the copy; the call's answer arrives
        // meanwhile and the call lets the replay go.
        let mut last = replay.attempt();
        let state = replay.state.clone();
        assert_eq!(
            last.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        drop(replay);
        let rest = collect(last).await;
        assert_eq!(rest, b"cdef", "nothing skipped, nothing sent twice");
        let state = state.lock().unwrap();
        assert!(state.kept.is_empty(), "the copy is let go");
    }

    #[tokio::test]
    async fn a_replay_let_go_mid_copy_still_sends_the_rest_of_it() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from("ab")), Ok(Bytes::from("cd"))];
        let replay = Replay::new(Body::from_stream(futures::stream::iter(chunks)), 16);
        assert_eq!(collect(replay.attempt()).await, b"abcd");
        let mut last = replay.attempt();
        assert_eq!(
            last.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        drop(replay);
        assert_eq!(collect(last).await, b"cd");
    }

    #[tokio::test]
    async fn a_large_body_is_relayed_but_not_kept() {
        let replay = Replay::new(Body::from(vec![7u8; 100]), 16);
        assert_eq!(collect(replay.attempt()).await.len(), 100);
        assert!(!replay.replayable());
    }

    #[tokio::test]
    async fn the_status_comes_from_the_trailers() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let inner = http_body_util::StreamBody::new(futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from("x"))),
            Ok(Frame::trailers(trailers)),
        ]));
        let body = Observed::new(
            Body::new(inner),
            None,
            None,
            Box::new(move |code| tx.send(code).unwrap()),
        );
        let collected = Body::new(body).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "5");
        assert_eq!(rx.try_recv().unwrap(), tonic::Code::NotFound);
        assert!(rx.try_recv().is_err(), "reported once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_stream_with_deadline_exceeded() {
        let (tx, rx) = std::sync::mpsc::channel();
        let never = http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let body = Observed::new(
            Body::new(never),
            None,
            Some(deadline),
            Box::new(move |code| tx.send(code).unwrap()),
        );
        let collected = Body::new(body).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "4");
        assert_eq!(rx.try_recv().unwrap(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_dropped_response_reports_cancelled() {
        let (tx, rx) = std::sync::mpsc::channel();
        let body = Observed::new(
            Body::from("x"),
            None,
            None,
            Box::new(move |code| tx.send(code).unwrap()),
        );
        drop(body);
        assert_eq!(rx.try_recv().unwrap(), tonic::Code::Cancelled);
    }
}
