//! Protocol tests: round trips with predicted lengths, every rejection reason, incremental
//! decoding, and property tests over arbitrary input.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const SERVER: Role = Role::Server;
const CLIENT: Role = Role::Client;

/// Encodes, checks the predicted length, decodes, and compares.
fn check_request(req: Request) {
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    encode_request(7, &req, &mut buf).expect("encodable");
    assert_eq!(
        buf.len(),
        HEADER_LEN + req.body_len(),
        "predicted length for {req:?}"
    );
    let frame = decode_frame(&mut buf, &limits, SERVER)
        .expect("valid")
        .expect("complete");
    assert!(buf.is_empty());
    assert_eq!(frame.request_id, 7);
    assert_eq!(Request::decode(&frame, &limits).expect("body"), req);
}

fn check_reply(rep: Reply) {
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    encode_reply(9, &rep, &mut buf).expect("encodable");
    assert_eq!(
        buf.len(),
        HEADER_LEN + rep.body_len(),
        "predicted length for {rep:?}"
    );
    let frame = decode_frame(&mut buf, &limits, CLIENT)
        .expect("valid")
        .expect("complete");
    assert!(buf.is_empty());
    assert_eq!(Reply::decode(&frame, &limits).expect("body"), rep);
}

fn header(kind: u8, flags: u16, len: u32) -> BytesMut {
    BytesMut::from(&raw_header(VERSION, kind, 1, flags, len)[..])
}

fn decode_err(bytes: &[u8], role: Role) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    decode_frame(&mut buf, &Limits::default(), role).expect_err("must be rejected")
}

fn body_err(kind: Kind, payload: &[u8]) -> DecodeError {
    let frame = Frame::new(kind, 1, Bytes::copy_from_slice(payload));
    let limits = Limits::default();
    if kind.is_request() {
        Request::decode(&frame, &limits).expect_err("must be rejected")
    } else {
        Reply::decode(&frame, &limits).expect_err("must be rejected")
    }
}

fn sample_attachment() -> Attachment {
    Attachment {
        name: "report.pdf".into(),
        size: 12345,
        digest: [7; 32],
    }
}

#[test]
fn every_request_kind_round_trips() {
    check_request(Request::Auth {
        user: "alice".into(),
        password: Password(Bytes::from_static(b"correct horse")),
    });
    check_request(Request::Ping);
    check_request(Request::Bye);
    check_request(Request::Ticket);
    check_request(Request::Resume {
        user: "alice".into(),
        ticket: Bytes::from(vec![7u8; 73]),
    });
    check_request(Request::Resume {
        user: "a".repeat(32),
        ticket: Bytes::from(vec![0u8; crate::protocol::limits::MAX_TICKET]),
    });
    check_request(Request::SendMessage {
        to: "bob".into(),
        text: "hola, ¿qué tal?".into(),
    });
    check_request(Request::UploadBegin {
        name: "cat.png".into(),
        size: 1 << 33,
    });
    check_request(Request::UploadChunk {
        upload_id: 3,
        offset: 4096,
        data: Bytes::from(vec![0xAB; 1000]),
    });
    check_request(Request::UploadEnd {
        upload_id: 3,
        digest: [1; 32],
    });
    check_request(Request::SendFile {
        to: "bob".into(),
        upload_id: 3,
    });
    check_request(Request::SendMail {
        to: "bob".into(),
        subject: "minutes".into(),
        body: "see attached".into(),
        attachments: vec![1, 2, 3],
    });
    check_request(Request::ListInbox {
        after: 10,
        limit: 50,
    });
    check_request(Request::Fetch { item_id: 42 });
    check_request(Request::Delete { item_id: 42 });
    check_request(Request::Download {
        item_id: 42,
        part: 1,
        offset: 99,
        max_len: 65536,
    });
}

