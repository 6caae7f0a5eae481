//! Receiving over the tenant lanes: receives take turns over the lanes that had messages and
//! probe a lane that looked empty at most once a [`EMPTY_LANE_PROBE`].

use super::*;

/// Longest long poll SQS allows.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long a lane that answered empty is skipped before it is probed again.
pub(super) const EMPTY_LANE_PROBE: Duration = Duration::from_secs(1);

/// Which lane receives next, and which lanes looked empty until when.
pub(super) struct Lanes {
    pub(super) next: usize,
    pub(super) empty_until: Vec<Option<Instant>>,
}

impl Lanes {
    /// The next lane in turn that did not look empty lately.
    pub(super) fn next_busy(&mut self, now: Instant) -> Option<usize> {
        let n = self.empty_until.len();
        for k in 0..n {
            let lane = (self.next + k) % n;
            if self.empty_until[lane].is_none_or(|t| t <= now) {
                self.next = (lane + 1) % n;
                return Some(lane);
            }
        }
        None
    }

    /// The next lane in turn, empty or not.
    pub(super) fn next_any(&mut self) -> usize {
        let lane = self.next;
        self.next = (lane + 1) % self.empty_until.len();
        lane
    }

    pub(super) fn saw(&mut self, lane: usize, empty: bool) {
        self.empty_until[lane] = empty.then(|| Instant::now() + EMPTY_LANE_PROBE);
    }
}

/// The lane of `tenant` among `lanes` (FNV-1a: stable across processes and releases).
pub fn lane_of(tenant: &str, lanes: usize) -> usize {
    let h = tenant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h % lanes.max(1) as u64) as usize
}

impl SqsQueue {
    #[allow(deprecated)] // AttributeNames is deprecated, but older emulators know only it
    pub(super) async fn receive_from(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let attempt_id = sluice_core::ids::random_id();
        let mut attempt = 0;
        loop {
            self.count("ReceiveMessage");
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(max.clamp(1, BATCH) as i32)
                .wait_time_seconds(wait.min(MAX_WAIT).as_secs_f64().ceil() as i32)
                .visibility_timeout(visibility.as_secs().max(1) as i32)
                .receive_request_attempt_id(&attempt_id)
                .attribute_names(QueueAttributeName::All)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await;
            match out {
                Ok(out) => return Ok(out.messages.unwrap_or_default()),
                Err(e) => match queue_error("ReceiveMessage", e) {
                    // The same attempt id again: SQS hands back what the lost answer held.
                    e @ QueueError::Unavailable(_) => {
                        self.pause(attempt, &e.to_string()).await?;
                        attempt += 1;
                    }
                    e => return Err(e),
                },
            }
        }
    }

    /// Receives from the lanes in turn (see the module doc): first a short poll of each lane
    /// that had messages or is due a probe, then, when all looked empty, a wait on one lane.
    pub(super) async fn receive_lanes(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<(usize, Vec<Message>), QueueError> {
        let give_up = Instant::now() + wait;
        let mut pause = Duration::from_millis(20);
        loop {
            let busy = self.lanes.lock().expect("lanes lock").next_busy(Instant::now());
            if let Some(lane) = busy {
                let got = self.receive_from(&self.urls[lane], max, Duration::ZERO, visibility).await?;
                self.lanes.lock().expect("lanes lock").saw(lane, got.is_empty());
                if !got.is_empty() {
                    return Ok((lane, got));
                }
                continue;
            }
            let left = give_up.saturating_duration_since(Instant::now());
            let lane = self.lanes.lock().expect("lanes lock").next_any();
            if left.is_zero() {
                return Ok((lane, Vec::new()));
            }
            if self.client_side_wait {
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(500));
                let got = self.receive_from(&self.urls[lane], max, Duration::ZERO, visibility).await?;
                self.lanes.lock().expect("lanes lock").saw(lane, got.is_empty());
                if !got.is_empty() {
                    return Ok((lane, got));
                }
            } else {
                // Long polls wait whole seconds; a wait on one lane stops at the next probe of the others.
                let got = self.receive_from(&self.urls[lane], max, left.min(EMPTY_LANE_PROBE), visibility).await?;
                self.lanes.lock().expect("lanes lock").saw(lane, got.is_empty());
                if !got.is_empty() || Instant::now() >= give_up {
                    return Ok((lane, got));
                }
            }
        }
    }
}
