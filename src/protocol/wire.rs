//! Checked field readers and writers shared by every message body.
//!
//! The reader never indexes past the end: every read checks the remaining length first and
//! returns [`DecodeError::Truncated`] naming the field. Length-prefixed fields are compared
//! with their limit before the bytes are sliced, and slices share the payload's memory.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::frame::Kind;

/// Reads fields from one frame payload.
pub(crate) struct Reader {
    buf: Bytes,
    kind: Kind,
}

impl Reader {
    pub(crate) fn new(kind: Kind, buf: Bytes) -> Reader {
        Reader { buf, kind }
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated { field });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64())
    }

    pub(crate) fn array32(&mut self, field: &'static str) -> Result<[u8; 32], DecodeError> {
        self.need(32, field)?;
        let mut out = [0u8; 32];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// `len` bytes, after checking `len` against `max` and against what is left.
    fn take(&mut self, len: u64, max: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if len > max as u64 {
            return Err(DecodeError::FieldTooLong {
                field,
                len,
                max: max as u64,
            });
        }
        // len <= max, and max is a usize, so the conversion is exact.
        let n = usize::try_from(len).map_err(|_| DecodeError::FieldTooLong {
            field,
            len,
            max: max as u64,
        })?;
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    /// Bytes with a u16 length prefix.
    pub(crate) fn bytes16(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.take(u64::from(len), max, field)
    }

    fn utf8(b: Bytes, field: &'static str) -> Result<String, DecodeError> {
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// UTF-8 text with a u8 length prefix.
    pub(crate) fn str8(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u8(field)?;
        let b = self.take(u64::from(len), max, field)?;
        Self::utf8(b, field)
    }

    /// UTF-8 text with a u16 length prefix.
    pub(crate) fn str16(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes16(field, max)?;
        Self::utf8(b, field)
    }

    /// UTF-8 text with a u32 length prefix.
    pub(crate) fn str32(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u32(field)?;
        let b = self.take(u64::from(len), max, field)?;
        Self::utf8(b, field)
    }

    /// Everything left, as the last field of a body (zero-copy).
    pub(crate) fn rest(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = self.buf.remaining() as u64;
        self.take(len, max, field)
    }

    /// Checks that a declared list count is within `max`.
    pub(crate) fn count(count: u64, max: u64, field: &'static str) -> Result<usize, DecodeError> {
        if count > max {
            return Err(DecodeError::TooManyItems { field, count, max });
        }
        usize::try_from(count).map_err(|_| DecodeError::TooManyItems { field, count, max })
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            return Err(DecodeError::TrailingBytes {
                kind: self.kind,
                extra: self.buf.remaining(),
            });
        }
        Ok(())
    }
}

fn too_long(field: &'static str, len: usize, max: usize) -> EncodeError {
    EncodeError::FieldTooLong {
        field,
        len: len as u64,
        max: max as u64,
    }
}

/// Checks a field's length against its limit before it is written.
pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(too_long(field, len, max));
    }
    Ok(())
}

/// Writes a u8-prefixed string; `max` must fit in a u8.
pub(crate) fn put_str8(
    out: &mut BytesMut,
    field: &'static str,
    s: &str,
    max: usize,
) -> Result<(), EncodeError> {
    check_len(field, s.len(), max.min(u8::MAX as usize))?;
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// Writes u16-prefixed bytes; `max` must fit in a u16.
pub(crate) fn put_bytes16(
    out: &mut BytesMut,
    field: &'static str,
    b: &[u8],
    max: usize,
) -> Result<(), EncodeError> {
    check_len(field, b.len(), max.min(u16::MAX as usize))?;
    out.put_u16(b.len() as u16);
    out.put_slice(b);
    Ok(())
}

/// Writes u32-prefixed bytes.
pub(crate) fn put_bytes32(
    out: &mut BytesMut,
    field: &'static str,
    b: &[u8],
    max: usize,
) -> Result<(), EncodeError> {
    check_len(field, b.len(), max.min(u32::MAX as usize))?;
    out.put_u32(b.len() as u32);
    out.put_slice(b);
    Ok(())
}
