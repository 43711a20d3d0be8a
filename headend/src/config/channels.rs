//! The channel checks: one set for every channel, wherever it comes from.
//! A channel in headend.toml that fails them stops `headend run` (exit
//! 64), one sent to the API is refused (as wrong on its own, or as a clash
//! with another channel), and one stored in the database that no longer
//! passes them (its input file deleted, say) is turned off and reported by
//! the supervisor. So the API never stores what the daemon would refuse.

use std::path::{Path, PathBuf};
use tsio::Address;

/// A PID that may carry ECMs or EMMs: not PAT/CAT/TSDT/DVB tables, not null.
pub fn valid_pid(pid: u16) -> bool {
    (0x20..=0x1FFE).contains(&pid)
}

/// A channel's stream settings, as the checks see them.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSpec<'a> {
    pub name: &'a str,
    pub service_id: u16,
    pub ecm_pid: u16,
    pub emm_pid: u16,
    pub input: Option<&'a str>,
    pub output: Option<&'a str>,
    pub clear_services: &'a [u16],
}

impl<'a> ChannelSpec<'a> {
    /// What the checks look at in a stored channel.
    pub fn of(c: &'a api::Channel) -> ChannelSpec<'a> {
        ChannelSpec {
            name: &c.name,
            service_id: c.service_id,
            ecm_pid: c.ecm_pid,
            emm_pid: c.emm_pid,
            input: c.input.as_deref(),
            output: c.output.as_deref(),
            clear_services: &c.clear_services,
        }
    }
}

/// Why a channel was refused: the field, and a message that says what is
/// wrong and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ChannelProblem {
    pub field: &'static str,
    pub message: String,
    /// It clashes with another channel rather than being wrong on its
    /// own.
    pub conflict: bool,
}

fn problem(field: &'static str, message: impl Into<String>) -> ChannelProblem {
    ChannelProblem {
        field,
        message: message.into(),
        conflict: false,
    }
}

fn clash(field: &'static str, message: impl Into<String>) -> ChannelProblem {
    ChannelProblem {
        field,
        message: message.into(),
        conflict: true,
    }
}

/// Longest input or output URL.
pub const MAX_URL: usize = 1024;
/// Most clear services a channel may carry.
pub const MAX_CLEAR_SERVICES: usize = 64;
/// How much of an input file is read to learn its PIDs.
const PID_SCAN_BYTES: u64 = 1 << 20;
/// Folders a channel never writes into: the system's own.
const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
    "/sys", "/dev",
];

/// A channel's input, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputUrl {
    Udp(std::net::SocketAddr),
    /// A file, and whether it is played again and again (`?loop`).
    File(PathBuf, bool),
}

/// A channel's output, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputUrl {
    Udp(std::net::SocketAddr),
    File(PathBuf),
}

fn url_text(field: &'static str, url: &str) -> Result<(), ChannelProblem> {
    if url.trim().is_empty() || url.len() > MAX_URL || url.chars().any(char::is_control) {
        return Err(problem(
            field,
            format!("must be 1 to {MAX_URL} printable characters: udp://HOST:PORT or a file"),
        ));
    }
    if url == "-" {
        return Err(problem(
            field,
            "`-` (stdin or stdout) is not for a daemon's channel: give udp://HOST:PORT or a file",
        ));
    }
    Ok(())
}

/// Parses a channel's input as the stream engine will read it.
pub fn parse_input(url: &str) -> Result<InputUrl, ChannelProblem> {
    url_text("input", url)?;
    match Address::parse_input(url) {
        Ok(Address::Udp(a)) if a.port() == 0 => Err(problem(
            "input",
            format!("{url:?}: UDP port 0 is no port an encoder can send to: give udp://HOST:PORT, e.g. udp://@:5000"),
        )),
        Ok(Address::Udp(a)) => Ok(InputUrl::Udp(a)),
        Ok(Address::File { path, looped }) => Ok(InputUrl::File(path, looped)),
        Ok(Address::Stdio) => Err(problem("input", "`-` is not for a daemon's channel")),
        Err(e) => Err(problem("input", format!("{url:?}: {e}"))),
    }
}

/// Parses a channel's output as the stream engine will write it.
pub fn parse_output(url: &str) -> Result<OutputUrl, ChannelProblem> {
    url_text("output", url)?;
    match Address::parse_output(url) {
        Ok(Address::Udp(a)) => Ok(OutputUrl::Udp(a)),
        Ok(Address::File { path, .. }) => Ok(OutputUrl::File(path)),
        Ok(Address::Stdio) => Err(problem("output", "`-` is not for a daemon's channel")),
        Err(e) => Err(problem("output", format!("{url:?}: {e}"))),
    }
}

