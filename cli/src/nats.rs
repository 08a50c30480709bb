//! One NATS connection for `check` and `status`: credentials read the way the sidecars
//! and the operator read them, and an answer within 5 s or an error naming the URL.

use std::path::Path;
use std::time::Duration;

pub async fn connect(
    url: &str,
    credentials: Option<&Path>,
) -> Result<async_nats::jetstream::Context, String> {
    let (options, _) = streamgate_nats::credentials::options(credentials)
        .await
        .map_err(|e| format!("--nats-credentials-dir: {e}"))?;
    let connecting = options
        .require_tls(url.starts_with("tls://"))
        .connection_timeout(Duration::from_secs(3))
        .connect(url);
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(client)) => Ok(async_nats::jetstream::new(client)),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: no answer within 5s")),
    }
}