#[test]
fn every_reply_kind_round_trips() {
    check_reply(Reply::AuthOk {
        user: "alice".into(),
    });
    check_reply(Reply::Pong);
    check_reply(Reply::Ok);
    check_reply(Reply::TicketOk {
        expires_at_ms: 1_790_000_000_000,
        ticket: Bytes::from(vec![0xA5u8; crate::protocol::limits::MAX_TICKET]),
    });
    check_reply(Reply::Accepted { item_id: 5 });
    check_reply(Reply::UploadReady {
        upload_id: 1,
        max_chunk: 262_144,
    });
    check_reply(Reply::ChunkOk {
        upload_id: 1,
        received: 100,
    });
    check_reply(Reply::UploadDone {
        upload_id: 1,
        size: 100,
    });
    check_reply(Reply::Inbox {
        entries: vec![InboxEntry {
            id: 1,
            kind: ItemKind::Mail,
            from: "bob".into(),
            size: 10,
            received_at_ms: 1_700_000_000_000,
            title: "hi".into(),
        }],
    });
    for body in [
        ItemBody::Message { text: "hi".into() },
        ItemBody::Mail {
            subject: "s".into(),
            body: "b".into(),
            attachments: vec![sample_attachment(), sample_attachment()],
        },
        ItemBody::File(sample_attachment()),
    ] {
        check_reply(Reply::Item(ItemView {
            id: 9,
            from: "carol".into(),
            received_at_ms: -1,
            body,
        }));
    }
    check_reply(Reply::Data {
        item_id: 9,
        part: 0,
        offset: 0,
        total: 3,
        data: Bytes::from_static(b"abc"),
    });
    for code in ErrorCode::ALL {
        check_reply(Reply::error(code, code.name()));
    }
}

/// The largest legal request of every request kind under `l`: every string, list and chunk at
/// its cap.
fn largest_requests(l: &Limits) -> Vec<Request> {
    use crate::protocol::limits::{
        MAX_FILE_NAME, MAX_PASSWORD, MAX_SUBJECT, MAX_TICKET, MAX_USER_NAME,
    };
    let name = || "n".repeat(MAX_USER_NAME);
    vec![
        Request::Auth {
            user: name(),
            password: Password(Bytes::from(vec![b'p'; MAX_PASSWORD])),
        },
        Request::Ping,
        Request::SendMessage {
            to: name(),
            text: "t".repeat(l.max_text_bytes as usize),
        },
        Request::UploadBegin {
            name: "f".repeat(MAX_FILE_NAME),
            size: u64::MAX,
        },
        Request::UploadChunk {
            upload_id: u32::MAX,
            offset: u64::MAX,
            data: Bytes::from(vec![0xC5; l.max_chunk_bytes as usize]),
        },
        Request::UploadEnd {
            upload_id: u32::MAX,
            digest: [0xFF; DIGEST_LEN],
        },
        Request::SendFile {
            to: name(),
            upload_id: u32::MAX,
        },
        Request::SendMail {
            to: name(),
            subject: "s".repeat(MAX_SUBJECT),
            body: "b".repeat(l.max_mail_body_bytes as usize),
            attachments: vec![u32::MAX; usize::from(l.max_attachments)],
        },
        Request::ListInbox {
            after: u64::MAX,
            limit: u16::MAX,
        },
        Request::Fetch { item_id: u64::MAX },
        Request::Download {
            item_id: u64::MAX,
            part: u16::MAX,
            offset: u64::MAX,
            max_len: u32::MAX,
        },
        Request::Delete { item_id: u64::MAX },
        Request::Bye,
        Request::Ticket,
        Request::Resume {
            user: name(),
            ticket: Bytes::from(vec![0xA5; MAX_TICKET]),
        },
    ]
}

