//! Receiving over the tenant lanes: lanes with messages take turns by deficit round robin on
//! their weights, and a lane that looked empty is probed at most once a [`EMPTY_LANE_PROBE`].

use super::*;

/// Longest long poll SQS allows.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long a lane that answered empty is skipped before it is probed again.
pub(super) const EMPTY_LANE_PROBE: Duration = Duration::from_secs(1);
/// Messages a lane of weight 1 may take per turn: one full receive.
pub(super) const QUANTUM: i64 = BATCH as i64;
/// Most weight a lane counts, however many heavy tenants it shows at once.
const MAX_LANE_WEIGHT: u32 = 1000;

/// Whose turn it is over the lanes, and which lanes looked empty until when.
///
/// A lane's weight is the sum of the weights of the tenants its last receive handed out (a
/// FIFO queue hands out a lane's tenants in arrival order, so that is who it serves now).
/// The lane holding the turn is received from until it has taken `QUANTUM × weight`
/// messages; what a receive takes beyond that is owed at its next turn. A lane that looked
/// empty gives up the turn and owes nothing.
pub(super) struct Lanes {
    turn: usize,
    empty_until: Vec<Option<Instant>>,
    deficit: Vec<i64>,
    weight: Vec<u32>,
}

impl Lanes {
    pub(super) fn new(lanes: usize) -> Self {
        let lanes = lanes.max(1);
        Lanes { turn: lanes - 1, empty_until: vec![None; lanes], deficit: vec![0; lanes], weight: vec![1; lanes] }
    }

    fn ready(&self, lane: usize, now: Instant) -> bool {
        self.empty_until[lane].is_none_or(|t| t <= now)
    }

    /// The lane to receive from: the one holding the turn while it has deficit left, else the
    /// next one in turn that did not look empty lately, which gains its quantum.
    pub(super) fn next_busy(&mut self, now: Instant) -> Option<usize> {
        if self.deficit[self.turn] > 0 && self.ready(self.turn, now) {
            return Some(self.turn);
        }
        let n = self.empty_until.len();
        let lane = (1..=n).map(|k| (self.turn + k) % n).find(|&lane| self.ready(lane, now))?;
        self.turn = lane;
        self.deficit[lane] += QUANTUM * i64::from(self.weight[lane]);
        Some(lane)
    }

    /// The next lane in turn, empty or not (to wait on when all looked empty).
    pub(super) fn next_any(&mut self) -> usize {
        self.turn = (self.turn + 1) % self.empty_until.len();
        self.turn
    }

    /// What a receive from `lane` handed out: how many messages, and the sum of their
    /// distinct tenants' weights.
    pub(super) fn saw(&mut self, lane: usize, got: usize, weight: u32) {
        if got == 0 {
            self.empty_until[lane] = Some(Instant::now() + EMPTY_LANE_PROBE);
            self.deficit[lane] = 0;
        } else {
            self.empty_until[lane] = None;
            self.deficit[lane] -= got as i64;
            self.weight[lane] = weight.clamp(1, MAX_LANE_WEIGHT);
        }
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

    /// Tells the lanes what a receive from `lane` handed out.
    fn saw(&self, lane: usize, got: &[Message]) {
        let mut tenants: Vec<&str> = got.iter().map(|m| user_attr(m, ATTR_TENANT).unwrap_or_default()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let weight = tenants.iter().map(|t| self.weights.of(t)).fold(0u32, u32::saturating_add);
        self.lanes.lock().expect("lanes lock").saw(lane, got.len(), weight);
    }

    /// Receives from the lanes in turn (see [`Lanes`]): first a short poll of the lane whose
    /// turn it is, then, when all looked empty, a wait on one lane.
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
                self.saw(lane, &got);
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
                self.saw(lane, &got);
                if !got.is_empty() {
                    return Ok((lane, got));
                }
            } else {
                // Long polls wait whole seconds; a wait on one lane stops at the next probe of the others.
                let got = self.receive_from(&self.urls[lane], max, left.min(EMPTY_LANE_PROBE), visibility).await?;
                self.saw(lane, &got);
                if !got.is_empty() || Instant::now() >= give_up {
                    return Ok((lane, got));
                }
            }
        }
    }
}
