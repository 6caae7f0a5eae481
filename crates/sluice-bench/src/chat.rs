//! The chat load: C WebSocket users in rooms of S members, sending R messages per second in
//! total, spread evenly over the connections with random phases.
//!
//! Every send carries its send time (microseconds since the load started) in its
//! `client_msg_id` and at the start of its body, so the sender's `ack` gives send->ack and
//! every other member's `message` frame gives send->deliver, without shared state between
//! connections. Latency is measured from the moment the frame was handed to the socket; a
//! sender that falls behind skips ticks (the sent rate is reported next to the target rate).
//!
//! Samples go into the current *phase* (warm-up, then the phases a scenario names), so one
//! running load can be compared before, during and after a spike.

use crate::args::ChatArgs;
use crate::stats::Latency;
use crate::target::Target;
use anyhow::Context;
use futures::{SinkExt, StreamExt, stream};
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Handshakes and room creations in flight while setting up.
const SETUP_PARALLEL: usize = 64;
/// How long after the last send the load waits for deliveries still in flight.
const DRAIN: Duration = Duration::from_secs(1);
/// How long a phase may be stretched past its length while it has no delivery yet.
const FIRST_DELIVERY_WAIT: Duration = Duration::from_secs(60);

/// What one phase measured.
#[derive(Clone, Default)]
pub struct PhaseStats {
    pub ack: Latency,
    pub deliver: Latency,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    pub secs: f64,
}

struct Phases {
    stats: Vec<PhaseStats>,
    started: Vec<Instant>,
    /// send->deliver per second since the load started, for plots.
    per_second: Vec<Latency>,
}

pub struct Recorder {
    epoch: Instant,
    phase: AtomicUsize,
    inner: Mutex<Phases>,
}

impl Recorder {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn with_phase(&self, f: impl FnOnce(&mut PhaseStats, &mut Vec<Latency>)) {
        let phase = self.phase.load(Ordering::Relaxed);
        let mut p = self.inner.lock().expect("recorder lock");
        let Phases { stats, per_second, .. } = &mut *p;
        f(&mut stats[phase], per_second);
    }

    fn ack(&self, sent_us: u64) {
        let now = self.micros();
        self.with_phase(|p, _| p.ack.record_micros(now.saturating_sub(sent_us)));
    }

    fn deliver(&self, sent_us: u64) {
        let now = self.micros();
        self.with_phase(|p, per_second| {
            p.delivered += 1;
            p.deliver.record_micros(now.saturating_sub(sent_us));
            let sec = (now / 1_000_000) as usize;
            if per_second.len() <= sec {
                per_second.resize_with(sec + 1, Latency::default);
            }
            per_second[sec].record_micros(now.saturating_sub(sent_us));
        });
    }

    fn sent(&self) {
        self.with_phase(|p, _| p.sent += 1);
    }

    fn error(&self) {
        self.with_phase(|p, _| p.errors += 1);
    }

    fn delivered_in_phase(&self) -> u64 {
        let phase = self.phase.load(Ordering::Relaxed);
        self.inner.lock().expect("recorder lock").stats[phase].delivered
    }

    /// (sent, delivered, errors) over every phase so far.
    fn totals(&self) -> (u64, u64, u64) {
        let p = self.inner.lock().expect("recorder lock");
        p.stats.iter().fold((0, 0, 0), |(s, d, e), x| (s + x.sent, d + x.delivered, e + x.errors))
    }
}