/// The largest legal reply of every reply kind under `l`; an ITEM in each of its three shapes,
/// since which is largest depends on the limits.
fn largest_replies(l: &Limits) -> Vec<Reply> {
    use crate::protocol::limits::{
        MAX_ERROR_MESSAGE, MAX_FILE_NAME, MAX_SUBJECT, MAX_TICKET, MAX_USER_NAME,
    };
    let name = || "n".repeat(MAX_USER_NAME);
    let attachment = || Attachment {
        name: "f".repeat(MAX_FILE_NAME),
        size: u64::MAX,
        digest: [0xFF; DIGEST_LEN],
    };
    let item = |body| {
        Reply::Item(ItemView {
            id: u64::MAX,
            from: name(),
            received_at_ms: i64::MIN,
            body,
        })
    };
    let entry = InboxEntry {
        id: u64::MAX,
        kind: ItemKind::File,
        from: name(),
        size: u64::MAX,
        received_at_ms: i64::MAX,
        title: "t".repeat(MAX_FILE_NAME),
    };
    vec![
        Reply::AuthOk { user: name() },
        Reply::Pong,
        Reply::Accepted { item_id: u64::MAX },
        Reply::UploadReady {
            upload_id: u32::MAX,
            max_chunk: u32::MAX,
        },
        Reply::ChunkOk {
            upload_id: u32::MAX,
            received: u64::MAX,
        },
        Reply::UploadDone {
            upload_id: u32::MAX,
            size: u64::MAX,
        },
        Reply::Inbox {
            entries: vec![entry; usize::from(l.max_inbox_page)],
        },
        item(ItemBody::Message {
            text: "t".repeat(l.max_text_bytes as usize),
        }),
        item(ItemBody::Mail {
            subject: "s".repeat(MAX_SUBJECT),
            body: "b".repeat(l.max_mail_body_bytes as usize),
            attachments: vec![attachment(); usize::from(l.max_attachments)],
        }),
        item(ItemBody::File(attachment())),
        Reply::Data {
            item_id: u64::MAX,
            part: u16::MAX,
            offset: u64::MAX,
            total: u64::MAX,
            data: Bytes::from(vec![0xC5; l.max_chunk_bytes as usize]),
        },
        Reply::Ok,
        Reply::TicketOk {
            expires_at_ms: i64::MAX,
            ticket: Bytes::from(vec![0xA5; MAX_TICKET]),
        },
        Reply::Error {
            code: ErrorCode::Internal,
            message: "m".repeat(MAX_ERROR_MESSAGE),
        },
    ]
}

