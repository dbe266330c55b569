//! Frame decoding and encoding throughput.
//!
//! Three ways of walking the same bytes are compared, for payloads of 64 B, 1 KiB and 64 KiB:
//!
//! - `rampart`: [`FrameDecoder::decode`] in a loop until the buffer is empty, as the server
//!   does;
//! - `decode_frame`: the free function [`decode_frame`], which clients and tools call, with the
//!   same results;
//! - `length_delimited`: tokio-util's `LengthDelimitedCodec` configured for the rampart
//!   header (a big-endian u32 length at offset 10, counting the bytes after the header), so
//!   it yields whole frames (header and payload) and checks nothing but the length;
//! - `memcpy`: one copy of the whole buffer into a preallocated, already touched `Vec`, the
//!   physical floor for any decoder that looks at every byte.
//!
//! Every input is a buffer of N consecutive UPLOAD_CHUNK frames with seeded random data, sized
//! so that one batch is about 2 MiB: large enough that per-batch overhead vanishes, small
//! enough to stay near the caches of a small machine. The input is cloned outside the
//! measurement (`iter_batched`), and the routine hands the emptied buffer back so that freeing
//! it is not measured either. docs/PERFORMANCE.md records the results and how they were taken.

use bytes::{Bytes, BytesMut};
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use rampart::protocol::{
    decode_frame, encode_request, FrameDecoder, Kind, Limits, Request, Role, HEADER_LEN,
};

/// Payload sizes in bytes: the whole UPLOAD_CHUNK body (12 bytes of ids and offset plus data).
const PAYLOADS: [usize; 3] = [64, 1024, 64 * 1024];

/// Bytes of wire data per batch; the frame count is rounded up to reach it.
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// UPLOAD_CHUNK body bytes in front of the data: upload id (u32) and offset (u64).
const CHUNK_PREFIX: usize = 4 + 8;

/// Frames per batch for a payload size.
fn frames_for(payload: usize) -> usize {
    BATCH_BYTES.div_ceil(HEADER_LEN + payload)
}

/// The requests of one batch: `n` UPLOAD_CHUNKs of one upload with `payload`-byte bodies and
/// seeded random data, so every run sees the same bytes.
fn requests(payload: usize, n: usize) -> Vec<Request> {
    let mut rng = StdRng::seed_from_u64(1);
    let data_len = payload - CHUNK_PREFIX;
    (0..n)
        .map(|i| {
            let mut data = vec![0u8; data_len];
            rng.fill_bytes(&mut data);
            Request::UploadChunk {
                upload_id: 7,
                offset: (i * data_len) as u64,
                data: Bytes::from(data),
            }
        })
        .collect()
}

/// The wire bytes of `reqs`, with request ids 1, 2, ...
fn wire(reqs: &[Request]) -> BytesMut {
    let mut out = BytesMut::new();
    for (id, req) in (1u32..).zip(reqs) {
        encode_request(id, req, &mut out).expect("benchmark requests are within limits");
    }
    out
}

/// tokio-util's length-delimited codec, set up to yield whole rampart frames (header and
/// payload) with the same frame-size ceiling the rampart decoder enforces.
///
/// With `num_skip(0)` the codec keeps the header and then takes "length + adjustment" bytes
/// from the start of the frame, so the adjustment is the whole header: the length field counts
/// only the payload. The ceiling applies to the length field before adjustment, which is the
/// payload length, as in rampart.
fn length_delimited(limits: &Limits) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_offset(10)
        .length_field_length(4)
        .length_adjustment(HEADER_LEN as isize)
        .num_skip(0)
        .max_frame_length(limits.max_frame_bytes as usize)
        .new_codec()
}

/// Decodes every frame as the server does; returns the emptied buffer so its drop is not
/// timed.
fn run_rampart(mut buf: BytesMut, decoder: &FrameDecoder) -> (BytesMut, usize) {
    let mut frames = 0;
    while let Some(frame) = decoder.decode(&mut buf).expect("valid input") {
        black_box(&frame);
        frames += 1;
    }
    (buf, frames)
}

