//! Waiting for a condition instead of sleeping: poll until it holds or a deadline passes.

use anyhow::{Result, bail};
use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Ok(true)`; fails naming `what` after `timeout`.
/// The last error returned by `check` is kept for the failure message.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("{what}: not ready after {timeout:?}: {e:#}"),
                None => bail!("{what}: not ready after {timeout:?}"),
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The async form of [`wait_until`] for tests: polls `check` until it yields `Some`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("{what}: not true after {timeout:?}: {e:#}"),
                None => bail!("{what}: not true after {timeout:?}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_once_condition_holds() {
        let mut calls = 0;
        wait_until("counter", Duration::from_secs(5), || {
            calls += 1;
            Ok(calls >= 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn wait_until_fails_with_last_error_after_timeout() {
        let err = wait_until("never", Duration::from_millis(250), || {
            anyhow::bail!("still down")
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("never") && msg.contains("still down"), "{msg}");
    }
}
