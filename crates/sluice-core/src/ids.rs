//! Identifier rules: which user and room ids are valid, the id of a direct room, message ids
//! derived from what makes a send unique, and the spike-queue message group of a room.

use uuid::Uuid;

/// Longest user id accepted.
pub const MAX_USER_ID_LEN: usize = 64;
/// Longest room id accepted (a direct room holds two user ids plus `dm:` and a colon).
pub const MAX_ROOM_ID_LEN: usize = 3 + 2 * MAX_USER_ID_LEN + 1;
/// Prefix of direct (two-person) rooms.
pub const DM_PREFIX: &str = "dm:";

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+')
}

/// Checks a user id: 1 to 64 characters of `A-Z a-z 0-9 - _ . @ +`. No colon, so that direct
/// room ids can be split back into their two users.
pub fn validate_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > MAX_USER_ID_LEN || !user.chars().all(id_char) {
        return Err(format!("user id must be 1-{MAX_USER_ID_LEN} characters of A-Z a-z 0-9 - _ . @ +"));
    }
    Ok(())
}

/// Checks a room id: 1 to 132 characters of `A-Z a-z 0-9 - _ . @ + :`. Ids starting with
/// `dm:` must be well-formed direct rooms (see [`dm_members`]).
pub fn validate_room(room: &str) -> Result<(), String> {
    if room.is_empty() || room.len() > MAX_ROOM_ID_LEN || !room.chars().all(|c| id_char(c) || c == ':') {
        return Err(format!("room id must be 1-{MAX_ROOM_ID_LEN} characters of A-Z a-z 0-9 - _ . @ + :"));
    }
    if room.starts_with(DM_PREFIX) && dm_members(room).is_none() {
        return Err("a dm: room id must be dm:<user>:<user> with the two users sorted".into());
    }
    Ok(())
}

/// The direct room of two users: `dm:` + both ids sorted and joined by `:`.
pub fn dm_room(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("{DM_PREFIX}{x}:{y}")
}

/// The two members of a direct room id, or `None` if `room` is not a canonical direct room.
pub fn dm_members(room: &str) -> Option<[String; 2]> {
    let rest = room.strip_prefix(DM_PREFIX)?;
    let (a, b) = rest.split_once(':')?;
    if validate_user(a).is_err() || validate_user(b).is_err() || a > b {
        return None;
    }
    Some([a.to_string(), b.to_string()])
}

const NS_CHAT: Uuid = Uuid::from_u128(0x5a1c_e000_0000_4000_8000_0000_0000_0001);
const NS_BULK: Uuid = Uuid::from_u128(0x5a1c_e000_0000_4000_8000_0000_0000_0002);
const NS_CALL: Uuid = Uuid::from_u128(0x5a1c_e000_0000_4000_8000_0000_0000_0003);

/// The message id of an interactive send: the same sender, room and client message id always
/// give the same id, so a retried send is recognised as the same message.
pub fn chat_msg_id(sender: &str, room: &str, client_msg_id: &str) -> String {
    let key = format!("{}\n{}\n{}", sender, room, client_msg_id);
    Uuid::new_v5(&NS_CHAT, key.as_bytes()).to_string()
}

/// The message id of a campaign's one-off message to `recipient`: repeated recipients in
/// one campaign, across any number of calls, map to one message.
pub fn bulk_msg_id(campaign_id: &str, recipient: &str) -> String {
    let key = format!("{}\n{}", campaign_id, recipient);
    Uuid::new_v5(&NS_BULK, key.as_bytes()).to_string()
}

/// The key under which a store remembers that it counted one EnqueueBulk call's request
/// entries (`requested`) for the recipients it accepted: a retry of the same call has the same
/// key and is not counted twice. Starts with `~`, which no message id or user id holds.
pub fn enqueue_call_key(campaign_id: &str, requested: u64, recipients: &[String]) -> String {
    let mut key = format!("{campaign_id}\n{requested}");
    for r in recipients {
        key.push('\n');
        key.push_str(r);
    }
    format!("~call:{}", Uuid::new_v5(&NS_CALL, key.as_bytes()).simple())
}

/// Who a campaign belongs to, as its stores record it: `tenant/sender`, or just `sender`
/// when the tenant is the sender (the default, and how campaigns were recorded before
/// tenants existed). Neither id may hold a `/`, so the owner splits back.
pub fn campaign_owner(tenant: &str, sender: &str) -> String {
    if tenant == sender { sender.to_string() } else { format!("{tenant}/{sender}") }
}

/// The tenant of a campaign owner written by [`campaign_owner`].
pub fn owner_tenant(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(t, _)| t)
}

/// A fresh random id (rooms, campaigns, sends without a client id).
pub fn random_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// The spike-queue message group of a room. One group is processed by one worker at a time,
/// which is what keeps a room's messages in order under any number of workers. SQS limits a
/// group id to 128 characters, so long room ids are hashed.
pub fn queue_group(room: &str) -> String {
    if room.len() <= 128 { room.to_string() } else { format!("h:{}", Uuid::new_v5(&NS_CHAT, room.as_bytes()).simple()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dm_room_is_sorted_and_parses_back() {
        assert_eq!(dm_room("shop-42", "alice"), "dm:alice:shop-42");
        assert_eq!(dm_members("dm:alice:shop-42").unwrap(), ["alice".to_string(), "shop-42".to_string()]);
        assert!(dm_members("dm:shop-42:alice").is_none(), "unsorted ids are not canonical");
        assert!(validate_room("dm:bob").is_err());
    }

    #[test]
    fn ids_reject_bad_characters() {
        assert!(validate_user("a:b").is_err());
        assert!(validate_user("").is_err());
        assert!(validate_user(&"x".repeat(65)).is_err());
        assert!(validate_room("general").is_ok());
        assert!(validate_room("has space").is_err());
    }

    #[test]
    fn message_ids_are_deterministic() {
        assert_eq!(chat_msg_id("a", "r", "1"), chat_msg_id("a", "r", "1"));
        assert_ne!(chat_msg_id("a", "r", "1"), chat_msg_id("b", "r", "1"));
        assert_ne!(bulk_msg_id("c", "x"), bulk_msg_id("c", "y"));
        assert_eq!(bulk_msg_id("c", "x").len(), 36);
    }

    proptest! {
        #[test]
        fn dm_room_round_trips(a in "[a-z0-9_.-]{1,64}", b in "[a-z0-9_.-]{1,64}") {
            let room = dm_room(&a, &b);
            let m = dm_members(&room).unwrap();
            let mut want = [a.clone(), b.clone()];
            want.sort();
            prop_assert_eq!(m, want);
            prop_assert_eq!(dm_room(&b, &a), room);
        }

        #[test]
        fn groups_are_short_and_stable(room in "[a-z:]{1,300}") {
            let g = queue_group(&room);
            prop_assert!(g.len() <= 128);
            prop_assert_eq!(g, queue_group(&room));
        }
    }
}