/// The first PID from 0x1F0 up that is in none of `used`: a suggestion
/// for the operator.
fn free_pid(used: &std::collections::BTreeSet<u16>) -> u16 {
    (0x1F0..=0x1FFE)
        .chain(0x20..0x1F0)
        .find(|p| !used.contains(p))
        .unwrap_or(0x1F0)
}

/// The checks that need neither the files nor the other channels: ranges,
/// PIDs and URL syntax.
pub fn check_channel_fields(c: &ChannelSpec<'_>) -> Result<(), ChannelProblem> {
    if c.service_id == 0 {
        return Err(problem(
            "service_id",
            "0 is the NIT's entry in the PAT, not a service: give the input's program number (1..=65535; ffmpeg's is 1)",
        ));
    }
    for (field, pid) in [("ecm_pid", c.ecm_pid), ("emm_pid", c.emm_pid)] {
        if !valid_pid(pid) {
            return Err(problem(
                field,
                format!("{pid:#06x} is not a PID for CA data: give one in 0x0020..=0x1FFE (0x0000 is the PAT, 0x0001 the CAT, 0x1FFF null packets), e.g. 0x1F0"),
            ));
        }
    }
    if c.ecm_pid == c.emm_pid {
        return Err(problem(
            "ecm_pid",
            format!(
                "{:#06x} is also the EMM PID: ECMs and EMMs need PIDs of their own, e.g. ecm_pid {:#06x}",
                c.ecm_pid,
                free_pid(&[c.emm_pid].into())
            ),
        ));
    }
    if c.clear_services.len() > MAX_CLEAR_SERVICES {
        return Err(problem(
            "clear_services",
            format!("more than {MAX_CLEAR_SERVICES}"),
        ));
    }
    for (i, &s) in c.clear_services.iter().enumerate() {
        if s == 0 {
            return Err(problem(
                "clear_services",
                "0 is the NIT's entry in the PAT, not a service",
            ));
        }
        if s == c.service_id {
            return Err(problem(
                "clear_services",
                format!("{s} is the channel's own service, which is always scrambled: remove it from clear_services"),
            ));
        }
        if c.clear_services[..i].contains(&s) {
            return Err(problem("clear_services", format!("{s} is listed twice")));
        }
    }
    if let Some(u) = c.input {
        parse_input(u)?;
    }
    if let Some(u) = c.output {
        parse_output(u)?;
    }
    Ok(())
}

fn resolve_in(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A file output's path with its folder's symlinks resolved, or the path
/// as given if the folder does not exist.
fn canonical_output(base: &Path, p: &Path) -> PathBuf {
    let p = resolve_in(base, p);
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or(p.clone()),
        _ => p,
    }
}

/// Two UDP inputs that cannot both be bound: the same port on the same
/// address, or where either listens on every address (a multicast group
/// is joined on a socket bound to every address).
fn udp_inputs_clash(a: &std::net::SocketAddr, b: &std::net::SocketAddr) -> bool {
    let wide = |x: &std::net::SocketAddr| x.ip().is_unspecified() || x.ip().is_multicast();
    a.port() == b.port() && (a.ip() == b.ip() || wide(a) || wide(b))
}

/// The PIDs in the first megabyte of a TS file; `None` if it is not a
/// regular file (a FIFO is not read ahead).
fn file_pids(path: &Path) -> Result<Option<std::collections::BTreeSet<u16>>, std::io::Error> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    f.take(PID_SCAN_BYTES).read_to_end(&mut buf)?;
    Ok(Some(
        ts::packet::Packets::new(&buf)
            .map(|p| (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]))
            .filter(|&pid| pid != ts::packet::NULL_PID)
            .collect(),
    ))
}

fn pid_list(pids: &std::collections::BTreeSet<u16>) -> String {
    let v: Vec<String> = pids.iter().map(|p| format!("{p:#06x}")).collect();
    v.join(", ")
}

