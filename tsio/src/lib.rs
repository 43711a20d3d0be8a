//! Where a transport stream comes from and where it goes: the one address
//! syntax that the headend and the receiver accept ([`Address`]: a file,
//! `-` for stdin or stdout, `udp://HOST:PORT`, `udp://@:PORT` for every
//! local address, a multicast group, and `?loop` to play a file input
//! again and again), its one parser, and the files and sockets those
//! addresses name ([`Input`], [`Output`], [`UdpSender`]).
//!
//! Its responsibility ends at bytes: it opens, reads, rewinds, writes and
//! sends, and knows nothing of packets, PSI or scrambling (that is `ts`,
//! which stays free of I/O), nor of threads, queues or pacing, which each
//! program arranges to suit itself. The parser takes untrusted operator
//! input: it never panics and refuses with a typed [`AddressError`] whose
//! message is one line naming the fix.
#![forbid(unsafe_code)]

mod address;
mod io;

pub use address::{Address, AddressError, MAX_ADDRESS_LEN};
pub use io::{
    bind_udp_input, Got, Input, IoError, Output, UdpSender, Writer, INPUT_SOCKET_BUFFER,
    READ_TIMEOUT,
};
