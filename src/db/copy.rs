//! Rows in Postgres's binary `COPY` format, for the log writer's bulk insert (`COPY ... FROM
//! STDIN (FORMAT binary)`). The layout is the one the server documents under "Binary Format" of
//! `COPY`: a fixed header, then per row a 16-bit field count and per field a 32-bit length (-1 for
//! NULL) followed by the value in the type's binary send format, then a -1 trailer.
//!
//! Only the types the log table uses are written, each in the format its column's receive
//! function reads: `uuid` (16 bytes), `timestamptz` (microseconds since 2000-01-01 UTC, 64-bit),
//! `int8`, `int4`, `bool` and text (UTF-8 bytes, also read by `varchar` columns).
use chrono::{DateTime, Utc};

/// Signature, flags (no OIDs), header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Microseconds from the Unix epoch to Postgres's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

pub struct CopyRows {
    buf: Vec<u8>,
    rows: u64,
    /// A field longer than a COPY length can say (2 GiB): the whole batch is refused by
    /// `finish`, rather than sent with a length that lies.
    oversized: bool,
}

impl CopyRows {
    /// An empty batch with room for about `bytes` of rows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + HEADER.len() + 2);
        buf.extend_from_slice(HEADER);
        Self {
            buf,
            rows: 0,
            oversized: false,
        }
    }

    /// Starts a row of `fields` values; exactly that many must follow.
    pub fn row(&mut self, fields: i16) {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn field(&mut self, value: &[u8]) {
        let Ok(len) = i32::try_from(value.len()) else {
            self.oversized = true;
            self.null();
            return;
        };
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
    }

    pub fn text(&mut self, v: Option<&str>) {
        match v {
            Some(s) => self.field(s.as_bytes()),
            None => self.null(),
        }
    }

    pub fn int8(&mut self, v: Option<i64>) {
        match v {
            Some(n) => self.field(&n.to_be_bytes()),
            None => self.null(),
        }
    }

    pub fn int4(&mut self, v: i32) {
        self.field(&v.to_be_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.field(&[u8::from(v)]);
    }

    pub fn uuid(&mut self, v: uuid::Uuid) {
        self.field(v.as_bytes());
    }

    /// Saturates outside Postgres's range rather than wrapping (chrono's range is wider).
    pub fn timestamptz(&mut self, v: DateTime<Utc>) {
        self.field(
            &v.timestamp_micros()
                .saturating_sub(PG_EPOCH_MICROS)
                .to_be_bytes(),
        );
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The whole stream, trailer included; None if a field did not fit its length.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        (!self.oversized).then_some(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_its_field_count_then_each_value_behind_its_length_and_null_is_minus_one() {
        let mut c = CopyRows::with_capacity(0);
        c.row(3);
        c.int4(7);
        c.text(None);
        c.text(Some("é"));
        let bytes = c.finish().unwrap();
        let mut want = HEADER.to_vec();
        want.extend_from_slice(&[0, 3]);
        want.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 7]);
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn timestamps_count_microseconds_from_the_year_2000() {
        let mut c = CopyRows::with_capacity(0);
        c.row(1);
        c.timestamptz(DateTime::from_timestamp(946_684_801, 5_000).unwrap());
        let bytes = c.finish().unwrap();
        let at = HEADER.len() + 2 + 4;
        assert_eq!(
            i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()),
            1_000_005
        );
    }
}
