//! Identifiers: the [`UserId`], [`RoomId`] and [`CampaignId`] newtypes (validated on
//! construction, serde through the same check), the rules behind them, the id of a direct
//! room, message ids derived from what makes a send unique, and the spike-queue message group
//! of a room.

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
    if room.starts_with(DM_PREFIX) && dm_pair(room).is_none() {
        return Err("a dm: room id must be dm:<user>:<user> with the two users sorted".into());
    }
    Ok(())
}

/// Why a string is not a valid id (the message is safe to show the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        ///
        /// Valid by construction: [`Self::new`] (and `FromStr`, `TryFrom`, serde) check the
        /// rule, so code that holds one never checks again. Derefs to `str`.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                $check(&id).map_err(IdError)?;
                Ok($name(id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A user: 1 to 64 characters of `A-Z a-z 0-9 - _ . @ +` (see [`validate_user`]).
    UserId,
    validate_user
);
id_type!(
    /// A room: 1 to 132 characters of `A-Z a-z 0-9 - _ . @ + :`; a `dm:` room is a
    /// well-formed direct room (see [`validate_room`]).
    RoomId,
    validate_room
);
id_type!(
    /// A campaign (one marketing send, any number of EnqueueBulk calls): 1 to 64 characters
    /// of `A-Z a-z 0-9 - _ . @ +` (see [`validate_campaign`]).
    CampaignId,
    validate_campaign
);

impl UserId {
    /// The direct room of this user and `other`.
    pub fn dm_with(&self, other: &UserId) -> RoomId {
        RoomId(dm_room(self, other))
    }
}

impl RoomId {
    /// The two members of a direct room, or `None` for any other room.
    pub fn dm_members(&self) -> Option<[UserId; 2]> {
        dm_members(self).map(|[a, b]| [UserId(a), UserId(b)])
    }

    /// Whether `user` is neither member of this direct room (`false` for any other room).
    /// Allocation-free: it runs on every send, read and authorization.
    pub fn excludes_from_dm(&self, user: &UserId) -> bool {
        // A RoomId starting with `dm:` is a well-formed direct room (checked on construction).
        match self.0.strip_prefix(DM_PREFIX).and_then(|rest| rest.split_once(':')) {
            Some((a, b)) => a != user.as_str() && b != user.as_str(),
            None => false,
        }
    }
}

impl CampaignId {
    /// A fresh random campaign id.
    pub fn random() -> CampaignId {
        CampaignId(random_id())
    }
}

/// Longest campaign id accepted.
pub const MAX_CAMPAIGN_ID_LEN: usize = 64;

/// Checks a campaign id: 1 to 64 characters of `A-Z a-z 0-9 - _ . @ +` (campaign ids name
/// keys and queue scopes, so they hold no `:` or `/`).
pub fn validate_campaign(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CAMPAIGN_ID_LEN || !id.chars().all(id_char) {
        return Err(format!("campaign id must be 1-{MAX_CAMPAIGN_ID_LEN} characters of A-Z a-z 0-9 - _ . @ +"));
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
    dm_pair(room).map(|p| p.map(str::to_string))
}

/// [`dm_members`] borrowed from `room`, allocation-free (the embedded store asks it for every
/// message it writes).
pub fn dm_pair(room: &str) -> Option<[&str; 2]> {
    let rest = room.strip_prefix(DM_PREFIX)?;
    let (a, b) = rest.split_once(':')?;
    if validate_user(a).is_err() || validate_user(b).is_err() || a > b {
        return None;
    }
    Some([a, b])
}

const NS_CHAT: Uuid = Uuid::from_u128(0x5a1c_e000_0000_4000_8000_0000_0000_0001);
const NS_BULK: Uuid = Uuid::from_u128(0x5a1c_e000_0000_4000_8000_0000_0000_0002);
const NS_CALL: Uuid = Uuid::from_u128(0x5a1c_e000_0000_4000_8000_0000_0000_0003);
const NS_BODY: Uuid = Uuid::from_u128(0x5a1c_e000_0000_4000_8000_0000_0000_0004);

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

/// The reference under which a campaign's `body` is stored once for all its queued messages:
/// a digest of campaign and body, so calls of one campaign with the same body share it and a
/// call with another body gets its own. (A name-based UUID: SHA-1, strong enough here, since
/// a forged collision could only swap bodies within the forger's own campaign.)
pub fn campaign_body_ref(campaign_id: &str, body: &str) -> String {
    let key = format!("{campaign_id}\n{body}");
    Uuid::new_v5(&NS_BODY, key.as_bytes()).to_string()
}

/// Whether `s` has the form of [`campaign_body_ref`]'s references.
pub fn is_body_ref(s: &str) -> bool {
    s.len() == 36 && Uuid::try_parse(s).is_ok()
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
    fn body_references_name_campaign_and_body() {
        let r = campaign_body_ref("spring", "20% off");
        assert_eq!(r, campaign_body_ref("spring", "20% off"), "stable");
        assert_ne!(r, campaign_body_ref("spring", "30% off"));
        assert_ne!(r, campaign_body_ref("summer", "20% off"));
        assert!(is_body_ref(&r));
        assert!(!is_body_ref("../etc/passwd") && !is_body_ref(""));
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
    fn newtypes_check_on_every_way_in() {
        assert!(UserId::new("alice").is_ok());
        assert_eq!(UserId::new("a:b").unwrap_err().0, validate_user("a:b").unwrap_err());
        assert!("has space".parse::<RoomId>().is_err());
        assert!(CampaignId::try_from("spring/sale".to_string()).is_err(), "a campaign id holds no /");
        assert!(serde_json::from_str::<UserId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"not ok\"").is_err(), "deserializing checks too");
        assert_eq!(serde_json::to_string(&RoomId::new("general").unwrap()).unwrap(), "\"general\"");
        let (shop, ann) = (UserId::new("shop").unwrap(), UserId::new("ann").unwrap());
        let dm = shop.dm_with(&ann);
        assert_eq!(dm, "dm:ann:shop");
        assert_eq!(dm.dm_members(), Some([ann.clone(), shop.clone()]));
        assert!(dm.excludes_from_dm(&UserId::new("mallory").unwrap()));
        assert!(!dm.excludes_from_dm(&ann));
        assert!(!RoomId::new("general").unwrap().excludes_from_dm(&ann), "only direct rooms have fixed members");
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
