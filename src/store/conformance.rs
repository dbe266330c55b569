//! The store test suite, run against every backend: each backend's tests call
//! [`suite!`] with a way to make a [`Backend`], so that a behaviour the server relies on is
//! checked once and holds for SQLite and PostgreSQL alike. Each backend brings its blob
//! backend too (the data directory beside SQLite, chunks in the database beside
//! PostgreSQL), and the blob tests run on both. Backend-specific behaviour (the SQLite
//! store's group commit and free-space floor, the directory's layout, the PostgreSQL
//! blobs' crash leftovers) is tested next to the backend.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{
    BlobRef, Blobs, ItemContent, ItemId, ItemKind, NewItem, Store, StoreError, UserId,
    ITEM_OVERHEAD_BYTES,
};

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A quota no test reaches.
pub(crate) const BIG: u64 = 1 << 30;
/// A string that would break a query built by pasting it in.
pub(crate) const EVIL: &str = "x'); DROP TABLE users;--";
/// What each item costs on top of its size.
const O: u64 = ITEM_OVERHEAD_BYTES;

/// One empty store of a backend, which each test may open more than once (a restart).
pub(crate) trait Backend {
    /// The store type.
    type S: Store;
    /// Opens the backend's store: the same data on every call.
    fn open(&self) -> Result<Self::S, StoreError>;
    /// The blobs beside the store, as a server would hold them.
    fn blobs(&self) -> &Blobs;
    /// How many things (files, rows) the blob backend holds, staged or committed: what a
    /// test checks to see that nothing was left behind.
    fn blob_leftovers(&self) -> Result<usize, Box<dyn std::error::Error>>;
    /// Makes every blob older than any age a start-up sweep waits for (a backend shared by
    /// a fleet sweeps only old leftovers).
    fn age_blobs(&self) -> TestResult;
}

/// Declares every test of the suite for the backend that `$make` returns
/// (`Result<Option<B>, _>`; `None` skips the test, for a backend whose server is absent).
macro_rules! suite {
    ($make:expr) => {
        $crate::store::conformance::suite!(@tests $make;
            add_and_duplicate_user,
            credentials_and_password_change,
            a_hash_upgrade_never_overwrites_a_changed_password,
            list_users_sorted_with_usage,
            deliver_each_kind_and_read_back,
            inbox_pages_by_id,
            other_users_items_are_invisible,
            quota_exceeded_is_refused_atomically,
            deliver_refuses_bad_input,
            delete_frees_quota_and_returns_unreferenced_blobs,
            item_ids_are_never_reused,
            an_issued_id_stays_issued_after_its_item_is_deleted,
            deliver_all_is_deliver_in_turn,
            deliver_named_resolves_names_and_answers_unknown_ones,
            concurrent_deliveries_respect_the_quota,
            blobs_read_back_in_any_range,
            an_upload_dropped_before_commit_leaves_nothing,
            removing_a_blob_is_idempotent,
            invalid_blob_ids_are_refused,
            uploads_hold_quota_until_dropped_removed_or_delivered,
            unreferenced_blobs_are_set_aside_at_start_up,
        );
    };
    (@tests $make:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() -> $crate::store::conformance::TestResult {
                match $make()? {
                    Some(backend) => $crate::store::conformance::$name(&backend),
                    None => Ok(()),
                }
            }
        )*
    };
}
pub(crate) use suite;

pub(crate) fn two_users(store: &impl Store) -> Result<(UserId, UserId), StoreError> {
    Ok((
        store.add_user("alice", "h-a")?,
        store.add_user("bob", "h-b")?,
    ))
}

pub(crate) fn blob(blobs: &Blobs, content: &[u8], name: &str) -> Result<BlobRef, StoreError> {
    let mut staged = blobs.stage()?;
    staged.append(content)?;
    staged.commit(name)
}

pub(crate) fn message(text: &str) -> NewItem {
    NewItem::Message { text: text.into() }
}