/// Whether a process of this daemon may create files in `dir`: tried, as
/// permissions alone do not tell (root, read-only mounts, ACLs).
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".iodoform-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Every check of a channel: [`check_channel_fields`], then its files
/// (relative paths are taken from `base`, the config's folder) and its
/// clashes with `others`, the channels it must coexist with.
///
/// * A file input must exist and hold TS packets; the ECM and EMM PIDs
///   must not be PIDs it carries.
/// * A file output's folder must exist and be writable, and not be a
///   system folder; `/dev/null` is allowed.
/// * No two channels write one output, or read one UDP port, unless they
///   have the same input and the same output (written alike): then they
///   are one multiplex, scrambled in one stream, and must have the same
///   EMM PID and not list each other's service in `clear_services`.
/// * A channel's ECM PID is its own: no other channel's ECM or EMM PID
///   (channels share their EMM PID freely).
pub fn check_channel(
    c: &ChannelSpec<'_>,
    others: &[ChannelSpec<'_>],
    base: &Path,
) -> Result<(), ChannelProblem> {
    check_channel_fields(c)?;
    let input = c.input.map(parse_input).transpose()?;
    let output = c.output.map(parse_output).transpose()?;
    let mut input_file = None;
    if let Some(InputUrl::File(p, _)) = &input {
        let path = resolve_in(base, p);
        let shown = path.display();
        let meta = std::fs::metadata(&path).map_err(|e| {
            problem(
                "input",
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!("{shown} does not exist: give an existing TS file (relative paths are from the config's folder) or udp://HOST:PORT")
                } else {
                    format!("cannot read {shown}: {e}; give a TS file the daemon can read")
                },
            )
        })?;
        if meta.is_dir() {
            return Err(problem(
                "input",
                format!("{shown} is a folder: give a TS file in it"),
            ));
        }
        match file_pids(&path) {
            Err(e) => {
                return Err(problem(
                    "input",
                    format!("cannot read {shown}: {e}; give a TS file the daemon can read"),
                ))
            }
            Ok(Some(pids)) if pids.is_empty() && meta.len() > 0 => {
                return Err(problem(
                    "input",
                    format!(
                        "{shown} holds no MPEG-TS packet: give a TS file (ffmpeg ... -f mpegts)"
                    ),
                ))
            }
            Ok(Some(pids)) => {
                let mut used = pids.clone();
                used.extend([c.ecm_pid, c.emm_pid]);
                for (field, pid) in [("ecm_pid", c.ecm_pid), ("emm_pid", c.emm_pid)] {
                    if pids.contains(&pid) {
                        return Err(problem(
                            field,
                            format!(
                                "{pid:#06x} is a PID of the input {shown} (it carries {}): give a PID the input does not use, e.g. {:#06x}",
                                pid_list(&pids),
                                free_pid(&used)
                            ),
                        ));
                    }
                }
            }
            Ok(None) => {}
        }
        input_file = path.canonicalize().ok();
    }
    if let Some(OutputUrl::File(p)) = &output {
        let path = resolve_in(base, p);
        let shown = path.display();
        if path != Path::new("/dev/null") {
            let dir = path.parent().unwrap_or(Path::new("/"));
            let dir = dir.canonicalize().map_err(|e| {
                problem(
                    "output",
                    format!("the folder of {shown} cannot be used ({e}): create it, or give a file in an existing folder"),
                )
            })?;
            if !dir.is_dir() {
                return Err(problem(
                    "output",
                    format!(
                        "{} is not a folder: give a file in an existing folder",
                        dir.display()
                    ),
                ));
            }
            if let Some(sys) = SYSTEM_DIRS.iter().find(|s| dir.starts_with(s)) {
                return Err(problem(
                    "output",
                    format!("{shown} is in the system folder {sys}: give a file in a data folder, e.g. /var/lib/iodoform/out.ts"),
                ));
            }
            if path.is_dir() {
                return Err(problem(
                    "output",
                    format!("{shown} is a folder: give a file name in it"),
                ));
            }
            if input_file.is_some() && input_file == path.canonicalize().ok() {
                return Err(problem(
                    "output",
                    format!("{shown} is the channel's input: give another file"),
                ));
            }
            writable_dir(&dir).map_err(|e| {
                problem(
                    "output",
                    format!(
                        "cannot write in {} ({e}): give a file in a folder the daemon may write to",
                        dir.display()
                    ),
                )
            })?;
        }
    }
    for o in others {
        let who = format!("channel {:?} (service {})", o.name, o.service_id);
        let multiplex =
            c.input.is_some() && c.output.is_some() && c.input == o.input && c.output == o.output;
        if multiplex {
            if c.emm_pid != o.emm_pid {
                return Err(clash(
                    "emm_pid",
                    format!(
                        "{:#06x} differs from the EMM PID {:#06x} of {who}, which has the same input and output (one multiplex, one EMM PID): give {:#06x}",
                        c.emm_pid, o.emm_pid, o.emm_pid
                    ),
                ));
            }
            if o.clear_services.contains(&c.service_id) || c.clear_services.contains(&o.service_id)
            {
                return Err(clash(
                    "clear_services",
                    format!(
                        "{who} has the same input and output (one multiplex), and one of the two lists the other's service as clear: a service is either scrambled or clear; remove it from clear_services"
                    ),
                ));
            }
        }
        if c.ecm_pid == o.ecm_pid || c.ecm_pid == o.emm_pid {
            let what = if c.ecm_pid == o.ecm_pid { "ECM" } else { "EMM" };
            let used: std::collections::BTreeSet<u16> = others
                .iter()
                .flat_map(|x| [x.ecm_pid, x.emm_pid])
                .chain([c.emm_pid])
                .collect();
            return Err(clash(
                "ecm_pid",
                format!(
                    "{:#06x} is the {what} PID of {who}: each channel needs an ECM PID of its own, e.g. {:#06x}",
                    c.ecm_pid,
                    free_pid(&used)
                ),
            ));
        }
        if c.emm_pid == o.ecm_pid {
            return Err(clash(
                "emm_pid",
                format!(
                    "{:#06x} is the ECM PID of {who}: give the EMM PID the other channels use ({:#06x}) or another free PID",
                    c.emm_pid, o.emm_pid
                ),
            ));
        }
        if multiplex {
            continue;
        }
        let o_output = o.output.and_then(|u| parse_output(u).ok());
        match (&output, &o_output) {
            (Some(OutputUrl::Udp(a)), Some(OutputUrl::Udp(b))) if a == b => {
                return Err(clash(
                    "output",
                    format!("udp://{a} is already the output of {who}: give each channel an output of its own"),
                ));
            }
            (Some(OutputUrl::File(a)), Some(OutputUrl::File(b)))
                if canonical_output(base, a) == canonical_output(base, b)
                    && resolve_in(base, a) != Path::new("/dev/null") =>
            {
                return Err(clash(
                    "output",
                    format!(
                        "{} is already the output of {who}: give each channel an output of its own",
                        resolve_in(base, a).display()
                    ),
                ));
            }
            _ => {}
        }
        if let (Some(InputUrl::Udp(a)), Some(InputUrl::Udp(b))) =
            (&input, &o.input.and_then(|u| parse_input(u).ok()))
        {
            if udp_inputs_clash(a, b) {
                return Err(clash(
                    "input",
                    format!("UDP port {} is already read by {who} (udp://{b}): give each channel's encoder a port of its own", a.port()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(
        name: &'a str,
        service_id: u16,
        ecm: u16,
        input: &'a str,
        output: &'a str,
    ) -> ChannelSpec<'a> {
        ChannelSpec {
            name,
            service_id,
            ecm_pid: ecm,
            emm_pid: 0x1F1,
            input: Some(input),
            output: Some(output),
            clear_services: &[],
        }
    }

    fn field_of(r: Result<(), ChannelProblem>) -> (&'static str, bool) {
        let p = r.unwrap_err();
        assert!(!p.message.contains('\n'), "{p}");
        (p.field, p.conflict)
    }

    #[test]
    fn urls_are_read_as_the_stream_engine_reads_them() {
        for ok in [
            "udp://@:5000",
            "udp://127.0.0.1:5000",
            "udp://239.1.1.1:1234?pkt_size=1316",
            "file:///a.ts",
            "a.ts",
            "a.ts?loop",
        ] {
            parse_input(ok).unwrap();
        }
        assert_eq!(
            parse_input("a.ts?loop").unwrap(),
            InputUrl::File("a.ts".into(), true)
        );
        for bad in [
            "rtp://127.0.0.1:5000",
            "udp://127.0.0.1",
            "udp://@:0",
            "-",
            "",
            "http://x/y",
            "file://",
        ] {
            assert_eq!(parse_input(bad).unwrap_err().field, "input", "{bad}");
        }
        assert!(parse_input("udp://127.0.0.1")
            .unwrap_err()
            .message
            .contains("no port"));
        parse_output("/dev/null").unwrap();
        for bad in [
            "udp://0.0.0.0:5000",
            "udp://127.0.0.1:0",
            "udp://127.0.0.1",
            "-",
            "rtp://h:1",
        ] {
            assert_eq!(parse_output(bad).unwrap_err().field, "output", "{bad}");
        }
    }

    #[test]
    fn channel_checks_cover_files_pids_and_clashes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        // Two TS packets: a PAT and PID 0x100.
        let mut ts = vec![0u8; 376];
        ts[0] = 0x47;
        ts[3] = 0x10;
        ts[188] = 0x47;
        ts[189] = 0x01;
        ts[191] = 0x10;
        std::fs::write(base.join("in.ts"), &ts).unwrap();
        std::fs::write(base.join("junk.ts"), [1u8; 500]).unwrap();
        let ok = spec("a", 1, 0x1F0, "in.ts?loop", "out.ts");
        check_channel(&ok, &[], base).unwrap();
        let cases = [
            (spec("a", 1, 0x1F0, "missing.ts", "out.ts"), "input"),
            (spec("a", 1, 0x1F0, "junk.ts", "out.ts"), "input"),
            (spec("a", 1, 0x100, "in.ts", "out.ts"), "ecm_pid"),
            (spec("a", 1, 0x1F1, "in.ts", "out.ts"), "ecm_pid"),
            (spec("a", 1, 0x1F0, "in.ts", "/etc/out.ts"), "output"),
            (spec("a", 1, 0x1F0, "in.ts", "/proc/self/out.ts"), "output"),
            (spec("a", 1, 0x1F0, "in.ts", "nowhere/out.ts"), "output"),
            (spec("a", 1, 0x1F0, "in.ts", "in.ts"), "output"),
            (spec("a", 0, 0x1F0, "in.ts", "out.ts"), "service_id"),
        ];
        for (c, field) in &cases {
            assert_eq!(
                field_of(check_channel(c, &[], base)),
                (*field, false),
                "{c:?}"
            );
        }
        let clear = [1u16];
        let own = ChannelSpec {
            clear_services: &clear,
            ..ok
        };
        assert_eq!(field_of(check_channel(&own, &[], base)).0, "clear_services");

        // Between channels: one output each, one UDP port each, ECM PIDs
        // of their own; EMM PIDs and /dev/null shared.
        let other = spec("b", 2, 0x1E0, "udp://@:5000", "udp://127.0.0.1:6000");
        let cases = [
            (spec("a", 1, 0x1E0, "in.ts", "out.ts"), "ecm_pid"),
            (
                ChannelSpec {
                    emm_pid: 0x1E0,
                    ..ok
                },
                "emm_pid",
            ),
            (
                spec("a", 1, 0x1F0, "in.ts", "udp://127.0.0.1:6000"),
                "output",
            ),
            (
                spec("a", 1, 0x1F0, "udp://127.0.0.1:5000", "out.ts"),
                "input",
            ),
            (
                spec("a", 1, 0x1F0, "udp://239.1.1.1:5000", "out.ts"),
                "input",
            ),
        ];
        for (c, field) in &cases {
            assert_eq!(
                field_of(check_channel(c, &[other], base)),
                (*field, true),
                "{c:?}"
            );
        }
        check_channel(
            &spec("a", 1, 0x1F0, "udp://127.0.0.1:5001", "out.ts"),
            &[other],
            base,
        )
        .unwrap();
        let null_a = spec("a", 1, 0x1F0, "in.ts", "/dev/null");
        let null_b = spec("b", 2, 0x1E0, "in.ts", "/dev/null");
        check_channel(&null_a, &[null_b], base).unwrap();
        // The same input and output: one multiplex, which needs one EMM
        // PID and no service both scrambled and clear.
        let mux_b = spec("b", 2, 0x1E0, "udp://@:5000", "udp://127.0.0.1:6000");
        let mux_a = spec("a", 1, 0x1F0, "udp://@:5000", "udp://127.0.0.1:6000");
        check_channel(&mux_a, &[mux_b], base).unwrap();
        let two = [2u16];
        for (c, field) in [
            (
                ChannelSpec {
                    emm_pid: 0x1F2,
                    ..mux_a
                },
                "emm_pid",
            ),
            (
                ChannelSpec {
                    clear_services: &two,
                    ..mux_a
                },
                "clear_services",
            ),
            (
                ChannelSpec {
                    ecm_pid: 0x1E0,
                    ..mux_a
                },
                "ecm_pid",
            ),
        ] {
            assert_eq!(field_of(check_channel(&c, &[mux_b], base)), (field, true));
        }
        let same_file = spec("b", 2, 0x1E0, "in.ts", "./out.ts");
        assert_eq!(
            field_of(check_channel(&ok, &[same_file], base)),
            ("output", true)
        );
    }
}
