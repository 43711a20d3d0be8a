//! The address syntax and its parser.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// The longest address accepted, in bytes (a path's limit on Linux).
pub const MAX_ADDRESS_LEN: usize = 4096;

/// The syntax, as the refusals name it.
const SYNTAX: &str = "a file (PATH, file://PATH, PATH?loop), udp://HOST:PORT, udp://@:PORT or -";

/// Where a transport stream comes from or goes to.
///
/// | text | address |
/// |---|---|
/// | `-` | stdin (input) or stdout (output) |
/// | `PATH`, `file://PATH` | a file |
/// | `PATH?loop`, `file://PATH?loop` | a file input played again and again |
/// | `udp://HOST:PORT` | UDP; as an input, a multicast group is joined |
/// | `udp://@HOST:PORT` | the same, as VLC writes it |
/// | `udp://@:PORT`, `udp://:PORT` | UDP input on every local address |
///
/// A UDP address may carry ffmpeg's options after `?` (`?pkt_size=1316`);
/// they are ignored, except `loop`, which is refused: only a file can be
/// played again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `udp://HOST:PORT`.
    Udp(SocketAddr),
    /// A path, or `file://PATH`; `looped` when it ended in `?loop`.
    File { path: PathBuf, looped: bool },
    /// `-`: stdin or stdout.
    Stdio,
}

/// Why an address was refused. Every message is one line that names the
/// problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("an empty address: give {SYNTAX}")]
    Empty,
    #[error("an address of {len} bytes: give one of at most {MAX_ADDRESS_LEN} bytes")]
    TooLong { len: usize },
    #[error("a control character in the address: give {SYNTAX}")]
    ControlCharacter { text: String },
    #[error("only udp://, file://, a path or - are supported: give {SYNTAX}")]
    Scheme { text: String },
    #[error("file:// needs a path: give one, e.g. file:///srv/clip.ts")]
    EmptyPath { text: String },
    #[error("no port: give udp://HOST:PORT, e.g. udp://@:5000")]
    NoPort { text: String },
    #[error(
        "{port:?} is not a port: give udp://HOST:PORT with a port 0..=65535, e.g. udp://@:5000"
    )]
    BadPort { text: String, port: String },
    #[error(
        "{text:?}: {host:?} is not an IP address: give udp://IP:PORT, e.g. udp://127.0.0.1:5000"
    )]
    NotNumeric { text: String, host: String },
    #[error("the host {host:?} has no address ({reason}): give a known host or an IP address, e.g. udp://127.0.0.1:5000")]
    Unresolved {
        text: String,
        host: String,
        reason: String,
    },
    #[error("?loop plays a file again, and this input is no file: drop ?loop")]
    LoopNotFile { text: String },
    #[error("?loop is for file inputs: drop it from the output")]
    LoopOnOutput { text: String },
    #[error("cannot send to {addr}: give the receivers' udp://HOST:PORT or a multicast group, e.g. udp://239.1.1.1:5000")]
    CannotSendTo { text: String, addr: SocketAddr },
}

/// How a host name is turned into an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// The system resolver (`/etc/hosts`, DNS).
    System,
    /// IP addresses only: a name is refused, never looked up.
    Numeric,
}

impl Address {
    /// Parses an address, input or output alike (see [`Address`]); a host
    /// name is looked up with the system resolver. Use
    /// [`parse_input`](Self::parse_input) or
    /// [`parse_output`](Self::parse_output) where the direction is known.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        parse_with(text, Resolve::System)
    }

    /// As [`parse`](Self::parse), but a UDP host must be an IP address: a
    /// name is refused and never looked up.
    pub fn parse_numeric(text: &str) -> Result<Address, AddressError> {
        parse_with(text, Resolve::Numeric)
    }

    /// Parses where a stream comes from. UDP port 0 is accepted: the
    /// system picks a free port (see [`Input::local_addr`](crate::Input::local_addr)).
    pub fn parse_input(text: &str) -> Result<Address, AddressError> {
        Address::parse(text)
    }

    /// Parses where a stream goes: no `?loop`, and a UDP address that can
    /// be sent to (not `udp://@:PORT`, not port 0).
    pub fn parse_output(text: &str) -> Result<Address, AddressError> {
        Address::parse(text)?.into_output(text)
    }

    /// Checks that an address parsed by [`parse`](Self::parse) from
    /// `text` can be written to, as [`parse_output`](Self::parse_output)
    /// does.
    pub fn into_output(self, text: &str) -> Result<Address, AddressError> {
        match self {
            Address::File { looped: true, .. } => Err(AddressError::LoopOnOutput {
                text: text.to_owned(),
            }),
            Address::Udp(addr) if addr.port() == 0 || addr.ip().is_unspecified() => {
                Err(AddressError::CannotSendTo {
                    text: text.to_owned(),
                    addr,
                })
            }
            a => Ok(a),
        }
    }

    /// Whether this is a UDP address.
    pub fn is_udp(&self) -> bool {
        matches!(self, Address::Udp(_))
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(text: &str) -> Result<Address, AddressError> {
        Address::parse(text)
    }
}