/// A running chat load.
pub struct ChatLoad {
    pub rec: Arc<Recorder>,
    stop: CancellationToken,
    senders: Vec<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
    pub users: usize,
    pub rooms: usize,
    sending: bool,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sender: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

impl ChatLoad {
    /// Creates the rooms over gRPC, connects every user and starts sending. `phases` is the
    /// number of phases after the warm-up (phase 0).
    pub async fn start(target: &Target, a: &ChatArgs, run: &str, phases: usize) -> anyhow::Result<ChatLoad> {
        let size = a.room_size as usize;
        let rooms = (a.connections as usize / size).max(1);
        let users = rooms * size;
        let user = |i: usize| format!("{run}-u{i}");
        let grpc = target.grpc().await?;
        let created: Vec<anyhow::Result<()>> = stream::iter(0..rooms)
            .map(|r| {
                let mut g = grpc.clone();
                let members: Vec<String> = (r * size..(r + 1) * size).map(user).collect();
                async move {
                    let req = sluice_proto::v1::CreateRoomRequest { room: format!("{run}-r{r}"), members };
                    g.create_room(req).await.map(drop).context("CreateRoom")
                }
            })
            .buffer_unordered(SETUP_PARALLEL)
            .collect()
            .await;
        created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;

        let sockets: Vec<anyhow::Result<_>> = stream::iter(0..users)
            .map(|i| {
                let url = target.ws_url(&user(i));
                async move { Ok(tokio_tungstenite::connect_async_with_config(url, None, true).await.context("WebSocket connect")?.0) }
            })
            .buffered(SETUP_PARALLEL)
            .collect()
            .await;

        let rec = Arc::new(Recorder {
            epoch: Instant::now(),
            phase: AtomicUsize::new(0),
            inner: Mutex::new(Phases { stats: vec![PhaseStats::default(); phases + 2], started: vec![Instant::now()], per_second: vec![] }),
        });
        let stop = CancellationToken::new();
        // Silent connections (rate 0) still read, so they cost the server what idle users do.
        let period = Duration::from_secs_f64(users as f64 / a.rate.max(1) as f64);
        let pad = "x".repeat(a.body_bytes as usize);
        let (mut senders, mut readers) = (vec![], vec![]);
        for (i, socket) in sockets.into_iter().enumerate() {
            let (mut sink, mut source) = socket?.split();
            let me = user(i);
            let room = format!("{run}-r{}", i / size);
            let (rec_r, rec_s, stop_s, pad) = (rec.clone(), rec.clone(), stop.clone(), pad.clone());
            readers.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = source.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(f) = serde_json::from_str::<Incoming>(text.as_str()) else { continue };
                    match f.kind.as_ref() {
                        "ack" => {
                            if let Some(t) = f.client_msg_id.and_then(|c| c.parse().ok()) {
                                rec_r.ack(t);
                            }
                        }
                        "message" if f.sender.as_deref() != Some(me.as_str()) => {
                            let t = f.body.as_deref().and_then(|b| b.strip_prefix('t')?.split(' ').next()?.parse().ok());
                            if let Some(t) = t {
                                rec_r.deliver(t);
                            }
                        }
                        "error" => {
                            if rec_r.totals().2 < 5 {
                                eprintln!("server error frame: {:?}", f.code);
                            }
                            rec_r.error();
                        }
                        _ => {}
                    }
                }
            }));
            if a.rate == 0 {
                continue;
            }
            let offset = period.mul_f64(rand::random::<f64>());
            senders.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = stop_s.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let t = rec_s.micros();
                    let body = &pad[..pad.len().saturating_sub(12)];
                    let frame = format!(r#"{{"type":"send","room":"{room}","client_msg_id":"{t}","body":"t{t} {body}"}}"#);
                    if sink.send(Message::text(frame)).await.is_err() {
                        break;
                    }
                    rec_s.sent();
                }
                let _ = sink.close().await;
            }));
        }
        Ok(ChatLoad { rec, stop, senders, readers, users, rooms, sending: a.rate > 0 })
    }

    /// Starts phase `n` (1, 2, ...); samples from now on count there.
    pub fn phase(&self, n: usize) {
        let mut p = self.rec.inner.lock().expect("recorder lock");
        p.started.push(Instant::now());
        self.rec.phase.store(n, Ordering::Relaxed);
    }

    /// Lets the current phase run for `secs`, and on past that until it has seen a delivery
    /// (for at most a minute): on a slow or loaded host a phase is stretched rather than left
    /// without samples. Phase lengths are measured, so rates stay true.
    pub async fn hold(&self, secs: f64) {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let deadline = Instant::now() + FIRST_DELIVERY_WAIT;
        while self.sending && self.rec.delivered_in_phase() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `sent delivered errors` so far, for the progress line.
    pub fn status(rec: &Recorder) -> String {
        let (sent, delivered, errors) = rec.totals();
        format!("chat: sent {sent} delivered {delivered} errors {errors}")
    }

    /// Stops sending, waits for deliveries in flight, closes the sockets and returns each
    /// phase's figures (index 0 is the warm-up) and send->deliver (p50, p99) per second.
    pub async fn finish(self) -> (Vec<PhaseStats>, Vec<(f64, f64, f64)>) {
        let ended = Instant::now();
        self.stop.cancel();
        for s in self.senders {
            let _ = s.await;
        }
        tokio::time::sleep(DRAIN).await;
        for r in &self.readers {
            r.abort();
        }
        let p = self.rec.inner.lock().expect("recorder lock");
        let mut stats = p.stats.clone();
        for (i, start) in p.started.iter().enumerate() {
            let end = p.started.get(i + 1).copied().unwrap_or(ended);
            stats[i].secs = end.duration_since(*start).as_secs_f64();
        }
        let per_second =
            p.per_second.iter().enumerate().filter(|(_, l)| l.count() > 0).map(|(s, l)| (s as f64, l.ms(0.5), l.ms(0.99))).collect();
        (stats, per_second)
    }
}
