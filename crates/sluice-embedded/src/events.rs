//! Analytics events appended to a local JSON-lines file, written by a background task.

use async_trait::async_trait;
use sluice_core::events::{AnalyticsEvent, EventSink};
use std::io::Write;
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

/// Events buffered before new ones are dropped.
const BUFFER: usize = 65_536;

/// Called with the number of events dropped (to count them in metrics).
pub type Dropped = Box<dyn Fn(u64) + Send + Sync>;

enum Cmd {
    Events(Vec<AnalyticsEvent>),
    Flush(oneshot::Sender<()>),
    /// Events whose writing is confirmed (or refused) on the sender.
    Deliver(Vec<AnalyticsEvent>, oneshot::Sender<Result<(), String>>),
}

/// Appends events to a file, one JSON object per line. Never blocks the caller: when the
/// buffer is full, events are dropped and counted.
pub struct FileEvents {
    tx: mpsc::Sender<Cmd>,
    dropped: Dropped,
}

impl FileEvents {
    /// Opens `path` for appending and starts the writer task (needs a tokio runtime).
    pub fn open(path: &Path, dropped: Dropped) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, mut rx) = mpsc::channel::<Cmd>(BUFFER);
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            while let Some(cmd) = rx.blocking_recv() {
                match cmd {
                    Cmd::Events(events) => {
                        for e in events {
                            let _ = serde_json::to_writer(&mut out, &e);
                            let _ = out.write_all(b"\n");
                        }
                        if rx.is_empty() {
                            let _ = out.flush();
                        }
                    }
                    Cmd::Flush(done) => {
                        let _ = out.flush();
                        let _ = done.send(());
                    }
                    Cmd::Deliver(events, done) => {
                        let written = (|| -> std::io::Result<()> {
                            for e in events {
                                serde_json::to_writer(&mut out, &e)?;
                                out.write_all(b"\n")?;
                            }
                            out.flush()?;
                            out.get_ref().sync_data()
                        })();
                        let _ = done.send(written.map_err(|e| format!("cannot write analytics events: {e}")));
                    }
                }
            }
            let _ = out.flush();
        });
        Ok(FileEvents { tx, dropped })
    }
}

#[async_trait]
impl EventSink for FileEvents {
    fn emit(&self, events: Vec<AnalyticsEvent>) {
        let n = events.len() as u64;
        if self.tx.try_send(Cmd::Events(events)).is_err() {
            (self.dropped)(n);
        }
    }

    async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn deliver(&self, events: Vec<AnalyticsEvent>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Deliver(events, tx)).await.map_err(|_| "the events writer stopped".to_string())?;
        rx.await.map_err(|_| "the events writer stopped".to_string())?
    }
}