/// Written back in the syntax it was parsed from: parsing the text gives
/// the same address.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Udp(a) => write!(f, "udp://{a}"),
            Address::File { path, looped } => {
                let text = path.to_string_lossy();
                // A path that reads as another address keeps its scheme.
                if text == "-" || text == "-?loop" {
                    f.write_str("file://")?;
                }
                f.write_str(&text)?;
                if *looped {
                    f.write_str("?loop")?;
                }
                Ok(())
            }
            Address::Stdio => f.write_str("-"),
        }
    }
}

fn parse_with(text: &str, resolve: Resolve) -> Result<Address, AddressError> {
    let owned = || text.to_owned();
    if text.trim().is_empty() {
        return Err(AddressError::Empty);
    }
    if text.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong { len: text.len() });
    }
    if text.chars().any(char::is_control) {
        return Err(AddressError::ControlCharacter { text: owned() });
    }
    if text == "-" {
        return Ok(Address::Stdio);
    }
    if text == "-?loop" {
        return Err(AddressError::LoopNotFile { text: owned() });
    }
    if let Some(rest) = text.strip_prefix("udp://") {
        return parse_udp(text, rest, resolve).map(Address::Udp);
    }
    let rest = match text.strip_prefix("file://") {
        Some(rest) => rest,
        None if text.contains("://") => return Err(AddressError::Scheme { text: owned() }),
        None => text,
    };
    let (path, looped) = match rest.strip_suffix("?loop") {
        Some(path) => (path, true),
        None => (rest, false),
    };
    if path.is_empty() {
        return Err(AddressError::EmptyPath { text: owned() });
    }
    if path.contains("://") {
        return Err(AddressError::Scheme { text: owned() });
    }
    Ok(Address::File {
        path: PathBuf::from(path),
        looped,
    })
}

/// `[@][HOST]:PORT[/...][?OPTIONS]`, after `udp://`.
fn parse_udp(text: &str, rest: &str, resolve: Resolve) -> Result<SocketAddr, AddressError> {
    let owned = || text.to_owned();
    let (rest, options) = rest.split_once('?').unwrap_or((rest, ""));
    if options
        .split('&')
        .any(|o| o == "loop" || o.starts_with("loop="))
    {
        return Err(AddressError::LoopNotFile { text: owned() });
    }
    let rest = rest.split('/').next().unwrap_or("");
    let rest = rest.strip_prefix('@').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(AddressError::NoPort { text: owned() });
    };
    if port.is_empty() {
        return Err(AddressError::NoPort { text: owned() });
    }
    // Digits only: u16's parser also takes a leading `+`.
    let port = match port.bytes().all(|b| b.is_ascii_digit()) {
        true => port.parse::<u16>().ok(),
        false => None,
    }
    .ok_or_else(|| AddressError::BadPort {
        text: owned(),
        port: port.to_owned(),
    })?;
    // No host: every local address (`udp://@:PORT`, as VLC writes it).
    if host.is_empty() {
        return Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let unresolved = |reason: String| AddressError::Unresolved {
        text: owned(),
        host: host.to_owned(),
        reason,
    };
    if resolve == Resolve::Numeric {
        return Err(AddressError::NotNumeric {
            text: owned(),
            host: host.to_owned(),
        });
    }
    if !is_host_name(host) {
        return Err(unresolved("not a host name".to_owned()));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| unresolved(e.to_string()))?
        .next()
        .ok_or_else(|| unresolved("no address".to_owned()))
}