/// Decodes every frame with [`decode_frame`]; returns the emptied buffer.
fn run_decode_frame(mut buf: BytesMut, limits: &Limits) -> (BytesMut, usize) {
    let mut frames = 0;
    while let Some(frame) = decode_frame(&mut buf, limits, Role::Server).expect("valid input") {
        black_box(&frame);
        frames += 1;
    }
    (buf, frames)
}

/// Decodes every frame with `LengthDelimitedCodec`; returns the emptied buffer.
fn run_length_delimited(mut buf: BytesMut, codec: &mut LengthDelimitedCodec) -> (BytesMut, usize) {
    let mut frames = 0;
    while let Some(frame) = codec.decode(&mut buf).expect("valid input") {
        black_box(&frame);
        frames += 1;
    }
    (buf, frames)
}

/// Checks, once and outside any measurement, that both decoders see the same frames, so the
/// comparison is between equal amounts of work.
fn check_equivalent(input: &BytesMut, limits: &Limits, n: usize, payload: usize) {
    let mut a = input.clone();
    let mut b = input.clone();
    let mut c = input.clone();
    let mut codec = length_delimited(limits);
    let decoder = FrameDecoder::new(*limits, Role::Server);
    for _ in 0..n {
        let frame = decoder
            .decode(&mut a)
            .expect("valid input")
            .expect("whole frame");
        let same = decode_frame(&mut c, limits, Role::Server)
            .expect("valid input")
            .expect("whole frame");
        assert_eq!(frame, same);
        let whole = codec
            .decode(&mut b)
            .expect("valid input")
            .expect("whole frame");
        assert_eq!(frame.kind, Kind::UploadChunk);
        assert_eq!(frame.payload.len(), payload);
        assert_eq!(whole.len(), HEADER_LEN + payload);
        assert_eq!(&whole[HEADER_LEN..], &frame.payload[..]);
    }
    assert!(a.is_empty() && b.is_empty() && c.is_empty());
}

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("decode");
    for payload in PAYLOADS {
        let n = frames_for(payload);
        let input = wire(&requests(payload, n));
        check_equivalent(&input, &limits, n, payload);
        group.throughput(Throughput::Bytes(input.len() as u64));

        group.bench_with_input(BenchmarkId::new("rampart", payload), &input, |b, input| {
            let decoder = FrameDecoder::new(limits, Role::Server);
            b.iter_batched(
                || input.clone(),
                |buf| run_rampart(black_box(buf), &decoder),
                BatchSize::LargeInput,
            )
        });

        group.bench_with_input(
            BenchmarkId::new("decode_frame", payload),
            &input,
            |b, input| {
                b.iter_batched(
                    || input.clone(),
                    |buf| run_decode_frame(black_box(buf), &limits),
                    BatchSize::LargeInput,
                )
            },
        );

        group.bench_with_input(
            BenchmarkId::new("length_delimited", payload),
            &input,
            |b, input| {
                let mut codec = length_delimited(&limits);
                b.iter_batched(
                    || input.clone(),
                    |buf| run_length_delimited(black_box(buf), &mut codec),
                    BatchSize::LargeInput,
                )
            },
        );

        group.bench_with_input(BenchmarkId::new("memcpy", payload), &input, |b, input| {
            // Cloned like the decoders' input so the source is equally warm; the destination
            // is allocated and touched once, so neither allocation nor page faults are timed.
            let mut dst = vec![0u8; input.len()];
            b.iter_batched_ref(
                || input.clone(),
                |src| {
                    dst.copy_from_slice(black_box(&src[..]));
                    black_box(dst.as_ptr());
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_request");
    for payload in PAYLOADS {
        let n = frames_for(payload);
        let reqs = requests(payload, n);
        let wire_len = (HEADER_LEN + payload) * n;
        group.throughput(Throughput::Bytes(wire_len as u64));
        group.bench_with_input(BenchmarkId::new("rampart", payload), &reqs, |b, reqs| {
            // One buffer, cleared per iteration: its capacity is reused, so what is measured
            // is header and body encoding, not allocation.
            let mut out = BytesMut::with_capacity(wire_len);
            b.iter(|| {
                out.clear();
                for (id, req) in (1u32..).zip(black_box(reqs)) {
                    encode_request(id, req, &mut out).expect("within limits");
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