/// A frame of `kind` around the body `encode` writes, checked to be `body_len` long.
fn body_frame(
    kind: Kind,
    body_len: usize,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Frame {
    let mut body = BytesMut::new();
    encode(&mut body).expect("encodable");
    assert_eq!(body.len(), body_len, "{kind:?}");
    Frame::new(kind, 1, body.freeze())
}

/// Encodes the largest legal value of every kind and checks its body is exactly the kind's
/// `max_body`: the layout's four descriptions (encode, decode, `body_len`, `max_body`) agree.
#[test]
fn the_largest_value_of_every_kind_fills_max_body_exactly() {
    let limit_sets = [
        Limits::default(),
        // A chat message outgrows a mail.
        Limits {
            max_text_bytes: 5000,
            max_mail_body_bytes: 10,
            max_attachments: 0,
            ..Limits::default()
        },
        // A file's attachment outgrows both.
        Limits {
            max_text_bytes: 1,
            max_mail_body_bytes: 1,
            max_attachments: 0,
            max_chunk_bytes: 3,
            max_inbox_page: 1,
            ..Limits::default()
        },
    ];
    for limits in limit_sets {
        let mut largest = std::collections::BTreeMap::<Kind, u64>::new();
        let mut note = |kind: Kind, len: usize| {
            let len = len as u64;
            let at = largest.entry(kind).or_insert(len);
            *at = (*at).max(len);
        };
        for req in largest_requests(&limits) {
            let frame = body_frame(req.kind(), req.body_len(), |b| req.encode_body(b));
            assert_eq!(Request::decode(&frame, &limits).expect("legal"), req);
            note(frame.kind, frame.payload.len());
        }
        for rep in largest_replies(&limits) {
            let frame = body_frame(rep.kind(), rep.body_len(), |b| rep.encode_body(b));
            assert_eq!(Reply::decode(&frame, &limits).expect("legal"), rep);
            note(frame.kind, frame.payload.len());
        }
        for &kind in Kind::ALL {
            assert_eq!(
                largest.get(&kind).copied(),
                Some(msg::max_body(kind, &limits)),
                "{kind:?} under {limits:?}"
            );
        }
        assert_eq!(largest.len(), Kind::ALL.len());
    }
}

#[test]
fn raw_headers_lay_out_and_parse_every_field() {
    let h = raw_header(2, 0x7F, 0x0102_0304, 0x0506, 0x0708_090A);
    assert_eq!(&h, b"RM\x02\x7F\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0A");
    assert_eq!(
        RawHeader::parse(&h),
        RawHeader {
            magic: MAGIC,
            version: 2,
            kind: 0x7F,
            request_id: 0x0102_0304,
            flags: 0x0506,
            len: 0x0708_090A,
        }
    );
    // The encoder writes its headers through raw_header too.
    let mut buf = BytesMut::new();
    encode_request(0xAABB_CCDD, &Request::Ping, &mut buf).expect("encodable");
    assert_eq!(
        &buf[..],
        &raw_header(VERSION, Kind::Ping as u8, 0xAABB_CCDD, 0, 0)
    );
}

#[test]
fn four_gib_length_is_rejected_from_the_header_alone() {
    let mut buf = header(Kind::SendMessage as u8, 0, u32::MAX);
    let cap = buf.capacity();
    let err = decode_frame(&mut buf, &Limits::default(), SERVER).expect_err("too large");
    assert!(matches!(
        err,
        DecodeError::FrameTooLarge { len: u32::MAX, .. }
    ));
    assert!(err.is_fatal());
    assert_eq!(
        buf.capacity(),
        cap,
        "nothing reserved for the declared length"
    );
}

#[test]
fn partial_frame_reserves_nothing() {
    let limits = Limits::default();
    let mut whole = BytesMut::new();
    encode_request(
        1,
        &Request::UploadChunk {
            upload_id: 1,
            offset: 0,
            data: Bytes::from(vec![1; 200_000]),
        },
        &mut whole,
    )
    .expect("encodable");
    let mut buf = BytesMut::from(&whole[..100]);
    let cap = buf.capacity();
    assert_eq!(decode_frame(&mut buf, &limits, SERVER), Ok(None));
    assert_eq!(buf.len(), 100, "partial input is left in place");
    assert_eq!(
        buf.capacity(),
        cap,
        "no reservation for the declared length"
    );
    assert_eq!(bytes_wanted(&buf), Some(whole.len() - 100));
}

#[test]
fn header_errors_are_reported_at_the_first_bad_byte() {
    assert_eq!(
        decode_err(b"G", SERVER),
        DecodeError::BadMagic {
            byte: b'G',
            offset: 0
        }
    );
    // The seed document's example: 0x52 arrives where 0x4D is expected.
    assert_eq!(
        decode_err(&[0x52, 0x52], SERVER),
        DecodeError::BadMagic {
            byte: 0x52,
            offset: 1
        }
    );
    assert_eq!(
        decode_err(b"\x16\x03\x01", SERVER).reason(),
        "bad_magic",
        "a TLS ClientHello"
    );
    assert_eq!(
        decode_err(b"RM\x02", SERVER),
        DecodeError::UnsupportedVersion { version: 2 }
    );
    assert_eq!(
        decode_err(b"RM\x01\x7f", SERVER),
        DecodeError::UnknownKind { kind: 0x7f }
    );
    assert_eq!(
        decode_err(b"RM\x01\x81", SERVER),
        DecodeError::UnexpectedKind { kind: Kind::AuthOk }
    );
    assert_eq!(
        decode_err(b"RM\x01\x01", CLIENT),
        DecodeError::UnexpectedKind { kind: Kind::Auth }
    );
    assert_eq!(
        decode_err(&header(Kind::Ping as u8, 0x0001, 0), SERVER),
        DecodeError::ReservedFlags { flags: 1 }
    );
    assert!(matches!(
        decode_err(&header(Kind::Ping as u8, 0, 1), SERVER),
        DecodeError::FrameTooLarge {
            kind: Kind::Ping,
            len: 1,
            max: 0
        }
    ));
}

#[test]
fn body_errors_name_their_field() {
    assert_eq!(
        body_err(Kind::Fetch, &[0, 0, 0]),
        DecodeError::Truncated { field: "item_id" }
    );
    assert_eq!(
        body_err(Kind::Fetch, &[0; 9]),
        DecodeError::TrailingBytes {
            kind: Kind::Fetch,
            extra: 1
        }
    );
    assert_eq!(
        body_err(Kind::SendMessage, &[1, 0xFF, 0, 0, 0, 0]),
        DecodeError::InvalidUtf8 { field: "to" }
    );
    assert_eq!(
        body_err(Kind::SendMessage, &[40]),
        DecodeError::FieldTooLong {
            field: "to",
            len: 40,
            max: 32
        }
    );
    let mut mail = vec![1, b'b', 0, 0, 0, 0, 0, 0, 200];
    mail.extend_from_slice(&[0; 16]);
    assert_eq!(
        body_err(Kind::SendMail, &mail),
        DecodeError::TooManyItems {
            field: "attachments",
            count: 200,
            max: 16
        }
    );
    assert_eq!(
        body_err(Kind::Error, &[0, 99, 0, 0]),
        DecodeError::InvalidValue {
            field: "code",
            value: 99
        }
    );
    // A RESUME ticket longer than MAX_TICKET is refused by its length prefix.
    assert_eq!(
        body_err(Kind::Resume, &[1, b'a', 0, 129]),
        DecodeError::FieldTooLong {
            field: "ticket",
            len: 129,
            max: 128
        }
    );
    assert_eq!(
        body_err(Kind::TicketOk, &[0; 9]),
        DecodeError::Truncated { field: "ticket" }
    );
    assert_eq!(
        body_err(Kind::Ticket, &[0]),
        DecodeError::TrailingBytes {
            kind: Kind::Ticket,
            extra: 1
        }
    );
    let long_text = u32::MAX.to_be_bytes();
    let mut msg = vec![1, b'b'];
    msg.extend_from_slice(&long_text);
    assert!(matches!(
        body_err(Kind::SendMessage, &msg),
        DecodeError::FieldTooLong { field: "text", .. }
    ));
}

#[test]
fn every_decode_error_has_a_distinct_reason() {
    let mut reasons = DecodeError::REASONS.to_vec();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), DecodeError::REASONS.len());
}

