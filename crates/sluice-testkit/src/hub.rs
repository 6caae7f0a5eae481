//! The session hub conformance suite: delivery to every connection of a user, isolation,
//! bounded buffers, presence and the firehose.

use sluice_core::hub::{Hub, LiveEvent};
use std::sync::Arc;
use std::time::Duration;

/// Generates one `#[tokio::test]` per hub conformance test for the hub made by `$make`,
/// an async closure returning `(Arc<dyn Hub>, Guard)`.
#[macro_export]
macro_rules! hub_conformance {
    ($make:expr) => {
        $crate::__hub_tests!($make; delivers_to_every_connection_of_a_user, slow_connections_are_cut_off, presence_and_firehose);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __hub_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (hub, _guard) = ($make)().await;
                $crate::hub::$name(hub).await;
            }
        )*
    };
}

fn typing(room: &str, user: &str) -> LiveEvent {
    LiveEvent::Typing { room: room.to_string(), user: user.to_string() }
}

async fn next(rx: &mut sluice_core::hub::Events) -> Option<Arc<LiveEvent>> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.ok().flatten()
}

fn user(name: &str) -> String {
    format!("{name}-{}", sluice_core::ids::random_id())
}

pub async fn delivers_to_every_connection_of_a_user(hub: Arc<dyn Hub>) {
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a1 = hub.connect(&alice, 16).await.unwrap();
    let mut a2 = hub.connect(&alice, 16).await.unwrap();
    let mut b = hub.connect(&bob, 16).await.unwrap();
    assert_ne!(a1.id, a2.id);
    hub.publish(std::slice::from_ref(&alice), typing("r", "x")).await.unwrap();
    for rx in [&mut a1.events, &mut a2.events] {
        assert!(matches!(next(rx).await.as_deref(), Some(LiveEvent::Typing { room, .. }) if room == "r"));
    }
    hub.publish(std::slice::from_ref(&bob), typing("r2", "y")).await.unwrap();
    assert!(matches!(next(&mut b.events).await.as_deref(), Some(LiveEvent::Typing { room, .. }) if room == "r2"));
    assert!(a1.events.try_recv().is_err(), "alice gets nothing addressed to bob");
    hub.disconnect(&alice, a1.id).await;
    hub.publish(std::slice::from_ref(&alice), typing("r3", "z")).await.unwrap();
    assert!(matches!(next(&mut a2.events).await.as_deref(), Some(LiveEvent::Typing { room, .. }) if room == "r3"));
}

pub async fn slow_connections_are_cut_off(hub: Arc<dyn Hub>) {
    let slow_user = user("slow");
    let mut slow = hub.connect(&slow_user, 2).await.unwrap();
    for i in 0..5 {
        hub.publish(std::slice::from_ref(&slow_user), typing(&format!("r{i}"), "x")).await.unwrap();
    }
    let mut got = 0;
    while next(&mut slow.events).await.is_some() {
        got += 1;
    }
    assert_eq!(got, 2, "the buffer is bounded, then the channel closes");
    assert!(slow.events.overflowed());
}

pub async fn presence_and_firehose(hub: Arc<dyn Hub>) {
    let (on, off) = (user("on"), user("off"));
    let mut fire = hub.firehose().await;
    let c = hub.connect(&on, 4).await.unwrap();
    assert_eq!(hub.online(&[on.clone(), off.clone()]).await.unwrap(), vec![true, false]);
    hub.publish(std::slice::from_ref(&off), typing("fire", "x")).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), fire.recv()).await.unwrap().unwrap();
    assert!(matches!(&*e, LiveEvent::Typing { room, .. } if room == "fire"), "the firehose sees events for offline users too");
    hub.disconnect(&on, c.id).await;
    assert_eq!(hub.online(std::slice::from_ref(&on)).await.unwrap(), vec![false]);
}