/// A name the resolver may be asked about: letters, digits, `-`, `_` and
/// dots, at most 253 bytes.
fn is_host_name(host: &str) -> bool {
    host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn udp(a: &str) -> Address {
        Address::Udp(a.parse().unwrap())
    }

    fn file(p: &str, looped: bool) -> Address {
        Address::File {
            path: p.into(),
            looped,
        }
    }

    #[test]
    fn the_syntax() {
        for (text, want) in [
            ("-", Address::Stdio),
            ("udp://127.0.0.1:1234", udp("127.0.0.1:1234")),
            ("udp://@239.1.1.1:5000", udp("239.1.1.1:5000")),
            ("udp://239.1.1.1:1234?pkt_size=1316", udp("239.1.1.1:1234")),
            ("udp://[::1]:5000", udp("[::1]:5000")),
            ("udp://@[ff15::1]:5000", udp("[ff15::1]:5000")),
            // Every local address, as VLC and ffmpeg write it.
            ("udp://@:5000", udp("0.0.0.0:5000")),
            ("udp://:5000", udp("0.0.0.0:5000")),
            ("udp://@:0", udp("0.0.0.0:0")),
            ("udp://@127.0.0.1:5000", udp("127.0.0.1:5000")),
            ("udp://localhost:5000/x", udp("127.0.0.1:5000")),
            ("out.ts", file("out.ts", false)),
            ("file:///srv/in.ts", file("/srv/in.ts", false)),
            ("file://in.ts", file("in.ts", false)),
            ("in.ts?loop", file("in.ts", true)),
            ("file:///srv/in.ts?loop", file("/srv/in.ts", true)),
            ("file://-", file("-", false)),
        ] {
            assert_eq!(Address::parse(text), Ok(want.clone()), "{text}");
            assert_eq!(Address::parse(&want.to_string()), Ok(want), "{text}");
        }
    }

    #[test]
    fn refusals_name_the_fix_on_one_line() {
        for (bad, kind) in [
            ("", "Empty"),
            ("   ", "Empty"),
            ("file://", "EmptyPath"),
            ("?loop", "EmptyPath"),
            ("file://?loop", "EmptyPath"),
            ("udp://", "NoPort"),
            ("udp://127.0.0.1", "NoPort"),
            ("udp://@:", "NoPort"),
            ("udp://nohost", "NoPort"),
            ("udp://@:notaport", "BadPort"),
            ("udp://:x", "BadPort"),
            ("udp://:+5", "BadPort"),
            ("udp://1.2.3.4:65536", "BadPort"),
            ("udp://no host:5", "Unresolved"),
            ("http://x/y", "Scheme"),
            ("rtp://127.0.0.1:5000", "Scheme"),
            ("file://http://x", "Scheme"),
            ("udp://127.0.0.1:5000?loop", "LoopNotFile"),
            ("udp://@:5000?pkt_size=1316&loop", "LoopNotFile"),
            ("-?loop", "LoopNotFile"),
            ("a\nb.ts", "ControlCharacter"),
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(format!("{e:?}").starts_with(kind), "{bad}: {e:?}");
            let m = e.to_string();
            assert!(!m.contains('\n'), "{m}");
            assert!(m.contains("give") || m.contains("drop"), "{bad}: {m}");
        }
        let long = "a".repeat(MAX_ADDRESS_LEN + 1);
        assert!(matches!(
            Address::parse(&long),
            Err(AddressError::TooLong { .. })
        ));
        assert!(matches!(
            Address::parse_numeric("udp://localhost:5000"),
            Err(AddressError::NotNumeric { .. })
        ));
    }

    #[test]
    fn inputs_and_outputs() {
        assert_eq!(Address::parse_input("a.ts?loop"), Ok(file("a.ts", true)));
        assert_eq!(Address::parse_input("udp://@:0"), Ok(udp("0.0.0.0:0")));
        for bad in [
            "a.ts?loop",
            "udp://@:5000",
            "udp://127.0.0.1:0",
            "udp://0.0.0.0:1",
        ] {
            let e = Address::parse_output(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    AddressError::LoopOnOutput { .. } | AddressError::CannotSendTo { .. }
                ),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            Address::parse_output("udp://239.1.1.1:5000"),
            Ok(udp("239.1.1.1:5000"))
        );
        assert_eq!(Address::parse_output("-"), Ok(Address::Stdio));
    }

    /// Texts near the syntax: schemes, `@`, ports, options and `?loop`
    /// put together from pieces, then anything at all.
    fn near_syntax() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("udp://".to_owned()),
            Just("file://".to_owned()),
            Just("@".to_owned()),
            Just(":".to_owned()),
            Just("?loop".to_owned()),
            Just("?".to_owned()),
            Just("&".to_owned()),
            Just("/".to_owned()),
            Just("-".to_owned()),
            Just("[::1]".to_owned()),
            Just("127.0.0.1".to_owned()),
            "[0-9]{1,6}",
            "[a-z.]{0,4}",
            any::<char>().prop_map(String::from),
        ];
        prop_oneof![
            proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat()),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_reads_back_what_it_writes(text in near_syntax()) {
            match Address::parse_numeric(&text) {
                Ok(a) => {
                    prop_assert_eq!(Address::parse_numeric(&a.to_string()), Ok(a.clone()));
                    if let Ok(out) = a.clone().into_output(&text) {
                        prop_assert_eq!(out, a);
                    }
                }
                Err(e) => {
                    prop_assert!(!e.to_string().contains('\n'));
                }
            }
        }

        #[test]
        fn every_udp_socket_address_reads_back(addr in any::<SocketAddr>()) {
            // Scope and flow labels are not in the syntax.
            let addr = SocketAddr::new(addr.ip(), addr.port());
            let a = Address::Udp(addr);
            prop_assert_eq!(Address::parse_numeric(&a.to_string()), Ok(a));
        }
    }
}
