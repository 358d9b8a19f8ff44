//! Confluent Schema Registry wire format: magic byte 0, a 4-byte big-endian schema id, then the
//! payload. Audit events published through a JSON Schema serializer carry this framing.

/// Splits off Schema Registry framing, returning the schema id (if framed) and the JSON payload.
///
/// A JSON document never starts with byte 0, so the check is unambiguous.
pub fn strip_framing(bytes: &[u8]) -> (Option<u32>, &[u8]) {
    match bytes {
        [0, a, b, c, d, rest @ ..] => (Some(u32::from_be_bytes([*a, *b, *c, *d])), rest),
        _ => (None, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_and_plain() {
        assert_eq!(strip_framing(b"\0\0\0\0\x07{}"), (Some(7), &b"{}"[..]));
        assert_eq!(strip_framing(b"{}"), (None, &b"{}"[..]));
        assert_eq!(strip_framing(b""), (None, &b""[..]));
    }
}
