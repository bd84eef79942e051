//! Streaming the metrics exposition: the registry is encoded on a blocking thread into
//! small chunks that flow to the HTTP response as the client reads them.
//!
//! At 100,000 pods the exposition is tens of megabytes; built as one string it was half
//! of the daemon's peak memory. Streamed, a scrape holds at most [`CHUNK_BYTES`] ×
//! ([`CHUNKS_IN_FLIGHT`] + 2) bytes whatever the number of series, and the encoding
//! (about 100 ms at 180,000 series) no longer occupies an async worker.
//!
//! The price: prometheus-client holds a family's read lock while it encodes that family,
//! so a client that stops reading keeps the lock, and the watch loop cannot create a new
//! series in that family meanwhile (existing series still update). A chunk that cannot
//! be handed over within [`STALLED_CLIENT_TIMEOUT`] therefore aborts the scrape, and a
//! client that goes away stops the encoding at the next chunk.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// Size at which a chunk is handed to the response.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks encoded ahead of the client.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// How long the encoder waits for a client that does not read.
pub const STALLED_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exposition formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    PrometheusText,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

/// Why a scrape ended before its last byte.
#[derive(Debug, Error)]
pub enum ExpositionError {
    #[error("the scrape client stopped reading; scrape aborted")]
    StalledClient,
    #[error("cannot encode the metrics")]
    Encoding,
}

type Chunk = Result<Bytes, ExpositionError>;

/// Registers `selfheal_scrapes_aborted_total` and returns it for [`stream`].
pub fn register_aborted_scrapes(registry: &mut Registry) -> Counter {
    let aborted = Counter::default();
    registry.register(
        "scrapes_aborted",
        "Scrapes of /metrics cut short because the client stopped reading or encoding failed",
        aborted.clone(),
    );
    aborted
}

/// Starts encoding `registry` and returns the chunks as a stream for the response body.
/// `aborted` counts scrapes that end early for any reason but the client leaving.
pub fn stream(
    registry: Arc<Registry>,
    format: Format,
    aborted: Counter,
) -> impl Stream<Item = Chunk> + Send + 'static {
    stream_with_timeout(registry, format, aborted, STALLED_CLIENT_TIMEOUT)
}

fn stream_with_timeout(
    registry: Arc<Registry>,
    format: Format,
    aborted: Counter,
    stalled_after: Duration,
) -> impl Stream<Item = Chunk> + Send + 'static {
    let (chunks, received) = mpsc::channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter {
            buffer: Vec::with_capacity(CHUNK_BYTES),
            chunks,
            runtime,
            stalled_after,
            failure: None,
        };
        let encoded = match format {
            Format::PrometheusText => prometheus_text::encode(&mut writer, &registry),
            Format::OpenMetrics => text::encode(&mut writer, &registry),
        };
        let failure = match (encoded, writer.failure.take()) {
            (Ok(()), _) => writer.flush().err(),
            (Err(_), Some(failure)) => Some(failure),
            (Err(_), None) => Some(Failure::Encoding),
        };
        match failure {
            None | Some(Failure::ClientGone) => {}
            Some(Failure::Stalled) => {
                aborted.inc();
                tracing::warn!("{}", ExpositionError::StalledClient);
            }
            Some(Failure::Encoding) => {
                aborted.inc();
                tracing::error!("{}", ExpositionError::Encoding);
                // The status line has gone out already: an error item makes the server
                // abort the response, so the client sees a failed scrape, not a short one.
                let _ = writer.chunks.try_send(Err(ExpositionError::Encoding));
            }
        }
    });
    futures::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|chunk| (chunk, received))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    ClientGone,
    Stalled,
    Encoding,
}

/// A `fmt::Write` that hands full chunks to the response, waiting (bounded) when the
/// client is behind.
struct ChunkWriter {
    buffer: Vec<u8>,
    chunks: mpsc::Sender<Chunk>,
    runtime: Handle,
    stalled_after: Duration,
    failure: Option<Failure>,
}

impl ChunkWriter {
    fn flush(&mut self) -> Result<(), Failure> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        let sent = self.runtime.block_on(tokio::time::timeout(
            self.stalled_after,
            self.chunks.send(Ok(chunk)),
        ));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Failure::ClientGone),
            Err(_) => Err(Failure::Stalled),
        }
    }
}

impl fmt::Write for ChunkWriter {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.buffer.extend_from_slice(text.as_bytes());
        if self.buffer.len() >= CHUNK_BYTES
            && let Err(failure) = self.flush()
        {
            self.failure = Some(failure);
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    fn big_registry(series: usize) -> Arc<Registry> {
        let mut registry = Registry::with_prefix("selfheal");
        let family: Family<Vec<(String, String)>, Gauge> = Family::default();
        for index in 0..series {
            family
                .get_or_create(&vec![("pod".to_owned(), format!("pod-{index:06}"))])
                .set(index as i64);
        }
        registry.register("demo", "A demo gauge", family);
        Arc::new(registry)
    }

    async fn collect(format: Format, registry: Arc<Registry>) -> (Vec<usize>, String) {
        let chunks: Vec<Bytes> = stream(registry, format, Counter::default())
            .map(|chunk| chunk.expect("chunk"))
            .collect()
            .await;
        let sizes = chunks.iter().map(Bytes::len).collect();
        let text = chunks
            .iter()
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect();
        (sizes, text)
    }

    #[tokio::test]
    async fn streamed_text_equals_the_whole_encoding_in_bounded_chunks() {
        let registry = big_registry(20_000);
        for format in [Format::PrometheusText, Format::OpenMetrics] {
            let mut whole = String::new();
            match format {
                Format::PrometheusText => prometheus_text::encode(&mut whole, &registry),
                Format::OpenMetrics => text::encode(&mut whole, &registry),
            }
            .expect("encode");
            let (sizes, streamed) = collect(format, registry.clone()).await;
            assert_eq!(streamed, whole);
            assert!(sizes.len() > 5, "{sizes:?}");
            // A chunk ends at the first write past the threshold: one line at most over.
            assert!(
                sizes.iter().all(|&size| size < CHUNK_BYTES + 1024),
                "{sizes:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_client_that_leaves_stops_the_encoder() {
        let registry = big_registry(50_000);
        let aborted = Counter::default();
        let mut chunks = Box::pin(stream(
            registry.clone(),
            Format::PrometheusText,
            aborted.clone(),
        ));
        let first = chunks.next().await.expect("a chunk").expect("ok");
        assert!(!first.is_empty());
        drop(chunks);
        // The encoder drops its clone of the registry when it stops.
        for _ in 0..200 {
            if Arc::strong_count(&registry) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(Arc::strong_count(&registry), 1);
        assert_eq!(aborted.get(), 0, "a client leaving is not an error of ours");
    }

    #[tokio::test]
    async fn a_stalled_client_is_cut_off_and_counted() {
        let registry = big_registry(50_000);
        let aborted = Counter::default();
        let chunks = stream_with_timeout(
            registry.clone(),
            Format::PrometheusText,
            aborted.clone(),
            Duration::from_millis(100),
        );
        // Nobody reads: the encoder fills the channel, waits, gives up and lets go of
        // the registry (and so of the family locks).
        for _ in 0..500 {
            if aborted.get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(aborted.get(), 1);
        for _ in 0..200 {
            if Arc::strong_count(&registry) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(Arc::strong_count(&registry), 1);
        drop(chunks);
    }
}
