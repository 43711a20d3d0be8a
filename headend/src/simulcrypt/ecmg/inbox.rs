//! A connection's framing: the bytes read from an SCS and not yet
//! handled, and the header checks that decide whether the stream of
//! bytes can still be cut into messages.

use super::session::Fault;
use super::MAX_BODY;
use simulcrypt::ecmg::status;
use simulcrypt::{Header, HEADER_LEN, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The message's total length (header and body), or the fault of a
/// header this ECMG cannot frame: the connection is answered and closed,
/// as the next message's start is lost.
pub(super) fn check_header(header: &Header) -> Result<usize, Fault> {
    if header.version != PROTOCOL_VERSION {
        return Err(Fault::new(
            status::UNSUPPORTED_PROTOCOL_VERSION,
            format!(
                "protocol_version {} is not supported: this ECMG speaks version {PROTOCOL_VERSION} of TS 103 197",
                header.version
            ),
        ));
    }
    if usize::from(header.length) > MAX_BODY {
        return Err(Fault::new(
            status::MESSAGE_TOO_LONG,
            format!(
                "message_length {} is more than this ECMG accepts ({MAX_BODY} bytes)",
                header.length
            ),
        ));
    }
    Ok(HEADER_LEN + usize::from(header.length))
}

/// The size of a connection's read buffer: room for two of the longest
/// messages.
const INBOX: usize = 2 * (HEADER_LEN + MAX_BODY);

/// The bytes read from a peer and not yet handled, read as they come (so
/// a burst of messages costs one read); the bytes of a message are wiped
/// once it is decoded, as control words come in the clear.
pub(super) struct Inbox {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Inbox {
    pub(super) fn new() -> Inbox {
        Inbox {
            buf: vec![0; INBOX].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads until `n` bytes are buffered (`n` ≤ half the buffer).
    pub(super) async fn fill_to<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        n: usize,
    ) -> std::io::Result<()> {
        if self.start + n > self.buf.len() {
            let len = self.buffered();
            self.buf.copy_within(self.start..self.end, 0);
            self.buf[len..self.end].fill(0);
            self.start = 0;
            self.end = len;
        }
        while self.buffered() < n {
            let got = rd.read(&mut self.buf[self.end..]).await?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.end += got;
        }
        Ok(())
    }

    pub(super) fn peek(&self, n: usize) -> &[u8] {
        &self.buf[self.start..self.start + n]
    }

    /// Wipes and drops the first `n` bytes.
    pub(super) fn consume(&mut self, n: usize) {
        self.buf[self.start..self.start + n].fill(0);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.buf.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use simulcrypt::Message;
    use tokio::io::AsyncWriteExt;

    /// Frames a byte stream as the connection does; the messages, and
    /// whether the inbox was all zeros at the end.
    async fn frame<R: AsyncRead + Unpin>(rd: &mut R) -> (Vec<Message>, Result<(), Fault>, bool) {
        let mut inbox = Inbox::new();
        let mut out = Vec::new();
        loop {
            if inbox.fill_to(rd, HEADER_LEN).await.is_err() {
                break;
            }
            let mut head = [0u8; HEADER_LEN];
            head.copy_from_slice(inbox.peek(HEADER_LEN));
            let header = Header::parse(&head);
            let total = match check_header(&header) {
                Ok(t) => t,
                Err(f) => return (out, Err(f), false),
            };
            if inbox.fill_to(rd, total).await.is_err() {
                break;
            }
            let m = Message::decode_body(header, &inbox.peek(total)[HEADER_LEN..]);
            inbox.consume(total);
            match m {
                Ok(m) => out.push(m),
                Err(_) => return (out, Err(Fault::new(status::MESSAGE_TOO_LONG, "")), false),
            }
        }
        let wiped = inbox.buf.iter().all(|b| *b == 0) || inbox.buffered() > 0;
        (out, Ok(()), wiped)
    }

    fn messages() -> impl Strategy<Value = Vec<Message>> {
        let param = (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40));
        let message =
            (any::<u16>(), proptest::collection::vec(param, 0..6)).prop_map(|(ty, ps)| {
                ps.into_iter()
                    .fold(Message::new(ty), |m, (t, v)| m.with(t, v))
            });
        proptest::collection::vec(message, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Messages cut at any points come out whole and in order, and
        /// the bytes they took are wiped.
        #[test]
        fn messages_come_out_whole_however_the_bytes_are_cut(
            msgs in messages(),
            cuts in proptest::collection::vec(1usize..300, 1..40),
        ) {
            let bytes: Vec<u8> = msgs.iter().flat_map(|m| m.encode().unwrap()).collect();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (got, end, wiped) = rt.block_on(async {
                let (mut a, mut b) = tokio::io::duplex(64);
                let writer = async move {
                    let mut at = 0;
                    for c in cuts.iter().cycle() {
                        if at >= bytes.len() {
                            break;
                        }
                        let n = (*c).min(bytes.len() - at);
                        a.write_all(&bytes[at..at + n]).await.unwrap();
                        at += n;
                    }
                    drop(a);
                };
                let (_, r) = tokio::join!(writer, frame(&mut b));
                r
            });
            prop_assert!(end.is_ok());
            prop_assert_eq!(got, msgs);
            prop_assert!(wiped);
        }

        /// Any bytes at all: framed, or refused with a fault; never a
        /// panic, and never a message longer than the ECMG accepts.
        #[test]
        fn any_bytes_are_framed_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (got, _, _) = rt.block_on(async { frame(&mut bytes.as_slice()).await });
            for m in got {
                prop_assert_eq!(m.version, PROTOCOL_VERSION);
                prop_assert!(m.encode().is_some_and(|e| e.len() <= HEADER_LEN + MAX_BODY));
            }
        }
    }
}