/// Checks each user's usage against the items they sent that still exist (read through
/// every inbox), the invariant deliver and delete keep.
fn usage_consistent(store: &impl Store) -> TestResult {
    let users = store.list_users()?;
    let mut sent: HashMap<String, u64> = HashMap::new();
    for u in &users {
        let id = store.user_id(&u.name)?.ok_or("listed user has no id")?;
        for e in store.inbox(id, 0, u32::MAX)? {
            *sent.entry(e.from).or_default() += e.size + O;
        }
    }
    for u in &users {
        assert_eq!(
            u.usage_bytes,
            sent.get(&u.name).copied().unwrap_or(0),
            "usage of {}",
            u.name
        );
    }
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn deliver_named_resolves_names_and_answers_unknown_ones<B: Backend>(
    b: &B,
) -> TestResult {
    let store = std::sync::Arc::new(b.open()?);
    let (alice, bob) = two_users(&*store)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let named = rt.block_on(std::sync::Arc::clone(&store).deliver_named(
        alice,
        vec![
            ("bob".into(), message("one")),
            ("nobody".into(), message("two")),
            ("bob".into(), message("three")),
        ],
        BIG,
    ));
    assert!(
        matches!(named.as_slice(), [Ok(Some(a)), Ok(None), Ok(Some(c))] if a < c),
        "{named:?}"
    );
    let texts: Vec<String> = store
        .inbox(bob, 0, 10)?
        .iter()
        .map(|e| match store.item(bob, e.id) {
            Ok(Some(item)) => match item.content {
                ItemContent::Message { text } => text,
                other => format!("{other:?}"),
            },
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, ["one", "three"]);
    assert_eq!(store.usage(alice)?, 3 + 5 + 2 * O);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn concurrent_deliveries_respect_the_quota<B: Backend>(b: &B) -> TestResult {
    // Two stores on the same data (two servers, or two connections): the quota holds
    // across them.
    let first = b.open()?;
    let second = b.open()?;
    let (alice, bob) = two_users(&first)?;
    let quota = 10 * (1 + O);
    let accepted: Vec<ItemId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = if i % 2 == 0 { &first } else { &second };
                s.spawn(move || {
                    (0..5)
                        .filter_map(|_| store.deliver(alice, bob, message("x"), quota).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    assert_eq!(accepted.len(), 10, "exactly the quota's worth is accepted");
    let unique: HashSet<ItemId> = accepted.iter().copied().collect();
    assert_eq!(unique.len(), 10, "no id is handed out twice");
    assert_eq!(first.usage(alice)?, quota);
    assert_eq!(second.inbox(bob, 0, 100)?.len(), 10);
    assert!(matches!(
        second.deliver(alice, bob, message("x"), quota),
        Err(StoreError::QuotaExceeded { .. })
    ));
    usage_consistent(&first)?;
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn add_and_duplicate_user<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let id = store.add_user("alice", "hash")?;
    assert!(
        matches!(store.add_user("alice", "other"), Err(StoreError::UserExists(n)) if n == "alice")
    );
    assert_eq!(store.user_id("alice")?, Some(id));
    assert_eq!(store.user_id("nobody")?, None);
    assert!(matches!(
        store.add_user("Alice", "h"),
        Err(StoreError::InvalidName(_))
    ));
    assert!(matches!(
        store.add_user(EVIL, "h"),
        Err(StoreError::InvalidName(_))
    ));
    assert!(matches!(
        store.add_user("carol", ""),
        Err(StoreError::EmptyPasswordHash)
    ));
    assert_eq!(store.user_id("carol")?, None);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn credentials_and_password_change<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let id = store.add_user("alice", "$argon2id$old")?;
    assert_eq!(
        store.credentials("alice")?,
        Some((id, "$argon2id$old".to_owned()))
    );
    assert_eq!(store.credentials("bob")?, None);
    assert_eq!(store.ticket_epoch(id)?, Some(("alice".to_owned(), 0)));
    store.set_password("alice", EVIL)?;
    assert_eq!(store.credentials("alice")?, Some((id, EVIL.to_owned())));
    // A password change revokes the user's resume tickets; a re-hash does not.
    assert_eq!(store.ticket_epoch(id)?, Some(("alice".to_owned(), 1)));
    assert!(store.upgrade_password_hash(id, EVIL, "$argon2id$rehashed")?);
    assert_eq!(store.ticket_epoch(id)?, Some(("alice".to_owned(), 1)));
    assert_eq!(store.ticket_epoch(id + 1)?, None);
    assert!(
        matches!(store.set_password("bob", "h"), Err(StoreError::UnknownUser(n)) if n == "bob")
    );
    assert!(matches!(
        store.set_password("alice", ""),
        Err(StoreError::EmptyPasswordHash)
    ));
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn a_hash_upgrade_never_overwrites_a_changed_password<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let id = store.add_user("alice", "$argon2id$old")?;
    assert!(store.upgrade_password_hash(id, "$argon2id$old", "$argon2id$new")?);
    assert_eq!(
        store.credentials("alice")?.map(|c| c.1).as_deref(),
        Some("$argon2id$new")
    );
    // An operator changed the password between the login and its upgrade: kept.
    store.set_password("alice", "$argon2id$operator")?;
    assert!(!store.upgrade_password_hash(id, "$argon2id$new", "$argon2id$newer")?);
    assert_eq!(
        store.credentials("alice")?.map(|c| c.1).as_deref(),
        Some("$argon2id$operator")
    );
    assert!(matches!(
        store.upgrade_password_hash(id, "$argon2id$operator", ""),
        Err(StoreError::EmptyPasswordHash)
    ));
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn list_users_sorted_with_usage<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let c = store.add_user("carol", "h")?;
    let a = store.add_user("alice", "h")?;
    store.add_user("bob", "h")?;
    store.deliver(c, a, message("hey"), BIG)?;
    let users = store.list_users()?;
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(users[2].usage_bytes, 3 + O);
    assert_eq!(users[0].usage_bytes, 0);
    assert!(users[0].created_at_ms > 0);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn deliver_each_kind_and_read_back<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let blobs = b.blobs();
    let (alice, bob) = two_users(&store)?;

    let m = store.deliver(alice, bob, message(EVIL), BIG)?;
    let att1 = blob(blobs, b"attachment one", "one.txt")?;
    let att2 = blob(blobs, b"two", EVIL)?;
    let mail = NewItem::Mail {
        subject: EVIL.into(),
        body: "body\0with nul".into(),
        attachments: vec![att1.clone(), att2.clone()],
    };
    let mail_size = mail.size();
    let ml = store.deliver(alice, bob, mail, BIG)?;
    let file = blob(blobs, b"file content", "report.pdf")?;
    let f = store.deliver(bob, bob, NewItem::File(file.clone()), BIG)?;
    assert!(m < ml && ml < f);

    let inbox = store.inbox(bob, 0, 10)?;
    let summary: Vec<(ItemId, ItemKind, &str, u64, &str)> = inbox
        .iter()
        .map(|e| (e.id, e.kind, e.from.as_str(), e.size, e.title.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (m, ItemKind::Message, "alice", EVIL.len() as u64, ""),
            (ml, ItemKind::Mail, "alice", mail_size, EVIL),
            (f, ItemKind::File, "bob", 12, "report.pdf"),
        ]
    );
    assert_eq!(mail_size, (EVIL.len() + 13 + 14 + 3) as u64);
    assert!(store.inbox(alice, 0, 10)?.is_empty());

    let item = store.item(bob, m)?.ok_or("message missing")?;
    assert_eq!(item.entry, inbox[0]);
    assert_eq!(item.content, ItemContent::Message { text: EVIL.into() });
    let item = store.item(bob, ml)?.ok_or("mail missing")?;
    assert_eq!(
        item.content,
        ItemContent::Mail {
            subject: EVIL.into(),
            body: "body\0with nul".into(),
            attachments: vec![att1, att2],
        }
    );
    let item = store.item(bob, f)?.ok_or("file missing")?;
    assert_eq!(item.content, ItemContent::File(file));

    assert_eq!(store.usage(alice)?, EVIL.len() as u64 + mail_size + 2 * O);
    assert_eq!(store.usage(bob)?, 12 + O);
    usage_consistent(&store)?;
    // The evil strings did nothing to the schema.
    assert_eq!(store.list_users()?.len(), 2);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn inbox_pages_by_id<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let (alice, bob) = two_users(&store)?;
    let ids: Vec<ItemId> = (0..5)
        .map(|i| store.deliver(alice, bob, message(&format!("m{i}")), BIG))
        .collect::<Result<_, _>>()?;
    let page: Vec<ItemId> = store.inbox(bob, 0, 2)?.iter().map(|e| e.id).collect();
    assert_eq!(page, ids[..2]);
    let page: Vec<ItemId> = store.inbox(bob, ids[1], 10)?.iter().map(|e| e.id).collect();
    assert_eq!(page, ids[2..]);
    assert!(store.inbox(bob, ids[4], 10)?.is_empty());
    assert!(store.inbox(bob, 0, 0)?.is_empty());
    assert!(store.inbox(bob, u64::MAX, 10)?.is_empty());
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn other_users_items_are_invisible<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let (alice, bob) = two_users(&store)?;
    let id = store.deliver(alice, bob, message("for bob only"), BIG)?;
    // The sender does not own the item either: it lives in the recipient's inbox.
    assert_eq!(store.item(alice, id)?, None);
    assert_eq!(store.item(alice, id + 1000)?, None);
    assert_eq!(store.item(bob, u64::MAX)?, None);
    assert_eq!(store.delete(alice, id)?, None);
    assert_eq!(store.delete(alice, u64::MAX)?, None);
    assert!(store.item(bob, id)?.is_some());
    assert_eq!(store.usage(alice)?, 12 + O);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn quota_exceeded_is_refused_atomically<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let blobs = b.blobs();
    let (alice, bob) = two_users(&store)?;
    // Room for two 5-byte messages with their overhead.
    let quota = 10 + 2 * O;
    store.deliver(alice, bob, message("12345"), quota)?;
    let err = store.deliver(alice, bob, message("123456"), quota);
    assert!(
        matches!(
            err,
            Err(StoreError::QuotaExceeded {
                used,
                requested,
                quota: q,
            }) if used == 5 + O && requested == 6 + O && q == quota
        ),
        "{err:?}"
    );
    let att = blob(blobs, b"123", "a")?;
    let mail = NewItem::Mail {
        subject: "s".into(),
        body: "b".into(),
        attachments: vec![att],
    };
    assert!(matches!(
        store.deliver(alice, bob, mail, quota - 1),
        Err(StoreError::QuotaExceeded { .. })
    ));
    assert_eq!(store.inbox(bob, 0, 10)?.len(), 1);
    assert!(store.referenced_blobs()?.is_empty());
    assert_eq!(store.usage(alice)?, 5 + O);
    // Exactly filling the quota is allowed.
    store.deliver(alice, bob, message("12345"), quota)?;
    assert_eq!(store.usage(alice)?, quota);
    // Sizes that would overflow are refused, not wrapped.
    let big = BlobRef {
        size: i64::MAX as u64,
        ..blob(blobs, b"", "h")?
    };
    let huge = NewItem::Mail {
        subject: String::new(),
        body: String::new(),
        attachments: vec![big.clone(), big.clone(), big.clone()],
    };
    assert!(matches!(
        store.deliver(alice, bob, huge, u64::MAX),
        Err(StoreError::QuotaExceeded {
            requested: u64::MAX,
            quota: u64::MAX,
            ..
        })
    ));
    let unstorable = NewItem::File(BlobRef {
        size: u64::MAX,
        ..big
    });
    assert!(matches!(
        store.deliver(alice, bob, unstorable, u64::MAX),
        Err(StoreError::InvalidItem(_))
    ));
    assert_eq!(store.inbox(bob, 0, 10)?.len(), 2);
    usage_consistent(&store)?;
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn deliver_refuses_bad_input<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let (alice, bob) = two_users(&store)?;
    let forged = BlobRef {
        blob_id: "../../../../etc/passwd".into(),
        name: "passwd".into(),
        size: 1,
        digest: [0; 32],
    };
    assert!(matches!(
        store.deliver(alice, bob, NewItem::File(forged), BIG),
        Err(StoreError::InvalidBlobId(_))
    ));
    assert!(matches!(
        store.deliver(alice, 999, message("x"), BIG),
        Err(StoreError::UnknownUserId(999))
    ));
    assert!(matches!(
        store.deliver(999, bob, message("x"), BIG),
        Err(StoreError::UnknownUserId(999))
    ));
    assert!(matches!(
        store.usage(999),
        Err(StoreError::UnknownUserId(999))
    ));
    assert!(store.inbox(bob, 0, 10)?.is_empty());
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn delete_frees_quota_and_returns_unreferenced_blobs<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let blobs = b.blobs();
    let (alice, bob) = two_users(&store)?;
    let shared = blob(blobs, b"shared", "shared")?;
    let own = blob(blobs, b"own", "own")?;
    let mail = NewItem::Mail {
        subject: "s".into(),
        body: "b".into(),
        attachments: vec![shared.clone(), own.clone(), own.clone()],
    };
    let m = store.deliver(alice, bob, mail, BIG)?;
    // The same blob forwarded to alice is still referenced after bob deletes his copy.
    let f = store.deliver(bob, alice, NewItem::File(shared.clone()), BIG)?;
    let mut referenced = store.referenced_blobs()?;
    referenced.sort();
    let mut expected = vec![shared.blob_id.clone(), own.blob_id.clone()];
    expected.sort();
    assert_eq!(referenced, expected);

    assert_eq!(store.usage(alice)?, 2 + 6 + 3 + 3 + O);
    assert_eq!(store.delete(bob, m)?, Some(vec![own.blob_id.clone()]));
    assert_eq!(store.usage(alice)?, 0);
    assert_eq!(store.item(bob, m)?, None);
    assert_eq!(store.delete(bob, m)?, None);
    assert_eq!(store.referenced_blobs()?, vec![shared.blob_id.clone()]);

    assert_eq!(store.delete(alice, f)?, Some(vec![shared.blob_id.clone()]));
    assert_eq!(store.usage(bob)?, 0);
    assert!(store.referenced_blobs()?.is_empty());
    usage_consistent(&store)?;

    let none_left: HashSet<String> = HashSet::new();
    b.age_blobs()?;
    assert_eq!(blobs.sweep_orphans(&none_left)?, 2);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn item_ids_are_never_reused<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let (alice, bob) = two_users(&store)?;
    let first = store.deliver(alice, bob, message("a"), BIG)?;
    let second = store.deliver(alice, bob, message("b"), BIG)?;
    store.delete(bob, second)?;
    store.delete(bob, first)?;
    let third = store.deliver(alice, bob, message("c"), BIG)?;
    assert!(third > second, "{third} reused an id <= {second}");
    drop(store);
    let store = b.open()?;
    store.delete(bob, third)?;
    let fourth = store.deliver(alice, bob, message("d"), BIG)?;
    assert!(fourth > third);
    Ok(())
}

/// An id no item ever had is not issued; one whose item was deleted still is, across a
/// reopen, whichever user asks.
pub(crate) fn an_issued_id_stays_issued_after_its_item_is_deleted<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    assert!(!store.item_id_issued(1)?, "an empty store issued id 1");
    let (alice, bob) = two_users(&store)?;
    let first = store.deliver(alice, bob, message("a"), BIG)?;
    let second = store.deliver(alice, bob, message("b"), BIG)?;
    assert!(store.item_id_issued(first)? && store.item_id_issued(second)?);
    assert!(!store.item_id_issued(second + 1)?);
    assert!(!store.item_id_issued(u64::MAX)?);
    // The newest item deleted: its id was still handed out.
    store.delete(bob, second)?;
    assert!(store.item_id_issued(second)?);
    drop(store);
    let store = b.open()?;
    assert!(store.item_id_issued(second)?);
    assert!(!store.item_id_issued(second + 1)?);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn deliver_all_is_deliver_in_turn<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let (alice, bob) = two_users(&store)?;
    let carol = store.add_user("carol", "h")?;
    let bad = BlobRef {
        blob_id: "../escape".into(),
        name: "x".into(),
        size: 1,
        digest: [0; 32],
    };
    // Quota 25 and two items' overhead: the 20-byte message fits, the next 10 do not,
    // the 5 after them do.
    let quota = 25 + 2 * O;
    let items = vec![
        (bob, message("01234567890123456789")),
        (carol, message("0123456789")),
        (bob, NewItem::File(bad)),
        (UserId::MAX, message("x")),
        (carol, message("01234")),
    ];
    let results = store.deliver_all(alice, items, quota);
    assert_eq!(results.len(), 5);
    let first = *results[0].as_ref().map_err(|e| e.to_string())?;
    assert!(
        matches!(
            results[1],
            Err(StoreError::QuotaExceeded { used, requested, quota: q })
                if used == 20 + O && requested == 10 + O && q == quota
        ),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(StoreError::InvalidBlobId(_))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(StoreError::UnknownUserId(_))),
        "{:?}",
        results[3]
    );
    let last = *results[4].as_ref().map_err(|e| e.to_string())?;
    assert!(last > first, "ids follow the order of the list");
    assert_eq!(store.usage(alice)?, quota);
    assert_eq!(store.inbox(bob, 0, 10)?.len(), 1);
    assert_eq!(store.inbox(carol, 0, 10)?.len(), 1);
    assert!(store.deliver_all(alice, Vec::new(), quota).is_empty());
    usage_consistent(&store)?;
    Ok(())
}

/// Files under `dir`, in every subdirectory.
pub(crate) fn count_files(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            n += count_files(&entry.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

/// The chunk size of the PostgreSQL blobs, which the range tests straddle; the directory
/// has no chunks, and the same ranges must read the same there.
const CHUNK: usize = 256 * 1024;

/// `len` bytes that differ from one position to the next, so that a range read from the
/// wrong place cannot match.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

/// Commits `content` in appends of `piece` bytes (an upload's chunks).
pub(crate) fn upload(blobs: &Blobs, content: &[u8], piece: usize) -> Result<BlobRef, StoreError> {
    let mut staged = blobs.stage()?;
    for part in content.chunks(piece) {
        staged.append(part)?;
    }
    staged.commit("upload.bin")
}

/// See the test of the same name in each backend.
pub(crate) fn blobs_read_back_in_any_range<B: Backend>(b: &B) -> TestResult {
    let blobs = b.blobs();
    // Several chunks and a bit, uploaded in pieces that do not line up with them.
    let content = pattern(3 * CHUNK + 1234);
    let len = content.len();
    let blob = upload(blobs, &content, 100_003)?;
    assert_eq!(blob.size, len as u64);
    assert_eq!(blob.digest, *blake3::hash(&content).as_bytes());
    assert_eq!(blob.name, "upload.bin");
    let id = &blob.blob_id;
    let read = |offset: usize, max_len: usize| blobs.read_at(id, offset as u64, max_len);
    for (offset, max_len) in [
        (0, 10),
        (0, CHUNK),
        (5, CHUNK),
        (CHUNK - 5, 10),
        (CHUNK, CHUNK),
        (CHUNK + 1, 2 * CHUNK + 10),
        (1, len),
        (0, usize::MAX),
        (len - 3, 100),
        (len - 1234, 1234),
    ] {
        let end = len.min(offset.saturating_add(max_len));
        assert!(
            read(offset, max_len)? == content[offset..end],
            "offset {offset} max_len {max_len}"
        );
    }
    assert!(read(len, 10)?.is_empty(), "at the end");
    assert!(read(len + 1, 10)?.is_empty(), "past the end");
    assert!(read(10, 0)?.is_empty(), "nothing asked");
    assert!(blobs.read_at(id, u64::MAX, usize::MAX)?.is_empty());
    // An empty blob, and one of exactly one chunk.
    let empty = blobs.stage()?.commit("")?;
    assert_eq!(empty.size, 0);
    assert_eq!(empty.name, "unnamed");
    assert_eq!(empty.digest, *blake3::hash(b"").as_bytes());
    assert!(blobs.read_at(&empty.blob_id, 0, 10)?.is_empty());
    let one = upload(blobs, &content[..CHUNK], CHUNK)?;
    assert!(blobs.read_at(&one.blob_id, 0, usize::MAX)? == content[..CHUNK]);
    assert!(blobs.read_at(&one.blob_id, CHUNK as u64, 1)?.is_empty());
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn an_upload_dropped_before_commit_leaves_nothing<B: Backend>(b: &B) -> TestResult {
    let blobs = b.blobs();
    let before = b.blob_leftovers()?;
    let mut staged = blobs.stage()?;
    staged.append(&pattern(2 * CHUNK + 7))?;
    assert!(
        b.blob_leftovers()? > before,
        "the upload is stored as it arrives"
    );
    let id = staged.id().to_owned();
    drop(staged);
    assert_eq!(b.blob_leftovers()?, before);
    assert!(matches!(
        blobs.read_at(&id, 0, 1),
        Err(StoreError::BlobNotFound(missing)) if missing == id
    ));
    // An upload is invisible until committed.
    let mut staged = blobs.stage()?;
    staged.append(b"not yet")?;
    assert!(matches!(
        blobs.read_at(staged.id(), 0, 1),
        Err(StoreError::BlobNotFound(_))
    ));
    let done = staged.commit("x")?;
    assert_eq!(blobs.read_at(&done.blob_id, 0, 100)?, b"not yet");
    blobs.remove(&done.blob_id)?;
    assert_eq!(b.blob_leftovers()?, before);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn removing_a_blob_is_idempotent<B: Backend>(b: &B) -> TestResult {
    let blobs = b.blobs();
    let gone = upload(blobs, &pattern(CHUNK + 1), 4096)?;
    let other = blob(blobs, b"stays", "f")?;
    blobs.remove(&gone.blob_id)?;
    assert!(matches!(
        blobs.read_at(&gone.blob_id, 0, 1),
        Err(StoreError::BlobNotFound(_))
    ));
    blobs.remove(&gone.blob_id)?;
    blobs.remove(&"0".repeat(32))?;
    assert_eq!(blobs.read_at(&other.blob_id, 0, 100)?, b"stays");
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn invalid_blob_ids_are_refused<B: Backend>(b: &B) -> TestResult {
    let blobs = b.blobs();
    let before = b.blob_leftovers()?;
    for bad in [
        "../../../etc/passwd",
        "",
        "tmp",
        &"A".repeat(32),
        &"0".repeat(33),
        &"0".repeat(31),
        "0123456789abcdef0123456789abcde\0",
        "0123456789abcdef'; DROP TABLE x;",
    ] {
        assert!(
            matches!(blobs.read_at(bad, 0, 1), Err(StoreError::InvalidBlobId(_))),
            "{bad:?}"
        );
        assert!(matches!(
            blobs.remove(bad),
            Err(StoreError::InvalidBlobId(_))
        ));
        assert!(matches!(
            blobs.backend().create(bad),
            Err(StoreError::InvalidBlobId(_))
        ));
    }
    let missing = "0".repeat(32);
    assert!(matches!(
        blobs.read_at(&missing, 0, 1),
        Err(StoreError::BlobNotFound(id)) if id == missing
    ));
    assert_eq!(b.blob_leftovers()?, before);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn uploads_hold_quota_until_dropped_removed_or_delivered<B: Backend>(
    b: &B,
) -> TestResult {
    let store = b.blobs();
    let other_session = store.clone();
    let quota = 16 * 1024 + O;
    // One 12 KiB upload fits a 16 KiB quota; a second, from another session, does not.
    let before = b.blob_leftovers()?;
    let first = store.stage_for(1, 12 * 1024, 0, quota)?;
    assert_eq!(store.pending_bytes(1), 12 * 1024 + O);
    let staged = b.blob_leftovers()?;
    assert!(matches!(
        other_session.stage_for(1, 12 * 1024, 0, quota),
        Err(StoreError::QuotaExceeded { .. })
    ));
    assert_eq!(
        b.blob_leftovers()?,
        staged,
        "a refused upload stores nothing"
    );
    // The database's charge counts too; other users are apart.
    assert!(store.stage_for(1, 1024, 4 * 1024, quota).is_err());
    drop(store.stage_for(2, 12 * 1024, 0, quota)?);
    // Dropped unfinished: released.
    drop(first);
    assert_eq!(store.pending_bytes(1), 0);
    assert_eq!(b.blob_leftovers()?, before);
    // Finished but undelivered still counts; removing it releases.
    let mut second = other_session.stage_for(1, 10, 0, quota)?;
    second.append(b"0123456789")?;
    let done = second.commit("a")?;
    assert_eq!(store.pending_bytes(1), 10 + O);
    assert!(store.stage_for(1, 16 * 1024, 0, quota).is_err());
    store.remove(&done.blob_id)?;
    assert_eq!(store.pending_bytes(1), 0);
    // Delivered: the item's own charge takes over.
    let third = store.stage_for(1, 0, 0, quota)?.commit("b")?;
    assert_eq!(store.pending_bytes(1), O);
    store.delivered(&third.blob_id);
    assert_eq!(store.pending_bytes(1), 0);
    Ok(())
}

/// See the test of the same name in each backend.
pub(crate) fn unreferenced_blobs_are_set_aside_at_start_up<B: Backend>(b: &B) -> TestResult {
    let store = b.open()?;
    let blobs = b.blobs();
    let (alice, bob) = two_users(&store)?;
    let kept = blob(blobs, b"kept", "f")?;
    store.deliver(alice, bob, NewItem::File(kept.clone()), BIG)?;
    let orphans = [
        blob(blobs, b"one", "f")?,
        upload(blobs, &pattern(CHUNK + 9), CHUNK)?,
    ];
    b.age_blobs()?;
    let referenced: HashSet<String> = store.referenced_blobs()?.into_iter().collect();
    assert_eq!(blobs.sweep_orphans(&referenced)?, orphans.len());
    assert_eq!(blobs.read_at(&kept.blob_id, 0, 10)?, b"kept");
    assert_eq!(blobs.sweep_orphans(&referenced)?, 0, "set aside once");
    Ok(())
}