#[test]
fn encoder_refuses_what_the_wire_cannot_carry() {
    let mut buf = BytesMut::new();
    let err = encode_request(
        1,
        &Request::SendMessage {
            to: "x".repeat(33),
            text: String::new(),
        },
        &mut buf,
    )
    .expect_err("name too long");
    assert!(matches!(err, EncodeError::FieldTooLong { field: "to", .. }));
    assert!(buf.is_empty(), "a failed encode leaves nothing behind");
}

#[test]
fn pipelined_frames_decode_in_order() {
    let mut buf = BytesMut::new();
    for id in 0..5 {
        encode_request(id, &Request::Ping, &mut buf).expect("encodable");
    }
    for id in 0..5 {
        let f = decode_frame(&mut buf, &Limits::default(), SERVER)
            .expect("valid")
            .expect("complete");
        assert_eq!(f.request_id, id);
    }
    assert_eq!(decode_frame(&mut buf, &Limits::default(), SERVER), Ok(None));
}

/// Decodes a whole input frame by frame until it needs more bytes or fails.
pub(crate) fn decode_all(input: &[u8], role: Role) -> (Vec<Frame>, Option<DecodeError>) {
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        match decode_frame(&mut buf, &Limits::default(), role) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// The same, but feeding the input in the given chunk sizes.
pub(crate) fn decode_chunked(
    input: &[u8],
    cuts: &[usize],
    role: Role,
) -> (Vec<Frame>, Option<DecodeError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = input;
    let mut sizes = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match decode_frame(&mut buf, &Limits::default(), role) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// Decodes `input` step by step with a [`FrameDecoder`] and with [`decode_frame`], checking
/// after every step that both gave the same result and left the same bytes.
fn check_decoder_matches(input: &[u8], limits: Limits, role: Role) {
    let decoder = FrameDecoder::new(limits, role);
    let mut a = BytesMut::from(input);
    let mut b = BytesMut::from(input);
    loop {
        let fast = decoder.decode(&mut a);
        let reference = decode_frame(&mut b, &limits, role);
        assert_eq!(fast, reference, "input {input:02x?}");
        assert_eq!(a, b);
        if !matches!(fast, Ok(Some(_))) {
            return;
        }
    }
}

#[test]
fn frame_decoder_agrees_at_every_kinds_length_cap() {
    let limits = Limits {
        max_frame_bytes: 70_000,
        ..Limits::default()
    };
    for role in [SERVER, CLIENT] {
        for byte in 0..=255u8 {
            let max = Kind::from_u8(byte).map_or(0, |k| max_payload(k, &limits));
            for len in [0, max.saturating_sub(1), max, max + 1, u32::MAX] {
                let mut frame = raw_header(VERSION, byte, 9, 0, len).to_vec();
                frame.resize(frame.len() + (len.min(max + 1) as usize), 0x5a);
                for end in [HEADER_LEN - 1, HEADER_LEN, frame.len() - 1, frame.len()] {
                    check_decoder_matches(&frame[..end.min(frame.len())], limits, role);
                }
            }
        }
    }
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{0,32}"
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (arb_name(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(user, p)| {
            Request::Auth {
                user,
                password: Password(Bytes::from(p)),
            }
        }),
        Just(Request::Ping),
        Just(Request::Bye),
        Just(Request::Ticket),
        (arb_name(), proptest::collection::vec(any::<u8>(), 0..=128)).prop_map(|(user, t)| {
            Request::Resume {
                user,
                ticket: Bytes::from(t),
            }
        }),
        (arb_name(), ".{0,200}").prop_map(|(to, text)| Request::SendMessage { to, text }),
        (".{0,100}", any::<u64>()).prop_map(|(name, size)| Request::UploadBegin { name, size }),
        (
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(|(upload_id, offset, d)| Request::UploadChunk {
                upload_id,
                offset,
                data: Bytes::from(d)
            }),
        (any::<u32>(), any::<[u8; 32]>())
            .prop_map(|(upload_id, digest)| Request::UploadEnd { upload_id, digest }),
        (arb_name(), any::<u32>()).prop_map(|(to, upload_id)| Request::SendFile { to, upload_id }),
        (
            arb_name(),
            ".{0,50}",
            ".{0,200}",
            proptest::collection::vec(any::<u32>(), 0..=16)
        )
            .prop_map(|(to, subject, body, attachments)| Request::SendMail {
                to,
                subject,
                body,
                attachments
            }),
        (any::<u64>(), any::<u16>()).prop_map(|(after, limit)| Request::ListInbox { after, limit }),
        any::<u64>().prop_map(|item_id| Request::Fetch { item_id }),
        any::<u64>().prop_map(|item_id| Request::Delete { item_id }),
        (any::<u64>(), any::<u16>(), any::<u64>(), any::<u32>()).prop_map(
            |(item_id, part, offset, max_len)| Request::Download {
                item_id,
                part,
                offset,
                max_len
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_request_round_trips(req in arb_request()) {
        check_request(req);
    }

    #[test]
    fn decoder_never_panics_and_never_exceeds_its_limit(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for role in [SERVER, CLIENT] {
            let (frames, _) = decode_all(&input, role);
            for f in frames {
                prop_assert!(f.payload.len() as u32 <= max_payload(f.kind, &Limits::default()));
                if role == SERVER {
                    let _ = Request::decode(&f, &Limits::default());
                } else {
                    let _ = Reply::decode(&f, &Limits::default());
                }
            }
        }
    }

    #[test]
    fn chunked_input_gives_the_same_result(
        reqs in proptest::collection::vec(arb_request(), 0..6),
        garbage in proptest::collection::vec(any::<u8>(), 0..32),
        cuts in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut input = BytesMut::new();
        for (i, r) in reqs.iter().enumerate() {
            encode_request(i as u32, r, &mut input).expect("encodable");
        }
        input.extend_from_slice(&garbage);
        let whole = decode_all(&input, SERVER);
        let chunked = decode_chunked(&input, &cuts, SERVER);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn frame_decoder_decides_as_decode_frame(
        reqs in proptest::collection::vec(arb_request(), 0..6),
        edits in proptest::collection::vec((0usize..256, any::<u8>()), 0..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..32),
        max_frame in prop_oneof![Just(Limits::default().max_frame_bytes), 0u32..200],
        max_text in prop_oneof![Just(Limits::default().max_text_bytes), 0u32..64],
    ) {
        let mut input = BytesMut::new();
        for (i, r) in reqs.iter().enumerate() {
            encode_request(i as u32, r, &mut input).expect("encodable");
        }
        input.extend_from_slice(&garbage);
        // Overwrite a few bytes, most often in the first header, where every check lives.
        for (at, value) in edits {
            if !input.is_empty() {
                let i = if at < 128 { at % HEADER_LEN } else { at };
                let i = i % input.len();
                input[i] = value;
            }
        }
        let limits = Limits {
            max_frame_bytes: max_frame,
            max_text_bytes: max_text,
            ..Limits::default()
        };
        for role in [SERVER, CLIENT] {
            check_decoder_matches(&input, limits, role);
        }
    }

    #[test]
    fn flipped_bits_never_panic(req in arb_request(), bit in 0usize..4096) {
        let mut buf = BytesMut::new();
        encode_request(1, &req, &mut buf).expect("encodable");
        let i = bit / 8 % buf.len();
        buf[i] ^= 1 << (bit % 8);
        let (frames, _) = decode_all(&buf, SERVER);
        for f in frames {
            let _ = Request::decode(&f, &Limits::default());
        }
    }
}
